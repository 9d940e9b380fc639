"""A transformers cache whose compressed layers hold no K/V themselves and report the *logical* length.

The kept keys and values of a compressed layer live in its `AudioKVAttention`
page pool. The cache layer only counts tokens: `get_seq_length()` is the
number of tokens the model has seen (not the number kept), so the next
tokens get their true RoPE / M-RoPE positions after eviction. Layers that are
not compressed stay ordinary `DynamicCache` layers.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer, EncoderDecoderCache

from audiokv.attention import AudioKVAttention


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes its cache by and its outputs return it under: ``cache`` from
    transformers 5.2x on (which warns on ``past_key_values``), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class AudioKVLayer(CacheLayerMixin):
    """Cache layer of a compressed attention layer: passes new K/V through and counts tokens."""

    is_compileable = False
    is_sliding = False

    def __init__(self, engine: AudioKVAttention) -> None:
        super().__init__()
        self.engine = engine
        self.length = 0
        self._begun = 0  # tokens of the decode call `begin_step` counted ahead, until `update` (0: none)
        self._step = 0  # the same, until `end_step`
        self._mask_length = 0  # the mask length reported during that call
        self._seen: torch.Tensor | None = None  # and the tokens seen before it, as a tensor

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def begin_step(self, tokens: int) -> None:
        """Count a decode call's ``tokens`` before the model's forward runs, and prepare the engine for them.

        During that forward the layer reports, as transformers' static cache
        does, the tokens seen as a tensor and a mask length that stays the same
        until the pool grows (the logical length the pool can reach without
        growing): a compiled forward then reads no integer that changes every
        step. The compressed layers never read the model's mask. See
        :meth:`AudioKVAttention.begin_step`.
        """
        self._check_owner()
        self.engine.begin_step(tokens)
        if self._seen is None:
            self._seen = torch.zeros((), dtype=torch.long, device=self.engine.pool.lengths.device)
        self._seen.fill_(self.length)
        self.length += tokens
        self._begun = self._step = tokens
        self._mask_length = self.length + self.engine.pool.free_slots()

    def end_step(self, failed: bool) -> None:
        """Close the step :meth:`begin_step` opened; undo it if the forward ``failed`` (raised) or never reached us."""
        if self._step and (failed or self._begun or self.engine._begun):
            self.engine.cancel_step(self._step)
            self.length -= self._step
        self._begun = self._step = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """New K/V go straight to the attention engine; a first call starts a new sequence."""
        if self._begun:  # counted by begin_step
            self._begun = 0
            return key_states, value_states
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.length == 0:
            self.engine.reset()
            self.engine.owner = self
        self._check_owner()
        self.length += key_states.shape[-2]
        return key_states, value_states

    def _check_owner(self) -> None:
        """The engine's pool holds this layer's sequence, not one a later prefill through the same handle put there."""
        if self.engine.owner is not self:
            raise ValueError(
                "this cache's compressed tokens are gone: a later prefill through the same apply_audiokv handle "
                "replaced them (a handle holds one live sequence), or the handle was removed; prefill again"
            )

    def get_seq_length(self, *args) -> int | torch.Tensor:
        """Tokens seen before the current call (a 0-d tensor inside a call prepared by :meth:`begin_step`)."""
        return self._seen if self._begun else self.length

    def get_mask_sizes(self, query, *args) -> tuple[int, int]:
        """``(kv_length, kv_offset)``; ``query`` is a length (transformers >= 5.2x) or cache positions."""
        if self._begun:
            return self._mask_length, 0
        q_len = query if isinstance(query, int) else query.shape[0]
        return self.length + q_len, 0

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # the same method's name in transformers < 5.2x

    def reset(self) -> None:
        if self.engine.owner is self:  # an old cache must not wipe the sequence a later prefill put in the pools
            self.engine.reset()
        self.length = self._begun = self._step = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep batch rows ``indices`` (in that order; beam search and batch expansion go through here)."""
        if self.engine.owner is not self:  # the pools hold another sequence (or none): never reorder its rows
            if self.length:
                self._check_owner()
            return  # an empty or reset cache has no rows of its own
        self.engine.select_batch(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.engine.pool is not None:
            rows = self.engine.pool.num_rows // self.engine.num_kv_heads
            self.batch_select_indices(torch.arange(rows).repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens (negative: drop ``-max_length``), as ``DynamicCache.crop`` does.

        Only tokens appended after compression can go: cropping back to the
        compressed context after a question and its answer lets the same
        context answer the next question.
        """
        keep = self.length + max_length if max_length < 0 else max_length
        if keep >= self.length:
            return
        self._check_owner()
        prompt = self.engine.prompt_length
        if keep < prompt:
            raise ValueError(f"cannot crop a compressed cache to {keep} tokens: its compressed prompt has {prompt}")
        self.engine.drop_last(self.length - keep)
        self.length = keep


class AudioKVCache(DynamicCache):
    """`DynamicCache` whose compressed layers are :class:`AudioKVLayer`.

    Args:
        config: the model's config (decides the uncompressed layers' types).
        engines: ``{layer_idx: AudioKVAttention}`` of the compressed layers.
    """

    def __init__(self, config, engines: dict[int, AudioKVAttention]) -> None:
        super().__init__(config=config)
        num_layers = config.get_text_config(decoder=True).num_hidden_layers
        while len(self.layers) < num_layers:  # older transformers create layers lazily
            self.layers.append(DynamicLayer())
        for idx, engine in engines.items():
            self.layers[idx] = AudioKVLayer(engine)
        self.engines = engines

    def begin_step(self, tokens: int) -> None:
        """Prepare every compressed layer for a decode call of ``tokens`` new tokens (:meth:`AudioKVLayer.begin_step`).

        `apply_audiokv`'s forward pre-hook calls it, outside ``model.forward``,
        so that a compiled forward does tensor work only.
        """
        for layer in self.layers:
            if isinstance(layer, AudioKVLayer):
                layer.begin_step(tokens)

    def end_step(self, failed: bool) -> None:
        """After the model's forward, even one that raised (``failed``): undo the step where it did not complete."""
        for layer in self.layers:
            if isinstance(layer, AudioKVLayer):
                layer.end_step(failed)

    @property
    def kv_bytes(self) -> int:
        """Bytes of K/V held: the compressed layers' pools plus any ordinary layers' tensors."""
        held = sum(engine.kv_bytes for engine in self.engines.values())
        for layer in self.layers:
            if not isinstance(layer, AudioKVLayer) and getattr(layer, "keys", None) is not None:
                held += layer.keys.nbytes + layer.values.nbytes
        return held


def _checked(slot: str) -> property:
    """A cross layer's empty encoder keys or values: reading them raises once the pool no longer holds its clip."""

    def read(layer: AudioKVCrossLayer) -> torch.Tensor | None:
        held = getattr(layer, slot, None)
        if held is not None:
            layer._check_owner()
        return held

    def write(layer: AudioKVCrossLayer, tensor: torch.Tensor | None) -> None:
        setattr(layer, slot, tensor)

    return property(read, write)


class AudioKVCrossLayer(AudioKVLayer):
    """Cross-attention cache layer: the encoder K/V pass through once, then live in the engine's pool.

    Later decoder steps read ``keys`` / ``values`` (empty tensors that keep no
    encoder memory alive) and the engine attends over its pool instead. Reading
    them raises once the pool holds another clip (a later prefill through the
    same handle) or none (the handle removed): they would attend over nothing.
    """

    keys = _checked("_keys")
    values = _checked("_values")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.engine.reset()
        self.engine.owner = self
        self.length = key_states.shape[-2]
        self.keys = self.values = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[-1])
        return key_states, value_states

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.keys is not None:
            self.keys = self.values = self.keys[indices.to(self.keys.device)]


class AudioKVEncoderDecoderCache(EncoderDecoderCache):
    """Encoder-decoder cache: ordinary decoder self-attention, compressed cross-attention.

    Args:
        engines: ``{decoder_layer_idx: AudioKVAttention}`` of the cross-attention layers.
    """

    def __init__(self, engines: dict[int, AudioKVAttention]) -> None:
        layers = [AudioKVCrossLayer(engines[i]) for i in range(len(engines))]
        super().__init__(DynamicCache(), Cache(layers=layers))
        self.engines = engines

    @property
    def kv_bytes(self) -> int:
        """Bytes of the compressed cross-attention K/V (the pools)."""
        return sum(engine.kv_bytes for engine in self.engines.values())
