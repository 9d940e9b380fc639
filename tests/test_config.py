import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiokv import AudioKVConfig


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("compression_ratio", -0.1, r"\[0, 1\)"),
        ("compression_ratio", 1.0, r"\[0, 1\)"),
        ("compression_ratio", math.nan, "finite"),
        ("compression_ratio", True, "number"),
        ("window", 0, "window"),
        ("window", 2.5, "int"),
        ("pooling", "median", "pooling"),
        ("pooling_kernel", 4, "odd"),
        ("sss_cutoff", 0.0, r"\(0, 1\]"),
        ("sss_cutoff", 1.5, r"\(0, 1\]"),
        ("head_prior_strength", -1.0, ">= 0"),
        ("safeguard", 1.2, r"\[0, 1\]"),
        ("layer_prior", 1.5, r"\[0, 1\]"),
        ("onset_seconds", -1, "onset_seconds"),
        ("onset_seconds", "2", "number"),
        ("onset_weight", 0.5, ">= 1"),
        ("sinks", -1, "sinks"),
        ("page_size", 100, "power of two"),
        ("page_size", 8, ">= 16"),
        ("decode_reserve", -5, "decode_reserve"),
    ],
)
def test_bad_fields_raise_clear_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        AudioKVConfig(**{field: value})


@given(
    ratio=st.floats(0, 1, exclude_max=True),
    window=st.integers(1, 512),
    page=st.sampled_from([16, 32, 64, 128, 256]),
)
def test_valid_configs_are_kept_as_given(ratio, window, page):
    cfg = AudioKVConfig(compression_ratio=ratio, window=window, page_size=page)
    assert (cfg.compression_ratio, cfg.window, cfg.page_size) == (ratio, window, page)


def test_numpy_and_torch_scalars_are_read_as_python_numbers():
    import numpy as np
    import torch

    cfg = AudioKVConfig(compression_ratio=np.float32(0.25), window=np.int64(8), page_size=torch.tensor(32))
    assert (cfg.compression_ratio, cfg.window, cfg.page_size) == (0.25, 8, 32)
    assert type(cfg.compression_ratio) is float and type(cfg.window) is int and type(cfg.page_size) is int
    with pytest.raises(ValueError, match="must be a number"):
        AudioKVConfig(compression_ratio=np.bool_(True))
    with pytest.raises(ValueError, match="must be a number"):
        AudioKVConfig(compression_ratio=torch.tensor([0.5, 0.2]))


def test_a_prefill_chunk_too_small_for_the_ratio_says_what_it_keeps():
    import warnings

    with pytest.warns(UserWarning, match=r"keeps at least the last window=32 tokens of each chunk \(50.0%\).*>= 107"):
        AudioKVConfig(compression_ratio=0.7, prefill_chunk=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AudioKVConfig(compression_ratio=0.7, prefill_chunk=107)  # 30% of 107 holds the window
        AudioKVConfig(compression_ratio=0.8, prefill_chunk=160)  # exactly: 20% of 160 is 32 (1 - 0.8 rounds below 0.2)
