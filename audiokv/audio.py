"""Audio input: WAV reading, mono mix-down and resampling (no extra dependencies)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling of a mono signal by FFT (zero-padding or truncating the spectrum).

    Args:
        audio: ``[N]`` float samples.
        orig_rate, target_rate: sample rates in Hz.

    Returns:
        ``[round(N * target / orig)]`` float32 samples.
    """
    if orig_rate == target_rate:
        return audio.astype(np.float32)
    n = len(audio)
    m = max(1, round(n * target_rate / orig_rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    bins = m // 2 + 1
    if bins <= len(spectrum):
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - len(spectrum), spectrum.dtype)])
    return (np.fft.irfft(spectrum, n=m) * (m / n)).astype(np.float32)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file: ``([frames, channels] float32 in [-1, 1], sample rate)``."""
    try:
        with wave.open(str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError, OSError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from None
    if width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        data = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        data = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    elif width == 4:
        data = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
    else:
        raise ValueError(f"cannot read audio file {path}: unsupported sample width {width}")
    return data.reshape(-1, channels), rate


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as mono float32 at ``sample_rate`` (channels averaged, resampled)."""
    data, rate = read_wav(path)
    return resample(data.mean(axis=1), rate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM."""
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
