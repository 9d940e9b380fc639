"""Merging: kept audio tokens stand for their dropped neighbours."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from audiokv.merge import merge_spans


def kept_mask(indices, length):
    mask = torch.zeros(len(indices), length, dtype=torch.bool)
    for r, idx in enumerate(indices):
        mask[r, idx] = True
    return mask[None]


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10), data=st.data())
def test_piecewise_constant_audio_merges_into_exactly_the_full_attention(sizes, data):
    """Frames that repeat within a segment: one kept frame per segment reproduces dense attention."""
    gen = torch.Generator().manual_seed(len(sizes))
    segments = len(sizes)
    seg_key, seg_value = torch.randn(segments, 8, generator=gen), torch.randn(segments, 8, generator=gen)
    owner = torch.repeat_interleave(torch.arange(segments), torch.tensor(sizes))
    length = len(owner)
    key, value = seg_key[owner][None, None], seg_value[owner][None, None]  # [1, 1, T, 8]
    starts = [sum(sizes[:i]) for i in range(segments)]
    picks = [s + data.draw(st.integers(0, n - 1)) for s, n in zip(starts, sizes, strict=True)]
    kept = kept_mask([picks], length)
    merged_k, merged_v, log_mass = merge_spans(key, value, kept, torch.tensor([[0, length]]))
    query = torch.randn(3, 8, generator=gen)
    idx = torch.tensor(picks)
    logits = query @ merged_k[0, 0, idx].T + log_mass[0, 0, idx]
    got = logits.softmax(-1) @ merged_v[0, 0, idx]
    want = (query @ key[0, 0].T).softmax(-1) @ value[0, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(log_mass[0, 0, idx].exp().round(), torch.tensor(sizes, dtype=torch.float32))


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(4, 80),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    keep=st.floats(0.05, 0.9),
    data=st.data(),
)
def test_every_audio_token_is_counted_once_and_nothing_outside_moves(length, heads, seed, keep, data):
    gen = torch.Generator().manual_seed(seed)
    start = data.draw(st.integers(0, length - 1))
    end = data.draw(st.integers(start + 1, length))
    key, value = torch.randn(2, heads, length, 4, generator=gen), torch.randn(2, heads, length, 4, generator=gen)
    kept = torch.rand(2, heads, length, generator=gen) < keep
    valid = torch.rand(2, length, generator=gen) < 0.8
    spans = torch.tensor([[start, end], [0, 0]])  # the second row has no audio
    merged_k, merged_v, log_mass = merge_spans(key, value, kept, spans, valid)
    audio = torch.zeros(2, length, dtype=torch.bool)
    audio[0, start:end] = valid[0, start:end]
    anchors = kept & audio[:, None]
    for h in range(heads):
        count = log_mass[0, h][anchors[0, h]].exp().sum()
        want = audio[0].sum() if anchors[0, h].any() else 0
        assert abs(float(count) - float(want)) < 1e-3
    assert torch.equal(log_mass[~anchors], torch.zeros(int((~anchors).sum())))
    still = ~anchors
    assert torch.equal(merged_k[still], key[still]) and torch.equal(merged_v[still], value[still])


def test_merging_brings_evicted_attention_closer_to_the_full_cache(cross_module):
    """Smooth audio keys (a random walk): the same kept frames, merged, attend much like the full cache."""
    gen = torch.Generator().manual_seed(0)
    steps = torch.randn(1, 4, 400, 16, generator=gen) * 0.15
    key = steps.cumsum(2) + torch.randn(1, 4, 1, 16, generator=gen)
    value = torch.randn(1, 4, 400, 16, generator=gen).cumsum(2) * 0.1
    query = torch.randn(1, 4, 3, 16, generator=gen)
    full = F.scaled_dot_product_attention(query, key, value)
    errors = {}
    for policy in ("audiokv", "audiokv-no-merge"):
        module = cross_module(policy, 0.8, heads=4, page_size=64)
        module(query, key, value)
        errors[policy] = (module(query[:, :, :1], key[:, :, :0], value[:, :, :0]) - full[:, :, :1]).abs().mean()
    assert errors["audiokv"] < 0.5 * errors["audiokv-no-merge"]


def test_a_token_merges_into_a_kept_token_of_its_own_clip_only():
    """Two clips made one span: token 2 (clip 1) is closest to kept token 3 (clip 2) but joins token 0."""
    key = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.0, 1.0], [0.1, 1.0]])[None, None]
    kept = kept_mask([[0, 3]], 5)
    clips = torch.tensor([[1, 1, 1, 2, 2]])
    merged_k, _, log_mass = merge_spans(key, key, kept, torch.tensor([[0, 5]]), clips=clips)
    assert log_mass[0, 0].exp().round().tolist() == [3, 1, 1, 2, 1]
    torch.testing.assert_close(merged_k[0, 0, 0], key[0, 0, :3].mean(0))
    alone = merge_spans(key, key, kept, torch.tensor([[0, 5]]))[2]
    assert alone[0, 0].exp().round().tolist() == [2, 1, 1, 3, 1]  # without clips, token 2 joins its twin
