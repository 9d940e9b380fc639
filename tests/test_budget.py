import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv.budget import (
    demand_scores,
    head_budgets,
    head_weights,
    layer_budget,
    layer_keeps,
    layer_shares,
    mark_mandatory,
)
from audiokv.select import select_tokens


def brute_force_budgets(scores, budget, safeguard, weights):
    """Independent AdaKV split: floors first, then one global ranking of (score, head) pairs."""
    heads, _ = scores.shape
    if weights is not None:
        scores = scores * weights[:, None]
    mandatory = int(torch.isposinf(scores[0]).sum())
    floor = min(max(math.ceil(safeguard * budget / heads), mandatory), budget // heads)
    rest = []
    for h in range(heads):
        ranked = sorted(scores[h].tolist(), reverse=True)
        rest += [(s, h) for s in ranked[floor:]]
    rest.sort(key=lambda p: p[0], reverse=True)
    out = [floor] * heads
    for _, h in rest[: budget - heads * floor]:
        out[h] += 1
    return out


@st.composite
def problems(draw):
    heads = draw(st.integers(1, 8))
    length = draw(st.integers(2, 120))
    sinks = draw(st.integers(0, 4))
    window = draw(st.integers(1, max(1, length // 3)))
    pad = draw(st.integers(0, max(0, length - sinks - window - 1)))
    seed = draw(st.integers(0, 2**16))
    # continuous random scores: ties (even after head weighting) have probability ~0
    scores = torch.rand(1, heads, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    mask = torch.ones(1, length, dtype=torch.bool)
    mask[0, :pad] = False
    marked = mark_mandatory(scores, sinks=sinks, window=window, key_mask=mask)
    mandatory = torch.isposinf(marked[:, 0]).sum(-1)
    ratio = draw(st.floats(0, 0.99))
    budget = layer_budget(mask.sum(-1), heads, ratio, mandatory)
    return marked, budget, draw(st.floats(0, 1)), mandatory


@given(problems(), st.booleans())
def test_budgets_sum_respect_floors_and_match_brute_force(problem, weighted):
    scores, budget, safeguard, mandatory = problem
    heads = scores.shape[1]
    weights = torch.linspace(0.5, 2.0, heads) * 1.0137 if weighted else None
    got = head_budgets(scores, budget, safeguard=safeguard, weights=weights)
    assert got.sum().item() == budget.item()
    assert (got >= mandatory[:, None]).all()
    assert (got <= (~torch.isneginf(scores[0, 0])).sum()).all()
    assert got[0].tolist() == brute_force_budgets(scores[0], budget.item(), safeguard, weights)


@given(problems())
def test_selection_keeps_exactly_the_budget_and_every_mandatory_token(problem):
    scores, budget, safeguard, _ = problem
    budgets = head_budgets(scores, budget, safeguard=safeguard)
    idx = select_tokens(scores, budgets)
    length = scores.shape[-1]
    for h in range(scores.shape[1]):
        kept = idx[0, h, : budgets[0, h]]
        assert (idx[0, h, budgets[0, h] :] == length).all()
        assert torch.equal(kept, kept.sort().values) and kept.unique().numel() == kept.numel()
        must = torch.isposinf(scores[0, h]).nonzero().flatten()
        assert set(must.tolist()) <= set(kept.tolist())
        assert not torch.isneginf(scores[0, h, kept]).any()
        # the kept tokens are the head's top ones
        rest = torch.ones(length, dtype=torch.bool)
        rest[kept] = False
        if rest.any() and kept.numel():
            assert scores[0, h, kept].min() >= scores[0, h, rest].max()


def greedy_split(demand, floor, valid, total):
    """Discrete reference: from the floors, each next token goes to the head with the largest ``d / (kept + 1)``."""
    kept = [floor] * len(demand)
    for _ in range(total - sum(kept)):
        room = [h for h in range(len(demand)) if kept[h] < valid]
        best = max(room, key=lambda h: demand[h] / (kept[h] + 1))
        kept[best] += 1
    return kept


@given(problems(), st.lists(st.floats(0.01, 100), min_size=8, max_size=8))
def test_demand_scores_split_the_budget_in_proportion_to_demand_above_the_floors(problem, demand):
    scores, budget, safeguard, mandatory = problem
    heads = scores.shape[1]
    demand = torch.tensor(demand[:heads])
    split = demand_scores(scores, demand[None])
    assert torch.equal(torch.isposinf(split), torch.isposinf(scores))  # marks stay
    assert torch.equal(torch.isneginf(split), torch.isneginf(scores))
    by_split = scores.gather(-1, split.argsort(dim=-1, stable=True))  # the scores in the split's order
    assert (by_split[..., 1:] >= by_split[..., :-1]).all()  # so does the order (tied scores in either order)
    got = head_budgets(split, budget, safeguard=safeguard)[0].tolist()
    valid = int((~torch.isneginf(scores[0, 0])).sum())
    floor = min(max(math.ceil(safeguard * budget.item() / heads), mandatory.item()), budget.item() // heads)
    want = greedy_split(demand.tolist(), floor, valid, budget.item())
    assert sum(got) == budget.item()
    assert all(abs(g - w) <= 1 for g, w in zip(got, want, strict=True)), (got, want)  # 1: fp32 near-ties
    # the greedy split is water-filling: past its floor, each head's last token beats every next one
    theta = max((d / (k + 1) for d, k in zip(demand.tolist(), want, strict=True) if k < valid), default=0.0)
    for d, k in zip(demand.tolist(), want, strict=True):
        assert k in (floor, valid) or d / (k + 1) <= theta <= d / k


def test_prior_moves_budget_to_audio_heads():
    scores = torch.rand(1, 4, 200, generator=torch.Generator().manual_seed(1))
    scores = mark_mandatory(scores, sinks=2, window=4)
    plain = head_budgets(scores, 400, safeguard=0.1)
    weighted = head_budgets(scores, 400, safeguard=0.1, weights=head_weights(torch.tensor([0, 0, 0, 5.0]), 1.0))
    assert weighted[0, 3] > plain[0, 3] and weighted.sum() == plain.sum() == 400
    assert torch.equal(head_weights(torch.tensor([1.0, 2.0, 3.0]), 0.0), torch.ones(3))
    # equal scores favour no head, also where their float mean rounds off (a std of ~1e-8, not 0)
    assert torch.equal(head_weights(torch.full((6,), 0.5375), 1.0), torch.ones(6))


def test_mark_mandatory_uses_first_valid_tokens_as_sinks():
    mask = torch.tensor([[False, False, True, True, True, True, True, True]])
    marked = mark_mandatory(torch.rand(1, 1, 8), sinks=2, window=2, key_mask=mask)
    assert torch.isneginf(marked[0, 0, :2]).all()
    assert torch.isposinf(marked[0, 0, [2, 3, 6, 7]]).all()
    assert torch.isfinite(marked[0, 0, [4, 5]]).all()


def test_bad_inputs():
    scores = torch.rand(1, 2, 10)
    scores[0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mark_mandatory(scores, sinks=1, window=1)
    with pytest.raises(ValueError, match="NaN"):
        head_budgets(scores, 4)
    with pytest.raises(ValueError, match="between"):
        head_budgets(torch.rand(1, 2, 10), 30)
    with pytest.raises(ValueError, match="positive"):
        head_budgets(torch.rand(1, 2, 10), 4, weights=torch.tensor([1.0, 0.0]))


def test_a_floor_per_row_equals_each_rows_own_scalar_floor():
    scores = torch.rand(2, 4, 300, generator=torch.Generator().manual_seed(7))
    scores[:, 0] *= 1e-6  # head 0 wants nothing: it gets its floor
    per_row = head_budgets(scores, 400, safeguard=torch.tensor([0.2, 0.35]))
    assert per_row[0].tolist() == head_budgets(scores[:1], 400, safeguard=0.2)[0].tolist()
    assert per_row[1].tolist() == head_budgets(scores[1:], 400, safeguard=0.35)[0].tolist()
    assert per_row.min(-1).values.tolist() == [20, 35]  # ceil(0.2 x 100) exactly, not 21 (0.2 in fp32 is more)


def test_layer_shares_mix_the_uniform_split_with_the_layers_prior():
    prior = torch.tensor([0.0, 1.0, 3.0])  # mean 4/3
    assert torch.allclose(layer_shares(prior, 0.0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(layer_shares(prior, 1.0), torch.tensor([0.0, 0.75, 2.25], dtype=torch.float64))
    assert torch.allclose(layer_shares(prior, 0.5), torch.tensor([0.5, 0.875, 1.625], dtype=torch.float64))
    assert torch.allclose(layer_shares(torch.zeros(3), 1.0), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"non-negative .*got \[1.0, -1.0\]"):  # names the fault and the values
        layer_shares(torch.tensor([1.0, -1.0]), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        layer_shares(prior, 1.5)


@given(
    st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 5)), min_size=1, max_size=12),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_layer_keeps_water_fill_the_mean_between_low_and_one(shares, keep, low):
    shares, low = torch.tensor(shares, dtype=torch.float64), low * keep
    got = layer_keeps(keep, shares, low)
    assert got.mean().item() == pytest.approx(keep, abs=1e-9)
    assert ((got >= low - 1e-12) & (got <= 1)).all()
    inside = (got > low + 1e-9) & (got < 1 - 1e-9) & (shares > 0)  # layers at neither bound keep by their shares
    if inside.any():
        per_share = got[inside] / shares[inside]
        assert torch.allclose(per_share, per_share[0].expand_as(per_share), rtol=1e-6)
        assert (shares[got >= 1 - 1e-9] >= shares[inside].max() - 1e-9).all()  # the largest shares fill first
        assert (shares[got <= low + 1e-9] <= shares[inside].min() + 1e-9).all()  # the smallest sit on the floor


def test_layer_keeps_fill_the_largest_share_first():
    got = layer_keeps(0.5, torch.tensor([1.0, 1.0, 4.0]))
    assert torch.allclose(got, torch.tensor([0.25, 0.25, 1.0], dtype=torch.float64))
    assert torch.allclose(layer_keeps(0.8, torch.tensor([0.0, 1.0])), torch.tensor([0.6, 1.0], dtype=torch.float64))
    low = layer_keeps(0.1, torch.tensor([0.0, 1.0, 3.0]), low=0.05)  # the zero share keeps the floor
    assert torch.allclose(low, torch.tensor([0.05, 0.0625, 0.1875], dtype=torch.float64))
