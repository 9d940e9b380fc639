"""Markdown tables from results files: ``python -m benchmarks.report FILE.json [FILE.json ...] [--readme]``.

One table per file: a row per policy, a column per compression ratio, WER
(%) or passkey accuracy (%) with the share of looping outputs and of
transcripts that stop early (:func:`audiokv.eval.stops_early`) in brackets
when there are any. The
README's result tables are this script's output, never typed by hand:
``--readme`` rewrites the block between ``<!-- results:NAME -->`` and
``<!-- /results -->`` (NAME the file's stem) in README.md or the page of
``docs/`` that holds it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from audiokv.data import checkout_relative

README = Path(__file__).resolve().parents[1] / "README.md"
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]  # where result blocks may live


def _label(row: dict) -> str:
    """The policy name, with the knobs a tuning row changed (``audiokv sss_cutoff=0.3``)."""
    knobs = row.get("knobs") or {}
    return " ".join([row["policy"], *(f"{k}={v}" for k, v in knobs.items())])


def render(name: str, result: dict) -> str:
    """The table of the results file named ``name`` (its stem): a benchmark's columns, or policies by ratio."""
    if name.startswith("decode-profile"):
        return profile_table(result)
    kind = name.split("-")[0]
    if kind in BENCHMARKS:
        return benchmark_table(kind, result)
    if kind == "targets":
        return targets_table(result)
    if kind == "paired":
        return paired_table(result)
    if kind == "calib":
        return calib_table(result)
    if kind == "time":  # every row made in one run: their times compare
        full = next(r for r in result["rows"] if r["policy"] == "full")
        seconds = _grid(result["rows"], lambda r: f"{r['seconds'] / full['seconds']:.2f}")
        return table(result) + "\n\nTime of the whole run (all clips), relative to the full cache:\n\n" + seconds
    return table(result)


def table(result: dict) -> str:
    """A markdown table of one ``audiokv eval`` results file (ASR or passkey).

    Passkey files that record the peak K/V held get a second table of it, in %
    of the dense cache of the same sequence.
    """
    rows = result["rows"]
    metric, unit = ("wer", "WER %") if "wer" in rows[0] else ("accuracy", "passkey accuracy %")

    def score(row: dict) -> str:
        notes = [
            f"{row[k]:.0%} {name}" for k, name in (("repetition_rate", "loops"), ("short_rate", "short")) if row.get(k)
        ]
        return f"{100 * row[metric]:.1f}" + (f" ({', '.join(notes)})" if notes else "")

    data = checkout_relative(result["data"])
    decoding = f", beam search ({result['beams']} beams)" if result.get("beams", 1) > 1 else ""
    caption = f"{result['model']}, `{data}`, {unit}{decoding} ({_commits(result)}, {result['device']})"
    text = caption + "\n\n" + _grid(rows, score)
    if "peak_kv_bytes" in rows[0]:
        peak = _grid(rows, lambda r: f"{100 * r['peak_kv_bytes'] / r['kv_bytes_full']:.0f}")
        text += "\n\nPeak K/V held during the run, % of the dense cache:\n\n" + peak
    return text


def targets_table(result: dict) -> str:
    """A markdown table of a :mod:`benchmarks.targets` file: differences in WER points, 95% intervals, verdicts."""
    from benchmarks.targets import verdict

    def cell(c: dict | None) -> list[str]:
        if c is None:
            return ["", ""]
        allowed = "" if c["allowed"] is None else f"≤ {c['allowed']:+.0f}: "
        spread = f"[{c['low']:+.1f}, {c['high']:+.1f}] [{c['voice_low']:+.1f}, {c['voice_high']:+.1f}]"
        return [f"{c['diff']:+.1f} {spread}", allowed + verdict(c)]

    policy = result["policy"]
    lines = [
        f"| ratio | {policy} − full | target | {policy} − best baseline | baseline | target "
        "| − full, looping clips left out |",
        "|---" * 7 + "|",
    ]
    for row in result["rows"]:
        best = row.get("vs_best_baseline")
        diff, target = cell(best)
        cells = [f"{row['ratio']:g}", *cell(row["vs_full"]), diff, best["baseline"] if best else "", target]
        loops = len(row["looping_clips"])
        cells.append(f"{row['vs_full_without_loops']:+.1f} ({loops} left out)" if loops else "no loop")
        lines.append("| " + " | ".join(cells) + " |")
    made = ", ".join(dict.fromkeys(r["commit"] for r in result["rows"]))
    caption = (
        f"{result['model']}, WER points on the {result['clips']} clips of "
        + ", ".join(f"`{name}`" for name in result["source"].split(", "))
        + " "
        f"({policy} rows made at {made}), each with 95% paired bootstrap intervals resampling clips, "
        f"then the {result['voices']} voices; commit {result['commit']}"
    )
    return caption + "\n\n" + "\n".join(lines)


