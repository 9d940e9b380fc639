"""Spectral Score Smoothing (SSS): an FFT low-pass over the audio part of the scores.

Audio tokens come from a continuous signal, so which of them matter changes
slowly along time; per-token scores are noisy on top of that trend. SSS keeps
the low-frequency part of the scores over the audio span so selection follows
the trend instead of the noise. The filter's gain falls off as a Gaussian
of frequency (``exp(-f^2 / 2 cutoff^2)``), not as a brick wall: a hard cut
rings around sharp peaks (Gibbs), which invents alternating high and low
scores next to every important token; a Gaussian response is a positive
Gaussian kernel in time and never does. The span is mirrored on both sides before the
FFT (the transform assumes a periodic signal: without padding, the end of the
span would bleed into its start), computed in float32, cropped back, and
shifted so its mean is exactly the original mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

Span = tuple[int, int]


def lowpass(x: Tensor, cutoff: float) -> Tensor:
    """Low-pass filter along the last axis.

    Args:
        x: ``[..., L]`` finite values.
        cutoff: the filter's width as a fraction of the band 0..Nyquist, in
            (0, 1]: the gain is ``exp(-(f / cutoff)^2 / 2)`` at frequency ``f``
            (Nyquist = 1), i.e. 0.61 at ``f = cutoff``. 1 is the identity.

    Returns:
        ``[..., L]`` float32, same mean as ``x`` along the last axis. Sequences
        shorter than 3 are returned unchanged.
    """
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must be in (0, 1], got {cutoff}")
    length = x.shape[-1]
    x32 = x.float()
    if cutoff >= 1.0 or length < 3:
        return x32
    pad = length - 1  # the longest mirror 'reflect' allows
    lead = x32.shape[:-1]
    padded = torch.nn.functional.pad(x32.reshape(-1, 1, length), (pad, pad), mode="reflect")
    n = padded.shape[-1]
    spectrum = torch.fft.rfft(padded, n=n)
    freq = torch.arange(spectrum.shape[-1], device=x.device, dtype=torch.float32) / (n // 2)
    spectrum = spectrum * torch.exp(-0.5 * (freq / cutoff) ** 2)  # DC gain 1
    smooth = torch.fft.irfft(spectrum, n=n)[..., pad : pad + length].reshape(*lead, length)
    return smooth + (x32.mean(-1, keepdim=True) - smooth.mean(-1, keepdim=True))


def span_rows(span: Span | Tensor | None, bsz: int, length: int) -> Tensor:
    """``[B, 2]`` int64 ``(start, end)`` per row, checked against ``length`` tokens.

    ``span`` is ``None`` (the whole axis), one ``(start, end)`` for every row, or a
    ``[B, 2]`` tensor; ``(0, 0)`` marks a row without audio.
    """
    if span is None:
        span = (0, length)
    if isinstance(span, Tensor):
        if span.shape != (bsz, 2):
            raise ValueError(f"span tensor must be [B, 2] = [{bsz}, 2], got {tuple(span.shape)}")
        rows = span.detach().cpu().long()
    else:
        rows = torch.tensor([tuple(span)] * bsz, dtype=torch.long)
    for start, end in rows.tolist():
        if not (0 <= start < end <= length or start == end == 0):
            raise ValueError(f"audio span ({start}, {end}) is empty or outside the {length} tokens")
    return rows


def sound_rows(sound: Span | Tensor | None, bsz: int, length: int) -> tuple[Tensor, Tensor]:
    """The frames of real sound in cross-attention: ``([B, 2] (first, one past the last), [B, T] bool mask)``.

    ``sound`` is a span as :func:`span_rows` takes it (every frame inside it
    holds sound), or a ``[B, T]`` bool mask that may leave out quiet inside
    (pauses); a row with no frame marked is ``(0, 0)``.
    """
    if not (isinstance(sound, Tensor) and sound.dtype == torch.bool):
        rows = span_rows(sound, bsz, length)
        return rows, span_mask(rows, length)
    if sound.shape != (bsz, length):
        raise ValueError(f"sound mask must be [B, T] = [{bsz}, {length}], got {tuple(sound.shape)}")
    mask = sound.detach().cpu()
    return mask_spans(mask), mask


def mask_spans(mask: Tensor) -> Tensor:
    """``[B, 2]`` int64 first and one-past-last marked position of each row of a ``[B, T]`` bool mask ((0, 0): none)."""
    pos = torch.arange(mask.shape[-1], device=mask.device)
    start = torch.where(mask, pos, mask.shape[-1]).amin(-1)
    end = torch.where(mask, pos + 1, 0).amax(-1)
    return torch.stack([torch.where(end > 0, start, 0), end], -1)


def clip_ids(audio: Tensor) -> Tensor:
    """``[B, T]`` int64: 1, 2, ... on the tokens of each run (clip) of ``[B, T]`` bool ``audio``, 0 elsewhere."""
    before = torch.cat([audio.new_zeros(audio.shape[0], 1), audio[:, :-1]], 1)
    return (audio & ~before).long().cumsum(-1) * audio


def span_mask(spans: Tensor, length: int, key_mask: Tensor | None = None) -> Tensor:
    """``[B, T]`` bool: the tokens inside each row's ``[B, 2]`` span that are not padding (``key_mask`` False)."""
    pos = torch.arange(length, device=spans.device)
    inside = (pos >= spans[:, :1]) & (pos < spans[:, 1:])
    return inside if key_mask is None else inside & key_mask.bool().to(spans.device)


def spectral_smooth(scores: Tensor, cutoff: float, span: Span | Tensor | None = None) -> Tensor:
    """Smooth scores over a span of the token axis; everything outside it is untouched.

    Args:
        scores: ``[B, H, T]`` (or any ``[B, ..., T]``) token scores.
        cutoff: fraction of the frequency band kept, in (0, 1]; 1 is the identity.
        span: the audio tokens: ``None`` for the whole axis, ``(start, end)``
            (end exclusive) for every row, or a ``[B, 2]`` integer tensor with
            one span per batch row; ``(0, 0)`` marks a row without audio.

    Returns:
        Scores of the same shape and dtype; inside each span the values are
        low-pass filtered and keep the span's mean. Spans shorter than 3 tokens
        are left as they are.
    """
    out = scores.clone()
    for row, (start, end) in enumerate(span_rows(span, scores.shape[0], scores.shape[-1]).tolist()):
        if start == end:
            continue  # a row without audio (e.g. a text-only prompt in a mixed batch)
        segment = scores[row, ..., start:end]
        if not torch.isfinite(segment).all():
            raise ValueError(f"scores inside the audio span ({start}, {end}) must be finite")
        out[row, ..., start:end] = lowpass(segment, cutoff).to(scores.dtype)
    return out
