"""Decode attention for one layer: compiled audiokv vs dense SDPA (full and uniformly cut cache).

`python -m benchmarks.decode [--device cuda] [--context 4096] ...` writes
`benchmarks/results/decode-<device>.json`. It checks correctness against the
dense reference over the kept tokens first, compiles outside the timing, takes
the median of many steps, and counts recompiles over the decode steps. On CPU,
quote ratios between rows of one run, never absolute times.
"""

from __future__ import annotations

import statistics

import torch
import torch._dynamo.utils
import torch.nn.functional as F

from audiokv import AudioKVAttention, AudioKVConfig
from benchmarks.harness import device_and_dtype, parser, timer_for, write_results


def bench(heads: int, kv_heads: int, dim: int, batch: int, context: int, ratio: float, steps: int,
          device: torch.device, dtype: torch.dtype) -> dict:  # fmt: skip
    """One row: median decode-step times and recompiles for one shape and ratio."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    cfg = AudioKVConfig(compression_ratio=ratio, window=32, page_size=128, decode_reserve=steps + 8)
    layer = AudioKVAttention(cfg, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim,
                             head_prior=torch.linspace(0, 1, kv_heads))  # fmt: skip
    q, k, v = rand(batch, heads, context, dim), rand(batch, kv_heads, context, dim), rand(batch, kv_heads, context, dim)
    k[:, :, : context // 2] *= 0.5  # skew the scores so head budgets differ
    layer(q, k, v, audio_span=(16, context - 64))
    kept = int(layer.budgets.float().mean())
    cut_k, cut_v = k[:, :, -kept:].contiguous(), v[:, :, -kept:].contiguous()
    new = [
        (rand(batch, heads, 1, dim), rand(batch, kv_heads, 1, dim), rand(batch, kv_heads, 1, dim)) for _ in range(steps)
    ]

    # correctness first: one step against dense attention over exactly the kept tokens
    nq, nk, nv = new[0]
    got = layer(nq, nk, nv)
    worst = 0.0
    for b in range(batch):
        for h in range(kv_heads):
            idx = layer.kept_indices[b, h, : layer.budgets[b, h]]
            kk = torch.cat([k[b, h, idx], nk[b, h]]).float()
            vv = torch.cat([v[b, h, idx], nv[b, h]]).float()
            g = heads // kv_heads
            ref = torch.softmax(nq[b, h * g : (h + 1) * g, 0].float() @ kk.T * dim**-0.5, -1) @ vv
            worst = max(worst, (got[b, h * g : (h + 1) * g, 0].float() - ref).abs().max().item())

    timer = timer_for(device)
    torch._dynamo.utils.counters.clear()
    audiokv_t = [timer(lambda s=s: layer(*s)) for s in new[1:]]
    recompiles = (
        sum(torch._dynamo.utils.counters["recompiles"].values()) if "recompiles" in torch._dynamo.utils.counters else 0
    )
    dense_t = [timer(lambda s=s: F.scaled_dot_product_attention(s[0], k, v, enable_gqa=True)) for s in new[1:]]
    cut_t = [timer(lambda s=s: F.scaled_dot_product_attention(s[0], cut_k, cut_v, enable_gqa=True)) for s in new[1:]]
    dense_bytes = 2 * batch * kv_heads * context * dim * k.element_size()
    return {
        "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "batch": batch, "context": context,
        "compression_ratio": ratio, "kept_per_head_min_max": [int(layer.budgets.min()), int(layer.budgets.max())],
        "max_abs_error": worst, "audiokv_s": statistics.median(audiokv_t), "dense_sdpa_s": statistics.median(dense_t),
        "uniform_cut_sdpa_s": statistics.median(cut_t), "kv_bytes": layer.kv_bytes, "kv_bytes_dense": dense_bytes,
        "recompiles_during_decode": recompiles,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--context", type=int, nargs="+", default=[2048])
    cli.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.4, 0.7, 0.9])
    cli.add_argument("--shape", default="28,4,64", help="query heads, KV heads, head_dim")
    cli.add_argument("--batch", type=int, default=1)
    cli.add_argument("--steps", type=int, default=40)
    args = cli.parse_args(argv)
    device, dtype = device_and_dtype(args)
    heads, kv_heads, dim = (int(x) for x in args.shape.split(","))
    rows = [
        bench(heads, kv_heads, dim, args.batch, ctx, r, args.steps, device, dtype)
        for ctx in args.context
        for r in args.ratios
    ]
    out = write_results("decode", args, dtype, rows)
    header = ["ctx", "ratio", "kept/head", "err", "audiokv/dense", "cut/dense", "KV held", "recomp"]
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, [6, 5, 11, 8, 13, 9, 8, 6], strict=True)))
    for r in rows:
        kept = "{}-{}".format(*r["kept_per_head_min_max"])
        print(
            f"{r['context']:>6} {r['compression_ratio']:>5.1f} {kept:>11} {r['max_abs_error']:>8.1e} "
            f"{r['audiokv_s'] / r['dense_sdpa_s']:>13.2f} {r['uniform_cut_sdpa_s'] / r['dense_sdpa_s']:>9.2f} "
            f"{r['kv_bytes'] / r['kv_bytes_dense']:>8.1%} {r['recompiles_during_decode']:>6}"
        )
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
