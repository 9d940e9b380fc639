"""The `audiokv` command line."""

from __future__ import annotations

import argparse
import sys


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    bad = [x for x in values if not 0 <= x < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"compression ratios must be in [0, 1), got {bad}")
    return values


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `audiokv` command."""
    parser = argparse.ArgumentParser(prog="audiokv", description="AudioKV KV-cache compression")
    sub = parser.add_subparsers(dest="command", required=True)
    example = sub.add_parser("example", help="compress one synthetic attention layer and report memory and error")
    example.add_argument("--length", type=int, default=4096, help="prompt tokens (default 4096)")
    example.add_argument("--ratios", type=_ratios, default=(0.0, 0.4, 0.7, 0.9), help="e.g. 0.4,0.7")
    args = parser.parse_args(argv)

    if args.command == "example":
        from audiokv.example import print_example, run_example

        if args.length < 64:
            parser.error("--length must be at least 64")
        print_example(run_example(length=args.length, ratios=args.ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
