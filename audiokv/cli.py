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
    calib = sub.add_parser("calibrate", help="score every (layer, KV head) for audio alignment on ASR data")
    calib.add_argument("--model", required=True, help="whisper-tiny.en, whisper-base, or a Whisper hub id / path")
    calib.add_argument("--data", required=True, help="folder of *.wav + *.txt, or a JSONL manifest")
    calib.add_argument("--out", required=True, help="output .safetensors file")
    calib.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    calib.add_argument("--plot", default=None, help="also draw the scores as a heat map (PNG)")
    args = parser.parse_args(argv)

    if args.command == "example":
        from audiokv.example import print_example, run_example

        if args.length < 64:
            parser.error("--length must be at least 64")
        print_example(run_example(length=args.length, ratios=args.ratios))
    elif args.command == "calibrate":
        return _calibrate(args)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from audiokv.calibrate import calibrate_whisper
    from audiokv.dataset import load_speech_set
    from audiokv.models import load_speech_model

    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        data = load_speech_set(args.data, limit=args.limit)
        speech = load_speech_model(args.model)
        scores = calibrate_whisper(speech, data)
    except (ValueError, ImportError) as err:
        print(f"audiokv calibrate: error: {err}", file=sys.stderr)
        return 2
    scores.data = f"{len(data)} utterances from {args.data}"
    scores.save(args.out)
    print(f"wrote {args.out}: {scores.shape[0]} layers x {scores.shape[1]} KV heads")
    for layer, head, value in scores.top(8):
        print(f"  layer {layer} head {head}: {value:.3f}")
    if args.plot:
        from audiokv.plots import plot_head_scores

        plot_head_scores(scores, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
