"""Tune AudioKV's knobs for Whisper on the *calibration* clips, never on the evaluation clips.

The calibration clips are short (4-5 s); Whisper pads every input to 30 s, so
on them compression would mostly drop padding. This script joins them four at
a time (with short pauses) into ~19 s clips, the length of the evaluation
clips, and measures WER for each (policy, knob setting, ratio).

`python -m benchmarks.tune_whisper` writes `benchmarks/results/tune-<model>.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from audiokv import AudioKVConfig
from audiokv.audio import SAMPLE_RATE, write_wav
from audiokv.data import CALIB_DIR
from audiokv.dataset import Utterance, load_speech_set
from audiokv.eval import environment, evaluate_speech
from audiokv.heads import HeadScores
from audiokv.models import load_speech_model

CALIB = Path(__file__).resolve().parents[1] / "calib"

# (policy, knob overrides): the baselines once, AudioKV across its knobs
GRID: list[tuple[str, dict]] = [
    ("snapkv", {}),
    ("adakv", {}),
    ("audiokv", {}),
    ("audiokv-no-sss", {}),
    ("audiokv-no-heads", {}),
    ("audiokv", {"sss_cutoff": 0.03}),
    ("audiokv", {"sss_cutoff": 0.3}),
    ("audiokv", {"head_prior_strength": 0.3}),
    ("audiokv", {"head_prior_strength": 3.0}),
    ("audiokv", {"safeguard": 0.5}),
    ("audiokv", {"pooling_kernel": 1}),
    ("audiokv", {"page_size": 16}),
]


def joined_clips(source: Path, group: int, folder: Path, pause: float = 0.3) -> list[Utterance]:
    """Join every ``group`` consecutive clips of ``source`` into one WAV in ``folder``."""
    clips = load_speech_set(source)
    silence = np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)
    joined = []
    for n in range(0, len(clips) - group + 1, group):
        part = clips[n : n + group]
        audio = np.concatenate([x for u in part for x in (u.audio(), silence)])
        path = folder / f"joined_{n // group:02d}.wav"
        write_wav(path, audio)
        joined.append(Utterance(path, " ".join(u.text for u in part)))
    return joined


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.7])
    parser.add_argument("--group", type=int, default=4, help="calibration clips per joined clip")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    speech = load_speech_model(args.model)
    calibration = HeadScores.load(CALIB / f"{args.model}.safetensors", model=speech.name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = joined_clips(CALIB_DIR, args.group, Path(tmp))
        for policy, knobs in GRID:
            config = AudioKVConfig(**knobs)
            for row in evaluate_speech(speech, data, [policy], args.ratios, calibration=calibration, config=config):
                row.update(knobs=knobs, config=asdict(config))
                rows.append(row)
                print(f"{policy:>17} {json.dumps(knobs):>28} r={row['compression_ratio']:.1f} "
                      f"WER {100 * row['wer']:5.1f}%  loops {row['repetition_rate']:.0%}", flush=True)  # fmt: skip
        seconds = sum(u.audio().size for u in data) / SAMPLE_RATE / len(data)
    out = Path(args.out or f"benchmarks/results/tune-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"data": f"{len(data)} clips joined from {args.group} calibration clips each, {seconds:.1f} s mean"}
    out.write_text(json.dumps({"model": speech.name, **summary, **environment(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
