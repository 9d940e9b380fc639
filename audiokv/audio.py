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
    if not np.isfinite(data).all():  # float WAVs can hold them; a model would decode them silently as noise
        raise ValueError(f"audio file {path} holds NaN or infinite samples")
    return data, rate


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """An audio file as mono float32 at ``sample_rate`` (channels averaged, resampled)."""
    data, rate = read_audio(path)
    return resample(data.mean(axis=1), rate, sample_rate)


def frame_energy(audio: np.ndarray, hop: int) -> np.ndarray:
    """``[N // hop]`` mean square of each whole ``hop``-sample frame of ``[N]`` audio (a trailing part is left out)."""
    frames = np.asarray(audio[: len(audio) // hop * hop], dtype=np.float64)
    return (frames.reshape(-1, hop) ** 2).mean(-1)


def split_at_pauses(
    audio: np.ndarray, max_seconds: float = 30.0, search_seconds: float = 5.0, sample_rate: int = SAMPLE_RATE
) -> list[np.ndarray]:
    """Cut a clip into pieces of at most ``max_seconds``, each cut at a pause.

    Whisper hears 30 s at a time. A longer clip is cut at the quietest 20 ms
    (lowest energy) of the last ``search_seconds`` before each piece would
    pass ``max_seconds``, so a cut falls between words wherever the speaker
    pauses there; a clip that fits comes back whole.

    Args:
        audio: ``[N]`` mono samples.

    Returns:
        Consecutive ``[N_i]`` views of ``audio`` that add up to all of it.
    """
    if not 0 < search_seconds < max_seconds:
        raise ValueError(f"need 0 < search_seconds < max_seconds, got {search_seconds} and {max_seconds}")
    limit, search, hop = int(max_seconds * sample_rate), int(search_seconds * sample_rate), sample_rate // 50
    pieces, start = [], 0
    while len(audio) - start > limit:
        energy = frame_energy(audio[start + limit - search : start + limit], hop)
        cut = start + limit - search + int(energy.argmin()) * hop + hop // 2
        pieces.append(audio[start:cut])
        start = cut
    return [*pieces, audio[start:]]


def speech_frames(
    audio: np.ndarray,
    below_db: float = 30.0,
    above_floor_db: float | None = 6.0,
    margin_seconds: float = 0.2,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """``[N // (sample_rate / 50)]`` bool per 20 ms: speech, or within ``margin_seconds`` of it.

    A frame is loud within ``below_db`` of the clip's loud frames (the 95th
    percentile of 20 ms energies) and ``above_floor_db`` over its noise floor
    (the 5th percentile: a recording's room tone, if it pauses at all) or
    within as much of the loud frames (so a steady sound is not its own
    floor). What lies farther than ``margin_seconds`` from every loud frame
    is quiet: a lead-in of room tone, a pause longer than twice the margin, a
    tail. Steady noise is quiet however loud it is, so a pause in a noisy
    room is a pause; noise that rises and falls (babble, music) clears its
    own floor and counts as sound. ``above_floor_db=None`` leaves the floor
    out (every frame within ``below_db`` of the loud ones is loud).
    """
    energy = frame_energy(audio, sample_rate // 50)
    if len(energy) == 0:
        return np.zeros(0, dtype=bool)
    low, high = np.percentile(energy, [5, 95])
    threshold = high * 10 ** (-below_db / 10)
    if above_floor_db is not None:
        threshold = max(threshold, min(low * 10 ** (above_floor_db / 10), high * 10 ** (-above_floor_db / 10)))
    loud = energy >= threshold
    reach = int(margin_seconds * 50)
    return np.convolve(loud, np.ones(2 * reach + 1))[reach : reach + len(loud)] > 0  # centred, any length


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV."""
    soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
