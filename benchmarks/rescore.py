"""Recount the repetition loops of results files from their stored outputs: ``python -m benchmarks.rescore FILE...``.

A results row keeps every hypothesis it was scored from, so a better loop
detector (:func:`audiokv.eval.has_repetition`) can be applied to committed
results without decoding again. Rewrites each row's ``repetition_rate`` and
records the commit that recounted them under ``loops_counted_at``; WER and
everything else stay as they were made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiokv.eval import has_repetition
from audiokv.provenance import environment


def rescore(result: dict, commit: str) -> int:
    """Recount ``result``'s loops in place; returns how many rows changed."""
    changed = 0
    for row in result["rows"]:
        if "hypotheses" not in row:
            continue
        rate = sum(map(has_repetition, row["hypotheses"])) / len(row["hypotheses"])
        changed += rate != row["repetition_rate"]
        row["repetition_rate"] = rate
    result["loops_counted_at"] = commit
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    commit = environment()["commit"]
    for path in args.files:
        result = json.loads(path.read_text())
        changed = rescore(result, commit)
        path.write_text(json.dumps(result, indent=1))
        print(f"{path}: {changed} of {len(result['rows'])} rows changed")


if __name__ == "__main__":
    main()
