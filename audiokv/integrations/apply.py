"""The generic decoder path.

`apply_audiokv` gives each self-attention module of the language model an
`AudioKVAttention` engine (as the submodule ``audiokv``; the module's own
projections, norms and RoPE keep running, no weights are copied) and routes
the model's attention through the ``"audiokv"`` attention implementation:
compressed layers attend through their engine, other layers through SDPA. A
forward pre-hook swaps a fresh cache for an :class:`AudioKVCache` at prefill
and records each row's audio span (from the audio placeholder token ids) and
padding mask, which the engines use when they compress.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from audiokv.attention import AudioKVAttention, KVMeter, SharedKVAttention
from audiokv.cache import AudioKVCache, AudioKVEncoderDecoderCache, cache_argument
from audiokv.config import AudioKVConfig
from audiokv.heads import HeadScores
from audiokv.integrations.chunked import prefill_in_chunks
from audiokv.integrations.families import audio_token_id, family_of, layer_roles
from audiokv.policies import Policy, get_policy

IMPLEMENTATION = "audiokv"


class NoCalibrationWarning(UserWarning):
    """A policy that weights heads by a calibration runs without one."""


@dataclass
class _Prompt:
    """Per-prompt facts the engines read at compression time."""

    audio_span: Tensor | None = None  # [B, T] bool: the audio tokens; cross-attention: the sound
    key_mask: Tensor | None = None  # [B, T] bool
    decode_tokens: int | None = None  # tokens the running `generate` call appends after the prompt
    chunk: tuple[int, int] | None = None  # (start, total) of the prompt chunk being prefilled
    bypass: bool = False  # a forward without a cache (use_cache=False): plain attention, nothing kept


def generation_config(model: nn.Module, kwargs: dict) -> object:
    """The generation config a ``model.generate(**kwargs)`` call runs under (None: the model has none)."""
    return kwargs.get("generation_config") or getattr(model, "generation_config", None)


def decode_tokens(model: nn.Module, args: tuple, kwargs: dict) -> int | None:
    """Tokens ``model.generate(*args, **kwargs)`` will append to the cache after the prompt (None: unknown).

    The last generated token is never fed back, so that is ``max_new_tokens - 1``.
    """
    config = generation_config(model, kwargs)
    new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if new is None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        length = kwargs.get("max_length", getattr(config, "max_length", None))
        if not isinstance(ids, Tensor) or length is None:
            return None
        new = length - ids.shape[-1]
    return max(int(new) - 1, 0)


def _new_tokens(args: tuple, kwargs: dict) -> int:
    """Tokens a decoder-only model's forward call adds (its ``input_ids`` or ``inputs_embeds``)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    return (ids if ids is not None else kwargs["inputs_embeds"]).shape[1]


def audio_tokens(input_ids: Tensor, token_id: int | None) -> Tensor | None:
    """``[B, T]`` bool: the audio placeholder tokens of each row, several clips included (None: no audio)."""
    if token_id is None:
        return None
    is_audio = input_ids == token_id
    return is_audio.cpu() if is_audio.any() else None


def sound_frames(feature_mask: Tensor | None, frames: int) -> Tensor | None:
    """``[B, frames]`` bool: the encoder frames that hold sound, from a ``[B, F]`` mask over the input features.

    Whisper pads every input to 30 s; its feature extractor's ``attention_mask``
    (``return_attention_mask=True``) marks the real audio, and
    :func:`audiokv.transcribe.log_mel`'s also leaves out the quiet before
    and between the speech. The encoder maps the ``F`` feature frames onto
    ``frames`` outputs; a frame holds sound if any input it overlaps did.
    None without a mask.
    """
    if feature_mask is None:
        return None
    count = feature_mask.shape[-1]
    out = torch.arange(frames)
    first, end = out * count // frames, ((out + 1) * count + frames - 1) // frames  # the inputs each frame overlaps
    marked = torch.nn.functional.pad(feature_mask.detach().cpu().bool().long().cumsum(-1), (1, 0))  # [B, F + 1]
    return marked[:, end] > marked[:, first]


