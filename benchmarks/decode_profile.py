"""Where one decode step's time goes: host time, device time and kernel launches, audiokv against dense SDPA.

`python -m benchmarks.decode_profile [--device cuda] [--context 16384] [--shape 28,4,128] [--ratio 0.7]`
profiles ``--steps`` decode calls of one compressed layer (the eager call a
model makes: `begin_step`, the pool write, the mask update, compiled
FlexAttention) with `torch.profiler`, and the same number of dense SDPA calls
over the full cache. Per step it reports the wall time, the summed device time
of the kernels, the kernel launches and the operators with the most device
time; on CUDA also the FlexAttention call alone replayed from a CUDA graph
(no host work at all). A step whose wall time far exceeds its device time is
bound by the host (Python, launches, guards), not by reading the cache.
Writes `benchmarks/results/decode-profile-<device>.json`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.kernel import paged_attention
from benchmarks.harness import device_and_dtype, parser, timer_for, write_results


def profiled(fn: Callable[[], object], steps: int, device: torch.device) -> dict:
    """Wall, device time and launches per call of ``fn`` (microseconds), and its top operators."""
    timer = timer_for(device)
    fn()
    wall = statistics.median(timer(fn) for _ in range(steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.self_device_time_total > 0 and e.device_type != torch.autograd.DeviceType.CPU]
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:6]
    return {
        "wall_us": wall * 1e6,
        "device_us": sum(e.self_device_time_total for e in kernels) / steps,
        "launches": sum(e.count for e in events if "LaunchKernel" in e.key) / steps,
        "top": {e.key[:80]: e.self_device_time_total / steps for e in top},
    }


def graphed_us(fn: Callable[[], object], steps: int) -> float | None:
    """Median time of ``fn`` replayed from a CUDA graph (device work only), or None where capture fails."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as err:
        print(f"CUDA graph capture failed: {str(err).splitlines()[0]}")
        return None
    timer = timer_for(torch.device("cuda"))
    graph.replay()
    return statistics.median(timer(graph.replay) for _ in range(steps)) * 1e6


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--context", type=int, default=16384)
    cli.add_argument("--shape", default="28,4,128", help="query heads, KV heads, head_dim")
    cli.add_argument("--batch", type=int, default=1)
    cli.add_argument("--ratio", type=float, default=0.7)
    cli.add_argument("--steps", type=int, default=50)
    args = cli.parse_args(argv)
    device, dtype = device_and_dtype(args)
    heads, kv_heads, dim = (int(x) for x in args.shape.split(","))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q = rand(args.batch, heads, args.context, dim)
    k, v = rand(args.batch, kv_heads, args.context, dim), rand(args.batch, kv_heads, args.context, dim)
    cfg = AudioKVConfig(compression_ratio=args.ratio, window=32, page_size=128, decode_reserve=3 * args.steps + 16)
    layer = AudioKVAttention(cfg, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim,
                             head_prior=torch.linspace(0, 1, kv_heads)).to(device)  # fmt: skip
    layer(q, k, v, audio_span=(16, args.context - 64))
    new = rand(args.batch, heads, 1, dim), rand(args.batch, kv_heads, 1, dim), rand(args.batch, kv_heads, 1, dim)
    dense_kv = rand(args.batch, kv_heads, args.context, dim)
    row = {
        "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "batch": args.batch, "context": args.context,
        "compression_ratio": args.ratio, "kernel": layer.step_kernel(device), "steps": args.steps,
        "audiokv_step": profiled(lambda: layer(*new), args.steps, device),
        "dense_sdpa": profiled(lambda: F.scaled_dot_product_attention(new[0], dense_kv, dense_kv, enable_gqa=True),
                               args.steps, device),
    }  # fmt: skip
    if device.type == "cuda" and row["kernel"] == "flex":
        layer.begin_step(1)  # the attention call alone, over the pool as the last step left it
        mask = layer.block_mask.mask(1)
        row["flex_call_graphed_us"] = graphed_us(
            lambda: paged_attention(new[0], layer.pool, mask, scale=layer.scaling), args.steps
        )
        layer.cancel_step(1)
    write_results("decode-profile", args, dtype, [row])
    for name in ("audiokv_step", "dense_sdpa"):
        r = row[name]
        times = f"wall {r['wall_us']:8.1f} us, device {r['device_us']:8.1f} us"
        print(f"{name:>13}: {times}, launches {r['launches']:5.1f}")
        for op, us in r["top"].items():
            print(f"{'':>15}{us:8.1f} us  {op}")
    if row.get("flex_call_graphed_us") is not None:
        print(f"flex call replayed from a CUDA graph: {row['flex_call_graphed_us']} us")
    return row


if __name__ == "__main__":
    main()
