"""Per-head budgets: one layer budget split across KV heads (AdaKV-style).

Every head first gets a floor (the safeguard: a fraction of the average
per-head budget, never less than the tokens it must keep). The rest of the
layer budget goes to the highest scores across *all* heads of the layer, so a
head whose attention is spread over many tokens gets more than a head that
looks at a few. Scores can be weighted per head by a calibrated prior (the
audio-critical heads), which moves budget towards those heads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from audiokv.select import ranks

ADAKV_SAFEGUARD = 0.2  # AdaKV's default floor: every head keeps at least 20% of the average


def mark_mandatory(scores: Tensor, *, sinks: int, window: int, key_mask: Tensor | None = None) -> Tensor:
    """Give tokens that must be kept +inf and padding -inf.

    Args:
        scores: ``[B, H, T]`` finite scores.
        sinks: the first ``sinks`` valid tokens of each row are kept.
        window: the last ``window`` tokens are kept.
        key_mask: optional ``[B, T]`` bool, False for padding.

    Returns:
        ``[B, H, T]`` float32 scores with +inf on sinks and window, -inf on padding.
    """
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    bsz, _, length = scores.shape
    valid = torch.ones(bsz, length, dtype=torch.bool, device=scores.device)
    if key_mask is not None:
        valid = key_mask.bool()
    keep = valid & (valid.cumsum(-1) <= sinks)
    keep[:, max(length - window, 0) :] = True
    keep &= valid
    out = scores.float().masked_fill(keep[:, None, :], float("inf"))
    return out.masked_fill(~valid[:, None, :], float("-inf"))


def head_weights(prior: Tensor, strength: float) -> Tensor:
    """Positive per-head weights from a calibrated prior.

    Args:
        prior: ``[H]`` audio-criticality scores of one layer's KV heads.
        strength: 0 gives all-ones weights; larger values favour high-prior heads.

    Returns:
        ``[H]`` float32 weights ``exp(strength * z)``, ``z`` the standardized prior.
    """
    if not torch.isfinite(prior).all():
        raise ValueError("head prior must be finite")
    prior = prior.float()
    std = prior.std(unbiased=False) if prior.numel() > 1 else prior.new_zeros(())
    level = prior.abs().max() if prior.numel() else prior.new_zeros(())
    flat = std <= 1e-6 * level  # equal scores, up to the rounding of their mean: no head is favoured
    z = torch.zeros_like(prior) if flat else (prior - prior.mean()) / std
    return torch.exp(strength * z)


def layer_shares(layer_prior: Tensor, strength: float) -> Tensor:
    """How much of the model's budget each layer deserves, from a calibrated prior.

    Whisper aligns text to audio in its upper decoder layers (OpenAI's
    alignment heads, and our calibration, sit there), and spending the same
    fraction of every layer starves them first. A layer's share mixes the
    uniform split with its mean audio-criticality.

    Args:
        layer_prior: ``[L]`` mean audio-criticality of every compressed layer's KV heads (non-negative).
        strength: 0 keeps every layer at the same ratio; 1 splits in proportion
            to the layers' mean prior. In [0, 1].

    Returns:
        ``[L]`` float64 shares, mean 1: ``(1 - strength) + strength * mean_l / mean``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"layer prior strength must be in [0, 1], got {strength}")
    if layer_prior.dim() != 1 or not torch.isfinite(layer_prior).all():
        raise ValueError(f"layer prior must be finite and [L], got shape {tuple(layer_prior.shape)}")
    if (layer_prior < 0).any():
        raise ValueError(
            f"layer prior must be non-negative (calibrated head scores lie in [0, 1]), got {layer_prior.tolist()}"
        )
    layer_prior = layer_prior.double()
    total = layer_prior.mean()
    relative = layer_prior / total if total > 0 else torch.ones_like(layer_prior)
    return (1 - strength) + strength * relative


def layer_keeps(keep: float, shares: Tensor, low: float = 0.0) -> Tensor:
    """``[L]`` float64 fraction of its tokens each layer keeps: by ``shares``, in [``low``, 1], mean ``keep``.

    Water-filling: each layer keeps ``clip(c * share, low, 1)`` with ``c`` set
    so that the mean is ``keep``; a layer whose share would keep more than all
    its tokens keeps them all, one whose share would keep less than ``low``
    (the tokens it must keep) keeps ``low``, and the others share the rest in
    proportion to their shares. Should all the shares left be zero, they
    share it evenly.

    Args:
        keep: mean fraction kept, in [``low``, 1].
        shares: ``[L]`` non-negative shares.
        low: least fraction every layer keeps, in [0, ``keep``].
    """
    shares = shares.double()
    if not 0.0 <= low <= keep <= 1.0 or (shares < 0).any():
        raise ValueError(f"need 0 <= low ({low}) <= keep ({keep}) <= 1 and non-negative shares, got {shares.tolist()}")
    if shares.sum() == 0:
        shares = torch.ones_like(shares)

    def mean_kept(c: float) -> float:
        return float((c * shares).clamp(low, 1.0).mean())

    lo, hi = 0.0, 1.0 / shares[shares > 0].min().item()  # at hi every layer with a share keeps everything
    if mean_kept(hi) < keep:  # zero-share layers must take the rest: they share it evenly
        rest = (keep * len(shares) - (shares > 0).sum().item()) / (shares == 0).sum().item()
        return torch.where(shares > 0, 1.0, torch.tensor(rest, dtype=torch.float64))
    for _ in range(100):  # bisection: the mean is continuous and non-decreasing in c
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_kept(mid) < keep else (lo, mid)
    return (hi * shares).clamp(low, 1.0)


