import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv.heads import HeadScores, _tied_ranks, alignment_score, group_heads, timed_alignment_score


def peaked(centres, frames, width=1.0):
    pos = torch.arange(frames, dtype=torch.float64)
    rows = torch.stack([torch.exp(-0.5 * ((pos - c) / width) ** 2) for c in centres])
    return rows / rows.sum(-1, keepdim=True)


def test_an_aligner_head_beats_diffuse_fixed_backward_and_distracted_heads():
    n, frames = 20, 100
    forward = torch.linspace(5, 95, n)
    heads = torch.stack(
        [
            peaked(forward, frames),  # sharp and monotonic: the aligner
            torch.full((n, frames), 1 / frames),  # diffuse
            peaked([50.0] * n, frames),  # sharp but stuck on one frame
            peaked(forward.flip(0), frames),  # sharp but moving backwards
            0.2 * peaked(forward, frames),  # aligned, but 80% of its attention is elsewhere
        ]
    )
    score = alignment_score(heads)
    assert score[0] > 0.5
    assert score[1] < 0.01 and score[2] < 0.01 and score[3] == 0
    assert score[4].item() == pytest.approx(0.2 * score[0].item(), rel=1e-5)


@pytest.mark.parametrize("n", [3, 10, 40])
def test_a_head_stuck_on_one_frame_is_not_monotonic_whatever_the_sort(n):
    """Its centroids are all equal: tied ranks, no correlation with the token order (not a perfect one)."""
    stuck = torch.zeros(1, n, 30)
    stuck[..., 7] = 1.0  # identical rows: every query lands on the same frame
    assert alignment_score(stuck).item() == 0


@given(st.lists(st.integers(0, 3), min_size=1, max_size=25))
def test_tied_ranks_are_spearmans(values):
    x = torch.tensor(values, dtype=torch.float64)
    less = (x[None, :] < x[:, None]).sum(-1).double()
    equal = (x[None, :] == x[:, None]).sum(-1).double()
    assert torch.equal(_tied_ranks(x[None])[0], less + (equal - 1) / 2)


def test_timed_score_rewards_the_head_on_the_current_and_next_word_not_the_one_trailing_it():
    words = torch.tensor([[0, 10], [10, 20], [20, 30], [30, 40], [40, 50], [50, 60]])
    spans = words.repeat_interleave(2, 0)  # two tokens per word
    centre = spans.double().mean(-1)
    heads = torch.stack(
        [
            peaked(centre + 2, 60),  # on its word, leaning towards the next one
            peaked(centre - 10, 60),  # one word behind
            peaked([30.0] * 12, 60),  # stuck on one frame
            torch.full((12, 60), 1 / 60),  # diffuse
        ]
    )
    score = timed_alignment_score(heads, spans)
    assert score[0] > 0.85
    assert score[1] < 0.3 and score[2] < 0.05 and score[3] == 0
    with pytest.raises(ValueError, match="spans"):
        timed_alignment_score(heads, spans[:5])


def test_timed_score_counts_the_next_words_audio_and_nothing_beyond():
    spans = torch.tensor([[0, 10], [10, 20], [20, 30], [30, 40], [40, 50], [50, 60]])  # one token per word
    centre = spans.double().mean(-1)
    ahead = peaked(centre + 10, 70)  # each token looks at the next word's audio
    beyond = peaked(centre + 20, 70)  # two words ahead
    score = timed_alignment_score(torch.stack([ahead, beyond]), spans)
    assert score[0] > 0.7 and score[1] < 0.3  # the last token has no next word: at most 5/6


@given(st.integers(1, 4), st.integers(3, 30), st.integers(2, 60), st.integers(0, 1000))
def test_scores_lie_in_unit_interval(heads, n, frames, seed):
    attn = torch.rand(heads, n, frames, generator=torch.Generator().manual_seed(seed))
    attn = attn / attn.sum(-1, keepdim=True) * torch.rand(heads, n, 1, generator=torch.Generator().manual_seed(seed))
    score = alignment_score(attn)
    assert score.shape == (heads,) and ((score >= 0) & (score <= 1)).all()


def test_bad_shapes():
    with pytest.raises(ValueError, match="3 transcript tokens"):
        alignment_score(torch.rand(2, 2, 10))
    with pytest.raises(ValueError, match=r"\[H, N, F\]"):
        alignment_score(torch.rand(2, 10))
    assert torch.equal(group_heads(torch.tensor([[1.0, 3.0, 5.0, 7.0]]), 2), torch.tensor([[2.0, 6.0]]))
    with pytest.raises(ValueError, match="do not split"):
        group_heads(torch.rand(6), 4)


def test_save_load_and_refusals(tmp_path):
    scores = HeadScores(torch.rand(4, 6), model="whisper-tiny.en", data="unit test")
    path = tmp_path / "c.safetensors"
    scores.save(path)
    back = HeadScores.load(path, model="whisper-tiny.en", num_layers=4, num_kv_heads=6)
    assert torch.equal(back.scores, scores.scores) and back.data == "unit test" and back.version
    with pytest.raises(ValueError, match=r"made for model 'whisper-tiny\.en', not 'whisper-base'"):
        HeadScores.load(path, model="whisper-base")
    with pytest.raises(ValueError, match="4 layers x 6 KV heads, but the model has 6 x 8"):
        HeadScores.load(path, num_layers=6, num_kv_heads=8)
    with pytest.raises(ValueError, match="does not exist"):
        HeadScores.load(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an audiokv calibration file"):
        HeadScores.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="cannot read"):
        HeadScores.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="finite"):
        HeadScores(torch.tensor([[float("nan")]]), model="m", data="d")
    assert scores.top(1)[0][2] == scores.scores.max().item()


@given(layers=st.integers(1, 6), heads=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_the_layer_split_of_other_scores_keeps_each_layers_head_weights(layers, heads, seed):
    from audiokv.budget import head_weights

    gen = torch.Generator().manual_seed(seed)
    mine = HeadScores(torch.rand(layers, heads, generator=gen), "m", "mine")
    theirs = HeadScores(torch.rand(layers, heads, generator=gen), "m", "theirs")
    mine.scores[0] = 0.5375  # heads that score the same keep even weights (their float mean rounds off)
    blend = mine.with_layer_split(theirs)
    assert blend.shape == (layers, heads) and blend.model == "m" and "theirs" in blend.data
    torch.testing.assert_close(blend.scores.mean(-1), theirs.scores.mean(-1))  # the engine's layer split
    for layer in range(layers):  # ... and each layer's split over its heads, up to the float32 rounding
        # of the shift, which standardizing divides by the heads' spread (a wrong split is off by O(1))
        torch.testing.assert_close(
            head_weights(blend.scores[layer], 1.0), head_weights(mine.scores[layer], 1.0), rtol=1e-4, atol=1e-4
        )
    with pytest.raises(ValueError, match="cannot take the layer split"):
        mine.with_layer_split(HeadScores(torch.rand(layers, heads + 1), "m", "other"))
