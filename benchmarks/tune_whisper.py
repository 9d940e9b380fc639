"""Tune AudioKV's knobs for Whisper on the ``tune`` split only: ``python -m benchmarks.tune_whisper``.

The ``tune`` split (:mod:`benchmarks.speech_set`) shares no voice and no
degradation with ``test``, on which results are reported. Each knob setting
of the grid runs at the given ratios; the baselines run once for reference.
Writes ``benchmarks/results/tune-<model>.json`` (one row per run, with the
knobs that differ from the defaults and the full config it ran with).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from audiokv import AudioKVConfig
from audiokv.data import shipped_calibration
from audiokv.dataset import load_speech_set
from audiokv.eval import evaluate_speech
from audiokv.heads import HeadScores
from audiokv.models import load_speech_model
from audiokv.provenance import environment
from benchmarks.speech_set import DEFAULT_OUT

# (policy, knob overrides): the baselines once, AudioKV across its knobs
GRID: list[tuple[str, dict]] = [
    ("stride", {}),
    ("random", {}),
    ("audiokv", {}),
    ("audiokv-sss", {}),
    ("audiokv-no-heads", {}),
    ("audiokv-no-merge", {}),
    ("audiokv-score-split", {}),
    ("audiokv", {"coverage_floor": 0.25}),
    ("audiokv", {"coverage_floor": 0.5}),
    ("audiokv-sss", {"sss_cutoff": 0.3}),
    ("audiokv", {"safeguard": 0.2}),
    ("audiokv", {"safeguard": 0.35}),
    ("audiokv", {"safeguard": 1.0}),
    ("audiokv", {"head_prior_strength": 0.5}),
    ("audiokv", {"layer_prior": 0.0}),
    ("audiokv", {"layer_prior": 0.5}),
]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--data", type=Path, default=DEFAULT_OUT / "tune" / "manifest.jsonl")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", default=None, help="comma-separated rows instead of the grid: POLICY[:KNOB=VALUE]")
    parser.add_argument("--calibration", type=Path, default=None, help="a head-score file (default: the shipped one)")
    args = parser.parse_args(argv)
    speech = load_speech_model(args.model)
    path = args.calibration or shipped_calibration(speech.name)
    if path is None:
        raise SystemExit(f"no calibration ships for {speech.name}: run `audiokv calibrate` first")
    calibration = HeadScores.load(path, model=speech.name)
    data = load_speech_set(args.data)
    rows = evaluate_speech(speech, data, ["full"], [0.0], calibration=calibration, progress=False)
    grid = GRID if args.only is None else [_row(spec) for spec in args.only.split(",")]
    for policy, knobs in grid:
        config = AudioKVConfig(**knobs)
        for row in evaluate_speech(speech, data, [policy], args.ratios, calibration=calibration, config=config,
                                   progress=False):  # fmt: skip
            row.update(
                knobs=knobs, config={k: v for k, v in asdict(replace(config)).items() if k != "compression_ratio"}
            )
            rows.append(row)
            print(f"{policy:>10} {json.dumps(knobs):>28} r={row['compression_ratio']:.1f} "
                  f"WER {100 * row['wer']:5.1f}%  loops {row['repetition_rate']:.0%}  short {row['short_rate']:.0%}",
                  flush=True)  # fmt: skip
    out = Path(args.out or f"benchmarks/results/tune-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"model": speech.name, "data": str(args.data), "clips": len(data), "calibration": str(path)}
    out.write_text(json.dumps({**summary, **environment(), "rows": rows}, indent=1))
    return rows


def _row(spec: str) -> tuple[str, dict]:
    """``"audiokv:safeguard=0.2"`` -> ``("audiokv", {"safeguard": 0.2})`` (the value read as JSON)."""
    policy, _, knob = spec.partition(":")
    if not knob:
        return policy, {}
    name, _, value = knob.partition("=")
    return policy, {name: json.loads(value)}


if __name__ == "__main__":
    main()
