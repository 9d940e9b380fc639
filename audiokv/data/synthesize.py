"""Regenerate the bundled speech set with espeak-ng: ``python -m audiokv.data.synthesize``.

Needs Debian's ``espeak-ng`` (``apt-get install espeak-ng``). Each clip is a
16 kHz mono 16-bit WAV with a same-stem ``.txt`` transcript. Calibration and
evaluation clips use different texts; evaluation clips are 18-28 s long
because Whisper pads every input to 30 s and compression on short clips only
drops padding.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from audiokv.audio import load_audio, write_wav
from audiokv.data import CALIB_DIR, EVAL_DIR

VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp+m3"]
CALIB_SPEEDS = [160, 150, 170, 145]  # words per minute
EVAL_SPEEDS = [140, 135, 130, 145]  # slower: long clips

CALIB_TEXTS = [
    "The river was low that summer, and the boats stayed tied to the old wooden pier.",
    "Please send the invoice to the accounting office before the end of the week.",
    "A small bakery on the corner sells fresh bread every morning at seven.",
    "The committee agreed to postpone the vote until more information was available.",
    "Bright stars filled the sky as the travelers set up their tents near the lake.",
    "The new library has a quiet reading room and a large collection of maps.",
    "He repaired the bicycle chain with a simple tool and a little patience.",
    "Our flight was delayed because of heavy fog over the northern coast.",
    "The garden needs water, sunlight, and a careful hand to keep the weeds away.",
    "Students gathered in the hall to hear the results of the science competition.",
    "The museum opens a new exhibition about ancient ships next month.",
    "She wrote a long letter to her grandmother describing the journey across the hills.",
]

EVAL_TEXTS = [
    "Every spring the town holds a market in the main square. Farmers bring vegetables, cheese and honey, "
    "and musicians play near the fountain. Children run between the stalls while their parents compare prices. "
    "By late afternoon most of the goods are sold, and the square slowly becomes quiet again.",
    "The engineer explained that the bridge was designed to move slightly in strong winds. "
    "Steel cables carry the weight of the road to two tall towers, and the towers rest on deep foundations. "
    "Sensors measure the movement every second, so the team can see problems long before they become dangerous.",
    "When the storm reached the island, the fishermen pulled their boats onto the beach and waited. "
    "Rain fell for two days without stopping. On the third morning the clouds opened, the sea was calm, "
    "and the whole village came down to the harbor to repair the nets together.",
    "Learning a new language takes time and steady practice. Reading simple stories, listening to the radio "
    "and speaking with patient friends all help. Mistakes are normal, and each one shows what to study next. "
    "After a few months, many learners notice that they understand far more than they expected.",
    "The old train station was turned into a community center last year. The waiting room is now a cafe, "
    "the ticket office holds a small library, and the platforms are used for concerts in the summer. "
    "Many residents say the building feels more alive today than it did when trains still stopped there.",
    "Doctors recommend a short walk after dinner. Gentle movement helps digestion, improves sleep and lifts the "
    "mood. It does not need to be fast or long. Ten or fifteen minutes around the block, ideally with a friend, "
    "is enough to make a noticeable difference over a few weeks.",
]


def speak(text: str, voice: str, speed: int, path: Path) -> float:
    """Synthesize ``text`` to a 16 kHz WAV at ``path``; returns its duration in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
        audio = load_audio(raw)  # 22,050 Hz -> 16 kHz
    peak = float(np.abs(audio).max()) or 1.0
    audio = audio / peak * 10 ** (-1 / 20)  # 1 dB headroom: resampling overshoot must not clip
    write_wav(path, audio)
    path.with_suffix(".txt").write_text(text + "\n")
    return len(audio) / 16_000


def main() -> None:
    """Write calibration and evaluation clips into the package's data folder."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    for folder, texts, speeds in (
        (CALIB_DIR, CALIB_TEXTS, CALIB_SPEEDS),
        (EVAL_DIR, EVAL_TEXTS, EVAL_SPEEDS),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.wav"):
            old.unlink()
        for i, text in enumerate(texts):
            voice, speed = VOICES[i % len(VOICES)], speeds[i % len(speeds)]
            seconds = speak(text, voice, speed, folder / f"{folder.name}_{i:02d}.wav")
            print(f"{folder.name}_{i:02d}.wav {voice:>14} {speed} wpm {seconds:5.1f} s")


if __name__ == "__main__":
    main()
