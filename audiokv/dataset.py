"""Speech sets: a folder of ``*.wav`` + same-stem ``*.txt``, or a NeMo-style JSONL manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiokv.audio import load_audio


@dataclass(frozen=True)
class Utterance:
    """One clip and its transcript.

    Attributes:
        audio_path: the audio file.
        text: the transcript.
        words: optional ``(start, end)`` seconds of each whitespace-separated
            word of ``text`` (a manifest's ``words`` field), for calibration
            against known timings.
    """

    audio_path: Path
    text: str
    words: tuple[tuple[float, float], ...] | None = None

    def audio(self) -> np.ndarray:
        """The clip as 16 kHz mono float32."""
        return load_audio(self.audio_path)


def load_speech_set(source: str | Path, limit: int | None = None) -> list[Utterance]:
    """Read a speech set.

    Args:
        source: a directory of ``*.wav`` files each with a same-stem ``.txt``
            transcript, or a JSONL manifest whose lines hold ``audio_filepath``
            (relative to the manifest's folder unless absolute) and ``text``.
        limit: keep only the first ``limit`` utterances (in name / file order).

    Returns:
        The utterances; raises ``ValueError`` naming the file for a missing
        transcript, a missing audio file or a malformed manifest line.
    """
    source = Path(source)
    if source.is_dir():
        items = []
        wavs = sorted(source.glob("*.wav"))
        if not wavs:
            raise ValueError(f"no .wav files in {source}")
        for wav in wavs:
            txt = wav.with_suffix(".txt")
            if not txt.exists():
                raise ValueError(f"missing transcript {txt} for {wav}")
            items.append(Utterance(wav, txt.read_text().strip()))
    elif source.is_file():
        items = []
        for n, line in enumerate(source.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path, text = Path(row["audio_filepath"]), str(row["text"])
                words = None if row.get("words") is None else tuple((float(a), float(b)) for a, b in row["words"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{source}:{n}: expected a JSON object with 'audio_filepath', 'text' and optionally "
                    f"'words' as [start, end] pairs ({err})"
                ) from None
            if words is not None and len(words) != len(text.split()):
                raise ValueError(f"{source}:{n}: 'words' has {len(words)} spans for {len(text.split())} words")
            if words is not None and not all(0 <= a <= b for a, b in words):  # also refuses NaN
                raise ValueError(f"{source}:{n}: each of 'words' must be [start, end] with 0 <= start <= end")
            path = path if path.is_absolute() else source.parent / path
            if not path.exists():
                raise ValueError(f"{source}:{n}: audio file {path} does not exist")
            items.append(Utterance(path, text.strip(), words))
        if not items:
            raise ValueError(f"manifest {source} lists no utterances")
    else:
        raise ValueError(f"speech data {source} is neither a directory nor a manifest file")
    return items[:limit] if limit is not None else items
