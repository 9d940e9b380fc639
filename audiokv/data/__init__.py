"""Bundled speech: espeak-ng clips with transcripts, split into calibration and evaluation sets."""

from pathlib import Path

SPEECH_DIR = Path(__file__).parent / "speech"
CALIB_DIR = SPEECH_DIR / "calib"
EVAL_DIR = SPEECH_DIR / "eval"
