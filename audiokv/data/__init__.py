"""Bundled speech: espeak-ng clips with transcripts, split into calibration and evaluation sets."""

from pathlib import Path

SPEECH_DIR = Path(__file__).parent / "speech"
CALIB_DIR = SPEECH_DIR / "calib"
EVAL_DIR = SPEECH_DIR / "eval"
CALIB_TIMED_DIR = SPEECH_DIR / "calib_timed"  # what the shipped head scores were calibrated on
CALIBRATION_DIR = Path(__file__).parent / "calib"  # shipped head scores, one file per bundled model


def shipped_calibration(model: str) -> Path | None:
    """The calibration file shipped for a bundled model name (e.g. ``whisper-tiny.en``), or None."""
    path = CALIBRATION_DIR / f"{model}.safetensors"
    return path if path.is_file() else None