def paired_table(result: dict) -> str:
    """A markdown table of a :mod:`benchmarks.paired` file: WER point differences with 95% intervals, loops."""

    def interval(row: dict, key: str = "") -> str:
        return f"{row[key + 'diff']:+.1f} [{row[key + 'low']:+.1f}, {row[key + 'high']:+.1f}]"

    lines = [
        "| candidate | ratio | − against | − against, each clip capped at its words | clips better / worse "
        "| clips looping (against's) | clips stopping early (against's) |",
        "|---" * 7 + "|",
    ]

    def clips(r: dict, key: str) -> str:
        return f"{', '.join(map(str, r[key])) or '-'} ({', '.join(map(str, r[key + '_against'])) or '-'})"

    for r in result["rows"]:
        cells = [
            r["candidate"],
            f"{r['ratio']:g}",
            interval(r),
            interval(r, "capped_"),
            f"{r['better']} / {r['worse']}",
        ]
        lines.append("| " + " | ".join([*cells, clips(r, "loops"), clips(r, "short")]) + " |")
    caption = (
        f"{result['model']}, the {result['clips']} clips of `{result['source']}` against "
        f"`{result['against']}`: WER points, 95% paired bootstrap intervals over clips; commit {result['commit']}"
    )
    made = {(r["commit"], r["against_commit"]) for r in result["rows"] if "commit" in r}
    if made:  # the rows compared, by the commits they were made at
        caption += "; rows made at " + ", ".join(f"{c} against {a}" for c, a in sorted(made))
    return caption + "\n\n" + "\n".join(lines)


def calib_table(result: dict) -> str:
    """Two calibrations of one model (:mod:`benchmarks.calib_compare`): agreement, then each layer's kept fraction."""
    layers = len(result["layer_rank_correlation"])
    head = f"{result['model']}, A: `{result['a_data']}`, B: `{result['b_data']}` (commit {result['commit']})"
    agree = (
        f"rank correlation of the heads' scores {result['rank_correlation']:.3f}; inside each layer "
        + " / ".join(f"{r:.2f}" for r in result["layer_rank_correlation"])
        + f"; of A's top {result['k']} heads B ranks {result['top_k_shared']} in its top {result['k']}"
    )
    lines = [head, "", agree, "", "| ratio | file | " + " | ".join(f"layer {i}" for i in range(layers)) + " |"]
    lines.append("|---|---|" + "---|" * layers)
    for ratio, keeps in result["layer_keeps"].items():
        for side in ("a", "b"):
            cells = " | ".join(f"{100 * x:.1f}%" for x in keeps[side])
            lines.append(f"| {ratio} | {side.upper()} | {cells} |")
    return "\n".join(lines)


