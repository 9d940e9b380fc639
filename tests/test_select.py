"""Coverage-aware selection over the audio span, against brute-force properties."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.select import cover_spans, coverage_priority


def _kept(priority, counts):
    order = priority.argsort(-1, descending=True)
    return [sorted(order[h, : counts[h]].tolist()) for h in range(priority.shape[0])]


@given(
    n=st.integers(8, 300),
    frac=st.floats(0.02, 1.0),
    floor=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_every_stratum_keeps_a_token_so_no_gap_exceeds_what_the_floor_allows(n, frac, floor, seed):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.rand(3, n, generator=gen)
    trend = torch.rand(3, n, generator=gen) ** 4  # peaky: without the floor it would leave holes
    density = floor / n + (1 - floor) * trend / trend.sum(-1, keepdim=True)
    counts = torch.tensor([max(1, int(frac * n)), 1, n])
    kept = _kept(coverage_priority(raw, density, counts), counts)
    for h, tokens in enumerate(kept):
        assert len(set(tokens)) == counts[h]
        if counts[h] < 2:
            continue
        # each stratum holds 1/K of the mass and every token has density >= floor/n:
        # a stratum spans at most n/(K floor) tokens + 1, so kept neighbours are < 2 strata apart
        limit = 2 * (n / (counts[h].item() * floor) + 1)
        gaps = [b - a for a, b in zip([-1, *tokens], [*tokens, n], strict=True)]
        assert max(gaps) <= limit


def test_uniform_density_is_an_even_stride_and_raw_scores_pick_inside_each_stride():
    raw = torch.zeros(1, 100)
    raw[0, 3::10] = 1.0  # the best token of every block of 10 sits at offset 3
    kept = _kept(coverage_priority(raw, torch.ones(1, 100), torch.tensor([10])), [10])
    assert kept == [list(range(3, 100, 10))]


def test_denser_regions_keep_more_tokens():
    density = torch.ones(1, 200)
    density[0, :100] = 4.0
    kept = _kept(coverage_priority(torch.rand(1, 200), density, torch.tensor([50])), [50])[0]
    assert sum(t < 100 for t in kept) == 40  # 4/5 of the mass, 4/5 of the tokens


def test_must_keep_tokens_stay_and_capped_density_never_keeps_a_token_twice():
    raw = torch.rand(1, 20) * 0.9
    raw[0, 0] = float("inf")
    raw[0, 5] = 0.95  # the best of whatever stratum it falls in
    density = torch.zeros(1, 20)
    density[0, 5] = 1.0  # all mass on one token: the cap spreads the rest
    kept = _kept(coverage_priority(raw, density, torch.tensor([6])), [6])[0]
    assert 0 in kept and 5 in kept and len(set(kept)) == 6


def test_cover_spans_keeps_the_same_count_inside_and_the_same_tokens_outside():
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(2, 2, 60, generator=gen)
    scores[:, :, -4:] = float("inf")
    scores[1, :, :3] = float("-inf")  # padding
    budgets = torch.tensor([[20, 30], [15, 25]])
    spans = torch.tensor([[10, 50], [0, 0]])  # the second row has no audio
    out = cover_spans(scores, scores, scores, budgets, spans, uniform=1.0)
    for b in range(2):
        for h in range(2):
            before = set(scores[b, h].topk(int(budgets[b, h])).indices.tolist())
            after = set(out[b, h].topk(int(budgets[b, h])).indices.tolist())
            start, end = spans[b].tolist()
            assert {t for t in before if not start <= t < end} == {t for t in after if not start <= t < end}
            assert sum(start <= t < end for t in before) == sum(start <= t < end for t in after)
    assert torch.equal(out[1], scores[1].where(torch.isneginf(scores[1]), out[1]))  # padding stays -inf


def _kept_set(policy, cfg, prior=None):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, 160, 16, generator=gen) for h in (4, 2, 2))
    layer = AudioKVAttention(
        cfg, num_heads=4, num_kv_heads=2, head_dim=16, head_prior=prior, policy=policy, kernel="reference"
    )
    layer(q, k, v, audio_span=(8, 140))
    return [layer.kept_indices[0, h, : layer.budgets[0, h]].tolist() for h in range(2)]


def test_coverage_sss_and_prior_each_change_what_the_engine_keeps():
    cfg = AudioKVConfig(compression_ratio=0.75, window=8, page_size=16, sinks=2, coverage_floor=0.3)
    prior = torch.tensor([0.0, 1.0])
    audiokv = _kept_set("audiokv", cfg, prior)
    assert audiokv != _kept_set("audiokv-no-coverage", cfg, prior)
    assert audiokv != _kept_set("audiokv-no-sss", cfg, prior)
    assert audiokv != _kept_set("audiokv-no-heads", cfg, prior)
    assert audiokv != _kept_set("audiokv", AudioKVConfig(**{**cfg.__dict__, "coverage_floor": 1.0}), prior)


def test_audiokv_leaves_no_long_hole_in_the_audio_span():
    cfg = AudioKVConfig(compression_ratio=0.8, window=8, page_size=16, sinks=2, head_prior_strength=0.0)
    for tokens in _kept_set("audiokv", cfg):
        inside = [t for t in tokens if 8 <= t < 140]
        gaps = [b - a for a, b in zip([7, *inside], [*inside, 140], strict=True)]
        assert max(gaps) <= 2 * 132 / (len(inside) * cfg.coverage_floor) + 2
