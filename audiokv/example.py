"""A self-contained example of one compressed attention layer (no model weights needed).

It builds a synthetic layer shaped like Qwen2.5-Omni's language model (28
query / 4 KV heads, GQA group 7) over a prompt whose middle is an "audio" span
with slowly varying keys, compresses it at several ratios, decodes a few
tokens, and reports the memory really held and the output error against
decoding over the full cache.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from audiokv.attention import AudioKVAttention
from audiokv.config import AudioKVConfig


def synthetic_layer(length: int, *, heads: int, kv_heads: int, dim: int, window: int, seed: int = 0):
    """A prompt ``q, k, v`` (``[1, H, T, D]``) plus a query generator for decoding.

    Keys drift slowly along time (like audio frames). Each KV head is "interested"
    in a few moments of the prompt: the observation-window queries and the decode
    queries point at keys near those moments, so attention is peaked as in real
    models and the window predicts what decoding will read.
    """
    gen = torch.Generator().manual_seed(seed)
    group = heads // kv_heads
    drift = torch.randn(1, kv_heads, length, dim, generator=gen).cumsum(2) / length**0.5
    k = drift * 4 + torch.randn(1, kv_heads, length, dim, generator=gen)
    v = torch.randn(1, kv_heads, length, dim, generator=gen)
    moments = torch.randint(0, length, (kv_heads, 6), generator=gen)

    def queries(n: int) -> torch.Tensor:
        pick = moments[:, torch.randint(0, 6, (n,), generator=gen)]  # [H_kv, n]
        pick = (pick + torch.randint(-16, 17, pick.shape, generator=gen)).clamp(0, length - 1)
        target = torch.stack([k[0, h, pick[h]] for h in range(kv_heads)])  # [H_kv, n, D]
        target = target.repeat_interleave(group, 0)
        return (0.6 * target + torch.randn(heads, n, dim, generator=gen))[None]

    q = torch.randn(1, heads, length, dim, generator=gen)
    q[:, :, -window:] = queries(window)
    return q, k, v, queries, gen


def run_example(length: int = 4096, ratios: tuple[float, ...] = (0.0, 0.4, 0.7, 0.9), steps: int = 16) -> list[dict]:
    """Compress, decode ``steps`` tokens and compare with the full cache for each ratio.

    Returns one dict per ratio: kept tokens per head, KV bytes held vs dense,
    and the relative error of the decode outputs against full-cache attention.
    """
    heads, kv_heads, dim, window = 28, 4, 64, 32
    q, k, v, queries, gen = synthetic_layer(length, heads=heads, kv_heads=kv_heads, dim=dim, window=window)
    span = (length // 16, length - length // 16)
    new = [(queries(1), *(torch.randn(1, kv_heads, 1, dim, generator=gen) for _ in "kv")) for _ in range(steps)]
    dense_bytes = 2 * kv_heads * (length + steps) * dim * 4
    rows = []
    for ratio in ratios:
        cfg = AudioKVConfig(compression_ratio=ratio, window=window, decode_reserve=steps)
        layer = AudioKVAttention(cfg, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim)
        layer(q, k, v, audio_span=span)
        keys, values = k, v
        err_num = err_den = 0.0
        start = time.perf_counter()
        for nq, nk, nv in new:
            out = layer(nq, nk, nv)
            keys, values = torch.cat([keys, nk], 2), torch.cat([values, nv], 2)
            full = F.scaled_dot_product_attention(nq, keys, values, enable_gqa=True)
            err_num += (out - full).pow(2).sum().item()
            err_den += full.pow(2).sum().item()
        rows.append(
            {
                "compression_ratio": ratio,
                "kept_per_head": layer.budgets[0].tolist(),
                "kv_bytes": layer.kv_bytes,
                "kv_bytes_dense": dense_bytes,
                "relative_error": (err_num / err_den) ** 0.5,
                "decode_seconds": time.perf_counter() - start,
            }
        )
    return rows


def print_example(rows: list[dict]) -> None:
    """Print the example's table."""
    print("One synthetic attention layer: 28 query / 4 KV heads, head_dim 64 (Qwen2.5-Omni-like)")
    print(f"{'ratio':>6} {'kept tokens per KV head':>26} {'KV held':>10} {'of dense':>9} {'rel. error':>11}")
    for r in rows:
        kept = "/".join(str(n) for n in r["kept_per_head"])
        share = r["kv_bytes"] / r["kv_bytes_dense"]
        kib = r["kv_bytes"] / 2**10
        ratio, error = r["compression_ratio"], r["relative_error"]
        print(f"{ratio:>6.1f} {kept:>26} {kib:>7.0f}KiB {share:>8.1%} {error:>11.2e}")
    print("ratio = fraction of KV entries removed.")
    print("KV held = what the page pool allocated, decode reserve included.")
