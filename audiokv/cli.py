"""The `audiokv` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: --help stays fast
    import torch

# --method names; each maps to its HeadScores method id (audiokv.heads) once torch is imported
CALIBRATION_METHODS = ("alignment", "word-timed")


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    bad = [x for x in values if not 0 <= x < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"compression ratios must be in [0, 1), got {bad}")
    return values


def _beams(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"beams must be a whole number >= 1, got {text!r}")
    return int(text)


DEVICE_HELP = "where the model runs: cpu (default), cuda, cuda:1, ..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `audiokv` command."""
    parser = argparse.ArgumentParser(prog="audiokv", description="AudioKV KV-cache compression")
    sub = parser.add_subparsers(dest="command", required=True)
    calib = sub.add_parser("calibrate", help="score every (layer, KV head) for audio alignment on ASR data")
    calib.add_argument("--model", required=True, help="whisper-tiny.en, whisper-base, or a Whisper hub id / path")
    calib.add_argument("--data", required=True, help="folder of *.wav + *.txt, or a JSONL manifest")
    calib.add_argument("--out", required=True, help="output .safetensors file")
    calib.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    calib.add_argument("--plot", default=None, help="also draw the scores as a heat map (PNG)")
    calib.add_argument("--method", choices=CALIBRATION_METHODS, default="alignment",
                       help="the budget prior (default), or the word-timed score (needs 'words' timings)")  # fmt: skip
    calib.add_argument("--device", default="cpu", help=DEVICE_HELP)
    calib.add_argument("--layer-split", default=None, metavar="FILE",
                       help="keep each layer's ranking of its heads, but shift the layer's scores to its mean in "
                       "this calibration file (so that file's split of the budget over the layers)")  # fmt: skip
    ev = sub.add_parser("eval", help="accuracy and KV memory per policy and compression ratio")
    ev.add_argument("--task", choices=("asr", "passkey"), default="asr",
                    help="asr: WER of a speech model on --data; passkey: retrieval by a decoder-only LLM")  # fmt: skip
    ev.add_argument("--model", required=True, help="asr: whisper-tiny.en, whisper-base or a Whisper id / path; "
                    "passkey: smollm2-135m or a causal LM id / path")  # fmt: skip
    ev.add_argument("--data", default=None, help="asr: folder of *.wav + *.txt, or a JSONL manifest")
    ev.add_argument("--policies", default="full,audiokv,snapkv", help="comma-separated policy names")
    ev.add_argument("--ratios", type=_ratios, default=(0.4, 0.7), help="comma-separated, each in [0, 1)")
    ev.add_argument("--calibration", default=None, help="head scores (.safetensors) for the audiokv policies")
    ev.add_argument("--out", required=True, help="results JSON")
    ev.add_argument("--limit", type=int, default=None, help="asr: first N utterances; passkey: N samples (8)")
    ev.add_argument("--context", type=int, default=2048, help="passkey: prompt length in tokens (default 2048)")
    ev.add_argument("--protocol", choices=("query-aware", "query-agnostic"), default="query-aware",
                    help="passkey: compress with the question in the window, or the context before it")  # fmt: skip
    ev.add_argument("--prefill-chunk", type=int, default=None,
                    help="passkey: prefill this many tokens at a time (AudioKVConfig.prefill_chunk)")  # fmt: skip
    ev.add_argument("--plot", default=None, help="also draw accuracy vs ratio (PNG)")
    ev.add_argument("--beams", type=_beams, default=1, help="asr: beam search with this many beams (default 1: greedy)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the random policy and the passkey prompts (default 0)")
    ev.add_argument("--device", default="cpu", help=DEVICE_HELP)
    ev.add_argument("--update", action="store_true",
                    help="rerun --policies into the existing --out, keeping its other rows")  # fmt: skip
    demo = sub.add_parser("demo", help="full vs audiokv vs snapkv on the bundled Whisper tiny.en and clips")
    demo.add_argument("--out-dir", default="demo-output", help="where the JSON and the plot go")
    args = parser.parse_args(argv)

    return {"calibrate": _calibrate, "eval": _eval, "demo": _demo}[args.command](args)


def _fail(command: str, err: Exception) -> int:
    print(f"audiokv {command}: error: {err}", file=sys.stderr)
    return 2


