import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from audiokv import AudioKVAttention, AudioKVConfig

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "default",
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")


@pytest.fixture
def cross_module():
    """``cross_module(policy, ratio, heads=2, page_size=16, rate=50.0, **knobs)``: a cross-attention engine,
    head_dim 16, no sinks, ``rate`` audio tokens per second.

    ``knobs`` are further :class:`AudioKVConfig` fields.
    """

    def make(
        policy: str, ratio: float, heads: int = 2, page_size: int = 16, rate: float = 50.0, **knobs
    ) -> AudioKVAttention:
        cfg = AudioKVConfig(compression_ratio=ratio, page_size=page_size, sinks=0, **knobs)
        return AudioKVAttention(cfg, num_heads=heads, num_kv_heads=heads, head_dim=16, cross_attention=True,
                                policy=policy, audio_tokens_per_second=rate)  # fmt: skip

    return make
