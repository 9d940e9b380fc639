"""Passkey retrieval: can a compressed decoder-only LLM still find a number hidden in filler text?

Each sample hides a random 5-digit key at a random depth of a filler text of a
fixed token length and asks for it at the end. All samples of a run have the
same length (built at the token level), so they run as one batch with no
padding. A sample is correct when the key appears in the greedy answer.

Two protocols: *query-aware* compresses the whole prompt, question included
(its last tokens are the observation window); *query-agnostic* compresses the
context before the question is seen, then appends the question to the
compressed cache, as one would to ask several questions about one context.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from audiokv.cache import cache_argument
from audiokv.config import AudioKVConfig
from audiokv.eval import has_repetition
from audiokv.integrations import apply_audiokv
from audiokv.policies import get_policy

INTRO = "There is important information hidden in this text. Find it and remember it. "
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"


def passkey_prompts(tokenizer, context: int, n: int, seed: int = 0) -> tuple[Tensor, list[str]]:
    """``n`` prompts of exactly ``context`` tokens, each hiding a key at a random depth.

    Returns:
        ``[n, context]`` input ids and the ``n`` keys.
    """

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    rng = random.Random(seed)
    intro, filler, question = encode(INTRO), encode(FILLER), encode(QUESTION)
    rows, keys = [], []
    for _ in range(n):
        key = str(rng.randint(10_000, 99_999))
        needle = encode(NEEDLE.format(key=key))
        room = context - len(intro) - len(needle) - len(question)
        if room < 2 * len(filler):
            least = context - room + 2 * len(filler)
            raise ValueError(f"context {context} is too short for a passkey prompt; use at least {least} tokens")
        body = (filler * (room // len(filler) + 1))[:room]
        depth = rng.randint(1, room // len(filler) - 1) * len(filler)  # at a sentence boundary in the filler
        rows.append(intro + body[:depth] + needle + body[depth:] + question)
        keys.append(key)
    return torch.tensor(rows), keys


def dense_kv_bytes(model: nn.Module, tokens: int, batch: int) -> int:
    """Bytes a dense cache holds for ``batch`` sequences of ``tokens`` tokens."""
    cfg = model.config.get_text_config(decoder=True)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    element = next(model.parameters()).element_size()
    return cfg.num_hidden_layers * 2 * kv_heads * head_dim * tokens * batch * element


PASSKEY_CONFIG = AudioKVConfig(window=16)  # query-aware: the question (~16 tokens) is the observation window


@torch.no_grad()
def evaluate_passkey(
    model: nn.Module,
    tokenizer,
    policies: list[str],
    ratios: list[float],
    *,
    context: int = 2048,
    n: int = 8,
    config: AudioKVConfig | None = None,
    max_new_tokens: int = 8,
    protocol: Literal["query-aware", "query-agnostic"] = "query-aware",
    progress: bool = True,
) -> list[dict]:
    """Passkey accuracy under every (policy, ratio); ``full`` runs once at ratio 0.

    ``config`` sets every knob but the ratio and the decode reserve (the tokens
    appended after compression); default :data:`PASSKEY_CONFIG`. Its ``seed``
    also draws the prompts (keys and depths). ``protocol``: see the module docstring.

    Returns one row per run: ``policy``, ``compression_ratio``, ``accuracy``,
    ``kv_bytes`` and ``kv_bytes_full`` (per sample, after generation: what the
    compressed pools held, and what a dense cache holds), ``peak_kv_bytes``
    (per sample, the handle's), ``repetition_rate``, ``n``, ``context``,
    ``protocol``, ``prefill_chunk`` and ``seconds``.
    """
    if protocol not in ("query-aware", "query-agnostic"):
        raise ValueError(f"protocol must be 'query-aware' or 'query-agnostic', got {protocol!r}")
    for name in policies:
        get_policy(name)
    ids, keys = passkey_prompts(tokenizer, context, n, seed=(config or PASSKEY_CONFIG).seed)
    ids = ids.to(next(model.parameters()).device)
    question = len(tokenizer(QUESTION, add_special_tokens=False).input_ids) if protocol == "query-agnostic" else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    runs = [(p, 0.0 if p == "full" else r) for p in policies for r in (ratios if p != "full" else [0.0])]
    rows = []
    cache_key = cache_argument(model)
    for policy, ratio in tqdm(runs, desc=f"passkey @ {context} tokens", unit="run", disable=not progress):
        start = time.perf_counter()
        cfg = replace(config or PASSKEY_CONFIG, compression_ratio=ratio, decode_reserve=question + max_new_tokens)
        with apply_audiokv(model, cfg, policy=policy) as handle:
            cache = None
            if question:  # compress the context alone; the question is appended to the compressed cache
                cache = getattr(model(ids[:, :-question], use_cache=True, logits_to_keep=1), cache_key)
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), **{cache_key: cache}, max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=pad,
            )  # fmt: skip
            held, peak = handle.kv_bytes, handle.peak_kv_bytes
        answers = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        rows.append(
            {
                "policy": policy,
                "compression_ratio": ratio,
                "accuracy": sum(k in a for k, a in zip(keys, answers, strict=True)) / n,
                "kv_bytes": held / n,
                "kv_bytes_full": dense_kv_bytes(model, out.shape[1] - 1, 1),
                "peak_kv_bytes": peak / n,
                "repetition_rate": sum(map(has_repetition, answers)) / n,
                "n": n,
                "context": context,
                "protocol": protocol,
                "prefill_chunk": cfg.prefill_chunk,
                "seconds": time.perf_counter() - start,
                "answers": answers,
            }
        )
    return rows