# what a command's bad input raises: reported in one line, never as a traceback
USER_ERRORS = (ValueError, ImportError, OSError)


def _check_outputs(*paths: str | Path | None) -> None:
    """Fail before any long work if an output file cannot be written."""
    for path in (Path(p) for p in paths if p is not None):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
        if path.is_dir() or not os.access(path.parent, os.W_OK):
            raise ValueError(f"cannot write {path}: " + ("a directory" if path.is_dir() else "permission denied"))


def _check_plot(path: str | Path | None) -> None:
    """Fail before any long work if matplotlib cannot draw ``path`` (its extension names the format)."""
    if path is None:
        return
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'audiokv[plot]'") from None

    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix and suffix not in kinds:
        raise ValueError(f"cannot draw {path}: .{suffix} is none of matplotlib's formats ({', '.join(sorted(kinds))})")


def _run_eval(args: argparse.Namespace) -> list[dict]:
    """Run ``audiokv eval`` (also the demo); writes the JSON (and plot), returns the rows."""
    import json
    from dataclasses import replace
    from functools import partial

    from audiokv.config import AudioKVConfig
    from audiokv.data import shipped_calibration
    from audiokv.eval import check_same_run, merge_results, plot_results
    from audiokv.heads import HeadScores
    from audiokv.policies import get_policy
    from audiokv.provenance import environment

    _check_outputs(args.out, args.plot)
    _check_plot(args.plot)
    previous = _previous_results(args.out) if args.update else None
    policies = [name.strip() for name in args.policies.split(",")]
    for name in policies:
        get_policy(name)
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    device = _device(args.device)
    if args.task == "passkey":
        from audiokv.models import load_causal_lm
        from audiokv.passkey import PASSKEY_CONFIG, evaluate_passkey

        model, tokenizer = load_causal_lm(args.model)
        model.to(device)
        n = args.limit or 8
        config = replace(PASSKEY_CONFIG, seed=args.seed, prefill_chunk=args.prefill_chunk)
        data = f"{n} passkey prompts of {args.context} tokens"
        if args.protocol == "query-agnostic":
            data += ", context compressed before the question"
        if args.prefill_chunk:
            data += f", prefilled in chunks of {args.prefill_chunk}"
        name, what = args.model, f"passkey @ {args.context}, {args.protocol}"
        run = partial(evaluate_passkey, model, tokenizer, policies, list(args.ratios), context=args.context, n=n,
                      config=config, protocol=args.protocol)  # fmt: skip
    else:
        from audiokv.dataset import load_speech_set
        from audiokv.eval import evaluate_speech
        from audiokv.metrics import normalize_text
        from audiokv.models import load_speech_model

        if args.data is None:
            raise ValueError("--data is required for --task asr")
        utterances = load_speech_set(args.data, limit=args.limit)
        if not any(normalize_text(u.text).split() for u in utterances):  # WER has nothing to count: say so first
            raise ValueError(f"the transcripts of {args.data} hold no words once normalized")
        speech = load_speech_model(args.model)
        speech.model.to(device)
        args.calibration = args.calibration or shipped_calibration(speech.name)
        calib = HeadScores.load(args.calibration, model=speech.name) if args.calibration else None
        if calib is None and any(get_policy(p).use_prior for p in policies):
            from audiokv.calibrate import cached_whisper_calibration

            calib, args.calibration = cached_whisper_calibration(speech)  # the prior policies need one
        config = AudioKVConfig(seed=args.seed)
        n, name, data, what = len(utterances), speech.name, str(args.data), f"{len(utterances)} clips"
        ratios = list(args.ratios)
        run = partial(evaluate_speech, speech, utterances, policies, ratios, calibration=calib, config=config,
                      beams=args.beams)  # fmt: skip
    calibration = None if args.calibration is None else str(args.calibration)
    result = {"model": name, "task": args.task, "data": data, "calibration": calibration, "seed": config.seed}
    if args.task == "asr":
        result["beams"] = args.beams
    if previous is not None:
        check_same_run(previous, {**result, "n": n})  # before the long work
        _say_what_update_drops(previous, policies, args.ratios, args.out)
    rows = run()
    result.update(environment(device))
    result["rows"] = [{**row, "commit": result["commit"]} for row in rows]
    if previous is not None:
        result = merge_results(previous, result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot_results(result["rows"], args.plot, f"{name}, {what}")
    return rows


def _say_what_update_drops(previous: dict, policies: list[str], ratios: tuple[float, ...], out: str) -> None:
    """``--update`` replaces every row of a rerun policy: name, before the run, the ratios it will lose."""
    for name in set(policies) - {"full"}:  # the full cache runs once, at ratio 0
        lost = sorted({r["compression_ratio"] for r in previous["rows"] if r["policy"] == name} - set(ratios))
        if lost:
            print(f"audiokv eval: {name}'s rows at {', '.join(map(str, lost))} in {out} will be replaced by this "
                  "run's, which leaves those ratios out", file=sys.stderr)  # fmt: skip


def _device(name: str) -> torch.device:
    """The ``--device`` to run on, or one clear error (a bad name, or one this machine does not have)."""
    import torch

    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:  # torch raises AssertionError for CUDA it was not built with
        raise ValueError(f"--device {name}: {(str(err).splitlines() or ['not available here'])[0]}") from None
    return device


def _previous_results(path: str | Path) -> dict:
    """The results file ``--update`` adds to (read before any work, so a bad one fails at once)."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--update: {path} does not exist yet (run without --update first)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--update: {path} is not a results file ({err})") from None


def _print_rows(rows: list[dict]) -> None:
    metric = "wer" if "wer" in rows[0] else "accuracy"
    header = f"{'policy':>18} {'ratio':>6} {metric.upper():>8} {'KV held':>9} {'of full':>8} {'loops':>6} {'short':>6}"
    print(header + f" {'seconds':>8}")
    for r in rows:
        share = r["kv_bytes"] / r["kv_bytes_full"]
        short = f"{r['short_rate']:>6.0%}" if "short_rate" in r else f"{'':>6}"  # passkey rows have no transcript
        print(
            f"{r['policy']:>18} {r['compression_ratio']:>6.2f} {100 * r[metric]:>7.1f}% "
            f"{r['kv_bytes'] / 2**20:>7.1f}MB {share:>7.1%} {r['repetition_rate']:>6.0%} {short} {r['seconds']:>8.1f}"
        )


def _eval(args: argparse.Namespace) -> int:
    try:
        rows = _run_eval(args)
    except USER_ERRORS as err:
        return _fail("eval", err)
    _print_rows(rows)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from audiokv.data import EVAL_DIR

    out = Path(args.out_dir)
    run = argparse.Namespace(
        task="asr", model="whisper-tiny.en", data=EVAL_DIR, policies="full,audiokv,snapkv", ratios=(0.4, 0.7),
        calibration=None, limit=None, seed=0, update=False, device="cpu", beams=1,
        out=out / "demo.json", plot=out / "demo.png",
    )  # fmt: skip
    try:
        rows = _run_eval(run)
    except USER_ERRORS as err:
        return _fail("demo", err)
    print("Whisper tiny.en, greedy, on the bundled evaluation clips; compressed: the decoder's cross-attention cache")
    _print_rows(rows)
    print("ratio = fraction of KV entries removed; loops = share of outputs repeating a phrase three times in a row")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from audiokv.calibrate import calibrate_whisper
    from audiokv.dataset import load_speech_set
    from audiokv.heads import METHOD, TIMED_METHOD, HeadScores
    from audiokv.models import load_speech_model

    try:
        _check_outputs(args.out, args.plot)
        _check_plot(args.plot)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        device = _device(args.device)
        data = load_speech_set(args.data, limit=args.limit)
        speech = load_speech_model(args.model)
        speech.model.to(device)
        layers = None if args.layer_split is None else HeadScores.load(args.layer_split, model=speech.name)
        method = {"alignment": METHOD, "word-timed": TIMED_METHOD}[args.method]
        scores = calibrate_whisper(speech, data, method=method)
        scores.data = f"{scores.data} from {args.data}"  # the utterances it could score
        if layers is not None:
            scores = scores.with_layer_split(layers)
    except USER_ERRORS as err:
        return _fail("calibrate", err)
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