def layer_budget(valid_tokens: Tensor, num_heads: int, ratio: float | Tensor, mandatory: Tensor) -> Tensor:
    """Total tokens kept by one layer for each batch row.

    Args:
        valid_tokens: ``[B]`` non-padding prompt tokens per row.
        num_heads: KV heads of the layer.
        ratio: fraction of KV entries removed, in [0, 1); one value or ``[B]``.
        mandatory: ``[B]`` tokens every head must keep (sinks + window).

    Returns:
        ``[B]`` int64 budgets: ``num_heads * max(valid - floor(ratio * valid), mandatory)``.
    """
    keep = valid_tokens - torch.floor(valid_tokens.double() * ratio + 1e-6).long()  # 0.55 * 120 may be 65.99999
    return num_heads * torch.maximum(keep, mandatory.long())


def demand_scores(scores: Tensor, demand: Tensor) -> Tensor:
    """Scores whose global top-k (:func:`head_budgets`) splits a budget in proportion to ``demand``.

    Each head's tokens keep their order, but the ``r``-th best (from 0) now scores
    ``demand / (1 + r)``: a threshold ``theta`` admits ``floor(demand / theta)``
    tokens of every head, so each head keeps ``clip(demand / theta, its floor,
    its valid tokens)`` (water-filling: a head whose share is below its floor
    keeps the floor, one with fewer tokens than its share keeps them all, the
    rest goes to the others). The rounding is D'Hondt's: a head with a large
    demand may get a token or two more than its exact share. Must-keep and
    padding marks stay.

    Args:
        scores: ``[B, H, T]`` marked scores (+inf must keep, -inf padding).
        demand: ``[B, H]`` positive demand per head.

    Returns:
        ``[B, H, T]`` float32 scores with the same marks and per-head order.
    """
    if demand.shape != scores.shape[:2] or not (demand > 0).all():
        raise ValueError(f"demand must be positive and {tuple(scores.shape[:2])}, got {tuple(demand.shape)}")
    rank = ranks(scores, descending=True)
    out = demand.float()[..., None] / (1 + rank.float())
    return torch.where(torch.isinf(scores), scores.float(), out)


def head_budgets(
    scores: Tensor,
    budget: Tensor | int,
    *,
    safeguard: float | Tensor = ADAKV_SAFEGUARD,
    weights: Tensor | None = None,
) -> Tensor:
    """Split each row's layer budget across its KV heads.

    Args:
        scores: ``[B, H, T]`` from :func:`mark_mandatory` (+inf must keep, -inf padding).
        budget: ``[B]`` (or one int) total tokens kept over all heads of a row;
            at most ``H`` times the row's valid tokens and at least ``H`` times
            its mandatory tokens.
        safeguard: each head gets at least ``ceil(safeguard * budget / H)``; one
            value or ``[B]``, one per row.
        weights: optional positive per-head weights on the scores, ``[H]`` for
            every row or ``[B, H]`` per row.

    Returns:
        ``[B, H]`` int64 budgets; each row sums exactly to its layer budget and
        every head gets at least its floor.
    """
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    bsz, num_heads, length = scores.shape
    budget = torch.as_tensor(budget, device=scores.device).long().expand(bsz).clone()
    valid_count = (~torch.isneginf(scores[:, 0])).sum(-1)
    mandatory = torch.isposinf(scores[:, 0]).sum(-1)
    if (budget > num_heads * valid_count).any() or (budget < num_heads * mandatory).any():
        raise ValueError(
            f"layer budget {budget.tolist()} must lie between {num_heads}x the mandatory tokens "
            f"{mandatory.tolist()} and {num_heads}x the valid tokens {valid_count.tolist()}"
        )
    if weights is not None:
        if weights.shape not in ((num_heads,), (bsz, num_heads)) or (weights <= 0).any():
            raise ValueError(f"weights must be [{num_heads}] or [{bsz}, {num_heads}] and positive, "
                             f"got {tuple(weights.shape)}")  # fmt: skip
        scores = scores * weights.to(scores.device).expand(bsz, num_heads)[:, :, None]

    avg = budget.double() / num_heads
    safeguard = torch.as_tensor(safeguard, dtype=torch.float64, device=scores.device)
    floor = torch.ceil(safeguard * avg - 1e-4).long()  # 0.2 in fp32 is 0.2000000030: 20.0000003 tokens are 20
    floor = torch.maximum(floor, mandatory)
    floor = torch.minimum(floor, budget // num_heads)  # floors must fit the budget
    ranked = scores.sort(dim=-1, descending=True).values  # [B, H, T]
    rank = torch.arange(length, device=scores.device)
    beyond_floor = rank[None, None, :] >= floor[:, None, None]
    candidates = ranked.masked_fill(~beyond_floor, float("-inf")).reshape(bsz, -1)
    extra = budget - num_heads * floor  # [B]
    budgets = floor[:, None].expand(bsz, num_heads).clone()
    k = int(extra.max())
    if k > 0:
        picked = candidates.topk(k, dim=-1).indices // length  # [B, k] head of each pick
        take = torch.arange(k, device=scores.device)[None, :] < extra[:, None]
        budgets.scatter_add_(1, picked, take.long())
    return budgets
