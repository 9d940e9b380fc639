"""Coverage-aware selection over the audio span, against brute-force properties."""

import itertools

import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.policies import Policy
from audiokv.select import clip_onsets, cover_spans, coverage_priority, ranks, select_tokens, weight_onset


@given(n=st.integers(1, 60), levels=st.integers(1, 5), descending=st.booleans(), seed=st.integers(0, 2**16))
def test_ranks_are_the_positions_a_stable_sort_gives(n, levels, descending, seed):
    scores = torch.randint(levels, (3, n), generator=torch.Generator().manual_seed(seed)).float()  # many ties
    scores[0, : n // 2] = float("inf")
    got = ranks(scores, descending)
    for row, rank in zip(scores.tolist(), got.tolist(), strict=True):
        order = sorted(range(n), key=lambda i: -row[i] if descending else row[i])  # Python's sort is stable
        assert rank == [order.index(i) for i in range(n)]


def _kept(priority, counts):
    order = priority.argsort(-1, descending=True)
    return [sorted(order[h, : counts[h]].tolist()) for h in range(priority.shape[0])]


@given(
    n=st.integers(8, 300),
    frac=st.floats(0.02, 1.0),
    floor=st.floats(0.05, 1.0),
    sinks=st.integers(0, 4),
    holes=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_every_stratum_keeps_a_token_so_no_gap_exceeds_what_the_floor_allows(n, frac, floor, sinks, holes, seed):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.rand(3, n, generator=gen)
    raw[:, :sinks] = float("inf")  # must keep (Whisper's sinks sit inside its span)
    never = torch.randperm(n, generator=gen)[:holes]
    never = never[never >= sinks]
    raw[:, never] = float("-inf")  # padding
    free = n - sinks - len(never)
    assume(free > 0)  # a row of only sinks and padding has no stratum to fill
    trend = torch.rand(3, n, generator=gen) ** 4  # peaky: without the floor it would leave holes
    density = floor / n + (1 - floor) * trend / trend.sum(-1, keepdim=True)
    counts = torch.tensor([sinks + max(1, int(frac * free)), sinks + 1, sinks + free])
    kept = _kept(coverage_priority(raw, density, counts), counts)
    for h, tokens in enumerate(kept):
        assert len(tokens) == counts[h] and set(range(sinks)) <= set(tokens) and not set(never.tolist()) & set(tokens)
        k = counts[h].item() - sinks
        if k < 2:
            continue
        # one token per stratum of 1/K of the mass; each free token has density >= floor/n, so a stratum spans
        # at most n/(K floor) + 1 tokens (+ the skipped holes) and kept neighbours are less than 2 strata apart
        limit = 2 * (n / (k * floor) + 1) + len(never)
        free_kept = [t for t in tokens if t >= sinks]
        gaps = [b - a for a, b in zip([sinks - 1, *free_kept], [*free_kept, n], strict=True)]
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


def test_must_keep_tokens_do_not_use_up_strata():
    raw = torch.rand(1, 1500, generator=torch.Generator().manual_seed(0))
    raw[0, :4] = float("inf")  # Whisper's 4 sink frames, inside its span
    kept = _kept(coverage_priority(raw, torch.ones(1, 1500), torch.tensor([300])), [300])[0]
    free = [t for t in kept if t >= 4]
    assert kept[:4] == [0, 1, 2, 3] and len(free) == 296
    assert {(2 * (f - 4) + 1) * 296 // (2 * 1496) for f in free} == set(range(296))  # one per stratum (by middle)


def test_a_density_on_one_token_is_capped_and_the_rest_spread():
    density = torch.zeros(1, 20)
    density[0, 5] = 1.0  # all mass on one token: the cap gives it one token's worth, the rest goes evenly
    raw = torch.zeros(1, 20)
    kept = _kept(coverage_priority(raw, density, torch.tensor([6])), [6])[0]
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    assert 5 in kept and max(gaps) <= 5


def test_cover_spans_with_sinks_and_padding_inside_the_span_feeds_select_tokens_exactly():
    gen = torch.Generator().manual_seed(1)
    raw = torch.rand(2, 2, 60, generator=gen)  # as the policy scored them: no marks
    scores = raw.clone()
    scores[:, :, -4:] = float("inf")  # window, outside the span
    scores[:, :, 10:12] = float("inf")  # sinks inside the span
    scores[:, :, 20:23] = float("-inf")  # padding inside the span
    budgets = torch.tensor([[20, 30], [15, 25]])
    spans = torch.tensor([[10, 50], [0, 0]])  # the second row has no audio
    trend = torch.rand(2, 2, 60, generator=gen)
    out = cover_spans(scores, raw, trend, budgets, spans, uniform=0.5)
    picked = select_tokens(out, budgets)
    for b in range(2):
        start, end = spans[b].tolist()
        for h in range(2):
            k = int(budgets[b, h])
            before = set(scores[b, h].topk(k).indices.tolist())
            after = set(picked[b, h, :k].tolist())
            assert len(after) == k and not after & {20, 21, 22}
            assert {t for t in before if not start <= t < end} == {t for t in after if not start <= t < end}
            if start == end:
                assert after == before  # a row without audio keeps plain top-k
                continue
            inside = sorted(t for t in after if start <= t < end)
            assert {10, 11} <= set(inside)
            count = torch.tensor([len(inside)])
            segment = trend[b, h : h + 1, start:end]
            density = 0.5 / (end - start) + 0.5 * segment / segment.sum()
            marked = scores[b, h : h + 1, start:end]
            inner = raw[b, h : h + 1, start:end].masked_fill(torch.isinf(marked), 0) + marked.masked_fill(
                torch.isfinite(marked), 0
            )  # the marks of `scores` on the raw values
            want = _kept(coverage_priority(inner, density, count), count)[0]
            assert inside == [start + t for t in want]
            assert inside != sorted(t for t in before if start <= t < end)  # coverage moved tokens


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
    assert audiokv != _kept_set("audiokv-sss", cfg, prior)
    assert audiokv != _kept_set("audiokv-no-heads", cfg, prior)
    assert audiokv != _kept_set("audiokv", AudioKVConfig(**{**cfg.__dict__, "coverage_floor": 1.0}), prior)


def test_audiokv_leaves_no_long_hole_in_the_audio_span():
    cfg = AudioKVConfig(compression_ratio=0.8, window=8, page_size=16, sinks=2, head_prior_strength=0.0)
    for tokens in _kept_set("audiokv", cfg):
        inside = [t for t in tokens if 8 <= t < 140]
        gaps = [b - a for a, b in zip([7, *inside], [*inside, 140], strict=True)]
        assert max(gaps) <= 2 * 132 / (len(inside) * cfg.coverage_floor) + 2


def test_the_audio_prior_moves_budget_in_audio_rows_only():
    """A batch mixing an audio prompt and a text-only prompt: the text row is budgeted as text."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, h, 120, 16, generator=gen) for h in (4, 2, 2))
    cfg = AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, sinks=2, head_prior_strength=3.0)
    budgets = {}
    for prior in (torch.tensor([0.0, 1.0]), None):
        layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, head_prior=prior, kernel="reference")
        layer(q, k, v, audio_span=torch.tensor([[10, 100], [0, 0]]))
        budgets[prior is None] = layer.budgets
    with_prior, without = budgets[False], budgets[True]
    assert with_prior[0, 1] > without[0, 1]  # the audio row favours the audio-critical head
    assert torch.equal(with_prior[1], without[1])  # the text row ignores the prior


def test_path_budgets_follow_how_far_each_heads_keys_move_not_where_its_queries_look():
    """Two heads whose audio keys move alike; head 0's queries look only at a sink.

    A split by the window scores starves head 0 (12 of 80 tokens); the path split
    gives both heads about half, and a head whose keys stand still gets only its floor.
    """
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, h, 160, 16, generator=gen) for h in (4, 2, 2))
    k[0, 0, 0] = 60 * F.normalize(q[0, :2, -8:].mean((0, 1)), dim=0)  # head 0's queries all go to sink 0
    cfg = AudioKVConfig(compression_ratio=0.75, window=8, page_size=16, sinks=2, safeguard=0.2)

    def budgets(policy, keys):
        layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, policy=policy, kernel="reference")
        layer(q, keys, v, audio_span=(8, 140))
        return layer.budgets[0].tolist()

    floor = 2 + 8  # sinks and window must stay: more than the safeguard's 0.2 x 40 tokens
    assert budgets("audiokv-score-split", k)[0] < 16
    path = budgets("audiokv-no-heads", k)
    assert sum(path) == 80 and abs(path[0] - path[1]) <= 8
    still = k.clone()
    still[0, 0, 8:140] = k[0, 0, 8]  # head 0's audio keys stop moving
    assert budgets("audiokv-no-heads", still) == [floor, 80 - floor]


def test_rows_split_by_key_path_keep_a_higher_floor_than_adakvs_and_text_rows_keep_adakvs():
    """Head 0's audio keys stand still, so the path split gives it only its floor: 0.5 of the
    average by default in the audio row (0.2 starved heads on the tune split), AdaKV's 0.2 in a text row."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, h, 400, 16, generator=gen) for h in (4, 2, 2))
    k[0, 0, 8:380] = k[0, 0, 8]
    k[1, 0] *= 0.01  # the text row's window looks away from head 0: the score split gives it its floor too

    def budgets(**knobs):
        cfg = AudioKVConfig(compression_ratio=0.75, window=8, page_size=16, sinks=2, **knobs)
        layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, policy="audiokv-no-heads")
        layer(q, k, v, audio_span=torch.tensor([[8, 380], [0, 0]]))
        return layer.budgets.tolist()

    default, adakv, higher = budgets(), budgets(safeguard=0.2), budgets(safeguard=0.5)
    assert default[0] == higher[0] == [50, 150]  # ceil(0.5 x 100): the audio row's floor
    assert adakv[0] == [20, 180]  # ceil(0.2 x 100)
    assert default[1] == adakv[1] == [20, 180] and higher[1] == [50, 150]  # the text row: AdaKV's floor


def test_the_layer_prior_moves_budget_between_layers_in_audio_rows_only():
    """Two layers, the second audio-critical: audio rows keep more there and less in the first, the same in all."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, h, 120, 16, generator=gen) for h in (4, 2, 2))
    spans = torch.tensor([[10, 110], [0, 0]])  # an audio row and a text-only row

    def budgets(strength):
        cfg = AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, sinks=2, layer_prior=strength)
        out = []
        for idx in range(2):
            layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, head_prior=torch.tensor([0.2, 0.8]),
                                     layer_prior=torch.tensor([0.1, 0.3]), layer_idx=idx, num_layers=2,
                                     kernel="reference")  # fmt: skip
            layer(q, k, v, audio_span=spans)
            out.append(layer.budgets.sum(-1))
        return torch.stack(out)  # [layer, row]

    uniform, split = budgets(0.0), budgets(1.0)
    assert uniform[0].tolist() == uniform[1].tolist() == [2 * 36, 2 * 36]  # 120 - floor(0.7 * 120) per head
    assert split[:, 0].tolist() == [2 * 18, 2 * 54]  # keeps 0.15 and 0.45 of 120 per head: shares 0.5 and 1.5
    assert split[:, 1].tolist() == uniform[:, 1].tolist()  # the text row ignores the layer prior
    off = AudioKVAttention(AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, sinks=2), num_heads=4,
                           num_kv_heads=2, head_dim=16, layer_prior=torch.tensor([0.1, 0.3]), num_layers=2,
                           policy="audiokv-no-heads", kernel="reference")  # fmt: skip
    off(q, k, v, audio_span=spans)
    assert off.budgets.sum(-1).tolist() == uniform[0].tolist()  # the ablation without the prior drops it too
    even = AudioKVAttention(AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, sinks=2, layer_prior=1.0),
                            num_heads=4, num_kv_heads=2, head_dim=16, layer_prior=torch.tensor([0.1, 0.3]),
                            num_layers=2, policy="audiokv-even-layers", kernel="reference")  # fmt: skip
    even(q, k, v, audio_span=spans)
    assert even.budgets.sum(-1).tolist() == uniform[0].tolist()


def _layer_budgets(cfg, prior, q, k, v, **kwargs):
    """``[layer, head]`` budgets of row 0 in two layers that share ``prior`` (``[2]``)."""
    out = []
    for idx in range(2):
        layer = AudioKVAttention(cfg, num_heads=q.shape[1], num_kv_heads=k.shape[1], head_dim=16, layer_idx=idx,
                                 num_layers=2, layer_prior=prior, kernel="reference", **kwargs)  # fmt: skip
        layer(q, k, v, audio_span=(0, k.shape[2]))
        out.append(layer.budgets[0].tolist())
    return out


def test_the_layer_prior_never_spends_more_than_the_even_split():
    """At 0.9 a 400-token prompt keeps 40 per head, 36 of which (sinks and window) every layer must keep."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, h, 400, 16, generator=gen) for h in (4, 2, 2))
    cfg = AudioKVConfig(compression_ratio=0.9, window=32, page_size=16, sinks=4, layer_prior=1.0, safeguard=1.0)
    assert _layer_budgets(cfg, torch.tensor([0.1, 0.3]), q, k, v) == [[36, 36], [44, 44]]  # not [[36, 36], [60, 60]]


def test_a_layer_without_prior_still_keeps_a_token_per_head():
    """Cross-attention without sinks: a layer whose prior is zero keeps one token, not none."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = torch.randn(1, 4, 2, 16, generator=gen), *(torch.randn(1, 2, 100, 16, generator=gen) for _ in range(2))
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, sinks=0, layer_prior=1.0, safeguard=1.0)
    assert _layer_budgets(cfg, torch.tensor([0.0, 1.0]), q, k, v, cross_attention=True) == [[1, 1], [99, 99]]


def test_weight_onset_scales_the_first_tokens_of_each_clip_only():
    density = torch.ones(3, 1, 10)
    audio = torch.zeros(3, 10, dtype=torch.bool)
    audio[0, 2:9], audio[1, :3], audio[2, 1:3], audio[2, 5:10] = True, True, True, True  # row 2: two clips
    onset = clip_onsets(audio, 4)
    assert onset.int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
                                    [0, 1, 1, 0, 0, 1, 1, 1, 1, 0]]  # fmt: skip
    out = weight_onset(density, onset, factor=3.0)
    assert torch.equal(out[:, 0], torch.where(onset, 3.0, 1.0))
    assert not clip_onsets(torch.zeros(2, 10, dtype=torch.bool), 4).any()  # rows without audio
    assert density.eq(1).all()  # not in place


def test_text_between_two_clips_is_chosen_by_the_window_as_text():
    """A row of text, clip, text, clip, question: the window's favourite tokens between the clips are all kept.

    Read as one span from the first clip to the last, they would be audio: coverage keeps the one of them
    its density asks for (they are alike, so their novelty is low) and merges the rest into it.
    """
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, h, 200, 16, generator=gen) for h in (4, 2, 2))
    audio = torch.zeros(1, 200, dtype=torch.bool)
    audio[0, 10:90], audio[0, 110:180] = True, True
    looked_at = F.normalize(q[0, :, -8:].mean(1).reshape(2, 2, 16).mean(1), dim=-1)  # [H_kv, D]
    k[0, :, 95:100] = 40 * looked_at[:, None, :]
    cfg = AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, sinks=2)
    layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, kernel="reference")
    layer(q, k, v, audio_span=audio)
    for h in range(2):
        kept = layer.kept_indices[0, h, : layer.budgets[0, h]].tolist()
        assert set(range(95, 100)) <= set(kept)
        assert any(10 <= t < 90 for t in kept) and any(110 <= t < 180 for t in kept)
        assert kept == sorted(kept) and len(set(kept)) == len(kept)


def _two_clip_layer(cfg, prior=None):
    return AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, head_prior=prior, kernel="reference")


def test_a_row_with_several_clips_is_scored_in_its_own_order(monkeypatch):
    """Pooling reads a token's neighbours, and a policy reading every query must see keys in causal order:
    the scores come from the prompt as given, and only what reads the audio's places sees it reordered."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, h, 120, 16, generator=gen) for h in (4, 2, 2))
    audio = torch.zeros(1, 120, dtype=torch.bool)
    audio[0, 10:50], audio[0, 60:100] = True, True
    seen = []
    score = Policy.score
    monkeypatch.setattr(Policy, "score", lambda self, inp: seen.append(inp.key) or score(self, inp))
    _two_clip_layer(AudioKVConfig(compression_ratio=0.7, window=8, page_size=16))(q, k, v, audio_span=audio)
    assert len(seen) == 1 and torch.equal(seen[0], k)


def test_sinks_stay_the_first_tokens_when_a_clip_starts_among_them():
    """Text, one audio token, text, then a clip: the 4 sinks are tokens 0-3, not the first 4 of the reordered row."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, h, 80, 16, generator=gen) for h in (4, 2, 2))
    audio = torch.zeros(1, 80, dtype=torch.bool)
    audio[0, 1], audio[0, 4:60] = True, True
    layer = _two_clip_layer(AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, sinks=4))
    layer(q, k, v, audio_span=audio)
    for h in range(2):
        assert {0, 1, 2, 3} <= set(layer.kept_indices[0, h, : layer.budgets[0, h]].tolist())


def test_clips_inside_the_window_still_make_their_row_an_audio_row():
    """Two clips inside the observation window and none before it: the row still gets the head prior."""
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, h, 120, 16, generator=gen) for h in (4, 2, 2))
    audio = torch.zeros(1, 120, dtype=torch.bool)
    audio[0, 106:110], audio[0, 112:118] = True, True
    cfg = AudioKVConfig(compression_ratio=0.7, window=16, page_size=16, head_prior_strength=3.0)
    budgets = []
    for prior in (torch.tensor([0.0, 1.0]), None):
        layer = _two_clip_layer(cfg, prior)
        layer(q, k, v, audio_span=audio)
        budgets.append(layer.budgets[0, 1])
    assert budgets[0] > budgets[1]


def test_each_clip_keeps_its_onset():
    """The first tokens of the second clip get the onset's density too, not only the first clip's."""
    gen = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(1, h, 200, 16, generator=gen) for h in (4, 2, 2))
    audio = torch.zeros(1, 200, dtype=torch.bool)
    audio[0, 10:90], audio[0, 110:180] = True, True
    cfg = AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, onset_seconds=0.2)  # 10 tokens at 50 per s
    layer = _two_clip_layer(cfg)
    layer(q, k, v, audio_span=audio)
    kept = torch.zeros(200)
    for h in range(2):
        kept[layer.kept_indices[0, h, : layer.budgets[0, h]]] += 1
    assert kept[110:120].mean() > 2 * kept[120:180].mean()
