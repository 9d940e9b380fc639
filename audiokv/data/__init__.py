"""Bundled speech: espeak-ng clips with transcripts, split into calibration and evaluation sets."""

from pathlib import Path

SPEECH_DIR = Path(__file__).parent / "speech"
CALIB_DIR = SPEECH_DIR / "calib"
EVAL_DIR = SPEECH_DIR / "eval"
CALIB_TIMED_DIR = SPEECH_DIR / "calib_timed"  # what the shipped head scores were calibrated on
CALIBRATION_DIR = Path(__file__).parent / "calib"  # shipped head scores, one file per bundled model


def checkout_relative(path: str | None) -> str | None:
    """A path inside a checkout from its last ``benchmarks`` or ``audiokv`` folder on, wherever the checkout was.

    Results files record where their data and calibration were; this makes two
    checkouts (or a checkout under a folder named ``audiokv``) compare equal.
    Relative paths and None are returned as they are.
    """
    if path is None or not Path(path).is_absolute():
        return path
    parts = Path(path).parts
    roots = [i for i, part in enumerate(parts) if part in ("benchmarks", "audiokv")]
    return str(Path(*parts[roots[-1] :])) if roots else path


def shipped_calibration(model: str) -> Path | None:
    """The calibration file shipped for a bundled model name (e.g. ``whisper-tiny.en``), or None."""
    path = CALIBRATION_DIR / f"{model}.safetensors"
    return path if path.is_file() else None
