"""`apply_audiokv`: one generic decoder path plus thin per-family adapters."""

from audiokv.integrations.apply import AudioKVHandle, apply_audiokv
from audiokv.integrations.families import SUPPORTED_FAMILIES

__all__ = ["SUPPORTED_FAMILIES", "AudioKVHandle", "apply_audiokv"]
