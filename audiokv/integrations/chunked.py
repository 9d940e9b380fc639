"""Chunked prefill (``AudioKVConfig.prefill_chunk``): the decoder sees a long prompt one chunk at a time.

The wrapper sits on the module that runs the decoder layers
(:func:`audiokv.integrations.apply.layer_stack`), so it gets the prompt after
the model has put the audio features into the embeddings: every family
chunks the same way. Each chunk goes through the
decoder with the cache filled by the earlier ones; its compressed layers then
keep a selection of the chunk (:meth:`AudioKVAttention.forward`, ``chunk``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from audiokv.attention import chunk_layout
from audiokv.cache import AudioKVCache

SEQUENCE_ARGS = ("input_ids", "inputs_embeds", "per_layer_inputs")  # [B, T, ...]
SLICED_ARGS = (*SEQUENCE_ARGS, "position_ids", "cache_position", "attention_mask")


def chunk_bounds(total: int, chunk: int, key_mask: Tensor | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk of a ``total``-token prompt.

    The first chunk also takes the padding (up to the last padding token of any
    row), so that every row has ``chunk`` real tokens in it and none after it.
    """
    first = chunk
    if key_mask is not None and not key_mask.all():
        first += int((~key_mask.bool()).nonzero()[:, 1].max()) + 1
    return chunk_layout(first, total, chunk)


def prefill_in_chunks(forward: Callable, prompt, chunk: int, args: tuple, kwargs: dict):
    """Run the decoder's ``forward(*args, **kwargs)``, a prefill longer than ``chunk`` tokens in chunks.

    ``prompt`` is the handle's shared prompt record: its ``key_mask`` places the
    padding, its ``chunk`` tells the engines which part of the prompt they see.
    Returns the decoder's output with the hidden states of every chunk.
    """
    if args:  # models call their decoder with keywords; signature() only for the rare positional call
        kwargs = dict(kwargs) | dict(zip(inspect.signature(forward).parameters, args, strict=False))
    x = kwargs.get("inputs_embeds")
    x = kwargs.get("input_ids") if x is None else x
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if x is None or x.shape[1] <= chunk or not isinstance(cache, AudioKVCache) or cache.get_seq_length() > 0:
        return forward(**kwargs)
    total = x.shape[1]
    for name in ("output_attentions", "output_hidden_states"):
        if kwargs.get(name):
            raise ValueError(f"prefill_chunk cannot return {name.removeprefix('output_')}: prefill the prompt at once")
    other = [n for n, v in kwargs.items() if isinstance(v, Tensor) and n not in SLICED_ARGS and total in v.shape]
    mask = kwargs.get("attention_mask")
    if other or (mask is not None and (not isinstance(mask, Tensor) or mask.dim() != 2)):
        raise ValueError(f"prefill_chunk cannot split {other or 'a non-2-D attention_mask'}: prefill at once")
    bounds = chunk_bounds(total, chunk, prompt.key_mask)
    if len(bounds) == 1:
        note = f"prefill_chunk: padding reaches past token {total - chunk}, so the prompt is prefilled at once"
        warnings.warn(note, stacklevel=3)
    outputs = []
    try:
        for start, end in bounds:
            part = dict(kwargs)
            for name in SEQUENCE_ARGS:
                if part.get(name) is not None:
                    part[name] = part[name][:, start:end]
            if part.get("position_ids") is not None:  # [B, T] or M-RoPE's [3, B, T]
                part["position_ids"] = part["position_ids"][..., start:end]
            if part.get("cache_position") is not None:
                part["cache_position"] = part["cache_position"][start:end]
            if mask is not None:
                part["attention_mask"] = mask[:, :end]
            prompt.chunk = (start, total)
            outputs.append(forward(**part))
    finally:
        prompt.chunk = None
    out = outputs[-1]
    out.last_hidden_state = torch.cat([o.last_hidden_state for o in outputs], 1)
    return out
