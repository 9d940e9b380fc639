"""Selection: which tokens each KV head keeps, given its budget.

Outside the audio span a head keeps its top-scored tokens. Inside it,
:func:`coverage_priority` spends the span's share of the budget so that every
stretch of audio keeps tokens: the policy's density (for AudioKV, key novelty)
smoothed by SSS and mixed with a uniform floor is a density over time; the span's ``K`` kept tokens are
placed one per stratum of equal density mass (inverse-CDF, systematic
sampling), so dense regions keep more and no region is left empty, and the
raw scores choose the token inside each stratum. With a uniform density this
is an even stride whose phase follows the content.
"""

from __future__ import annotations

import torch
from torch import Tensor

from audiokv.spectral import clip_ids


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


def ranks(scores: Tensor, descending: bool = False) -> Tensor:
    """``[..., N]`` int64 rank of each entry along the last axis (0: the lowest, or the highest if ``descending``).

    Ties keep their order (a stable sort); the inverse of one argsort, not a second one.
    """
    order = scores.argsort(dim=-1, descending=descending, stable=True)
    steps = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, steps)


def _cap_density(density: Tensor, cap: Tensor) -> Tensor:
    """Clip ``[H, N]`` densities (rows sum to 1) at ``cap`` ``[H, N]`` (rows of ``cap`` sum to >= 1), keeping the sum.

    What is clipped goes to the other tokens in proportion to their room
    under the cap, so nothing overflows again and one pass is exact.
    """
    excess = (density - cap).clamp_min(0).sum(-1, keepdim=True)
    density = torch.minimum(density, cap)
    room = cap - density
    return density + excess * room / room.sum(-1, keepdim=True).clamp_min(1e-300)


def coverage_priority(raw: Tensor, density: Tensor, counts: Tensor) -> Tensor:
    """Rank one span's tokens so that each head's top ``counts`` cover the span by ``density``.

    Args:
        raw: ``[H, N]`` token scores inside the span (+inf: must keep, -inf: never, e.g. padding).
        density: ``[H, N]`` non-negative weights, how many tokens each region
            deserves (zero everywhere counts as uniform).
        counts: ``[H]`` tokens each head keeps in the span, in [0, N], at least
            its must-keep tokens.

    Returns:
        ``[H, N]`` float64 priorities. The top ``counts[h]`` of row ``h`` are
        the must-keep tokens, then one token per stratum of equal density mass
        over the other tokens (the best ``raw`` score of the stratum), topped up
        by ``raw`` should rounding leave a stratum empty.
    """
    n = raw.shape[-1]
    must, never = torch.isposinf(raw), torch.isneginf(raw)
    free = ~(must | never)
    k = (counts - must.sum(-1)).clamp(1, n).double()[:, None]  # strata: what is left after the must-keeps
    d = torch.where(free, density.double().clamp_min(0), 0.0)
    total = d.sum(-1, keepdim=True)
    uniform = free.double() / free.sum(-1, keepdim=True).clamp_min(1)
    d = torch.where(total > 0, d / total.clamp_min(1e-300), uniform)
    d = _cap_density(d, torch.where(free, 1.0 / k, 0.0))  # a token is kept once: no stratum narrower than it
    mass = k * d
    middle = mass.cumsum(-1) - mass / 2  # [H, N] in [0, K)
    stratum = torch.minimum(middle.floor(), k - 1).long()
    rank = ranks(raw)  # 0 = lowest raw score, n - 1 = highest
    rank = rank.masked_fill(~free, -1)  # must-keep and never-keep tokens do not compete for strata
    best = torch.full_like(rank, -1).scatter_reduce(1, stratum, rank, "amax")
    winner = free & (rank == best.gather(1, stratum))
    priority = winner.double() * n + rank.double()
    return priority.masked_fill(must, float("inf")).masked_fill(never, float("-inf"))


def clip_onsets(audio: Tensor, tokens: int) -> Tensor:
    """``[B, T]`` bool: the first ``tokens`` of each clip (run) of ``[B, T]`` bool ``audio`` (all of a shorter one)."""
    ids = clip_ids(audio)
    seen = audio.long().cumsum(-1)  # audio tokens up to each position
    first = ids != torch.cat([ids.new_zeros(ids.shape[0], 1), ids[:, :-1]], 1)
    before = torch.where(first & audio, seen - 1, 0).cummax(-1).values  # audio tokens before the clip
    return audio & (seen - before <= tokens)


def weight_onset(density: Tensor, onset: Tensor, factor: float) -> Tensor:
    """``[B, H, T]`` ``density`` times ``factor`` on the ``[B, T]`` bool ``onset`` (:func:`clip_onsets`).

    A decoder writes its first words with no text before them to lean on, so
    it reads them from the audio alone; where a compressed run first goes
    wrong there, it can loop for the rest of the transcript.
    """
    return torch.where(onset.to(density.device)[:, None, :], density * factor, density)


def cover_spans(scores: Tensor, raw: Tensor, trend: Tensor, budgets: Tensor, spans: Tensor, uniform: float) -> Tensor:
    """Selection scores whose top ``budgets`` keep the same number of audio tokens, spread by coverage.

    Args:
        scores: ``[B, H, T]`` marked scores (+inf must keep, -inf padding) that set the budgets.
        raw: ``[B, H, T]`` unsmoothed token scores (they choose inside a stratum).
        trend: ``[B, H, T]`` smoothed scores (they shape the density over the span).
        budgets: ``[B, H]`` tokens each head keeps.
        spans: ``[B, 2]`` audio span of each row; empty rows (start == end) are left as they are.
        uniform: share of the density spread evenly over the span, in [0, 1].

    Returns:
        ``[B, H, T]`` scores for :func:`select_tokens`: outside the span each head
        keeps what ``scores`` would have kept; inside, as many tokens, chosen by
        :func:`coverage_priority`.
    """
    out = scores.clone()
    for b, (start, end) in enumerate(spans.tolist()):
        if end <= start:
            continue
        chosen = _top_mask(scores[b], budgets[b])  # what plain top-k selection would keep
        counts = chosen[:, start:end].sum(-1)
        segment = trend[b, :, start:end].double().clamp_min(0)
        share = segment / segment.sum(-1, keepdim=True).clamp_min(1e-300)
        density = uniform / (end - start) + (1 - uniform) * share
        marked = scores[b, :, start:end]
        inside = raw[b, :, start:end].masked_fill(torch.isposinf(marked), float("inf"))
        inside = inside.masked_fill(torch.isneginf(marked), float("-inf"))
        priority = coverage_priority(inside, density, counts)
        chosen[:, start:end] = _top_mask(priority, counts)
        out[b] = torch.where(chosen, 1.0, 0.0).masked_fill(torch.isneginf(scores[b]), float("-inf"))
    return out


def _top_mask(scores: Tensor, counts: Tensor) -> Tensor:
    """``[H, N]`` bool: the top ``counts[h]`` entries of each row."""
    return ranks(scores, descending=True) < counts[:, None]
