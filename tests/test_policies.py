import itertools

import pytest
import torch

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.eval import has_repetition, stops_early
from audiokv.policies import POLICIES, PyramidKV, get_policy


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_keeps_exactly_its_budget(name):
    gen = torch.Generator().manual_seed(0)
    cfg = AudioKVConfig(compression_ratio=0.6, window=8, page_size=16, sinks=2)
    layer = AudioKVAttention(
        cfg, num_heads=4, num_kv_heads=2, head_dim=16, head_prior=torch.tensor([0.1, 0.9]), policy=name,
        layer_idx=1, num_layers=4, kernel="reference",
    )  # fmt: skip
    q, k, v = (torch.randn(1, h, 100, 16, generator=gen) for h in (4, 2, 2))
    layer(q, k, v, audio_span=(10, 90))
    ratio = get_policy(name).layer_ratio(0.6, 1, 4)
    keep = 100 - int(100 * ratio)
    assert layer.budgets.sum().item() == 2 * keep
    assert layer.pool.row_lengths == layer.budgets.flatten().tolist()
    if not get_policy(name).head_budgets:
        assert layer.budgets[0, 0] == layer.budgets[0, 1]
    kept = layer.kept_indices[0, 0, : layer.budgets[0, 0]].tolist()
    assert {0, 1} <= set(kept) and set(range(92, 100)) <= set(kept)  # sinks and window


def test_full_keeps_everything_and_streamingllm_keeps_the_recent_tokens():
    cfg = AudioKVConfig(compression_ratio=0.5, window=4, page_size=16, sinks=2)
    q, k, v = torch.randn(1, 2, 40, 8), torch.randn(1, 1, 40, 8), torch.randn(1, 1, 40, 8)
    full = AudioKVAttention(cfg, num_heads=2, num_kv_heads=1, head_dim=8, policy="full")
    full(q, k, v)
    assert full.budgets.item() == 40
    recent = AudioKVAttention(cfg, num_heads=2, num_kv_heads=1, head_dim=8, policy="streamingllm")
    recent(q, k, v)
    assert recent.kept_indices[0, 0].tolist() == [0, 1, *range(22, 40)]


def test_pyramid_budgets_shrink_with_depth_and_average_to_the_ratio():
    ratios = [PyramidKV("p").layer_ratio(0.6, layer, 8) for layer in range(8)]
    assert ratios == sorted(ratios) and all(0 <= r < 1 for r in ratios)
    assert sum(ratios) / 8 == pytest.approx(0.6)


def test_unknown_policy():
    with pytest.raises(ValueError, match=r"unknown policy 'magic'.*snapkv"):
        get_policy("magic")


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("the cat sat on the mat", False),
        ("and then and then and then it ended", False),  # 6 words: speech
        ("a b c a b c a b c", True),
        ("no no no no no no no no no", True),
        ("the sound is very nice, the sound is very nice, the sound is very nice, the", True),  # period 5
        ("we walk, we walk, we walk, we walk, we walk, and then", True),  # period 2, 10 words
        ("one two three four five six seven eight nine ten " * 2, False),  # twice is not a loop
        (  # period 21, from a real Whisper base output at ratio 0.8
            "so the river was known at dawn so the ferry flowed only twice a day wild flowers flowed along "
            "the railway line " * 3,
            True,
        ),
    ],
)
def test_repetition_detection(text, loop):
    assert has_repetition(text) is loop


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("The", True),  # end-of-text after one word of ten
        ("", True),
        ("The river was low.", True),  # four of ten
        ("The river was low that...", False),  # five of ten: half is not short
        ("the river the river the river the river", False),  # long enough (a loop is the other failure)
    ],
)
def test_stops_early_counts_normalized_words_against_half_the_reference(text, short):
    reference = "The river was low that summer, so the ferry crossed."
    assert stops_early(text, reference) is short


def _layer(policy, **kw):
    cfg = AudioKVConfig(compression_ratio=0.75, window=4, page_size=16, sinks=0, **kw)
    return AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=8, policy=policy, kernel="reference")


def test_stride_spreads_tokens_evenly_whatever_the_budget():
    q, k, v = torch.randn(1, 4, 200, 8), torch.randn(1, 2, 200, 8), torch.randn(1, 2, 200, 8)
    layer = _layer("stride")
    layer(q, k, v)
    kept = [t for t in layer.kept_indices[0, 0].tolist() if t < 196]  # the window is kept anyway
    gaps = {b - a for a, b in itertools.pairwise(kept)}
    assert len(gaps) <= 3 and max(gaps) <= 2 * 200 / 50  # three-distance theorem