def window_mask(mask: Tensor | None, frames: int) -> Tensor | None:
    """A cross-attention model's ``[B, F]`` feature mask over one encoder window; None (with a warning) if longer.

    Whisper's encoder turns ``2 * frames`` feature frames (30 s) into ``frames``
    outputs, and pads shorter features to that: a shorter mask (``padding=
    "longest"``) is padded the same way. transformers' long-form ``generate``
    (audio over 30 s) passes the whole recording's mask to every 30 s window;
    where a window starts in it is not known here, so such a mask is not read
    (every frame counts as sound).
    """
    if mask is None or mask.shape[-1] == 2 * frames:
        return mask
    if mask.shape[-1] < 2 * frames:
        return torch.nn.functional.pad(mask, (0, 2 * frames - mask.shape[-1]))
    warnings.warn(
        f"the attention mask covers {mask.shape[-1]} feature frames, not one {2 * frames}-frame window "
        "(long-form generate?): audiokv ignores it and treats every encoder frame as sound",
        stacklevel=3,
    )
    return None


def _batch_rows(args: tuple, kwargs: dict) -> int | None:
    """Rows of a cross-attention model's forward call: its decoder's input or the encoder's output (None: unknown)."""
    for name in ("decoder_input_ids", "decoder_inputs_embeds", "input_features"):
        if isinstance(kwargs.get(name), Tensor):
            return kwargs[name].shape[0]
    encoded = kwargs.get("encoder_outputs")
    if encoded is not None:
        return encoded[0].shape[0]
    return args[0].shape[0] if args and isinstance(args[0], Tensor) else None


def refuse_attention_weights(kwargs: dict, generation_config: object = None) -> None:
    """One-line error for a call that asks for attention weights, which compressed layers cannot give.

    Whisper's word timestamps (``return_token_timestamps``, ``pipeline(return_timestamps="word")``)
    align tokens by their cross-attention weights over every encoder frame;
    compressed layers attend over the kept frames only and return no weights.
    """
    asked = [  # an argument of the call wins over the generation config's default
        name
        for name in ("output_attentions", "return_token_timestamps")
        if (kwargs[name] if kwargs.get(name) is not None else getattr(generation_config, name, False))
    ]
    if kwargs.get("return_timestamps") == "word":
        asked.append("return_timestamps='word'")
    if asked:
        raise ValueError(
            f"{', '.join(asked)} {'needs' if len(asked) == 1 else 'need'} attention weights over the whole cache, "
            "which audiokv's compressed layers do not keep; call without it, or remove the handle first"
        )


