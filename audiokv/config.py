"""`AudioKVConfig`: every knob of the method in one validated dataclass."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, fields
from typing import Literal


def _require_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _require_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AudioKVConfig:
    """Settings of AudioKV compression.

    Attributes:
        compression_ratio: fraction of the prompt's KV entries *removed* (the
            kvpress convention): 0 keeps everything, 0.7 keeps 30%. In [0, 1).
        window: number of last prompt queries whose attention scores the cache
            (the observation window). These tokens are always kept.
        pooling: ``"max"`` or ``"avg"`` pooling of scores along the token axis.
        pooling_kernel: odd kernel size of that pooling; 1 disables it.
        sss_cutoff: Spectral Score Smoothing cutoff, the fraction of the
            frequency band (0..Nyquist) kept over the audio span, in (0, 1];
            1 disables smoothing. Read by the policies that smooth
            (``audiokv-sss``; the default ``audiokv`` does not).
        coverage_floor: share of the audio span's budget spread evenly over time
            by the coverage selection; the rest follows the policy's smoothed
            density (for AudioKV, key novelty). In [0, 1].
        onset_seconds: how many first seconds of an audio span the policies
            with ``onset`` (``audiokv`` and its ablations but ``audiokv-no-onset``)
            weight by ``onset_weight`` in the coverage density; the engine turns
            them into tokens at its model's audio token rate
            (``AudioKVAttention.audio_tokens_per_second``: 50 for Whisper, 25 for
            Qwen2-Audio, ...). 2 s was chosen on the tune split (Whisper) against
            1 and 4. >= 0.
        onset_weight: that weight, >= 1 (1 switches the weighting off).
        head_prior_strength: how strongly calibrated audio-critical heads are
            favoured in the budget split; 0 ignores the calibration. >= 0. 0.5
            (the default) was chosen on the tune2 split against 1.
        layer_prior: how far rows holding audio spend the model's budget
            across layers by the calibration's mean per layer
            (:func:`audiokv.budget.layer_shares`): 0 gives every layer the same
            ratio, 1 (the default, chosen on the tune split) splits in
            proportion to the layers' prior. In [0, 1]; read by the policies
            that use the prior.
        safeguard: every KV head keeps at least this fraction of the average
            per-head budget (AdaKV's safeguard), in [0, 1]; None (the default):
            AdaKV's 0.2, and 0.5 in the audio rows AudioKV splits by key path
            (chosen on the tune split: at 0.2 a head whose keys barely move gets
            so few tokens that Whisper base loops).
        sinks: number of first tokens always kept (attention sinks).
        page_size: tokens per page of the paged pool; also the FlexAttention
            KV block size. A power of two in [16, 1024], or None (the default)
            to fit it to each compressed prompt (:func:`audiokv.paged.fit_page_size`:
            small pages for short prompts, so rounding rows up to whole pages
            costs little; 128 from about 2k tokens per head on).
        decode_reserve: the most tokens per KV head reserved in the pool for
            decoding at compression time; inside ``model.generate`` the reserve is
            its ``max_new_tokens`` when that is smaller. When it is full the pool
            grows by this much or by as many tokens as were appended so far,
            whichever is more, so a long generation reallocates (and compiles a
            kernel for a new pool size) only O(log(steps)) times.
        decode_keep: tokens per KV head kept of what is appended after the
            prompt (the generated answer); None keeps them all. Once
            ``decode_keep + decode_every`` are held, each row keeps its last
            ``min(window, decode_keep)`` and the rest of ``decode_keep`` by the
            current query's attention (TOVA-style, averaged over the GQA group),
            in place: a long generation stops growing the cache.
        decode_every: how many tokens are appended between two such evictions.
        prefill_chunk: prefill a prompt longer than this many tokens (more than
            ``window``) in chunks of it: each chunk attends to what the cache
            kept of the earlier ones and is then compressed on its own (each
            keeps at least its last ``window`` tokens), so a layer's prefill
            holds its compressed prompt plus one chunk, not the whole prompt
            (the first chunk also takes any left padding). None (the default)
            prefills the prompt at once.
            Self-attention models only (Whisper's cross-attention ignores it).
        seed: seed of the randomized policies (``random``); each layer and each
            compression call draws from its own stream derived from it, so a
            run repeats exactly and no two layers or clips share a mask.
    """

    compression_ratio: float = 0.5
    window: int = 32
    pooling: Literal["max", "avg"] = "max"
    pooling_kernel: int = 7
    sss_cutoff: float = 0.1
    coverage_floor: float = 0.1
    onset_seconds: float = 2.0
    onset_weight: float = 3.0
    head_prior_strength: float = 0.5
    layer_prior: float = 1.0
    safeguard: float | None = None
    sinks: int = 4
    page_size: int | None = None
    decode_reserve: int = 128
    decode_keep: int | None = None
    decode_every: int = 32
    prefill_chunk: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):  # numpy and torch scalars (np.float32(0.5), torch.tensor(8)) as Python numbers
            value = getattr(self, field.name)
            if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            object.__setattr__(self, field.name, int(value) if isinstance(value, numbers.Integral) else float(value))
        ratio = _require_float("compression_ratio", self.compression_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(
                f"compression_ratio is the fraction of KV entries removed and must be in [0, 1), got {ratio}"
            )
        _require_int("window", self.window, 1)
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        _require_int("pooling_kernel", self.pooling_kernel, 1)
        if self.pooling_kernel % 2 == 0:
            raise ValueError(f"pooling_kernel must be odd, got {self.pooling_kernel}")
        cutoff = _require_float("sss_cutoff", self.sss_cutoff)
        if not 0.0 < cutoff <= 1.0:
            raise ValueError(f"sss_cutoff must be in (0, 1], got {cutoff}")
        floor = _require_float("coverage_floor", self.coverage_floor)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"coverage_floor must be in [0, 1], got {floor}")
        if _require_float("onset_seconds", self.onset_seconds) < 0:
            raise ValueError(f"onset_seconds must be >= 0, got {self.onset_seconds}")
        if _require_float("onset_weight", self.onset_weight) < 1.0:
            raise ValueError(f"onset_weight must be >= 1, got {self.onset_weight}")
        if _require_float("head_prior_strength", self.head_prior_strength) < 0:
            raise ValueError(f"head_prior_strength must be >= 0, got {self.head_prior_strength}")
        if not 0.0 <= _require_float("layer_prior", self.layer_prior) <= 1.0:
            raise ValueError(f"layer_prior must be in [0, 1], got {self.layer_prior}")
        if self.safeguard is not None and not 0.0 <= _require_float("safeguard", self.safeguard) <= 1.0:
            raise ValueError(f"safeguard must be in [0, 1] or None, got {self.safeguard}")
        _require_int("sinks", self.sinks, 0)
        if self.page_size is not None:
            _require_int("page_size", self.page_size, 16)
            if self.page_size > 1024 or self.page_size & (self.page_size - 1):
                raise ValueError(f"page_size must be a power of two in [16, 1024] or None, got {self.page_size}")
        _require_int("decode_reserve", self.decode_reserve, 0)
        if self.decode_keep is not None:
            _require_int("decode_keep", self.decode_keep, 1)
        _require_int("decode_every", self.decode_every, 1)
        if self.prefill_chunk is not None:
            _require_int("prefill_chunk", self.prefill_chunk, self.window + 1)
            least = math.ceil(self.window / (1 - ratio) - 1e-9)  # every chunk keeps at least its last `window`
            if self.prefill_chunk < least:
                warnings.warn(
                    f"prefill_chunk={self.prefill_chunk} keeps at least the last window={self.window} tokens of "
                    f"each chunk ({self.window / self.prefill_chunk:.1%}), more than the {1 - ratio:.1%} "
                    f"compression_ratio={ratio:g} asks: use prefill_chunk >= {least}",
                    stacklevel=3,
                )
        _require_int("seed", self.seed, 0)