def test_tova_keeps_one_set_for_every_head_from_the_last_query():
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 64, 8, generator=gen), torch.randn(1, 2, 64, 8, generator=gen), torch.randn(1, 2, 64, 8)
    layer = _layer("tova")
    layer(q, k, v)
    assert torch.equal(layer.kept_indices[0, 0], layer.kept_indices[0, 1])
    from audiokv.scoring import window_scores

    want = window_scores(q[:, :, -1:], k, scaling=layer.scaling).mean(1)[0]  # the last query, every head
    kept = layer.kept_indices[0, 0, : layer.budgets[0, 0]]
    assert set(kept.tolist()) - set(range(60, 64)) == set(want[:60].topk(len(kept) - 4).indices.tolist())
    q2 = q.clone()
    q2[:, :, -2] = torch.randn(4, 8)  # queries before the last one do not matter
    other = _layer("tova")
    other(q2, k, v)
    assert torch.equal(other.kept_indices, layer.kept_indices)


def test_expected_attention_equals_window_attention_times_value_norm_when_the_queries_agree():
    from audiokv.policies import ExpectedAttention, ScoreInput
    from audiokv.scoring import window_scores

    gen = torch.Generator().manual_seed(0)
    one = torch.randn(1, 4, 1, 8, generator=gen)
    q = one.expand(1, 4, 6, 8)  # zero variance: the Gaussian is a point mass
    k, v = torch.randn(1, 2, 30, 8, generator=gen), torch.randn(1, 2, 30, 8, generator=gen)
    inp = ScoreInput(q, k, v, 0.35, None, 6, False, "max", 1)
    want = window_scores(one, k, scaling=0.35, causal=False) * v.norm(dim=-1)
    torch.testing.assert_close(ExpectedAttention("e").score(inp), want, atol=1e-6, rtol=1e-5)
    spread = q + 0.5 * torch.randn(1, 4, 6, 8, generator=gen)  # variance favours large-norm keys
    inp = ScoreInput(spread, k, v, 0.35, None, 6, False, "max", 1)
    mean = spread.mean(2, keepdim=True)
    assert not torch.allclose(ExpectedAttention("e").score(inp), window_scores(mean, k, scaling=0.35, causal=False)
                              * v.norm(dim=-1), atol=1e-4)  # fmt: skip


def test_random_draws_a_new_mask_per_layer_and_call_and_repeats_from_its_seed():
    q, k, v = torch.randn(1, 2, 200, 8), torch.randn(1, 1, 200, 8), torch.randn(1, 1, 200, 8)

    def kept(seed: int, layer_idx: int, calls: int) -> list[list[int]]:
        cfg = AudioKVConfig(compression_ratio=0.8, window=4, page_size=16, sinks=0, seed=seed)
        layer = AudioKVAttention(cfg, num_heads=2, num_kv_heads=1, head_dim=8, policy="random", layer_idx=layer_idx)
        masks = []
        for _ in range(calls):
            layer.reset()
            layer(q, k, v)
            masks.append(layer.kept_indices[0, 0].tolist())
        return masks

    first, second = kept(0, 0, 2)
    assert first != second  # a new clip gets a new mask
    assert kept(0, 1, 1)[0] != first  # so does another layer
    assert kept(1, 0, 1)[0] != first  # and another seed
    assert kept(0, 0, 2) == [first, second]  # the same seed repeats the run