def _grid(rows: list[dict], cell) -> str:
    """Policies by compression ratio, ``cell(row)`` in each; the full cache in one row."""
    ratios = sorted({r["compression_ratio"] for r in rows if r["policy"] != "full"})
    full = next((r for r in rows if r["policy"] == "full"), None)
    lines = [f"| policy | {' | '.join(f'{x:g}' for x in ratios)} |", "|---" * (len(ratios) + 1) + "|"]
    if full is not None:
        lines.append(f"| full cache | {cell(full)} (every ratio) |" + " |" * (len(ratios) - 1))
    for policy in dict.fromkeys(_label(r) for r in rows if r["policy"] != "full"):
        cells = []
        for ratio in ratios:
            row = next((r for r in rows if _label(r) == policy and r["compression_ratio"] == ratio), None)
            cells.append("" if row is None else cell(row))
        lines.append(f"| {policy} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _commits(result: dict) -> str:
    """``commit X``, or which policies were made at which commit when rows were rerun (``eval --update``)."""
    made = {}
    for row in result["rows"]:
        made.setdefault(row.get("commit", result["commit"]), {})[_label(row)] = None
    if len(made) == 1:
        return f"commit {next(iter(made))}"
    return "; ".join(f"{', '.join(policies)} at commit {commit}" for commit, policies in made.items())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _vs_masked(row: dict) -> str:
    if row["cache"] != "audiokv":
        return ""
    steps = row.get("steps_compared")  # files made before it compare every step
    return f"{row['max_logit_diff_vs_masked']:.1e}" + ("" if steps is None else f" ({steps})")


def profile_table(result: dict) -> str:
    """A markdown table of a ``benchmarks.decode_profile`` file: per step, wall and device time, launches."""
    lines = ["| context | ratio | call | wall µs | device µs | kernel launches | most device time |", "|---" * 7 + "|"]
    for r in result["rows"]:
        for name, call in (("audiokv_step", "audiokv layer step (eager)"), ("dense_sdpa", "dense SDPA (eager)")):
            p = r[name]
            top, us = next(iter(p["top"].items()), ("(no device kernels)", 0.0))
            cells = [r["context"], r["compression_ratio"], call, f"{p['wall_us']:.0f}", f"{p['device_us']:.1f}",
                     f"{p['launches']:.0f}", f"{top[:40]} ({us:.1f} µs)"]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        if r.get("flex_call_graphed_us"):
            lines.append(f"| {r['context']} | {r['compression_ratio']} | flex call alone, CUDA graph replay | "
                         f"{r['flex_call_graphed_us']:.0f} | | | |")  # fmt: skip
    where = f"commit {result['commit']}, {result['device']}"
    shape = "{heads}/{kv_heads} heads, head_dim {head_dim}, batch {batch}".format(**result["rows"][0])
    return f"`benchmarks.decode_profile`: {shape}, {result['dtype']} ({where})\n\n" + "\n".join(lines)


# benchmark files (no ``policy`` column): the columns of each kind, (header, value of a row)
BENCHMARKS = {
    "decode": [
        ("heads", lambda r: f"{r['heads']}/{r['kv_heads']}×{r['head_dim']}"),
        ("kernel", lambda r: r.get("audiokv_kernel", "flex")),
        ("head budgets", lambda r: r.get("head_budgets", "skewed")),
        ("batch", lambda r: r["batch"]),
        ("context", lambda r: r["context"]),
        ("ratio", lambda r: r["compression_ratio"]),
        ("kept per head", lambda r: "{}–{}".format(*r["kept_per_head_min_max"])),
        ("audiokv / dense SDPA", lambda r: f"{r['audiokv_s'] / r['dense_sdpa_s']:.2f}"),
        ("vs ideal", lambda r: f"{r['audiokv_vs_ideal']:.2f}"),
        ("cut SDPA / dense", lambda r: f"{r['uniform_cut_sdpa_s'] / r['dense_sdpa_s']:.2f}"),
        *(
            (f"{k} / dense", lambda r, k=k: f"{r[f'{k}_s'] / r['dense_sdpa_s']:.2f}" if r.get(f"{k}_s") else "")
            for k in ("rows", "pages", "flex")
        ),
        ("KV held", lambda r: _pct(r["kv_bytes"] / r["kv_bytes_dense"])),
        ("recompiles", lambda r: r["recompiles_during_decode"]),
        ("pool growths", lambda r: r.get("pool_growths", "")),
        ("max error", lambda r: f"{r['max_abs_error']:.1e}"),
    ],
    "prefill": [
        ("context", lambda r: r["context"]),
        ("ratio", lambda r: r["compression_ratio"]),
        ("compression / prefill attention", lambda r: _pct(r["overhead_share"])),
    ],
    "generate": [
        ("context", lambda r: r["context"]),
        ("cache", lambda r: r["cache"]),
        ("ratio", lambda r: r["compression_ratio"]),
        ("KV held vs dense", lambda r: _pct(r["kv_bytes"] / r["dense"]["kv_bytes"])),
        ("tokens/s vs dense", lambda r: f"{r['decode_tokens_per_s'] / r['dense']['decode_tokens_per_s']:.2f}"),
        ("max logit diff vs masked (steps compared)", _vs_masked),
    ],
    "compiled": [
        ("context", lambda r: r["context"]),
        ("cache", lambda r: r["cache"]),
        ("ratio", lambda r: r["compression_ratio"]),
        ("mode", lambda r: r["mode"] if r["mode"] == "eager" else f"compiled ({r.get('compile_mode', 'default')})"),
        ("tokens/s vs dense eager", lambda r: f"{r['tokens_per_s'] / r['dense']['tokens_per_s']:.2f}"),
        ("graphs after warm-up", lambda r: r.get("graphs_after_warmup", "")),
        ("max logit diff vs eager", lambda r: f"{r['max_logit_diff_vs_eager']:.1e}" if r["mode"] == "compiled" else ""),
    ],
}


def benchmark_table(kind: str, result: dict) -> str:
    """A markdown table of a ``benchmarks.decode`` / ``prefill`` / ``generate`` / ``compiled`` results file."""
    columns = BENCHMARKS[kind]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|---" * len(columns) + "|"]
    rows = result["rows"]
    if kind in ("generate", "compiled"):  # each row against the dense (eager) cache of its context, in the same run
        dense = {r["context"]: r for r in rows if r["cache"] == "dense" and r.get("mode", "eager") == "eager"}
        rows = [{**r, "dense": dense[r["context"]]} for r in rows]
    lines += ["| " + " | ".join(str(f(r)) for _, f in columns) + " |" for r in rows]
    shapes = {(r["heads"], r["kv_heads"], r["head_dim"]) for r in result["rows"] if "heads" in r}
    shape = "{}/{} heads, head_dim {}, ".format(*shapes.pop()) if len(shapes) == 1 else ""  # else per row
    where = f"commit {result['commit']}, {result['device']}, {result['threads']} threads"
    caption = f"`benchmarks.{kind}`: {shape}{result['dtype']} ({where})"
    return caption + "\n\n" + "\n".join(lines)


def _block(name: str = r"\S+") -> re.Pattern:
    """Results blocks whose name matches the regex ``name``: groups (name, body)."""
    return re.compile(rf"<!-- results:({name}) -->\n(.*?)<!-- /results -->", re.S)  # each body up to its own end


def blocks(page: str) -> list[tuple[str, str]]:
    """``(name, body)`` of every results block of a markdown page."""
    return [(m[1], m[2]) for m in _block().finditer(page)]


def fill(page: str, name: str, text: str) -> str:
    """``page`` with the block marked ``<!-- results:name -->`` ... ``<!-- /results -->`` replaced by ``text``."""
    pattern = _block(re.escape(name))
    if not pattern.search(page):
        raise SystemExit(f"no <!-- results:{name} --> block")
    return pattern.sub(lambda m: f"<!-- results:{m[1]} -->\n{text}\n<!-- /results -->", page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--readme", action="store_true", help="rewrite the marked blocks of README.md and docs/")
    args = parser.parse_args(argv)
    tables = {f.stem: render(f.stem, json.loads(f.read_text())) for f in args.files}
    if args.readme:
        for name, block in tables.items():
            page = next((p for p in PAGES if name in dict(blocks(p.read_text()))), None)
            if page is None:
                raise SystemExit(f"neither README.md nor docs/ has a <!-- results:{name} --> block")
            page.write_text(fill(page.read_text(), name, block))
    print("\n\n".join(tables.values()))


if __name__ == "__main__":
    main()
