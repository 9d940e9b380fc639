"""The `audiokv` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    ev = sub.add_parser("eval", help="WER and KV memory per policy and compression ratio")
    ev.add_argument("--model", required=True, help="whisper-tiny.en, whisper-base, or a Whisper hub id / path")
    ev.add_argument("--data", required=True, help="folder of *.wav + *.txt, or a JSONL manifest")
    ev.add_argument("--policies", default="full,audiokv,snapkv", help="comma-separated policy names")
    ev.add_argument("--ratios", type=_ratios, default=(0.4, 0.7), help="comma-separated, each in [0, 1)")
    ev.add_argument("--calibration", default=None, help="head scores (.safetensors) for the audiokv policies")
    ev.add_argument("--out", required=True, help="results JSON")
    ev.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    ev.add_argument("--plot", default=None, help="also draw WER vs ratio (PNG)")
    demo = sub.add_parser("demo", help="full vs audiokv vs snapkv on the bundled Whisper tiny.en and clips")
    demo.add_argument("--out-dir", default="demo-output", help="where the JSON and the plot go")
    args = parser.parse_args(argv)

    if args.command == "example":
        from audiokv.example import print_example, run_example

        if args.length < 64:
            parser.error("--length must be at least 64")
        print_example(run_example(length=args.length, ratios=args.ratios))
    elif args.command == "calibrate":
        return _calibrate(args)
    elif args.command == "eval":
        return _eval(args)
    elif args.command == "demo":
        return _demo(args)
    return 0


def _fail(command: str, err: Exception) -> int:
    print(f"audiokv {command}: error: {err}", file=sys.stderr)
    return 2


def _run_eval(model, data, policies, ratios, calibration, out, plot, limit=None) -> list[dict]:
    import json

    from audiokv.dataset import load_speech_set
    from audiokv.eval import environment, evaluate_speech, plot_results
    from audiokv.heads import HeadScores
    from audiokv.models import load_speech_model
    from audiokv.policies import get_policy

    for name in policies:
        get_policy(name)
    if limit is not None and limit < 1:
        raise ValueError("--limit must be at least 1")
    utterances = load_speech_set(data, limit=limit)
    speech = load_speech_model(model)
    calib = HeadScores.load(calibration, model=speech.name) if calibration else None
    rows = evaluate_speech(speech, utterances, policies, list(ratios), calibration=calib)
    result = {"model": speech.name, "data": str(data), "calibration": calibration, **environment(), "rows": rows}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    if plot:
        plot_results(rows, plot, f"{speech.name} on {len(utterances)} clips")
    return rows


def _print_rows(rows: list[dict]) -> None:
    print(f"{'policy':>18} {'ratio':>6} {'WER':>7} {'KV held':>9} {'of full':>8} {'loops':>6}")
    for r in rows:
        share = r["kv_bytes"] / r["kv_bytes_full"]
        print(
            f"{r['policy']:>18} {r['compression_ratio']:>6.2f} {100 * r['wer']:>6.1f}% "
            f"{r['kv_bytes'] / 2**20:>7.1f}MB {share:>7.1%} {r['repetition_rate']:>6.0%}"
        )


def _eval(args: argparse.Namespace) -> int:
    try:
        rows = _run_eval(
            args.model, args.data, args.policies.split(","), args.ratios, args.calibration, args.out, args.plot,
            args.limit,
        )  # fmt: skip
    except (ValueError, ImportError) as err:
        return _fail("eval", err)
    _print_rows(rows)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from audiokv.data import EVAL_DIR

    calibration = Path(__file__).resolve().parents[1] / "calib" / "whisper-tiny.en.safetensors"
    out = Path(args.out_dir)
    try:
        rows = _run_eval(
            "whisper-tiny.en", EVAL_DIR, ["full", "audiokv", "snapkv"], (0.4, 0.7),
            str(calibration) if calibration.exists() else None, out / "demo.json", out / "demo.png",
        )  # fmt: skip
    except (ValueError, ImportError) as err:
        return _fail("demo", err)
    print("Whisper tiny.en, greedy, on the bundled evaluation clips; compressed: the decoder's cross-attention cache")
    _print_rows(rows)
    print("ratio = fraction of KV entries removed; loops = share of outputs with a repeated 3-gram loop")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
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