@pytest.mark.parametrize("kernel", [1, 7])
def test_pooling_keeps_the_neighbours_of_a_heavy_hitter(kernel):
    """The window's attention peaks on token 50; max pooling over 7 keeps the 3 tokens on each side too."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, h, 160, 16, generator=gen) for h in (4, 2, 2))
    k[:, :, 50] = 4 * q[:, :, -8:].reshape(1, 2, -1, 16).mean(2)  # each KV head's queries agree on key 50
    cfg = AudioKVConfig(compression_ratio=0.8, window=8, page_size=16, sinks=2, pooling_kernel=kernel)
    layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, policy="snapkv", kernel="reference")
    layer(q, k, v)
    for h in range(2):
        kept = set(layer.kept_indices[0, h, : layer.budgets[0, h]].tolist())
        assert 50 in kept
        assert (set(range(47, 54)) <= kept) == (kernel == 7)  # unpooled, the neighbours are random picks


def test_a_rare_text_token_the_window_ignores_is_kept_only_with_text_rarity():
    # filler: four values repeated; token 21 carries a value nothing repeats; the window's queries
    # look only at the filler's keys (a context compressed before its question)
    gen = torch.Generator().manual_seed(3)
    filler_k, filler_v = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)
    k = filler_k[torch.arange(80) % 4][None, None] * torch.linspace(0.5, 1.5, 80)[:, None]  # scores differ
    v = filler_v[torch.arange(80) % 4].clone()[None, None]
    k[0, 0, 21], v[0, 0, 21] = -filler_k.sum(0), torch.randn(16, generator=gen)
    q = filler_k.sum(0).expand(1, 2, 80, 16).contiguous()
    cfg = AudioKVConfig(compression_ratio=0.75, window=4, sinks=2, pooling_kernel=1)
    kept = {}
    for name in ("audiokv", "audiokv-window-text"):
        layer = AudioKVAttention(cfg, num_heads=2, num_kv_heads=1, head_dim=16, policy=name, kernel="reference")
        layer(q, k, v)  # text only: no audio span
        kept[name] = layer.kept_indices[0, 0, : layer.budgets[0, 0]].tolist()
    assert 21 in kept["audiokv"] and 21 not in kept["audiokv-window-text"]
    assert len(kept["audiokv"]) == len(kept["audiokv-window-text"]) == 20


def test_the_joint_law_gives_each_head_the_sum_of_its_density_even_where_keys_repeat():
    from audiokv.policies import ScoreInput

    gen = torch.Generator().manual_seed(0)
    key = torch.randn(1, 2, 40, 8, generator=gen)
    key[:, 1] = key[:, 1, :1]  # a head whose keys never move
    inp = ScoreInput(torch.randn(1, 2, 3, 8), key, torch.randn(1, 2, 40, 8), 1.0, None, 4, False, "max", 1)
    assert inp.novelty[0, 1].min() < 0  # 1 - cos of equal keys rounds to just below 0 (this seed)
    policy = get_policy("audiokv-joint")
    density = policy.density(inp, inp.novelty)
    assert torch.allclose(density, inp.novelty.clamp_min(0) ** (2 / 3))
    demand = policy.head_demand(inp, torch.tensor([[5, 35]]))
    assert torch.allclose(demand[0, 0], density[0, 0, 5:35].sum()) and demand[0, 1] > 0  # finite, positive


def test_choosing_by_novelty_keeps_the_most_novel_frame_of_each_stratum():
    """Uniform novelty but one spike per stretch of 10 frames; window scores point elsewhere."""
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(1, 1, 1, 16, generator=gen) + 0.05 * torch.randn(1, 1, 100, 16, generator=gen)
    spikes = list(range(5, 100, 10))
    key[0, 0, spikes] = torch.randn(len(spikes), 16, generator=gen) * 3
    query, value = torch.randn(1, 1, 2, 16, generator=gen), torch.randn(1, 1, 100, 16, generator=gen)
    kept = {}
    for policy in ("audiokv", "audiokv-pick"):
        module = AudioKVAttention(
            AudioKVConfig(compression_ratio=0.9, page_size=16, sinks=0, coverage_floor=1.0),
            num_heads=1, num_kv_heads=1, head_dim=16, cross_attention=True, policy=policy,
        )  # fmt: skip
        module(query, key, value)
        kept[policy] = module.kept_indices[0, 0, : module.budgets[0, 0]].tolist()
    assert kept["audiokv-pick"] == spikes  # one token per stratum of 10, the spike in it
    assert kept["audiokv"] != spikes


def test_sss_on_the_keys_reads_the_novelty_of_the_keys_low_passed_inside_the_span():
    from audiokv.policies import ScoreInput
    from audiokv.scoring import key_novelty
    from audiokv.spectral import spectral_smooth

    gen = torch.Generator().manual_seed(0)
    q, key = torch.randn(1, 2, 3, 16, generator=gen), torch.randn(2, 1, 200, 16, generator=gen)
    span = torch.tensor([[0, 200], [50, 150]])

    def novelty(cutoff):
        return ScoreInput(q, key, key, 0.25, None, 4, False, "max", 1, spans=span, novelty_cutoff=cutoff).novelty

    assert torch.equal(novelty(1.0), key_novelty(key))
    low = spectral_smooth(key.transpose(2, 3), 0.2, span).transpose(2, 3)
    torch.testing.assert_close(novelty(0.2), key_novelty(low))
    assert torch.equal(novelty(0.2)[1, :, :49], key_novelty(key)[1, :, :49])  # outside the span: the raw keys
    assert not torch.allclose(novelty(0.2)[:, :, 60:140], key_novelty(key)[:, :, 60:140], atol=0.1)
