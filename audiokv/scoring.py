"""Observation-window scores: how much the last queries of the prompt attend to each cached token.

SnapKV-style: softmax attention of the last ``window`` queries over every key,
causal inside the window, averaged over the window and over the query heads of
each GQA group. The reduction happens per KV head on grouped queries; keys are
never repeated (`repeat_kv`) to the query head count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def window_scores(
    query_window: Tensor,
    key: Tensor,
    *,
    scaling: float | None = None,
    key_mask: Tensor | None = None,
    causal: bool = True,
) -> Tensor:
    """Score every cached token per KV head.

    Args:
        query_window: ``[B, H_q, W, D]`` the last ``W`` queries of the prompt,
            after positional encoding (they sit at positions ``T-W .. T-1``).
        key: ``[B, H_kv, T, D]`` all prompt keys, after positional encoding.
        scaling: softmax scale; ``1/sqrt(D)`` by default.
        key_mask: optional ``[B, T]`` bool, False for padding keys.
        causal: the queries are the prompt's own last tokens (self-attention);
            False for cross-attention, where every query sees every key.

    Returns:
        ``[B, H_kv, T]`` float32 scores in [0, 1]: the mean attention of the
        queries that see a key (a padding query sees none), so each (row, head)
        sums to 1, or to 0 where no query does. Padding keys score 0.
    """
    if query_window.dim() != 4 or key.dim() != 4:
        raise ValueError(
            f"expected query [B, H_q, W, D] and key [B, H_kv, T, D], got "
            f"{tuple(query_window.shape)} and {tuple(key.shape)}"
        )
    bsz, num_heads, window, dim = query_window.shape
    kbsz, num_kv_heads, length, kdim = key.shape
    if (kbsz, kdim) != (bsz, dim):
        raise ValueError(f"query {tuple(query_window.shape)} and key {tuple(key.shape)} disagree on batch or head_dim")
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of KV heads ({num_kv_heads})")
    if causal and window > length:
        raise ValueError(f"observation window ({window}) is longer than the prompt ({length} tokens)")
    group = num_heads // num_kv_heads
    scale = dim**-0.5 if scaling is None else scaling

    # [B, H_kv, G*W, D]: the G query heads of each KV head, stacked along the query axis.
    q = query_window.float().reshape(bsz, num_kv_heads, group * window, dim)
    logits = torch.matmul(q, key.float().transpose(-1, -2)) * scale  # [B, H_kv, G*W, T]
    qpos = torch.arange(length - window, length, device=key.device).repeat(group)
    allowed = torch.arange(length, device=key.device)[None, :] <= qpos[:, None]  # [G*W, T]
    if not causal:
        allowed = torch.ones_like(allowed)
    if key_mask is not None:
        allowed = allowed[None, None] & key_mask[:, None, None, :].bool()
    logits = logits.masked_fill(~allowed, float("-inf"))
    sees = allowed.any(-1)  # a left-padding query sees no key: it does not vote (its softmax would be NaN)
    probs = torch.softmax(logits, dim=-1).masked_fill(~sees[..., None], 0.0)
    return probs.sum(dim=-2) / sees.sum(-1, keepdim=True).clamp_min(1)


def pool_scores(scores: Tensor, kernel: int, mode: str = "max") -> Tensor:
    """Pool scores along the token axis (stride 1, same length).

    Args:
        scores: ``[B, H, T]``.
        kernel: odd window size; 1 returns ``scores`` unchanged.
        mode: ``"max"`` or ``"avg"`` (average over in-range neighbours only).

    Returns:
        ``[B, H, T]`` pooled scores.
    """
    if kernel == 1:
        return scores
    if kernel % 2 == 0:
        raise ValueError(f"pooling kernel must be odd, got {kernel}")
    flat = scores.reshape(-1, 1, scores.shape[-1])
    if mode == "max":
        out = F.max_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    elif mode == "avg":
        out = F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    else:
        raise ValueError(f"pooling must be 'max' or 'avg', got {mode!r}")
    return out.reshape(scores.shape)


def key_novelty(key: Tensor) -> Tensor:
    """How much each key differs from its neighbours: ``1 - cos`` with the mean of the keys either side.

    Consecutive frames of silence, padding or a held sound have nearly equal
    keys (low novelty, redundant); frames where the signal changes score
    high. Needs no query, so it also works where the prompt's queries say
    little (Whisper's cross-attention is scored from 2-4 special tokens).

    Args:
        key: ``[B, H_kv, T, D]``.

    Returns:
        ``[B, H_kv, T]`` float32 in [0, 2]; a 1-token sequence scores 0.
    """
    k = F.normalize(key.float(), dim=-1)
    if k.shape[2] < 2:
        return k.new_zeros(k.shape[:3])
    padded = torch.cat([k[:, :, 1:2], k, k[:, :, -2:-1]], dim=2)  # mirror the ends
    neighbours = F.normalize(padded[:, :, :-2] + padded[:, :, 2:], dim=-1)
    return 1 - (k * neighbours).sum(-1)


def value_rarity(
    value: Tensor,
    key_mask: Tensor | None = None,
    positions: Tensor | None = None,
    *,
    neighbours: int = 4,
    block: int = 512,
) -> Tensor:
    """How rare each value is in the prompt: minus its mean cosine with its ``neighbours`` most similar values.

    Attention returns a mix of values, so a token whose value several others
    nearly repeat (filler, boilerplate, a repeated phrase) adds little that
    the others do not, whatever the query; a value nothing else resembles (a
    name, a number) is lost for good if evicted. Needs no query, so it scores
    a context compressed before its question is seen.

    Args:
        value: ``[B, H_kv, T, D]``.
        key_mask: ``[B, T]`` bool or None; padding is nobody's neighbour.
        positions: ``[P]`` int64 tokens to score (None: all ``T``); their
            neighbours are sought among all tokens.
        neighbours: how many most similar values are averaged.
        block: tokens scored at a time (memory ``block * T`` per head).

    Returns:
        ``[B, H_kv, P]`` float32 in [-1, 1]; higher is rarer.
    """
    v = F.normalize(value.float(), dim=-1)
    length = v.shape[2]
    positions = torch.arange(length, device=v.device) if positions is None else positions.to(v.device)
    m = min(neighbours, length - 1)
    if m < 1:
        return v.new_zeros(*v.shape[:2], len(positions))
    out = []
    for chunk in positions.split(block):
        sim = v[:, :, chunk] @ v.transpose(-1, -2)  # [B, H, b, T]
        sim[:, :, torch.arange(len(chunk), device=v.device), chunk] = -2.0  # not its own neighbour
        if key_mask is not None:
            sim = sim.masked_fill(~key_mask.bool()[:, None, None, :], -2.0)
        out.append(-sim.topk(m, dim=-1).values.mean(-1))
    return torch.cat(out, dim=2)


def rerank(scores: Tensor, order: Tensor, where: Tensor) -> Tensor:
    """``scores`` whose entries under ``where`` are permuted to follow ``order``; the rest unchanged.

    Each head keeps the same multiset of scores among the ``where`` tokens
    (so a top-k over the row takes as many of them as before), but which token
    gets which score follows ``order`` (highest ``order`` gets the highest
    score). Equal scores are lowered by ~1e-12 of the largest in ``order``'s
    order so that a top-k among them follows it too.

    Args:
        scores, order: ``[B, H, T]``.
        where: ``[B, T]`` bool.

    Returns:
        ``[B, H, T]`` float64.
    """
    mask = where[:, None, :].expand_as(scores)
    values = scores.double().masked_fill(~mask, float("-inf")).sort(dim=-1, descending=True).values
    finite = values.isfinite()
    scale = values.masked_fill(~finite, 0).abs().amax(-1, keepdim=True).clamp_min(1e-30)
    step = torch.arange(values.shape[-1], device=values.device) * scale * 2.0**-40  # equal scores: order decides
    values = torch.where(finite, values - step, values)
    positions = order.double().masked_fill(~mask, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    permuted = torch.empty_like(values).scatter_(-1, positions, values)
    return torch.where(mask, permuted, scores.double())
