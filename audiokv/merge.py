"""Merging: each kept audio token stands for the dropped audio tokens around it.

Audio is continuous: a dropped frame sounds much like a kept neighbour. Evicting
it outright removes its share of the softmax, so stretches that keep few tokens
(silence, held sounds) lose attention mass they had in the full cache. Instead,
every dropped frame inside the audio span joins one of its two nearest kept
frames (the one whose key it is more similar to); the kept frame's key and
value become the means of its group, and a ``log(group size)`` added to its
attention logit gives the group the mass its members had together. For keys
that agree within a group this reproduces the full attention exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from audiokv.spectral import span_mask


def _nearest_kept(kept: Tensor, forward: bool) -> Tensor:
    """``[R, T]`` position of the nearest kept token at or before (after, if not ``forward``) each token; -1 if none."""
    length = kept.shape[-1]
    pos = torch.arange(length, device=kept.device).expand_as(kept)
    if forward:
        return torch.where(kept, pos, -1).cummax(-1).values
    flipped = torch.where(kept, length - 1 - pos, -1).flip(-1).cummax(-1).values.flip(-1)
    return torch.where(flipped >= 0, length - 1 - flipped, -1)


def merge_spans(
    key: Tensor, value: Tensor, kept: Tensor, spans: Tensor, key_mask: Tensor | None = None, clips: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold every dropped audio token into a kept neighbour.

    Args:
        key, value: ``[B, H_kv, T, D]`` the prompt's keys and values.
        kept: ``[B, H_kv, T]`` bool, the tokens each head keeps.
        spans: ``[B, 2]`` audio span of each row (start == end: no audio).
        key_mask: ``[B, T]`` bool, False on padding (never merged), or None.
        clips: ``[B, T]`` int64 clip of each token (:func:`audiokv.spectral.clip_ids`), or
            None (one clip per span): a token joins a kept token of its own clip only.

    Returns:
        ``(key, value, log_mass)``: ``[B, H_kv, T, D]`` keys and values where each
        kept audio token holds the mean over its group, other tokens unchanged,
        and ``[B, H_kv, T]`` float32 log of each token's group size (0 outside
        the audio span and for dropped tokens).
    """
    bsz, heads, length, dim = key.shape
    pos = torch.arange(length, device=key.device)
    audio = span_mask(spans.to(key.device), length, key_mask)[:, None, :].expand(bsz, heads, length)
    anchors = (kept & audio).reshape(-1, length)  # [R, T]
    left, right = _nearest_kept(anchors, True), _nearest_kept(anchors, False)
    unit = F.normalize(key.float(), dim=-1).reshape(-1, length, dim)

    clip = None if clips is None else clips.to(key.device)[:, None, :].expand(bsz, heads, length).reshape(-1, length)

    def similarity(target: Tensor) -> Tensor:
        picked = unit.gather(1, target.clamp_min(0)[..., None].expand(-1, -1, dim))
        usable = target >= 0
        if clip is not None:
            usable = usable & (clip.gather(1, target.clamp_min(0)) == clip)
        return torch.where(usable, (unit * picked).sum(-1), float("-inf"))

    left_sim, right_sim = similarity(left), similarity(right)
    group = torch.where(left_sim >= right_sim, left, right)  # [R, T]
    group = group.masked_fill(torch.maximum(left_sim, right_sim) == float("-inf"), -1)  # no kept token of its clip
    member = audio.reshape(-1, length) & (group >= 0)
    group = torch.where(member, group, pos)  # tokens outside any group point at themselves, weight 0
    weight = member.float()
    size = torch.zeros_like(weight).scatter_add_(1, group, weight)
    merged = anchors & (size > 0)

    def mean(x: Tensor) -> Tensor:
        flat = x.float().reshape(-1, length, dim)
        total = torch.zeros_like(flat).scatter_add_(1, group[..., None].expand(-1, -1, dim), flat * weight[..., None])
        out = torch.where(merged[..., None], total / size.clamp_min(1)[..., None], flat)
        return out.to(x.dtype).reshape(x.shape)

    log_mass = torch.where(merged, size.clamp_min(1).log(), 0.0).reshape(bsz, heads, length)
    return mean(key), mean(value), log_mass
