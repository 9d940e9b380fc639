"""audiokv: AudioKV compression of the KV cache of audio-language models, with real memory savings."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module; imported on first use so that `audiokv --help` does not load torch
_EXPORTS = {
    "AudioKVAttention": "audiokv.attention",
    "AudioKVConfig": "audiokv.config",
    "apply_audiokv": "audiokv.integrations",
    "spectral_smooth": "audiokv.spectral",
}

if TYPE_CHECKING:
    from audiokv.attention import AudioKVAttention
    from audiokv.config import AudioKVConfig
    from audiokv.integrations import apply_audiokv
    from audiokv.spectral import spectral_smooth


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'audiokv' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = ["AudioKVAttention", "AudioKVConfig", "__version__", "apply_audiokv", "spectral_smooth"]
