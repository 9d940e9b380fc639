"""Markdown tables from results files: ``python -m benchmarks.report FILE.json [FILE.json ...] [--readme]``.

One table per file: a row per policy, a column per compression ratio, WER
(%) with the share of looping outputs in brackets when there are any. The
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

README = Path(__file__).resolve().parents[1] / "README.md"
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]  # where result blocks may live


def _label(row: dict) -> str:
    """The policy name, with the knobs a tuning row changed (``audiokv sss_cutoff=0.3``)."""
    knobs = row.get("knobs") or {}
    return " ".join([row["policy"], *(f"{k}={v}" for k, v in knobs.items())])


def table(result: dict) -> str:
    """A markdown table of one ``audiokv eval`` results file."""
    rows = result["rows"]
    ratios = sorted({r["compression_ratio"] for r in rows if r["policy"] != "full"})
    full = next((r for r in rows if r["policy"] == "full"), None)
    head = f"| policy | {' | '.join(f'{x:g}' for x in ratios)} |"
    lines = [head, "|---" * (len(ratios) + 1) + "|"]
    if full is not None:
        lines.append(f"| full cache | {100 * full['wer']:.1f} (every ratio) |" + " |" * (len(ratios) - 1))
    for policy in dict.fromkeys(_label(r) for r in rows if r["policy"] != "full"):
        cells = []
        for ratio in ratios:
            row = next((r for r in rows if _label(r) == policy and r["compression_ratio"] == ratio), None)
            if row is None:
                cells.append("")
                continue
            loops = f" ({row['repetition_rate']:.0%} loops)" if row["repetition_rate"] else ""
            cells.append(f"{100 * row['wer']:.1f}{loops}")
        lines.append(f"| {policy} | {' | '.join(cells)} |")
    data = Path(result["data"])
    if data.is_absolute() and "benchmarks" in data.parts:  # a checkout's own data, wherever it was run
        data = Path(*data.parts[data.parts.index("benchmarks") :])
    caption = f"{result['model']}, `{data}`, WER % (commit {result['commit']}, {result['device']})"
    return caption + "\n\n" + "\n".join(lines)


def _block(name: str = r"\S+") -> re.Pattern:
    """Results blocks whose name matches the regex ``name``: groups (name, body)."""
    return re.compile(rf"<!-- results:({name}) -->\n((?:.*?\n)?)<!-- /results -->", re.S)


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
    tables = {f.stem: table(json.loads(f.read_text())) for f in args.files}
    if args.readme:
        for name, block in tables.items():
            page = next((p for p in PAGES if name in dict(blocks(p.read_text()))), None)
            if page is None:
                raise SystemExit(f"neither README.md nor docs/ has a <!-- results:{name} --> block")
            page.write_text(fill(page.read_text(), name, block))
    print("\n\n".join(tables.values()))


if __name__ == "__main__":
    main()
