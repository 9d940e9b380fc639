"""Selection: which tokens each KV head keeps, given its budget."""

from __future__ import annotations

import torch
from torch import Tensor


def select_tokens(scores: Tensor, budgets: Tensor) -> Tensor:
    """Top-``budget`` tokens of every head, in position order.

    Args:
        scores: ``[B, H, T]`` scores (+inf for tokens that must be kept, -inf padding).
        budgets: ``[B, H]`` tokens to keep per head, each in [0, T].

    Returns:
        ``[B, H, K]`` int64 token positions, ``K = budgets.max()``. The first
        ``budgets[b, h]`` entries of each head are its kept positions in
        increasing order; the rest are filled with ``T`` (out of range).
    """
    length = scores.shape[-1]
    if budgets.shape != scores.shape[:2]:
        raise ValueError(f"budgets must be {tuple(scores.shape[:2])}, got {tuple(budgets.shape)}")
    if (budgets < 0).any() or (budgets > length).any():
        raise ValueError(f"budgets must lie in [0, {length}]")
    k = int(budgets.max())
    top = scores.topk(k, dim=-1).indices  # [B, H, K], best first
    used = torch.arange(k, device=scores.device)[None, None, :] < budgets[..., None]
    return top.masked_fill(~used, length).sort(dim=-1).values
