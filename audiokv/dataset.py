"""Speech sets as users have them: audio files + same-stem ``*.txt``, the LibriSpeech layout, or a NeMo manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiokv.audio import load_audio

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


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
        source: one of
            - a LibriSpeech-style tree: ``*.trans.txt`` files anywhere below
              ``source``, each line ``<id> <transcript>`` for ``<id>.flac``
              (or another audio suffix) beside it;
            - a directory of audio files (``.wav``, ``.flac``, ``.mp3``, ``.ogg``,
              ``.opus``), each with a same-stem ``.txt`` transcript;
            - a JSONL manifest (NeMo style) whose lines hold ``audio_filepath``
              (relative to the manifest's folder unless absolute), ``text`` and
              optionally ``words``.
        limit: keep only the first ``limit`` utterances (in name / file order).

    Returns:
        The utterances; raises ``ValueError`` naming the file for a missing
        transcript, a missing audio file or a malformed line.
    """
    source = Path(source)
    if source.is_dir():
        chapters = sorted(source.rglob("*.trans.txt"))
        items = _librispeech(chapters) if chapters else _audio_folder(source)
    elif source.is_file():
        if source.suffix.lower() in AUDIO_SUFFIXES:
            raise ValueError(f"{source} is an audio file; a speech set is a folder of audio + .txt or a JSONL manifest")
        items = _manifest(source)
    elif not source.exists():
        raise ValueError(f"speech data {source} does not exist")
    else:
        raise ValueError(f"speech data {source} is neither a directory nor a manifest file")
    return items[:limit] if limit is not None else items


def _text(path: Path) -> str:
    """A transcript or manifest file as text: UTF-8, with or without a byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _audio_beside(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / (stem + s) for s in AUDIO_SUFFIXES) if p.exists()), None)


def _librispeech(chapters: list[Path]) -> list[Utterance]:
    items = []
    for trans in chapters:
        for n, line in enumerate(_text(trans).splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = _audio_beside(trans.parent, utt)
            if not text or audio is None:
                raise ValueError(f"{trans}:{n}: expected '<id> <transcript>' with audio <id>.flac beside it")
            items.append(Utterance(audio, text.strip()))
    return items


def _audio_folder(folder: Path) -> list[Utterance]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) or LibriSpeech *.trans.txt in {folder}")
    items = []
    for audio in files:
        txt = audio.with_suffix(".txt")
        if not txt.exists():
            raise ValueError(f"missing transcript {txt} for {audio}")
        items.append(Utterance(audio, _text(txt).strip()))
    return items


def _manifest(source: Path) -> list[Utterance]:
    items = []
    for n, line in enumerate(_text(source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path, text = Path(row["audio_filepath"]), row["text"]
            if not isinstance(text, str):
                raise TypeError(f"'text' is {text!r}, not a string")
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
    return items
