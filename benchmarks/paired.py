"""Paired comparison of policies over the same clips: ``python -m benchmarks.paired FILE [--against [FILE:]SPEC]``.

Every row of a Whisper results file but the full cache and the ``--against``
row (``audiokv`` by default; ``POLICY[:KNOB=VALUE]`` as ``tune_whisper
--only`` takes it, optionally from another file made on the same clips) is
compared with that row at each ratio both have. Nothing is decoded again:
the stored hypotheses are rescored. Writes ``paired-<stem>.json`` beside FILE
(rendered by :mod:`benchmarks.report`). Rows of two files are paired clip by
clip, so both must be made on the same manifest and, where both hold one,
agree on the full cache's transcripts.

At 0.9 a few looping clips decide a mean: one loop adds hundreds of
insertions to a 40-word clip. So beside the corpus WER difference and its
95% paired bootstrap interval over clips, each row gives the same with every
clip's errors capped at its words (a loop counts as that clip lost, no
more), the clips that got better and worse, and which clips loop or stop
early (:func:`audiokv.eval.stops_early`), which WER alone understates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiokv.data import checkout_relative
from audiokv.eval import has_repetition, stops_early
from audiokv.metrics import word_errors
from audiokv.provenance import environment
from benchmarks.report import _label
from benchmarks.rescore import clips_of, made_at
from benchmarks.targets import paired_bootstrap
from benchmarks.tune_whisper import _row


def rows_of(result: dict, policy: str, knobs: dict) -> dict[float, dict]:
    """The rows of ``result`` made with ``policy`` and exactly ``knobs``, by ratio; a clear error if none."""
    found = {
        r["compression_ratio"]: made_at(r, result)
        for r in result["rows"]
        if r["policy"] == policy and (r.get("knobs") or {}) == knobs
    }
    if not found:
        names = ", ".join(sorted({_label(r) for r in result["rows"]}))
        raise SystemExit(f"no rows {_label({'policy': policy, 'knobs': knobs})!r} in the file; it has: {names}")
    return found


def compare(refs: list[str], against: dict[float, dict], candidate: dict[float, dict]) -> list[dict]:
    """Per ratio both ``{ratio: row}`` maps hold: ``candidate`` minus ``against`` over the clips of ``refs``."""
    out = []
    for ratio in sorted(set(against) & set(candidate)):
        base, words = word_errors(refs, against[ratio]["hypotheses"])
        mine, _ = word_errors(refs, candidate[ratio]["hypotheses"])
        diff, low, high = paired_bootstrap(mine, base, words)
        capped = paired_bootstrap(*([min(e, w) for e, w in zip(x, words, strict=True)] for x in (mine, base)), words)
        failed = {}  # which clips loop, which stop early, of each side
        for side, rows in (("", candidate), ("_against", against)):
            hyps = rows[ratio]["hypotheses"]
            failed["loops" + side] = [i for i, text in enumerate(hyps) if has_repetition(text)]
            failed["short" + side] = [
                i for i, (text, ref) in enumerate(zip(hyps, refs, strict=True)) if stops_early(text, ref)
            ]
        out.append(
            {
                "ratio": ratio,
                "commit": candidate[ratio].get("commit"),
                "against_commit": against[ratio].get("commit"),
                **{"diff": diff, "low": low, "high": high},
                **{"capped_diff": capped[0], "capped_low": capped[1], "capped_high": capped[2]},
                "better": sum(m < b for m, b in zip(mine, base, strict=True)),
                "worse": sum(m > b for m, b in zip(mine, base, strict=True)),
                **failed,
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--against", default="audiokv", help="[FILE:]POLICY[:KNOB=VALUE] (default: audiokv)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = json.loads(args.file.read_text())
    source, spec = args.file, args.against
    if ".json:" in spec:
        path, spec = spec.split(".json:", 1)
        source = Path(path + ".json")
    other = json.loads(source.read_text())
    same_file = source.resolve() == args.file.resolve()
    refs = clips_of(result, args.file.name)[0]
    if not same_file:  # another file's rows pair with these clips only if it was made on them
        if checkout_relative(other["data"]) != checkout_relative(result["data"]):
            raise SystemExit(
                f"{source} was made on {other['data']}, {args.file} on {result['data']}: not the same clips"
            )
        full = [{r["policy"]: r["hypotheses"] for r in f["rows"]}.get("full") for f in (result, other)]
        if None not in full and full[0] != full[1]:
            raise SystemExit(f"{source} and {args.file} disagree on the full cache's transcripts: not the same clips")
        clips_of(other, source.name)
    policy, knobs = _row(spec)
    against = rows_of(other, policy, knobs)
    runs = {_label(r): (r["policy"], r.get("knobs") or {}) for r in result["rows"] if r["policy"] != "full"}
    if same_file:
        runs.pop(_label({"policy": policy, "knobs": knobs}), None)
    rows = [
        {"candidate": label, **row}
        for label, run in runs.items()
        for row in compare(refs, against, rows_of(result, *run))
    ]
    if not rows:
        raise SystemExit(f"no row of {args.file} shares a compression ratio with {spec!r}")
    made = {"model": result["model"], "data": result["data"], "source": args.file.name, "clips": len(refs)}
    against_name = spec if same_file else f"{source.name}: {spec}"
    checked = {**made, "against": against_name, **environment(), "rows": rows}
    out = args.out or args.file.with_name(f"paired-{args.file.stem}.json")
    out.write_text(json.dumps(checked, indent=1))
    print(f"wrote {out}")
    return checked


if __name__ == "__main__":
    main()
