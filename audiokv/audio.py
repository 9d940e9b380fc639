"""Audio input: any file libsndfile reads (WAV, FLAC, MP3, OGG/Vorbis/Opus, ...), mono, resampled by soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono signal with soxr's high-quality filter.

    Args:
        audio: ``[N]`` float samples.
        orig_rate, target_rate: sample rates in Hz.

    Returns:
        ``[≈ N * target / orig]`` float32 samples.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_rate == target_rate:
        return audio
    return soxr.resample(audio, orig_rate, target_rate, quality="HQ").astype(np.float32)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file: ``([frames, channels] float32 in [-1, 1], sample rate)``."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, OSError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from None
    return data, rate


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """An audio file as mono float32 at ``sample_rate`` (channels averaged, resampled)."""
    data, rate = read_audio(path)
    return resample(data.mean(axis=1), rate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV."""
    soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
