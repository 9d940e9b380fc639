"""Recount loops and early stops of results files from their stored outputs: ``python -m benchmarks.rescore FILE...``.

A results row keeps every hypothesis it was scored from, so a better loop
detector (:func:`audiokv.eval.has_repetition`) or a new count of
transcripts that stop early (:func:`audiokv.eval.stops_early`, which needs
the references: the file's manifest, when it is there) can be applied to
committed results without decoding again. Rewrites each row's
``repetition_rate`` and ``short_rate`` and records the commit that recounted
them under ``loops_counted_at``; WER and everything else stay as they were made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiokv.data import checkout_relative
from audiokv.dataset import load_speech_set
from audiokv.eval import has_repetition, stops_early
from audiokv.provenance import environment

ROOT = Path(__file__).resolve().parents[1]


def rescore(result: dict, commit: str, refs: list[str] | None = None) -> int:
    """Recount ``result``'s loops (and, given the clips' ``refs``, early stops) in place; returns rows changed."""
    changed = 0
    for row in result["rows"]:
        if "hypotheses" not in row:
            continue
        hyps = row["hypotheses"]
        counts = {"repetition_rate": sum(map(has_repetition, hyps)) / len(hyps)}
        if refs is not None:
            counts["short_rate"] = sum(map(stops_early, hyps, refs)) / len(hyps)
        changed += any(row.get(k) != v for k, v in counts.items())
        row.update(counts)
    result["loops_counted_at"] = commit
    return changed


def clips_of(result: dict, name: str = "the results file") -> tuple[list[str], list[str | None]]:
    """The transcripts and voices (None where the manifest names none) of the clips ``result`` was made on.

    Read from its manifest, which must be here and hold as many clips as every
    row has outputs (a clear error naming ``name`` otherwise): rows are paired
    with clips by position.
    """
    data = checkout_relative(result.get("data"))
    if not data or not (ROOT / data).is_file():
        raise SystemExit(f"{name}: its clips ({result.get('data')}) are not here")
    lines = [json.loads(line) for line in (ROOT / data).read_text().splitlines() if line.strip()]
    for row in result["rows"]:
        if "hypotheses" in row and len(row["hypotheses"]) != len(lines):
            raise SystemExit(f"{name}: {row['policy']} has {len(row['hypotheses'])} outputs, {data} {len(lines)} clips")
    return [u.text for u in load_speech_set(ROOT / data)], [line.get("voice") for line in lines]


def made_at(row: dict, result: dict) -> dict:
    """``row`` with the commit it was made at: its own (``audiokv eval --update`` stamps each row), else its file's."""
    return {**row, "commit": row.get("commit", result["commit"])}


def references(result: dict) -> list[str] | None:
    """The transcripts of the clips ``result`` was made on, or None where its manifest is not here or holds
    another number of clips (a manifest rebuilt with as many clips is not noticed)."""
    try:
        return clips_of(result)[0]
    except SystemExit:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    commit = environment()["commit"]
    for path in args.files:
        result = json.loads(path.read_text())
        refs = references(result)
        changed = rescore(result, commit, refs)
        path.write_text(json.dumps(result, indent=1))
        stops = "" if refs is not None else " (loops only: its clips are not here)"
        print(f"{path}: {changed} of {len(result['rows'])} rows changed{stops}")


if __name__ == "__main__":
    main()
