"""Whisper from CTranslate2 weights into transformers' `WhisperForConditionalGeneration`, offline."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audiokv.models.ctranslate2 import CT2Model, read_model_bin


@dataclass
class SpeechModel:
    """A loaded speech-to-text model and what it needs to run."""

    name: str
    model: torch.nn.Module
    feature_extractor: object
    tokenizer: object
    prompt_ids: list[int]  # decoder prefix: start-of-transcript (+ language, task) + no-timestamps
    eos_id: int


def _special_ids(tokenizer_file: Path) -> dict[str, int]:
    added = json.loads(tokenizer_file.read_text())["added_tokens"]
    return {t["content"]: t["id"] for t in added}


def _split(weight: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(weight, parts, axis=0)


def ct2_to_hf_state_dict(ct2: CT2Model) -> dict[str, torch.Tensor]:
    """Rename and split CTranslate2 Whisper variables into transformers' names (float32)."""
    out: dict[str, np.ndarray] = {}
    for name, array in ct2.variables.items():
        if array.ndim == 0:
            continue  # scalar settings, read separately
        path = name.split("/")
        side = path[0]
        prefix = f"model.{side}."
        if name == "decoder/embeddings/weight":
            out["model.decoder.embed_tokens.weight"] = array
            out["proj_out.weight"] = array
            continue
        if path[1] == "position_encodings":
            out[prefix + "embed_positions.weight"] = array
            continue
        if path[1] == "layer_norm":
            out[prefix + "layer_norm." + {"gamma": "weight", "beta": "bias"}[path[2]]] = array
            continue
        if path[1].startswith("conv"):
            out[prefix + f"{path[1]}.{path[2]}"] = array
            continue
        match = re.fullmatch(r"layer_(\d+)", path[1])
        if not match:
            raise ValueError(f"unexpected Whisper variable {name!r}")
        layer = prefix + f"layers.{match.group(1)}."
        block, part, leaf = path[2], path[3], path[-1]
        if part == "layer_norm":
            norm = {
                "self_attention": "self_attn_layer_norm",
                "attention": "encoder_attn_layer_norm",
                "ffn": "final_layer_norm",
            }[block]
            out[layer + f"{norm}." + {"gamma": "weight", "beta": "bias"}[leaf]] = array
        elif block == "ffn":
            out[layer + {"linear_0": "fc1", "linear_1": "fc2"}[part] + f".{leaf}"] = array
        elif block == "self_attention" and part == "linear_0":
            for proj, piece in zip("qkv", _split(array, 3), strict=True):
                if not (proj == "k" and leaf == "bias"):  # transformers' k_proj has no bias
                    out[layer + f"self_attn.{proj}_proj.{leaf}"] = piece
        elif block == "self_attention" and part == "linear_1":
            out[layer + f"self_attn.out_proj.{leaf}"] = array
        elif block == "attention" and part == "linear_0":
            out[layer + f"encoder_attn.q_proj.{leaf}"] = array
        elif block == "attention" and part == "linear_1":
            for proj, piece in zip("kv", _split(array, 2), strict=True):
                if not (proj == "k" and leaf == "bias"):
                    out[layer + f"encoder_attn.{proj}_proj.{leaf}"] = piece
        elif block == "attention" and part == "linear_2":
            out[layer + f"encoder_attn.out_proj.{leaf}"] = array
        else:
            raise ValueError(f"unexpected Whisper variable {name!r}")
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in out.items()}


def load_ct2_whisper(model_dir: str | Path, name: str, model_bin: Path | None = None) -> SpeechModel:
    """Load a CTranslate2 Whisper directory (``model.bin``, ``tokenizer.json``) into transformers.

    Args:
        model_dir: directory with ``tokenizer.json`` (and ``model.bin`` unless given).
        name: a short name recorded with the model (e.g. ``"whisper-tiny.en"``).
        model_bin: the weights file, when it is not ``model_dir / "model.bin"``.

    Returns:
        A :class:`SpeechModel` in eval mode, float32, eager attention (attention weights available).
    """
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    model_dir = Path(model_dir)
    ct2 = read_model_bin(model_bin or model_dir / "model.bin")
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"{model_dir} holds a {ct2.spec}, not a Whisper model")
    state = ct2_to_hf_state_dict(ct2)
    special = _special_ids(model_dir / "tokenizer.json")
    vocab, d_model = state["model.decoder.embed_tokens.weight"].shape

    def count(side: str) -> int:
        return 1 + max(int(k.split(".")[3]) for k in state if k.startswith(f"model.{side}.layers."))

    english_only = "<|en|>" not in special or vocab < 51865
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=int(ct2.variables["encoder/num_heads"]),
        decoder_attention_heads=int(ct2.variables["decoder/num_heads"]),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=special["<|endoftext|>"],
        pad_token_id=special["<|endoftext|>"],
        decoder_start_token_id=special["<|startoftranscript|>"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
        attn_implementation="eager",
    )
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    model.eval()
    prompt = [special["<|startoftranscript|>"]]
    if not english_only:
        prompt += [special["<|en|>"], special["<|transcribe|>"]]
    prompt.append(special["<|notimestamps|>"])
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    return SpeechModel(
        name=name,
        model=model,
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        tokenizer=tokenizer,
        prompt_ids=prompt,
        eos_id=special["<|endoftext|>"],
    )
