"""End-to-end generation: dense cache vs AudioKV vs a kvpress-style masked cache.

`python -m benchmarks.generate [--device cuda] [--context 16384 65536]` builds a
model with the real layer shapes of Qwen2.5-Omni-7B's language model but only a
few layers and random weights (no download), and for each cache measures
decode tokens/s, peak GPU memory (CUDA) and the KV bytes the cache holds:

- ``dense``: the unpatched model and its `DynamicCache`;
- ``audiokv``: `apply_audiokv` at each ratio (tokens evicted, memory freed);
- ``masked``: the same kept tokens hidden by an attention mask over the full
  cache, as kvpress' head-wise presses do (full memory, extra work per step).

The masked run also checks AudioKV: both attend over exactly the same tokens,
so their logits must agree, up to the first step where rounding (bf16 on GPU)
makes the greedy tokens part (``steps_compared``). Writes `benchmarks/results/generate-<device>.json`.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, Qwen2Config, Qwen2ForCausalLM
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from audiokv import AudioKVConfig, apply_audiokv
from audiokv.integrations.apply import attention_modules, set_attention_implementation
from benchmarks.harness import device_and_dtype, parser, write_results

SHAPES = {  # Qwen2.5-Omni-7B thinker's language model, and a tiny stand-in for CPU
    "qwen2.5-omni-7b": dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
                            intermediate_size=18944, vocab_size=152064),
    "tiny": dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                 intermediate_size=512, vocab_size=1000),
}  # fmt: skip
MASKED = "kvpress_masked"


def masked_attention(keep: dict[int, torch.Tensor]):
    """SDPA over the full cache; decode queries see only the prompt tokens in ``keep[layer]`` ([B, H_kv, T])."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        heads, q_len = query.shape[1], query.shape[2]
        if q_len > 1:  # prefill: dense and causal, as in the unpatched model
            out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
        else:
            prompt = keep[module.layer_idx]
            new = torch.ones(*prompt.shape[:2], key.shape[2] - prompt.shape[2], dtype=torch.bool, device=key.device)
            mask = torch.cat([prompt, new], -1).repeat_interleave(heads // key.shape[1], 1)[:, :, None]
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    return attention


def same_inputs(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading steps of two greedy runs' logits ``[B, steps, V]`` had the same inputs.

    Step ``i`` sees the tokens chosen at steps ``< i``: the runs are comparable
    up to and including the first step whose greedy tokens differ (in bf16 a
    near tie can fall either way, and from there the sequences part).
    """
    differ = (a.argmax(-1) != b.argmax(-1)).any(0).nonzero()
    return a.shape[1] if differ.numel() == 0 else int(differ[0]) + 1


def _generate(model, ids, new_tokens: int) -> tuple[float, torch.Tensor, object]:
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0)  # fmt: skip
    sync()
    return time.perf_counter() - start, torch.stack(out.logits, 1), out.past_key_values


def run(model, ids, new_tokens: int, reps: int) -> dict:
    """Decode tokens/s (prefill subtracted; medians of ``reps`` runs), peak memory and the logits of every step."""
    device = ids.device
    _generate(model, ids, 2)  # warm-up: compiles the kernels
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    prefill_s = statistics.median(_generate(model, ids, 1)[0] for _ in range(reps))
    runs = [_generate(model, ids, new_tokens) for _ in range(reps)]
    total_s, (_, logits, cache) = statistics.median(r[0] for r in runs), runs[-1]
    kv = getattr(cache, "kv_bytes", None)
    if kv is None:
        kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    return {
        "decode_tokens_per_s": (new_tokens - 1) / max(total_s - prefill_s, 1e-9),
        "prefill_s": prefill_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "kv_bytes": kv,
        "logits": logits,
    }


def bench(shape: str, layers: int, context: int, ratios: list[float], new_tokens: int, reps: int,
          device: torch.device, dtype: torch.dtype) -> list[dict]:  # fmt: skip
    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[shape], num_hidden_layers=layers, max_position_embeddings=max(context * 2, 4096))
    model = Qwen2ForCausalLM(config).to(device, dtype).eval()
    ids = torch.randint(1, config.vocab_size, (1, context), generator=torch.Generator().manual_seed(1)).to(device)
    base = {"shape": shape, "layers": layers, "context": context, "new_tokens": new_tokens}
    dense = run(model, ids, new_tokens, reps)
    rows = [{**base, "cache": "dense", "compression_ratio": 0.0, **dense}]
    for ratio in ratios:
        cfg = AudioKVConfig(compression_ratio=ratio, decode_reserve=new_tokens)
        with apply_audiokv(model, cfg) as handle:
            ours = run(model, ids, new_tokens, reps)
            keep = {}
            for idx, engine in handle.engines.items():
                kept = torch.zeros(*engine.budgets.shape, context, dtype=torch.bool, device=device)
                for b, h in torch.ones_like(engine.budgets).nonzero().tolist():
                    kept[b, h, engine.kept_indices[b, h, : engine.budgets[b, h]]] = True
                keep[idx] = kept
        AttentionInterface.register(MASKED, masked_attention(keep))
        ALL_MASK_ATTENTION_FUNCTIONS.register(MASKED, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        restore = set_attention_implementation(model, attention_modules(model, "self_attn").values(), MASKED)
        try:
            masked = run(model, ids, new_tokens, reps)
        finally:
            for cfg_, impl in restore:
                cfg_._attn_implementation = impl
        same = same_inputs(ours["logits"], masked["logits"])
        error = (ours["logits"][:, :same] - masked["logits"][:, :same]).float().abs().max().item()
        rows.append({**base, "cache": "audiokv", "compression_ratio": ratio, **ours, "max_logit_diff_vs_masked": error,
                     "steps_compared": same})  # fmt: skip
        rows.append({**base, "cache": "masked", "compression_ratio": ratio, **masked})
    for row in rows:
        del row["logits"]
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: GPU 7B shapes, CPU tiny")
    cli.add_argument("--layers", type=int, default=4)
    cli.add_argument("--context", type=int, nargs="+", default=None, help="default: GPU 16k 64k, CPU 2k")
    cli.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.7])
    cli.add_argument("--new-tokens", type=int, default=64)
    cli.add_argument("--reps", type=int, default=3, help="generate runs per cache; the median is reported")
    args = cli.parse_args(argv)
    device, dtype = device_and_dtype(args)
    gpu = device.type == "cuda"
    shape = args.shape or ("qwen2.5-omni-7b" if gpu else "tiny")
    contexts = args.context or ([16384, 65536] if gpu else [2048])
    rows = [
        r
        for c in contexts
        for r in bench(shape, args.layers, c, args.ratios, args.new_tokens, args.reps, device, dtype)
    ]
    out = write_results("generate", args, dtype, rows)
    print(f"{'context':>8} {'cache':>8} {'ratio':>6} {'tok/s vs dense':>15} {'KV held':>8} {'logit diff (steps)':>19}")
    for r in rows:
        dense = next(d for d in rows if d["context"] == r["context"] and d["cache"] == "dense")
        speed = r["decode_tokens_per_s"] / dense["decode_tokens_per_s"]
        diff = "" if "steps_compared" not in r else f"{r['max_logit_diff_vs_masked']:.1e} ({r['steps_compared']})"
        print(f"{r['context']:>8} {r['cache']:>8} {r['compression_ratio']:>6.1f} {speed:>15.2f} "
              f"{r['kv_bytes'] / dense['kv_bytes']:>8.1%} {diff:>19}")  # fmt: skip
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
