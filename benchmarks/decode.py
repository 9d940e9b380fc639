"""Decode attention for one layer: audiokv vs dense SDPA (full and uniformly cut cache).

`python -m benchmarks.decode [--device cuda] [--context 4096 16384 65536] [--batch 1 8]
[--shape 28,4,128 32,32,128] ...` writes `benchmarks/results/decode-<device>.json`.
audiokv runs the device's default kernel (compiled FlexAttention on GPU; on
CPU the per-row or, for many rows, the per-page kernel, where the per-row,
per-page and compiled FlexAttention kernels are each timed too, as ``rows``,
``pages`` and ``flex``). Per row it first checks each kernel against dense attention over
every row's stored (kept, merged) tokens (exact selection and merging are the
tests' job), compiles outside the timing, takes the median of many steps and counts
the graphs compiled during the timed steps (dynamo's ``unique_graphs``: its
``recompiles`` counter stays empty in torch 2.13 however often flex recompiles).
On GPU the layer is replicated until its caches are twice the L2 cache and
the steps rotate among the copies, so no step reads from L2; the dense
baselines rotate the same way. The baselines' caches
grow by one token per step, as the pool does. Achieved bandwidth (bytes of K/V
a step must read / time) is reported as a fraction of a measured
device-to-device copy. On CPU, quote ratios between rows of one run, never
absolute times.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch._dynamo.utils
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.kernel import reference_paged_attention
from benchmarks.harness import device_and_dtype, parser, timer_for, write_results

MAX_COPIES = 64


def copy_bandwidth(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    """Bytes per second of a device-to-device copy (read + write) of 1 GiB (CPU: 256 MiB)."""
    size = (1 << 30) if device.type == "cuda" else (1 << 28)
    src = torch.randn(size // torch.finfo(dtype).bits * 8, device=device).to(dtype)
    dst = torch.empty_like(src)
    timer = timer_for(device)
    dst.copy_(src)
    return 2 * src.nbytes / statistics.median(timer(lambda: dst.copy_(src)) for _ in range(reps))


def dense_backend(query: torch.Tensor, key: torch.Tensor) -> tuple[str, Callable]:
    """The flash SDPA backend where it runs these shapes (CUDA); otherwise the default one."""
    if query.device.type == "cuda":
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                F.scaled_dot_product_attention(query, key, key, enable_gqa=True)
            return "flash", lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)
        except RuntimeError:
            pass
    return "default", nullcontext


def bench(heads: int, kv_heads: int, dim: int, batch: int, context: int, ratio: float, steps: int,
          device: torch.device, dtype: torch.dtype, bandwidth: float, reserve: int | None = None,
          budgets: str = "skewed") -> dict:  # fmt: skip
    """One row: median decode-step times, achieved bandwidth and recompiles for one shape and ratio.

    ``budgets``: ``"skewed"`` (keys scaled so that heads keep different numbers of
    tokens, the longest row bounds a step) or ``"balanced"`` (every head keeps the average).
    """
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    reserve = steps + 8 if reserve is None else reserve
    skewed = budgets == "skewed"
    cfg = AudioKVConfig(
        compression_ratio=ratio, window=32, page_size=128, decode_reserve=reserve, safeguard=None if skewed else 1.0
    )
    prior = torch.linspace(0, 1, kv_heads)
    q, k, v = rand(batch, heads, context, dim), rand(batch, kv_heads, context, dim), rand(batch, kv_heads, context, dim)
    if skewed:
        k[:, :, : context // 2] *= 0.5  # skew the scores so head budgets differ

    def compressed_layer(kernel: str) -> AudioKVAttention:
        layer = AudioKVAttention(
            cfg, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim, head_prior=prior, kernel=kernel
        )
        layer.to(device)(q, k, v, audio_span=(16, context - 64))
        return layer

    first = compressed_layer("auto")
    kernels = {"audiokv": "auto"}
    if first.kernel_for(device) != "flex":  # CPU: every kernel, each as a user could pick it
        kernels.update(rows="rows", pages="pages", flex="flex")
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    copies = min(MAX_COPIES, max(1, math.ceil(2 * l2 / first.kv_bytes)))
    layers = {  # same tensors: same budgets, same kernel shapes
        name: [first if name == "audiokv" and c == 0 else compressed_layer(kernel) for c in range(copies)]
        for name, kernel in kernels.items()
    }
    kept_per_head = first.budgets
    kept = int(kept_per_head.float().mean())

    # correctness first: each kernel against dense attention over every row's stored (merged) tokens
    nq, nk, nv = rand(batch, heads, 1, dim), rand(batch, kv_heads, 1, dim), rand(batch, kv_heads, 1, dim)
    worst = 0.0
    for copies_of_kernel in layers.values():
        got = copies_of_kernel[0](nq, nk, nv)
        ref = reference_paged_attention(nq, copies_of_kernel[0].pool, scale=dim**-0.5)
        worst = max(worst, (got.float() - ref.float()).abs().max().item())
        for layer in copies_of_kernel[1:]:  # every copy has decoded one token before the timing
            layer(nq, nk, nv)

    per_copy = math.ceil(steps / copies) + 1  # tokens each copy's baseline cache grows by
    dense = [[torch.cat([t, rand(batch, kv_heads, per_copy, dim)], 2) for t in (k, v)] for _ in range(copies)]
    cut = [[torch.cat([t[:, :, -kept:], rand(batch, kv_heads, per_copy, dim)], 2) for t in (k, v)]
           for _ in range(copies)]  # fmt: skip
    new = [(rand(batch, heads, 1, dim), rand(batch, kv_heads, 1, dim), rand(batch, kv_heads, 1, dim)) for _ in range(8)]
    timer = timer_for(device)
    seen = [i // copies + 2 for i in range(steps)]  # tokens decoded by step i's copy, this one included
    backend, backend_context = dense_backend(new[0][0], dense[0][0])
    views = {name: [[t[:, :, : length + seen[i]] for t in caches[i % copies]] for i in range(steps)]
             for name, caches, length in (("dense", dense, context), ("cut", cut, kept))}  # fmt: skip
    times = {name: [] for name in (*layers, "dense", "cut")}
    torch._dynamo.utils.counters.clear()
    names, shuffle = list(times), torch.Generator().manual_seed(1)
    with backend_context():  # they take turns each step, so a slow moment of the machine hits them all,
        for i in range(steps):  # in a new order each step: a kernel ran slower right after another on this CPU
            query = new[i % 8][0]
            for name in (names[j] for j in torch.randperm(len(names), generator=shuffle).tolist()):
                if name in layers:
                    times[name].append(timer(lambda i=i, c=layers[name]: c[i % copies](*new[i % 8])))
                else:
                    kv = views[name][i]
                    times[name].append(
                        timer(lambda q=query, kv=kv: F.scaled_dot_product_attention(q, *kv, enable_gqa=True))
                    )
    recompiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # graphs compiled while timing
    a, d, c = (statistics.median(times[name]) for name in ("audiokv", "dense", "cut"))
    token_bytes = 2 * dim * torch.finfo(dtype).bits // 8  # K and V of one token of one head
    decoded = statistics.mean(seen)
    slot_bytes = token_bytes + (4 if first.pool.mass_pages is not None else 0)  # + an fp32 log mass
    audiokv_read = (int(kept_per_head.sum()) + batch * kv_heads * decoded) * slot_bytes
    dense_read = batch * kv_heads * (context + decoded) * token_bytes
    return {
        "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "batch": batch, "context": context,
        "compression_ratio": ratio, "head_budgets": budgets,
        "kept_per_head_min_max": [int(kept_per_head.min()), int(kept_per_head.max())],
        "max_abs_error": worst, "copies_rotated": copies, "steps": steps, "dense_backend": backend,
        "audiokv_kernel": first.step_kernel(device),
        "audiokv_s": a, "dense_sdpa_s": d, "uniform_cut_sdpa_s": c,
        **{f"{n}_s": statistics.median(times[n]) if n in times else None for n in ("rows", "pages", "flex")},
        "audiokv_vs_ideal": a / (d * audiokv_read / dense_read),  # ideal: dense time scaled by the bytes read
        "audiokv_bandwidth_fraction": audiokv_read / a / bandwidth,
        "dense_bandwidth_fraction": dense_read / d / bandwidth,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "kv_bytes": first.kv_bytes, "kv_bytes_dense": batch * kv_heads * (context + steps) * token_bytes,
        "recompiles_during_decode": recompiles, "decode_reserve": cfg.decode_reserve,
        "pool_growths": first.pool.version,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--context", type=int, nargs="+", default=[2048])
    cli.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.4, 0.7, 0.9])
    cli.add_argument("--shape", nargs="+", default=["28,4,64"], help="query heads, KV heads, head_dim")
    cli.add_argument("--batch", type=int, nargs="+", default=[1])
    cli.add_argument("--budgets", nargs="+", choices=("skewed", "balanced"), default=["skewed"])
    cli.add_argument("--steps", type=int, default=40)
    cli.add_argument(
        "--reserve",
        type=int,
        default=None,
        help="decode reserve per row (default: steps + 8, so the pool never grows while timed)",
    )
    args = cli.parse_args(argv)
    device, dtype = device_and_dtype(args)
    bandwidth = copy_bandwidth(device, dtype)
    rows = [
        bench(*(int(x) for x in shape.split(",")), bsz, ctx, r, args.steps, device, dtype, bandwidth, args.reserve, b)
        for shape in args.shape
        for b in args.budgets
        for bsz in args.batch
        for ctx in args.context
        for r in args.ratios
    ]
    out = write_results("decode", args, dtype, rows)
    header = ["heads", "B", "ctx", "ratio", "kept/head", "err", "audiokv/dense", "vs ideal", "cut/dense", "flex/dense",
              "bw", "KV held", "recomp"]  # fmt: skip
    widths = [8, 2, 6, 5, 11, 8, 13, 8, 9, 10, 5, 8, 6]
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in rows:
        kept = "{}-{}".format(*r["kept_per_head_min_max"])
        print(
            f"{r['heads']:>3}/{r['kv_heads']:<4} {r['batch']:>2} {r['context']:>6} {r['compression_ratio']:>5.1f} "
            f"{kept:>11} {r['max_abs_error']:>8.1e} {r['audiokv_s'] / r['dense_sdpa_s']:>13.2f} "
            f"{r['audiokv_vs_ideal']:>8.2f} {r['uniform_cut_sdpa_s'] / r['dense_sdpa_s']:>9.2f} "
            f"{(r['flex_s'] or float('nan')) / r['dense_sdpa_s']:>10.2f} "
            f"{r['audiokv_bandwidth_fraction']:>5.0%} {r['kv_bytes'] / r['kv_bytes_dense']:>8.1%} "
            f"{r['recompiles_during_decode']:>6}"
        )
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
