import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv.scoring import pool_scores, rerank, value_rarity, window_scores


def naive_scores(q, k, scale, key_mask=None):
    """Loop over every query head, repeating K per head; the independent reference."""
    bsz, hq, w, _ = q.shape
    hkv, t = k.shape[1], k.shape[2]
    g = hq // hkv
    out = torch.zeros(bsz, hkv, t, dtype=torch.float64)
    for b in range(bsz):
        for h in range(hq):
            votes = []  # the window queries that see a key (a left-padding one sees none and does not vote)
            for i in range(w):
                pos = t - w + i
                logits = (k[b, h // g].double() @ q[b, h, i].double()) * scale
                logits[pos + 1 :] = -torch.inf
                if key_mask is not None:
                    logits[~key_mask[b]] = -torch.inf
                if torch.isfinite(logits).any():
                    votes.append(torch.softmax(logits, -1))
            for vote in votes:
                out[b, h // g] += vote / (g * len(votes))
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
    pad = data.draw(st.integers(0, length))  # left padding, into the window and up to the whole row
    mask[0, :pad] = False
    got = window_scores(q, k, scaling=0.3, key_mask=mask)
    torch.testing.assert_close(got.double(), naive_scores(q, k, 0.3, mask), atol=1e-5, rtol=1e-5)
    sums = torch.ones(bsz, hkv)
    sums[0] = float(pad < length)  # a row none of whose queries sees a key scores 0
    torch.testing.assert_close(got.sum(-1), sums, atol=1e-5, rtol=0)
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


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 40), st.integers(1, 6), st.integers(1, 16), st.data())
def test_value_rarity_matches_a_loop_over_neighbours(bsz, heads, length, neighbours, block, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    value = torch.randn(bsz, heads, length, 4, generator=gen)
    value[:, :, length // 2 :] = value[:, :, : length - length // 2].clone()  # some exact repeats
    mask = torch.rand(bsz, length, generator=gen) > 0.2 if data.draw(st.booleans()) else None
    positions = torch.tensor(sorted(data.draw(st.sets(st.integers(0, length - 1), min_size=1))))
    got = value_rarity(value, mask, positions, neighbours=neighbours, block=block)
    unit = torch.nn.functional.normalize(value, dim=-1)
    for b in range(bsz):
        for h in range(heads):
            for i, t in enumerate(positions.tolist()):
                others = [s for s in range(length) if s != t and (mask is None or mask[b, s])]
                sims = sorted((float(unit[b, h, t] @ unit[b, h, s]) for s in others), reverse=True)
                sims += [-2.0] * (min(neighbours, length - 1) - len(sims))  # fewer valid neighbours than asked
                want = 0.0 if length == 1 else -sum(sims[: min(neighbours, length - 1)]) / min(neighbours, length - 1)
                assert abs(got[b, h, i].item() - want) < 1e-5


def test_rerank_permutes_the_scores_of_the_chosen_tokens_to_follow_the_order():
    scores = torch.tensor([[[5.0, 1.0, 4.0, 2.0, 3.0]]])
    order = torch.tensor([[[0.0, 9.0, 0.0, 1.0, 5.0]]])
    where = torch.tensor([[False, True, False, True, True]])
    got = rerank(scores, order, where)
    # tokens 1, 3, 4 hold {1, 2, 3}; by order 1 > 4 > 3 they get 3, 2, 1; tokens 0 and 2 keep theirs
    torch.testing.assert_close(got, torch.tensor([[[5.0, 3.0, 4.0, 1.0, 2.0]]], dtype=torch.float64))
    tied = rerank(torch.ones(1, 1, 5), order, torch.ones(1, 5, dtype=torch.bool))
    assert tied[0, 0].argsort(descending=True).tolist() == [1, 4, 3, 0, 2]  # ties follow the order
