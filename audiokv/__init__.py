"""audiokv: AudioKV compression of the KV cache of audio-language models, with real memory savings."""

from audiokv.attention import AudioKVAttention
from audiokv.config import AudioKVConfig
from audiokv.integrations import apply_audiokv
from audiokv.spectral import spectral_smooth

__version__ = "0.1.0"

__all__ = ["AudioKVAttention", "AudioKVConfig", "__version__", "apply_audiokv", "spectral_smooth"]
