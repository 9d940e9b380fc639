"""What differs between model families: where the language model is, which token is audio,
which layers may be compressed. Everything else goes through the generic path."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Family:
    """A thin adapter.

    Attributes:
        name: human-readable family name.
        model_types: transformers ``model_type`` values of the top-level config.
        audio_token_attrs: config attributes that may hold the audio placeholder token id.
        attention: name of the compressed attention modules in the decoder layers.
        cross_attention: those modules attend to encoder states (Whisper): their cache is
            compressed once from the decoder's first queries, and the decoder's own
            self-attention cache stays as it is.
        audio_tokens_per_second: audio tokens per second of sound, as the model's
            audio encoder and projector emit them (the onset is set in seconds).
    """

    name: str
    model_types: tuple[str, ...]
    audio_token_attrs: tuple[str, ...] = ("audio_token_id", "audio_token_index")
    attention: str = "self_attn"
    cross_attention: bool = False
    audio_tokens_per_second: float = 50.0


# audio token rates: Whisper's encoder 50/s; Qwen2-Audio and Qwen2.5-Omni pool it to 25/s (40 ms a token);
# Qwen3-Omni's AuT encoder and Voxtral's 4x adapter give 12.5/s (80 ms); Gemma 3n's encoder one per 160 ms
FAMILIES = (
    Family("Llama / Qwen2 / Qwen3 / Mistral style LLMs (e.g. SmolLM2)", ("llama", "qwen2", "qwen3", "mistral")),
    Family("Qwen2-Audio", ("qwen2_audio",), audio_tokens_per_second=25.0),
    Family("Qwen2.5-Omni thinker", ("qwen2_5_omni_thinker",), audio_tokens_per_second=25.0),
    Family("Qwen3-Omni-MoE thinker", ("qwen3_omni_moe_thinker",), audio_tokens_per_second=12.5),
    Family("Voxtral", ("voxtral",), audio_tokens_per_second=12.5),
    Family(
        "Gemma 3n (KV-sharing producers compressed, sliding layers kept)",
        ("gemma3n", "gemma3n_text"),
        audio_tokens_per_second=6.25,
    ),
    Family("Whisper (decoder cross-attention)", ("whisper",), attention="encoder_attn", cross_attention=True),
)
SUPPORTED_FAMILIES = tuple(f.name for f in FAMILIES)


def family_of(model: nn.Module) -> Family:
    """The adapter for ``model``; a clear error for an unsupported family."""
    model_type = getattr(model.config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    names = "; ".join(SUPPORTED_FAMILIES)
    raise ValueError(f"audiokv does not support model_type {model_type!r} yet. Supported families: {names}")


def audio_token_id(model: nn.Module, family: Family) -> int | None:
    """The audio placeholder id from the model's config (or its thinker/text sub-configs), if any."""
    configs = [model.config] + [getattr(model.config, n, None) for n in ("thinker_config", "text_config")]
    for config in configs:
        for attr in family.audio_token_attrs:
            value = getattr(config, attr, None) if config is not None else None
            if isinstance(value, int):
                return value
    return None


@dataclass
class LayerRoles:
    """How each attention layer of the decoder is treated (by layer index).

    Attributes:
        compressed: layers that own their K/V: compressed into their own pool.
        shared: layers without K/V of their own (Gemma 3n's KV sharing), mapped to the
            compressed layer whose pool they read.
        kept: sliding-window layers (already bounded: they keep their window) and layers
            sharing a sliding layer's K/V; they run unchanged.
    """

    compressed: list[int]
    shared: dict[int, int]
    kept: list[int]

    def pool_prior(self, scores: Tensor) -> Tensor:
        """``[len(compressed)]`` calibrated prior of each compressed layer's pool, for the layer split.

        ``scores``: ``[num_layers, H_kv]`` head scores of every layer. A pool serves
        its own layer and the layers that share it, so its prior is the sum of their
        mean head scores: a token evicted there is lost to all of them.
        """
        prior = scores.float().mean(-1)
        pooled = {idx: prior[idx] for idx in self.compressed}
        for idx, source in self.shared.items():
            pooled[source] = pooled[source] + prior[idx]
        return torch.stack([pooled[idx] for idx in self.compressed])


def is_sliding(module: nn.Module, idx: int, text_config) -> bool:
    """Whether layer ``idx`` attends over a sliding window: by the module, ``layer_types``, or (Mistral) the config."""
    if getattr(module, "is_sliding", False) or getattr(module, "sliding_window", None):
        return True
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        return layer_types[idx] == "sliding_attention"
    window = getattr(text_config, "sliding_window", None)
    return window is not None and getattr(text_config, "use_sliding_window", True)  # one window for all layers


def layer_roles(modules: dict[int, nn.Module], text_config) -> LayerRoles:
    """Sort ``modules`` (``{layer_idx: attention}``) into compressed, shared and kept layers."""
    roles = LayerRoles([], {}, [])
    layer_types = getattr(text_config, "layer_types", None)
    modes = getattr(text_config, "kv_sharing_modes", None) or [None] * len(layer_types or modules)
    for idx, module in modules.items():
        if is_sliding(module, idx, text_config):
            roles.kept.append(idx)
        elif modes[idx] == "reuse":  # read the last layer of the same type that stores its K/V
            source = max(i for i in range(idx) if modes[i] == "store" and layer_types[i] == layer_types[idx])
            roles.shared[idx] = source
        else:
            roles.compressed.append(idx)
    if not roles.compressed:
        window = getattr(text_config, "sliding_window", None)
        raise ValueError(
            f"every attention layer of this model is sliding-window (sliding_window={window}) or shares another "
            "layer's K/V: nothing to compress (audiokv leaves sliding-window layers as they are: their window "
            "already bounds them)"
        )
    return roles
