"""Issue 11's accuracy targets on a Whisper results file, with paired bootstrap intervals.

``python -m benchmarks.targets benchmarks/results/test-whisper-tiny.en.json [--policy audiokv]``
writes ``benchmarks/results/targets-<model>.json`` (``targets-`` and the file's
name after ``test-``; rendered by
:mod:`benchmarks.report`). For every ratio it compares the policy with the
full cache (the target: at most +1 WER point at 0.4 and 0.6, +3 at 0.7, +5
at 0.8) and with the best baseline of that ratio (the target: no worse).
Each difference comes with a 95% interval from resampling the clips with
replacement (the same clips for both sides: a paired bootstrap of corpus
WER), so a target missed by less than the noise of the clip sample reads as
such. Nothing is decoded again: the hypotheses stored in the file are rescored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from audiokv.data import checkout_relative
from audiokv.dataset import load_speech_set
from audiokv.eval import environment
from audiokv.metrics import word_errors

# the most WER points above the full cache the issue allows, by ratio
ABOVE_FULL = {0.4: 1.0, 0.6: 1.0, 0.7: 3.0, 0.8: 5.0}
ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("random", "stride", "snapkv", "adakv", "tova", "expected-attention")


def paired_bootstrap(
    edits_a: list[int], edits_b: list[int], words: list[int], draws: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(difference, low, high)``: corpus WER points ``a - b`` over the same clips and its 95% percentile interval."""
    a, b, w = (torch.tensor(x, dtype=torch.float64) for x in (edits_a, edits_b, words))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(w), (draws, len(w)), generator=gen)
    diff = 100 * (a[idx].sum(1) - b[idx].sum(1)) / w[idx].sum(1)
    low, high = torch.quantile(diff, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return 100 * float((a.sum() - b.sum()) / w.sum()), low, high


def check(result: dict, refs: list[str], policy: str = "audiokv") -> list[dict]:
    """One row per ratio of ``policy`` in ``result``: its differences to the full cache and the best baseline."""
    rows = result["rows"]
    cells = [(r["policy"], r["compression_ratio"]) for r in rows]
    if len(set(cells)) < len(cells) or ("full", 0.0) not in cells:
        raise SystemExit("a targets file needs one full-cache row and one row per policy and ratio (no tuning knobs)")
    errors = {cell: word_errors(refs, r["hypotheses"]) for cell, r in zip(cells, rows, strict=True)}
    full, words = errors["full", 0.0]
    out = []
    for ratio in sorted(x for p, x in errors if p == policy):
        mine = errors[policy, ratio][0]
        made = next(r for r in rows if r["policy"] == policy and r["compression_ratio"] == ratio)
        row = {"ratio": ratio, "commit": made.get("commit", result["commit"]), "loops": made["repetition_rate"]}
        diff, low, high = paired_bootstrap(mine, full, words)
        row["vs_full"] = {"diff": diff, "low": low, "high": high, "allowed": ABOVE_FULL.get(ratio)}
        baselines = {p: e for (p, x), (e, _) in errors.items() if x == ratio and p in BASELINES}
        if baselines:
            best = min(baselines, key=lambda p: sum(baselines[p]))
            diff, low, high = paired_bootstrap(mine, baselines[best], words)
            row["vs_best_baseline"] = {"baseline": best, "diff": diff, "low": low, "high": high, "allowed": 0.0}
        out.append(row)
    return out


def verdict(cell: dict) -> str:
    """``met`` or ``missed`` by the difference, ``(within noise)`` when the 95% interval straddles the allowance."""
    if cell["allowed"] is None:
        return ""
    met = "met" if cell["diff"] <= cell["allowed"] else "missed"
    return f"{met} (within noise)" if cell["low"] <= cell["allowed"] < cell["high"] else met


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--policy", default="audiokv")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = json.loads(args.file.read_text())
    refs = [u.text for u in load_speech_set(ROOT / checkout_relative(result["data"]))]
    checked = {
        "model": result["model"],
        "source": args.file.name,
        "policy": args.policy,
        "clips": len(refs),
        **environment(),
        "rows": check(result, refs, args.policy),
    }
    out = args.out or args.file.with_name(f"targets-{args.file.stem.removeprefix('test-')}.json")
    out.write_text(json.dumps(checked, indent=1))
    print(f"wrote {out}")
    return checked


if __name__ == "__main__":
    main()
