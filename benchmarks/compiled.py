"""Decode tokens/s, eager against ``torch.compile``: ``python -m benchmarks.compiled``.

A Qwen2 with :mod:`benchmarks.generate`'s shapes and random weights prefills a
random prompt eagerly, then decodes greedily one token per forward, gpt-fast
style, in four setups:

- ``dense`` eager: transformers' ``DynamicCache``;
- ``dense`` compiled: transformers' ``StaticCache`` and
  ``torch.compile(model.forward)``, transformers' own recipe for compiled decoding;
- ``audiokv`` eager: ``apply_audiokv`` with the device's default kernel (the rows
  kernel on CPU);
- ``audiokv`` compiled: ``apply_audiokv(kernel="flex")`` and
  ``torch.compile(model.forward)`` (README, "Compiled decoding").

The first ``--warmup`` steps compile; the next ``--steps`` are timed one by one
and tokens/s is one over their median. Each row records the graphs compiled
after warm-up (0 means no recompiles) and, for compiled rows, the largest
logit difference from the eager run of the same cache over the same tokens
(the eager run's tokens are fed, so the two decode the same sequence).
Writes ``benchmarks/results/compiled-<device>.json``.
"""

from __future__ import annotations

import statistics

import torch
from torch._dynamo.utils import counters
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM, StaticCache

from audiokv import AudioKVConfig, apply_audiokv
from audiokv.cache import AudioKVCache, cache_argument
from benchmarks.generate import SHAPES
from benchmarks.harness import device_and_dtype, parser, timer_for, write_results


def decode(model, ids: torch.Tensor, cache, steps: int, warmup: int, feed: torch.Tensor | None, compiled=None) -> dict:
    """Prefill ``ids`` eagerly, then ``warmup + steps`` one-token forwards (through ``compiled`` if given).

    ``feed`` ``[B, warmup + steps]``: the tokens to feed (another run's), else the greedy ones.
    Returns the step times of the timed steps, the logits and tokens of every step, and
    the graphs compiled after warm-up.
    """
    timer = timer_for(ids.device)
    length, name = ids.shape[1], cache_argument(model)  # the cache's keyword in this transformers
    logits, tokens, times, graphs = [], [], [], 0
    with torch.no_grad():
        token = model(ids, **{name: cache}, use_cache=True).logits[:, -1:].argmax(-1)
        if compiled is not None:
            model.forward = compiled  # __call__ and so apply_audiokv's hooks stay eager
        try:
            for i in range(warmup + steps):
                if i == warmup:
                    graphs = counters["stats"]["unique_graphs"]
                if feed is not None:
                    token = feed[:, i : i + 1]
                pos = length + i
                step = dict(input_ids=token, **{name: cache}, use_cache=True,
                            cache_position=torch.tensor([pos], device=ids.device),
                            position_ids=torch.full((ids.shape[0], 1), pos, device=ids.device))  # fmt: skip
                out: list = []
                elapsed = timer(lambda step=step, out=out: out.append(model(**step)))
                if i >= warmup:
                    times.append(elapsed)
                logits.append(out[0].logits[:, -1].float())
                tokens.append(token)
                token = out[0].logits[:, -1:].argmax(-1)
        finally:
            model.__dict__.pop("forward", None)
    return {
        "step_s": statistics.median(times),
        "logits": torch.stack(logits, 1),
        "tokens": torch.cat(tokens, 1),
        "graphs_after_warmup": counters["stats"]["unique_graphs"] - graphs,
        "cudagraph_skips": counters["inductor"]["cudagraph_skips"],  # reduce-overhead: graphs inductor declined
    }


def run(model, ids, cache: str, ratio: float, mode: str, steps: int, warmup: int, feed=None,
        compile_mode: str | None = None) -> dict:  # fmt: skip
    """One setup: ``cache`` "dense" or "audiokv" (at ``ratio``), ``mode`` "eager" or "compiled".

    ``compile_mode``: `torch.compile`'s ``mode`` (None: its default; ``"reduce-overhead"``: CUDA graphs).
    """
    torch._dynamo.reset()
    counters.clear()
    compiled = mode == "compiled"
    forward = torch.compile(model.forward, mode=compile_mode) if compiled else None
    if cache == "dense":
        if compiled:
            kv = StaticCache(config=model.config, max_cache_len=ids.shape[1] + warmup + steps)
        else:
            kv = DynamicCache(config=model.config)
        return decode(model, ids, kv, steps, warmup, feed, forward)
    cfg = AudioKVConfig(compression_ratio=ratio, decode_reserve=warmup + steps)
    with apply_audiokv(model, cfg, kernel="flex" if compiled else "auto") as handle:
        kv = AudioKVCache(model.config, handle.engines)
        return decode(model, ids, kv, steps, warmup, feed, forward)


def bench(shape: str, layers: int, context: int, ratios: list[float], steps: int, warmup: int,
          device: torch.device, dtype: torch.dtype, compile_mode: str | None = None) -> list[dict]:  # fmt: skip
    torch.manual_seed(0)
    total = context + warmup + steps
    config = Qwen2Config(**SHAPES[shape], num_hidden_layers=layers, max_position_embeddings=max(2 * total, 4096))
    model = Qwen2ForCausalLM(config).to(device, dtype).eval()
    ids = torch.randint(1, config.vocab_size, (1, context), generator=torch.Generator().manual_seed(1)).to(device)
    base = {"shape": shape, "layers": layers, "context": context, "steps": steps, "warmup": warmup,
            "compile_mode": compile_mode or "default"}  # fmt: skip
    rows = []
    for cache, ratio in [("dense", 0.0)] + [("audiokv", r) for r in ratios]:
        eager = run(model, ids, cache, ratio, "eager", steps, warmup)
        fast = run(model, ids, cache, ratio, "compiled", steps, warmup, feed=eager["tokens"], compile_mode=compile_mode)
        diff = (fast["logits"] - eager["logits"]).abs().max().item()
        row = {**base, "cache": cache, "compression_ratio": ratio}
        rows.append({**row, "mode": "eager", "tokens_per_s": 1 / eager["step_s"]})
        rows.append({**row, "mode": "compiled", "tokens_per_s": 1 / fast["step_s"],
                     "graphs_after_warmup": fast["graphs_after_warmup"], "max_logit_diff_vs_eager": diff,
                     "cudagraph_skips": fast["cudagraph_skips"]})  # fmt: skip
        print(f"{cache:>8} r={ratio:.1f}  tok/s eager {1 / eager['step_s']:7.1f}  compiled {1 / fast['step_s']:7.1f}"
              f"  graphs after warm-up {fast['graphs_after_warmup']}  logit diff {diff:.1e}", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    cli.add_argument("--layers", type=int, default=4)
    cli.add_argument("--context", type=int, default=2048)
    cli.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.7])
    cli.add_argument("--steps", type=int, default=128, help="timed decode steps")
    cli.add_argument("--warmup", type=int, default=8, help="decode steps before timing (compiling)")
    cli.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    args = cli.parse_args(argv)
    device, dtype = device_and_dtype(args)
    rows = bench(args.shape, args.layers, args.context, args.ratios, args.steps, args.warmup, device, dtype,
                 args.compile_mode)  # fmt: skip
    print(f"wrote {write_results('compiled', args, dtype, rows)}")
    return rows


if __name__ == "__main__":
    main()
