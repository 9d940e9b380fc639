import pytest
import torch

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.eval import has_repetition
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
    [("the cat sat on the mat", False), ("and then and then and then it ended", False), ("a b c a b c a b c", True)],
)
def test_repetition_detection(text, loop):
    assert has_repetition(text) is loop