def _audiokv_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    engine: AudioKVAttention | SharedKVAttention | None = getattr(module, "audiokv", None)
    if engine is None or engine.prompt.bypass:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    prompt: _Prompt = engine.prompt
    if scaling is not None:  # e.g. Whisper pre-scales its queries and passes 1.0
        engine.scaling = scaling
    key_mask = None if prompt.key_mask is None else prompt.key_mask.to(key.device)  # layers may sit on other devices
    out = engine(
        query, key, value,
        audio_span=prompt.audio_span, key_mask=key_mask, decode_tokens=prompt.decode_tokens, chunk=prompt.chunk,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, _audiokv_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@dataclass
class AudioKVHandle:
    """What `apply_audiokv` changed; `remove()` (or leaving a ``with`` block) undoes it."""

    model: nn.Module
    engines: dict[int, AudioKVAttention]
    _modules: list[nn.Module] = field(default_factory=list)
    _configs: list[tuple[object, str | None]] = field(default_factory=list)
    _hooks: list[object] = field(default_factory=list)  # the model's forward pre- and post-hooks
    _generate: object = None  # the model's own `generate` instance attribute, if it had one
    _chunked: nn.Module | None = None  # the decoder whose forward prefills in chunks
    meter: KVMeter = field(default_factory=KVMeter)

    def remove(self) -> None:
        """Restore the original attention implementation and modules (a second call does nothing)."""
        if self._hooks:
            for hook in self._hooks:
                hook.remove()
            if self._generate is None:
                self.model.__dict__.pop("generate", None)
            else:
                self.model.generate = self._generate
        for module in self._modules:
            module._modules.pop("audiokv", None)
        for config, impl in self._configs:
            config._attn_implementation = impl
        if self._chunked is not None:
            self._chunked.__dict__.pop("forward", None)
        for engine in self.engines.values():  # free the last sequence's pools; a cache left over cannot read them
            engine.reset()
            engine.owner = None
        self.meter.reset()
        self._modules, self._configs, self._hooks, self._generate, self._chunked = [], [], [], None, None

    def __enter__(self) -> AudioKVHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    @property
    def kv_bytes(self) -> int:
        """Bytes the compressed layers' pools hold now."""
        return sum(e.kv_bytes for e in self.engines.values())

    @property
    def peak_kv_bytes(self) -> int:
        """The most K/V bytes the compressed layers held at once since the last prefill.

        Every layer's pool plus the K/V in flight of the layer being run (the
        whole prompt's at an unchunked prefill, one chunk's with ``prefill_chunk``):
        :class:`audiokv.attention.KVMeter`.
        """
        return self.meter.peak


def set_attention_implementation(
    model: nn.Module, modules: Iterable[nn.Module], implementation: str
) -> list[tuple[object, str | None]]:
    """Route ``model``'s attention through ``implementation``; returns ``(config, old)`` pairs to restore."""
    text_config = model.config.get_text_config(decoder=True)
    configs = {id(c): c for c in (model.config, text_config, *(m.config for m in modules))}
    old = [(cfg, getattr(cfg, "_attn_implementation", None)) for cfg in configs.values()]
    for cfg in configs.values():
        cfg._attn_implementation = implementation
    return old


def attention_modules(model: nn.Module, attention: str) -> dict[int, nn.Module]:
    """The decoder's attention modules named ``attention``, by layer index."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    found = {}
    for name, module in decoder.named_modules():
        if name.endswith(attention) and hasattr(module, "layer_idx") and hasattr(module, "q_proj"):
            found[module.layer_idx] = module
    if not found:
        raise ValueError(f"found no '{attention}' attention modules in {type(model).__name__}")
    return dict(sorted(found.items()))


def layer_stack(model: nn.Module, attention: str) -> nn.Module:
    """The module that runs the decoder layers: it takes the prompt's embeddings (audio merged in) and the cache.

    ``model.get_decoder()`` is that module in most families and transformers
    versions, but not all (Qwen2.5-Omni's thinker in transformers 5.2 returns
    itself, audio encoder included), so it is found as the parent of the first
    compressed attention module.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    first = next(iter(attention_modules(model, attention).values()))  # not an audio encoder's attention
    name = next(n for n, m in decoder.named_modules() if m is first)
    return decoder.get_submodule(name.rpartition(".layers.")[0])


def apply_audiokv(
    model: nn.Module,
    config: AudioKVConfig,
    calibration: HeadScores | None = None,
    policy: str | Policy = "audiokv",
    kernel: str = "auto",
) -> AudioKVHandle:
    """Compress ``model``'s KV cache with AudioKV from the next prefill on.

    Args:
        model: a transformers model of a supported family (see ``SUPPORTED_FAMILIES``).
        config: compression settings.
        calibration: calibrated head scores of this model (its shape is checked).
        policy: ``"audiokv"`` or a baseline from :data:`audiokv.policies.POLICIES`.
        kernel: attention over the compressed cache: ``"auto"`` (the per-row and per-page
            kernels on CPU, FlexAttention elsewhere), ``"flex"`` (needed on CPU
            for ``model.forward = torch.compile(model.forward)``: its decode
            step is then one graph), ``"rows"``, ``"pages"`` or ``"reference"``.

    Returns:
        A handle; ``handle.remove()`` restores the model. ``model.generate`` works
        unchanged (greedy or sampling, batches with left padding).
    """
    if not isinstance(model, nn.Module):
        inner = " (pass its .model)" if isinstance(getattr(model, "model", None), nn.Module) else ""
        raise TypeError(f"model must be a transformers model, got {type(model).__name__}{inner}")
    if not isinstance(config, AudioKVConfig):
        raise TypeError(f"config must be an AudioKVConfig, got {type(config).__name__}")
    if calibration is not None and not isinstance(calibration, HeadScores):
        raise TypeError(f"calibration must be HeadScores.load(path) or None, got {type(calibration).__name__}")
    family = family_of(model)
    text_config = model.config.get_text_config(decoder=True)
    modules = attention_modules(model, family.attention)
    if any(hasattr(m, "audiokv") for m in modules.values()):
        raise ValueError("audiokv is already applied to this model; remove the other handle first (handle.remove())")
    roles = layer_roles(modules, text_config)
    first = modules[roles.compressed[0]]
    heads = getattr(first, "num_heads", None) or text_config.num_attention_heads
    kv_heads = heads if family.cross_attention else (getattr(text_config, "num_key_value_heads", None) or heads)
    if calibration is not None and calibration.shape != (len(modules), kv_heads):
        raise ValueError(
            f"calibration {calibration.model!r} has {calibration.shape[0]} layers x {calibration.shape[1]} KV heads, "
            f"but this model has {len(modules)} x {kv_heads}"
        )
    chunked = None  # the decoder that prefills in chunks
    if config.prefill_chunk is not None and not family.cross_attention:
        chunked = layer_stack(model, family.attention)
        if "forward" in chunked.__dict__:
            raise ValueError(f"{type(chunked).__name__}.forward is already wrapped; remove the other handle first")
    prompt = _Prompt()
    token_id = audio_token_id(model, family)
    handle = AudioKVHandle(model, {})
    policy = get_policy(policy)
    if policy.use_prior and calibration is None and (family.cross_attention or token_id is not None):  # audio to weigh
        warnings.warn(
            f"policy {policy.name!r} runs without a calibration, so without its audio-critical head prior; "
            "pass calibration=HeadScores.load(...) (files for the bundled models: audiokv.data.shipped_calibration)",
            NoCalibrationWarning,
            stacklevel=2,
        )

    def attach(module: nn.Module, engine: nn.Module) -> None:
        engine.prompt = prompt
        module.audiokv = engine
        handle._modules.append(module)

    layer_prior = None if calibration is None else roles.pool_prior(calibration.scores)
    for position, idx in enumerate(roles.compressed):
        module = modules[idx]
        engine = AudioKVAttention(
            config,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=module.head_dim,
            scaling=module.scaling,
            head_prior=None if calibration is None else calibration.scores[idx].clone(),
            layer_prior=layer_prior,
            policy=policy,
            kernel=kernel,
            layer_idx=position,
            num_layers=len(roles.compressed),
            cross_attention=family.cross_attention,
            audio_tokens_per_second=family.audio_tokens_per_second,
        ).to(next(module.parameters()).device)
        engine.meter = handle.meter
        attach(module, engine)
        handle.engines[idx] = engine
    for idx, source in roles.shared.items():
        attach(modules[idx], SharedKVAttention(handle.engines[source], modules[idx].scaling))
    handle._configs = set_attention_implementation(model, modules.values(), IMPLEMENTATION)

    default_key = cache_argument(model)

    def cache_of(kwargs: dict) -> tuple[str, object]:  # the caller's cache, or the name to put ours under
        named = [k for k in ("cache", "past_key_values") if k in kwargs]  # a caller's None names it too
        key = next((k for k in named if kwargs[k] is not None), named[0] if named else default_key)
        return key, kwargs.get(key)

    def pre_hook(_module, args, kwargs):
        refuse_attention_weights(kwargs)
        changed = {impl for cfg, _ in handle._configs if (impl := cfg._attn_implementation) != IMPLEMENTATION}
        if changed:
            raise RuntimeError(
                f"the model's attention implementation was switched to {sorted(changed)} after apply_audiokv, "
                "so its compressed layers would be skipped; remove the handle and apply audiokv again"
            )
        key, cache = cache_of(kwargs)
        prompt.bypass = False
        if isinstance(cache, AudioKVCache | AudioKVEncoderDecoderCache):
            if cache.get_seq_length() > 0:  # decoding: the host's part of the step, outside a compiled forward
                if isinstance(cache, AudioKVCache):
                    cache.begin_step(_new_tokens(args, kwargs))
                return args, kwargs
        elif cache is not None and cache.get_seq_length() > 0:
            raise ValueError("audiokv needs the cache from the start of the sequence; got a partly filled cache")
        elif kwargs.get("use_cache") is False:  # nothing is cached, so nothing is compressed
            prompt.bypass = True
            return args, kwargs
        elif family.cross_attention:
            kwargs[key] = AudioKVEncoderDecoderCache(handle.engines)
        else:
            kwargs[key] = AudioKVCache(model.config, handle.engines)
        handle.meter.reset()  # a new sequence
        if family.cross_attention:  # every encoder frame is attended; the features' mask says which are sound
            frames = model.config.max_source_positions
            prompt.audio_span = sound_frames(window_mask(kwargs.get("attention_mask"), frames), frames)
            rows = _batch_rows(args, kwargs)
            if prompt.audio_span is not None and rows is not None and rows != len(prompt.audio_span):
                if rows % len(prompt.audio_span):
                    raise ValueError(f"the attention mask has {len(prompt.audio_span)} rows for a batch of {rows}")
                # generate(num_return_sequences=N) repeats the features' rows but not their mask
                prompt.audio_span = prompt.audio_span.repeat_interleave(rows // len(prompt.audio_span), 0)
            return args, kwargs
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        prompt.audio_span = audio_tokens(input_ids, token_id) if input_ids is not None else None
        if input_ids is None and token_id is not None:
            warnings.warn(
                "audiokv finds the audio by its placeholder token ids; this prefill passes inputs_embeds only, "
                "so its audio is compressed as text (no coverage, merging or head prior): pass input_ids",
                stacklevel=2,
            )
        mask = kwargs.get("attention_mask")
        prompt.key_mask = mask.bool() if mask is not None and mask.dim() == 2 and not mask.all() else None
        return args, kwargs

    def post_hook(_module, args, kwargs, output):  # runs even when the forward raised (output None)
        _, cache = cache_of(kwargs)
        if isinstance(cache, AudioKVCache):
            cache.end_step(failed=output is None)  # a failed step is undone: the cache stays usable

    handle._hooks = [
        model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        model.register_forward_hook(post_hook, with_kwargs=True, always_call=True),
    ]
    handle._generate = model.__dict__.get("generate")
    generate = model.generate

    @functools.wraps(generate)
    def generate_reserving(*args, **kwargs):  # the pools reserve room for this call's new tokens, no more
        refuse_attention_weights(kwargs, generation_config(model, kwargs))
        prompt.decode_tokens = decode_tokens(model, args, kwargs)
        try:
            return generate(*args, **kwargs)
        finally:
            prompt.decode_tokens = None

    model.generate = generate_reserving
    if chunked is not None:
        forward = chunked.forward

        @functools.wraps(forward)
        def forward_in_chunks(*args, **kwargs):
            return prefill_in_chunks(forward, prompt, config.prefill_chunk, args, kwargs)

        chunked.forward = forward_in_chunks
        handle._chunked = chunked
    return handle
