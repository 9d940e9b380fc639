"""Markdown tables from results files: ``python -m benchmarks.report FILE.json [FILE.json ...]``.

One table per file: a row per policy, a column per compression ratio, WER
(%) with the share of looping outputs in brackets when there are any. The
README's result tables are this script's output, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(result: dict) -> str:
    """A markdown table of one ``audiokv eval`` results file."""
    rows = result["rows"]
    ratios = sorted({r["compression_ratio"] for r in rows if r["policy"] != "full"})
    full = next((r for r in rows if r["policy"] == "full"), None)
    head = f"| policy | {' | '.join(f'{x:g}' for x in ratios)} |"
    lines = [head, "|---" * (len(ratios) + 1) + "|"]
    if full is not None:
        lines.append(f"| full cache | {100 * full['wer']:.1f} (every ratio) |" + " |" * (len(ratios) - 1))
    for policy in dict.fromkeys(r["policy"] for r in rows if r["policy"] != "full"):
        cells = []
        for ratio in ratios:
            row = next((r for r in rows if r["policy"] == policy and r["compression_ratio"] == ratio), None)
            if row is None:
                cells.append("")
                continue
            loops = f" ({row['repetition_rate']:.0%} loops)" if row["repetition_rate"] else ""
            cells.append(f"{100 * row['wer']:.1f}{loops}")
        lines.append(f"| {policy} | {' | '.join(cells)} |")
    caption = f"{result['model']}, {result['data']}, WER % (commit {result['commit']}, {result['device']})"
    return caption + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("\n\n".join(table(json.loads(f.read_text())) for f in args.files))


if __name__ == "__main__":
    main()
