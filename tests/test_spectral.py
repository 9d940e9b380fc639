import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv import spectral_smooth
from audiokv.spectral import lowpass


@given(
    length=st.integers(3, 300),
    cutoff=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
def test_lowpass_keeps_the_mean(length, cutoff, seed, dtype):
    x = torch.rand(2, 3, length, generator=torch.Generator().manual_seed(seed)).to(dtype)
    y = lowpass(x, cutoff)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.mean(-1), x.float().mean(-1), atol=1e-5, rtol=1e-5)


def test_identity_at_cutoff_one_and_for_short_spans():
    x = torch.rand(2, 4, 50)
    assert torch.equal(spectral_smooth(x, 1.0), x)
    y = spectral_smooth(x, 0.05, span=(10, 12))  # 2 tokens: unchanged
    assert torch.equal(y, x)


def test_only_the_span_changes_and_per_row_spans():
    x = torch.rand(2, 3, 60)
    spans = torch.tensor([[5, 40], [20, 60]])
    y = spectral_smooth(x, 0.1, span=spans)
    for row, (s, e) in enumerate(spans.tolist()):
        outside = torch.ones(60, dtype=torch.bool)
        outside[s:e] = False
        assert torch.equal(y[row][:, outside], x[row][:, outside])
        assert not torch.allclose(y[row][:, s:e], x[row][:, s:e])
        torch.testing.assert_close(y[row][:, s:e].mean(-1), x[row][:, s:e].mean(-1))


def test_recovers_a_smooth_trend_from_noise_without_wraparound():
    t = torch.linspace(0, 1, 400)
    trend = t  # a ramp: its two ends differ, so wrap-around would pull them together
    noisy = trend + 0.3 * torch.randn(400, generator=torch.Generator().manual_seed(0))
    smooth = lowpass(noisy[None], 0.02)[0]
    assert (smooth - trend).pow(2).mean() < 0.1 * (noisy - trend).pow(2).mean()
    # edges stay near their own values; an unpadded (circular) FFT averages 0 and 1 there
    spectrum = torch.fft.rfft(noisy)
    spectrum[int(0.02 * 200) + 1 :] = 0
    circular = torch.fft.irfft(spectrum, n=400)
    edge_error = (smooth[:10] - trend[:10]).abs().mean() + (smooth[-10:] - trend[-10:]).abs().mean()
    circular_error = (circular[:10] - trend[:10]).abs().mean() + (circular[-10:] - trend[-10:]).abs().mean()
    assert edge_error < 0.25 < circular_error


def test_high_frequency_is_removed():
    n = torch.arange(256.0)
    slow, fast = torch.sin(2 * math.pi * 2 * n / 256), torch.sin(2 * math.pi * 100 * n / 256)
    y = lowpass((slow + fast)[None], 0.2)[0]
    assert (y - slow)[20:-20].abs().max() < 0.05


def test_a_spike_spreads_without_ringing():
    spike = torch.zeros(1, 200)
    spike[0, 100] = 1.0
    y = lowpass(spike, 0.1)[0]
    assert y.argmax() == 100 and y.min() > -1e-4  # a brick-wall low-pass dips below 0 beside the spike
    assert (y[101:] <= y[100:-1] + 1e-6).all()  # falls off monotonically


def test_bad_spans_and_values_raise():
    x = torch.rand(1, 2, 30)
    with pytest.raises(ValueError, match="empty"):
        spectral_smooth(x, 0.1, span=(7, 7))
    with pytest.raises(ValueError, match="outside"):
        spectral_smooth(x, 0.1, span=(10, 40))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        spectral_smooth(x, 0.1, span=torch.tensor([[0, 5], [0, 5]]))
    x[0, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        spectral_smooth(x, 0.1, span=(0, 30))
