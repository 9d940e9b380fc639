"""Prefill overhead: scoring + SSS + budgets + selection + gather into the pool, against the layer's attention.

`python -m benchmarks.prefill [--device cuda] [--context 4096 16384 32768 65536]`
writes `benchmarks/results/prefill-<device>.json`: per context, the median time
of the layer's dense causal prefill attention (SDPA) and of AudioKV's
compression step on the same tensors, and their ratio (the overhead share).
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from audiokv import AudioKVAttention, AudioKVConfig
from benchmarks.harness import device_and_dtype, parser, timer_for, write_results


def bench(heads: int, kv_heads: int, dim: int, context: int, ratio: float, reps: int,
          device: torch.device, dtype: torch.dtype) -> dict:  # fmt: skip
    """One row: median attention and compression times at one context."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, h, context, dim, generator=gen).to(device, dtype) for h in (heads, kv_heads, kv_heads))
    cfg = AudioKVConfig(compression_ratio=ratio)
    layer = AudioKVAttention(cfg, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim,
                             head_prior=torch.linspace(0, 1, kv_heads, device=device))  # fmt: skip
    span = (context // 16, context - context // 16)
    timer = timer_for(device)

    def attend():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def compress():
        layer.compress(q, k, v, audio_span=span)

    attend(), compress()  # warm-up
    attention_t = [timer(attend) for _ in range(reps)]
    compress_t = [timer(compress) for _ in range(reps)]
    a, c = statistics.median(attention_t), statistics.median(compress_t)
    return {
        "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "context": context, "compression_ratio": ratio,
        "attention_s": a, "compress_s": c, "overhead_share": c / a,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--context", type=int, nargs="+", default=None, help="default: GPU 4k-64k, CPU 1k-4k")
    cli.add_argument("--shape", default="28,4,128", help="query heads, KV heads, head_dim (Qwen2.5-Omni-7B)")
    cli.add_argument("--ratio", type=float, default=0.7)
    cli.add_argument("--reps", type=int, default=10)
    args = cli.parse_args(argv)
    device, dtype = device_and_dtype(args)
    contexts = args.context or ([4096, 16384, 32768, 65536] if device.type == "cuda" else [1024, 4096])
    heads, kv_heads, dim = (int(x) for x in args.shape.split(","))
    rows = [bench(heads, kv_heads, dim, c, args.ratio, args.reps, device, dtype) for c in contexts]
    out = write_results("prefill", args, dtype, rows)
    print(f"{'context':>8} {'compress / prefill attention':>30}")
    for r in rows:
        print(f"{r['context']:>8} {r['overhead_share']:>30.1%}")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
