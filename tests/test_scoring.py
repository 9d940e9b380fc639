import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv.scoring import pool_scores, window_scores


def naive_scores(q, k, scale, key_mask=None):
    """Loop over every query head, repeating K per head; the independent reference."""
    bsz, hq, w, _ = q.shape
    hkv, t = k.shape[1], k.shape[2]
    g = hq // hkv
    out = torch.zeros(bsz, hkv, t, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            for i in range(w):
                pos = t - w + i
                logits = (k[b, h // g].double() @ q[b, h, i].double()) * scale
                logits[pos + 1 :] = -torch.inf
                if key_mask is not None:
                    logits[~key_mask[b]] = -torch.inf
                out[b, h // g] += torch.softmax(logits, -1) / (g * w)
    return out


@given(
    bsz=st.integers(1, 2),
    hkv=st.integers(1, 3),
    group=st.sampled_from([1, 3, 4, 7]),
    length=st.integers(4, 40),
    data=st.data(),
)
def test_window_scores_match_naive_loop(bsz, hkv, group, length, data):
    window = data.draw(st.integers(1, length))
    g = torch.Generator().manual_seed(length)
    q = torch.randn(bsz, hkv * group, window, 8, generator=g)
    k = torch.randn(bsz, hkv, length, 8, generator=g)
    mask = torch.ones(bsz, length, dtype=torch.bool)
    mask[0, : data.draw(st.integers(0, length - window))] = False  # left padding
    got = window_scores(q, k, scaling=0.3, key_mask=mask)
    torch.testing.assert_close(got.double(), naive_scores(q, k, 0.3, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(bsz, hkv), atol=1e-5, rtol=0)
    assert (got[0][:, ~mask[0]] == 0).all()


def test_window_scores_errors():
    q = torch.randn(1, 4, 8, 16)
    with pytest.raises(ValueError, match="longer than the prompt"):
        window_scores(q, torch.randn(1, 2, 5, 16))
    with pytest.raises(ValueError, match="multiple of KV heads"):
        window_scores(q, torch.randn(1, 3, 20, 16))
    with pytest.raises(ValueError, match="disagree"):
        window_scores(q, torch.randn(1, 2, 20, 8))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_scores_matches_sliding_window(mode):
    x = torch.rand(2, 3, 19)
    got = pool_scores(x, 5, mode)
    for t in range(19):
        seg = x[..., max(0, t - 2) : t + 3]
        want = seg.amax(-1) if mode == "max" else seg.mean(-1)
        torch.testing.assert_close(got[..., t], want)
    assert pool_scores(x, 1, mode) is x
