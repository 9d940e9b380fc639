"""AudioKVAttention end to end: compiled FlexAttention vs attention over exactly the kept tokens."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import KeptReference, merged_row
from torch import Tensor

from audiokv import AudioKVAttention, AudioKVConfig
from audiokv.attention import SharedKVAttention
from audiokv.kernel import rows_attention
from audiokv.scoring import window_scores
from audiokv.spectral import lowpass


def qkv(bsz, hq, hkv, length, dim, dtype, gen):
    return (
        torch.randn(bsz, hq, length, dim, generator=gen).to(dtype),
        torch.randn(bsz, hkv, length, dim, generator=gen).to(dtype),
        torch.randn(bsz, hkv, length, dim, generator=gen).to(dtype),
    )


def tolerance(dtype):
    return {"atol": 1e-4, "rtol": 0} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}


@settings(max_examples=24)
@given(
    bsz=st.integers(1, 2),
    hkv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3, 7, 8]),
    length=st.integers(40, 260),
    ratio=st.sampled_from([0.0, 0.3, 0.6, 0.9]),
    page=st.sampled_from([16, 64, 128]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    steps=st.lists(st.sampled_from([1, 1, 1, 3]), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    kernel=st.sampled_from(["flex", "rows", "pages"]),
)
def test_kernels_equal_attention_over_exactly_the_kept_tokens(
    bsz, hkv, group, length, ratio, page, dtype, steps, seed, kernel
):
    gen = torch.Generator().manual_seed(seed)
    cfg = AudioKVConfig(compression_ratio=ratio, window=8, page_size=page, decode_reserve=4, sinks=2)
    prior = torch.rand(hkv, generator=gen)
    module = AudioKVAttention(
        cfg, num_heads=hkv * group, num_kv_heads=hkv, head_dim=16, head_prior=prior, kernel=kernel
    )
    q, k, v = qkv(bsz, hkv * group, hkv, length, 16, dtype, gen)
    module(q, k, v, audio_span=(2, length // 2))
    ref = KeptReference(module, k, v, span=(2, length // 2))
    assert module.budgets.sum(-1).tolist() == [hkv * max(length - int(length * ratio), 10)] * bsz
    for q_len in steps:
        q, k, v = qkv(bsz, hkv * group, hkv, q_len, 16, dtype, gen)
        got = module(q, k, v)
        torch.testing.assert_close(got.double(), ref.step(q, k, v), **tolerance(dtype))


@pytest.mark.parametrize("group", [7, 3])
def test_ratio_zero_equals_plain_causal_attention(group):
    gen = torch.Generator().manual_seed(0)
    cfg = AudioKVConfig(compression_ratio=0.0, page_size=64)
    module = AudioKVAttention(cfg, num_heads=2 * group, num_kv_heads=2, head_dim=16)
    q, k, v = qkv(2, 2 * group, 2, 150, 16, torch.float32, gen)
    outs = [module(q, k, v)]
    keys, values, queries = [k], [v], [q]
    for q_len in (1, 1, 4, 1):
        q, k, v = qkv(2, 2 * group, 2, q_len, 16, torch.float32, gen)
        outs.append(module(q, k, v))
        keys.append(k), values.append(v), queries.append(q)
    full = F.scaled_dot_product_attention(
        torch.cat(queries, 2), torch.cat(keys, 2), torch.cat(values, 2), is_causal=True, enable_gqa=True
    )
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=1e-4, rtol=0)
    assert module.kept_indices.shape[-1] == 150


def test_300_decode_steps_cross_pages_match_the_reference_without_recompiling():
    gen = torch.Generator().manual_seed(3)
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_reserve=320)
    module = AudioKVAttention(cfg, num_heads=8, num_kv_heads=2, head_dim=16, kernel="flex")
    q, k, v = qkv(2, 8, 2, 200, 16, torch.float32, gen)
    module(q, k, v, audio_span=(10, 180))
    ref = KeptReference(module, k, v, span=(10, 180))
    start_pages = [module.pool.row_lengths[r] // 16 for r in range(4)]
    worst = 0.0
    for step in range(300):
        q, k, v = qkv(2, 8, 2, 1, 16, torch.float32, gen)
        if step == 1:  # warm-up done: any further compilation is a bug
            guard = torch._dynamo.config.patch(error_on_recompile=True)
            guard.__enter__()
        worst = max(worst, (module(q, k, v).double() - ref.step(q, k, v)).abs().max().item())
    guard.__exit__(None, None, None)
    assert worst < 1e-4
    assert module.pool.version == 0  # the reserve covered all 300 steps: no reallocation
    crossed = [n // 16 - s for n, s in zip(module.pool.row_lengths, start_pages, strict=True)]
    assert min(crossed) >= 18  # every row walked through 18+ new pages


@pytest.mark.parametrize("kernel", ["flex", "rows", "pages"])
def test_pool_growth_keeps_results_right(kernel):
    gen = torch.Generator().manual_seed(4)
    cfg = AudioKVConfig(compression_ratio=0.7, window=8, page_size=16, decode_reserve=0)
    module = AudioKVAttention(cfg, num_heads=8, num_kv_heads=2, head_dim=16, kernel=kernel)
    q, k, v = qkv(2, 8, 2, 120, 16, torch.float32, gen)
    module(q, k, v)
    ref = KeptReference(module, k, v)
    for q_len in [1] * 30 + [3, 1, 2]:
        q, k, v = qkv(2, 8, 2, q_len, 16, torch.float32, gen)
        torch.testing.assert_close(module(q, k, v).double(), ref.step(q, k, v), atol=1e-4, rtol=0)
    assert module.pool.version >= 2
    assert [len(runs) for runs in module.pool.token_runs()] == [1] * 4  # growing lays each row out in one run


def test_the_default_kernel_on_cpu_reads_rows_in_place_without_compiling(monkeypatch):
    import audiokv.attention

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return rows_attention(*args, **kwargs)

    def no_flex(*args, **kwargs):
        raise AssertionError("the CPU default ran FlexAttention")

    monkeypatch.setattr(audiokv.attention, "rows_attention", spy)
    monkeypatch.setattr(audiokv.attention, "paged_attention", no_flex)
    gen = torch.Generator().manual_seed(5)
    module = AudioKVAttention(AudioKVConfig(compression_ratio=0.5, window=8), num_heads=4, num_kv_heads=2, head_dim=16)
    q, k, v = qkv(1, 4, 2, 64, 16, torch.float32, gen)
    module(q, k, v)
    ref = KeptReference(module, k, v)
    q, k, v = qkv(1, 4, 2, 1, 16, torch.float32, gen)
    torch.testing.assert_close(module(q, k, v).double(), ref.step(q, k, v), atol=1e-5, rtol=0)
    assert calls == [1] and module.kernel_for(torch.device("cpu")) == "rows"
    assert module.kernel_for(torch.device("cuda")) == "flex"


@pytest.mark.parametrize("cross", [False, True])
def test_the_default_kernel_on_cpu_decodes_many_rows_page_by_page(monkeypatch, cross):
    import audiokv.attention

    calls = []

    def spy(name, kernel):
        def run(*args, **kwargs):
            calls.append((name, args[0].shape[2]))
            return kernel(*args, **kwargs)

        return run

    for name in ("pages_attention", "rows_attention"):
        monkeypatch.setattr(audiokv.attention, name, spy(name, getattr(audiokv.attention, name)))
    gen = torch.Generator().manual_seed(6)
    rows = audiokv.attention.PAGES_MIN_ROWS
    cfg = AudioKVConfig(compression_ratio=0.7, window=8, page_size=16)
    module = AudioKVAttention(cfg, num_heads=2 * rows, num_kv_heads=rows, head_dim=16, cross_attention=cross)
    q, k, v = qkv(1, 2 * rows, rows, 90, 16, torch.float32, gen)
    module(q, k, v)
    ref = KeptReference(module, k, v, causal=not cross)
    steps = (1, 1) if cross else (1, 3, 1)
    for q_len in steps:
        q, k, v = qkv(1, 2 * rows, rows, q_len, 16, torch.float32, gen)
        want = ref.step(q, k, v) if not cross else ref.attend(q)
        torch.testing.assert_close(module(q, k, v).double(), want, atol=1e-5, rtol=0)
    assert calls == [("pages_attention" if n == 1 else "rows_attention", n) for n in steps]  # longer steps: rows
    fewer = AudioKVAttention(cfg, num_heads=2 * rows - 2, num_kv_heads=rows - 1, head_dim=16)
    q, k, v = qkv(1, 2 * rows - 2, rows - 1, 90, 16, torch.float32, gen)
    fewer(q, k, v)
    calls.clear()
    fewer(*qkv(1, 2 * rows - 2, rows - 1, 1, 16, torch.float32, gen))
    assert calls == [("rows_attention", 1)]  # below the threshold, one row at a time


def test_a_layer_sharing_the_kv_attends_over_the_producers_pool():
    gen = torch.Generator().manual_seed(8)
    cfg = AudioKVConfig(compression_ratio=0.6, window=8, page_size=16, decode_reserve=0)
    producer = AudioKVAttention(cfg, num_heads=8, num_kv_heads=2, head_dim=16)
    reader = SharedKVAttention(producer, scaling=0.3)
    assert list(reader.children()) == []  # the producer's pool is not counted twice
    q, k, v = qkv(2, 8, 2, 100, 16, torch.float32, gen)
    producer(q, k, v)
    own = torch.randn(q.shape, generator=gen)
    want = F.scaled_dot_product_attention(own, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(reader(own, k, v), want, atol=1e-5, rtol=0)  # prefill: dense, own queries
    ref = KeptReference(producer, k, v)
    ref.scale = 0.3
    for _ in range(20):  # crosses pages and grows the pool
        q, k, v = qkv(2, 8, 2, 1, 16, torch.float32, gen)
        producer(q, k, v)
        ref.append(k, v)
        own = torch.randn(q.shape, generator=gen)
        torch.testing.assert_close(reader(own, k, v).double(), ref.attend(own), atol=1e-4, rtol=0)


def test_a_layer_reading_an_evicting_pool_sees_what_the_producer_kept_in_this_step():
    """Decode-time eviction shrinks the producer's rows in the middle of a step; the reader runs after it."""
    gen = torch.Generator().manual_seed(9)
    cfg = AudioKVConfig(compression_ratio=0.5, window=4, page_size=16, decode_keep=6, decode_every=4, decode_reserve=16)
    producers = [
        AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, kernel=k) for k in ("flex", "reference")
    ]
    readers = [SharedKVAttention(p, scaling=0.3) for p in producers]
    q, k, v = qkv(1, 4, 2, 40, 16, torch.float32, gen)
    for producer in producers:
        producer(q, k, v)
    for _ in range(16):  # evicts at the 10th and the 14th step
        q, k, v = qkv(1, 4, 2, 1, 16, torch.float32, gen)
        own = torch.randn(q.shape, generator=gen)
        for producer in producers:
            producer(q, k, v)
        flex, reference = (reader(own, k, v) for reader in readers)
        torch.testing.assert_close(flex, reference, atol=1e-5, rtol=0)
    assert producers[0].decoded_kept.shape[1] == 8  # evicted twice: 6 kept, 2 appended since


def test_left_padding_keeps_the_same_tokens_as_the_unpadded_row():
    gen = torch.Generator().manual_seed(5)
    # no pooling: max pooling creates plateaus of tied scores whose order is arbitrary
    cfg = AudioKVConfig(compression_ratio=0.6, window=8, page_size=16, pooling_kernel=1)
    q, k, v = qkv(1, 4, 2, 100, 16, torch.float32, gen)
    alone = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16)
    alone(q, k, v)
    pad = 30
    qp, kp, vp = (torch.cat([torch.randn(1, x.shape[1], pad, 16, generator=gen), x], 2) for x in (q, k, v))
    mask = torch.ones(1, 100 + pad, dtype=torch.bool)
    mask[0, :pad] = False
    batched = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16)
    batched(qp, kp, vp, key_mask=mask)
    assert torch.equal(batched.budgets, alone.budgets)
    for h in range(2):
        n = int(alone.budgets[0, h])
        assert torch.equal(batched.kept_indices[0, h, :n] - pad, alone.kept_indices[0, h, :n])
    step = qkv(1, 4, 2, 1, 16, torch.float32, gen)
    torch.testing.assert_close(batched(*step), alone(*step), atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [20, 32])
def test_a_prompt_no_longer_than_the_window_is_kept_whole(length):
    gen = torch.Generator().manual_seed(1)
    module = AudioKVAttention(AudioKVConfig(compression_ratio=0.7, window=32), num_heads=4, num_kv_heads=2, head_dim=16)
    q, k, v = qkv(1, 4, 2, length, 16, torch.float32, gen)
    module(q, k, v, audio_span=(2, length - 2))
    assert module.budgets.tolist() == [[length, length]]
    nq, nk, nv = qkv(1, 4, 2, 1, 16, torch.float32, gen)
    want = F.scaled_dot_product_attention(nq, torch.cat([k, nk], 2), torch.cat([v, nv], 2), enable_gqa=True)
    torch.testing.assert_close(module(nq, nk, nv), want, atol=1e-5, rtol=0)


def test_bad_input_gets_clear_errors():
    cfg = AudioKVConfig(compression_ratio=0.5, window=32)
    module = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="KV heads"):
        module(torch.randn(1, 4, 40, 16), torch.randn(1, 3, 40, 16), torch.randn(1, 3, 40, 16))
    with pytest.raises(ValueError, match="multiple"):
        AudioKVAttention(cfg, num_heads=5, num_kv_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="head_prior"):
        AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, head_prior=torch.ones(3))
    q = torch.randn(1, 4, 40, 16)
    q[0, 0, -1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        module(q, torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16))
    with pytest.raises(ValueError, match="empty"):
        module.reset()
        module(torch.randn(1, 4, 40, 16), torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16), audio_span=(5, 5))


def test_cross_attention_mode_compresses_the_encoder_keys_once():
    gen = torch.Generator().manual_seed(8)
    cfg = AudioKVConfig(compression_ratio=0.6, page_size=64, sinks=2, sss_cutoff=0.3)
    module = AudioKVAttention(cfg, num_heads=6, num_kv_heads=6, head_dim=16, cross_attention=True)
    q = torch.randn(2, 6, 3, 16, generator=gen)
    k, v = torch.randn(2, 6, 300, 16, generator=gen), torch.randn(2, 6, 300, 16, generator=gen)
    first = module(q, k, v)  # prompt queries: dense, non-causal attention over every frame
    torch.testing.assert_close(first, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)
    assert module.budgets.sum(-1).tolist() == [6 * 120] * 2
    assert module.pool.tokens_allocated == sum(-(-n // 64) * 64 for n in module.budgets.flatten().tolist())
    ref = KeptReference(module, k, v, causal=False)  # every frame is audio: kept frames absorb the others
    for _ in range(3):  # later steps read the pool; their key/value arguments are ignored
        q = torch.randn(2, 6, 1, 16, generator=gen)
        got = module(q, k[:, :, :0], v[:, :, :0])
        torch.testing.assert_close(got.double(), ref.attend(q), atol=1e-5, rtol=0)
    assert module.pool.row_lengths == module.budgets.flatten().tolist()  # nothing appended


@pytest.mark.parametrize("keep", [None, 12])
def test_decode_time_eviction_bounds_the_generated_part_and_attends_over_exactly_what_it_keeps(keep):
    gen = torch.Generator().manual_seed(5)
    cfg = AudioKVConfig(compression_ratio=0.5, window=4, sinks=2, decode_keep=keep, decode_every=5, decode_reserve=8)
    layer = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=8, kernel="reference")
    q, k, v = (
        torch.randn(1, 4, 40, 8, generator=gen),
        torch.randn(1, 2, 40, 8, generator=gen),
        torch.randn(1, 2, 40, 8, generator=gen),
    )
    layer(q, k, v)
    prompt = [layer.kept_indices[0, h, : layer.budgets[0, h]] for h in range(2)]
    history_k, history_v = [], []
    for step in range(60):
        qs, ks, vs = (torch.randn(1, h, 1, 8, generator=gen) for h in (4, 2, 2))
        history_k.append(ks[0, :, 0])
        history_v.append(vs[0, :, 0])
        held = [[*layer.decoded_kept[h].tolist(), step] for h in range(2)]  # before this step's eviction
        out = layer(qs, ks, vs)
        dk, dv = torch.stack(history_k, 1), torch.stack(history_v, 1)  # [2, steps, 8]
        for h in range(2):  # dense attention over the kept prompt tokens and the held generated ones
            keys = torch.cat([k[0, h, prompt[h]], dk[h, held[h]]])
            values = torch.cat([v[0, h, prompt[h]], dv[h, held[h]]])
            want = torch.softmax(qs[0, 2 * h : 2 * h + 2, 0] @ keys.T * 8**-0.5, -1) @ values
            torch.testing.assert_close(out[0, 2 * h : 2 * h + 2, 0], want, atol=1e-5, rtol=0)
        count = layer.decoded_kept.shape[1]
        assert count == step + 1 if keep is None else count <= keep + 4  # evicts once keep + every are held
    if keep is None:  # switched off: the generated part grows
        assert layer.pool.num_pages * layer.pool.page_size >= sum(layer.budgets.flatten().tolist()) + 2 * 60
    else:
        assert layer.decoded_kept[:, -4:].tolist() == [[56, 57, 58, 59]] * 2  # the window of recent tokens stays
        assert layer.pool.num_pages * layer.pool.page_size <= sum(layer.budgets.flatten().tolist()) + 2 * (16 + 16)
        with pytest.raises(ValueError, match="eviction"):
            layer.drop_last(1)


def chunk_selections(module, k, v, bounds, span, b, h):
    """Head ``(b, h)``'s kept tokens of each chunk ``(keys, values, log_mass)``, merged within their chunk.

    Built from the raw K/V and the module's kept positions only: a chunk is
    compressed alone, so its tokens merge within its share of ``span``.
    """
    kept = module.kept_indices[b, h, : module.budgets[b, h]]
    for s, e in bounds:
        lo, hi = (min(max(x - s, 0), e - s) for x in span)
        yield merged_row(k[b, h, s:e].double(), v[b, h, s:e].double(), kept[(kept >= s) & (kept < e)] - s, lo, hi)


def chunked_reference(module, q, k, v, bounds, span):
    """Each chunk's expected output: its queries over what earlier chunks kept (merged), then its own causally."""
    bsz, heads = k.shape[:2]
    group = q.shape[1] // heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(bsz):
        for h in range(heads):
            held = [torch.empty(0, k.shape[-1], dtype=torch.float64)] * 2 + [torch.empty(0, dtype=torch.float64)]
            for (s, e), chunk in zip(bounds, chunk_selections(module, k, v, bounds, span, b, h), strict=True):
                keys, values = torch.cat([held[0], k[b, h, s:e].double()]), torch.cat([held[1], v[b, h, s:e].double()])
                mass = torch.cat([held[2], torch.zeros(e - s, dtype=torch.float64)])
                visible = torch.arange(len(mass))[None, :] <= len(held[2]) + torch.arange(e - s)[:, None]
                rows = slice(h * group, (h + 1) * group)
                logits = q[b, rows, s:e].double() @ keys.T * module.scaling + mass
                out[b, rows, s:e] = torch.softmax(logits.masked_fill(~visible, -torch.inf), -1) @ values
                held = [torch.cat([a, c]) for a, c in zip(held, chunk, strict=True)]
    return out


@pytest.mark.parametrize(
    ("kernel", "policy", "bsz", "length", "chunk", "ratio", "audio"),
    [
        ("reference", "audiokv", 1, 300, 64, 0.6, (10, 260)),  # the audio crosses every chunk boundary
        ("flex", "audiokv", 1, 300, 64, 0.6, (10, 260)),
        ("reference", "audiokv", 2, 257, 100, 0.8, (10, 217)),
        ("flex", "audiokv", 2, 257, 100, 0.8, (10, 217)),
        ("rows", "audiokv", 2, 257, 100, 0.8, (10, 217)),  # rows of several runs: one per chunk
        ("pages", "audiokv", 2, 257, 100, 0.8, (10, 217)),
        ("reference", "audiokv-sss", 2, 300, 64, 0.6, (150, 290)),  # the first chunks hold no audio
    ],
)
def test_chunked_prefill_attends_over_what_earlier_chunks_kept_and_holds_only_their_budget(
    kernel, policy, bsz, length, chunk, ratio, audio
):
    gen = torch.Generator().manual_seed(length)
    cfg = AudioKVConfig(compression_ratio=ratio, window=8, sinks=2, page_size=16, decode_reserve=4, prefill_chunk=chunk)
    prior = torch.rand(2, generator=gen)
    module = AudioKVAttention(
        cfg, num_heads=6, num_kv_heads=2, head_dim=16, head_prior=prior, kernel=kernel, policy=policy
    )
    q, k, v = qkv(bsz, 6, 2, length, 16, torch.float32, gen)
    span = audio
    bounds = [(s, min(s + chunk, length)) for s in range(0, length, chunk)]
    got, pages = [], []
    for s, e in bounds:
        got.append(module(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], audio_span=span, chunk=(s, length)))
        pages.append(module.pool.num_pages)
    assert pages == pages[:1] * len(pages)  # allocated once at the first chunk for every chunk's selection
    if kernel in ("rows", "pages"):
        assert max(len(runs) for runs in module.pool.token_runs()) > 1
    got = torch.cat(got, 2)
    torch.testing.assert_close(got.double(), chunked_reference(module, q, k, v, bounds, span), atol=1e-4, rtol=0)

    # every chunk kept 1 - ratio of its tokens (its window and the first chunk's sinks at least)
    want = sum(max(e - s - int((e - s) * ratio), min(e - s, 8 + 2 * (s == 0))) for s, e in bounds)
    assert module.budgets.sum(-1).tolist() == [2 * want] * bsz
    assert module.prompt_length == length and module.pool.row_lengths == module.budgets.flatten().tolist()
    slot = 2 * 16 * 4 + 4  # K and V of one token in fp32, and its log mass
    rows = 2 * bsz
    chunk_kv = 2 * rows * chunk * 16 * 4
    assert module.peak_kv_bytes <= (2 * want * bsz + rows * (16 + 4)) * slot + chunk_kv  # + a page and the reserve

    ref = KeptReference(module, k, v)  # decoding sees the kept tokens as their chunks merged them
    ref.rows = [
        [torch.cat(parts) for parts in zip(*chunk_selections(module, k, v, bounds, span, b, h), strict=True)]
        for b in range(bsz) for h in range(2)
    ]  # fmt: skip
    for q_len in (1, 3, 1):
        step = qkv(bsz, 6, 2, q_len, 16, torch.float32, gen)
        torch.testing.assert_close(module(*step).double(), ref.step(*step), atol=1e-4, rtol=0)


def _clips_in_a_window() -> torch.Tensor:
    """``[2, 300]``: row 0 holds clips at 70-100 and 120-190, and two more only inside the window of the chunk
    192-256 (its last 8 tokens); row 1 is text."""
    audio = torch.zeros(2, 300, dtype=torch.bool)
    audio[0, 70:100], audio[0, 120:190], audio[0, 249:251], audio[0, 253:255] = True, True, True, True
    return audio


@pytest.mark.parametrize("audio", ["span", "clips"])
def test_chunked_prefill_sizes_each_layers_pool_for_what_its_layer_prior_keeps(audio):
    """Two layers, the second audio-critical, a row with audio in its middle chunks and a text-only row.

    Each layer's pool is allocated once, at the first chunk, for what its rows will
    keep: never grown later (too small) and never more than a page per row spare.
    With several clips, a chunk whose clips lie only in its window is still audio.
    """
    gen = torch.Generator().manual_seed(11)
    length, chunk, page, reserve = 300, 64, 16, 4
    cfg = AudioKVConfig(compression_ratio=0.7, window=8, sinks=2, page_size=page, decode_reserve=reserve,
                        prefill_chunk=chunk, layer_prior=1.0)  # fmt: skip
    q, k, v = qkv(2, 6, 2, length, 16, torch.float32, gen)
    spans = torch.tensor([[70, 200], [0, 0]]) if audio == "span" else _clips_in_a_window()
    kept = []
    for idx in range(2):
        module = AudioKVAttention(cfg, num_heads=6, num_kv_heads=2, head_dim=16, head_prior=torch.tensor([0.3, 0.7]),
                                  layer_prior=torch.tensor([0.1, 0.3]), layer_idx=idx, num_layers=2)  # fmt: skip
        pages = []
        for s in range(0, length, chunk):
            e = min(s + chunk, length)
            module(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], audio_span=spans, chunk=(s, length))
            pages.append(module.pool.num_pages)
        assert pages == pages[:1] * len(pages)
        planned = module._chunked_budget(None, 2, chunk, length, module._audio(spans, 2, length))
        assert planned == module.budgets.sum()  # planned at the first chunk for exactly what the chunks kept
        need = sum(-(-(n + reserve) // page) for n in module.budgets.flatten().tolist())
        assert need <= pages[0] <= need + 4  # 4 rows: under a page each of rounding
        kept.append(module.budgets.sum(-1).tolist())
    assert kept[1][0] > kept[0][0] and kept[1][1] == kept[0][1]  # the audio row follows the prior, the text row not


def test_chunked_prefill_weights_the_onset_in_the_chunk_that_holds_it_only():
    """Audio from token 20 to 280 of 300, prefilled 100 at a time: only the first chunk holds the 50-token onset."""
    gen = torch.Generator().manual_seed(5)
    length, chunk = 300, 100
    q, k, v = qkv(1, 4, 2, length, 16, torch.float32, gen)
    kept = {}
    for policy in ("audiokv-no-onset", "audiokv"):
        cfg = AudioKVConfig(compression_ratio=0.6, window=4, sinks=2, page_size=16, prefill_chunk=chunk,
                            onset_seconds=1.0)  # fmt: skip
        module = AudioKVAttention(cfg, num_heads=4, num_kv_heads=2, head_dim=16, policy=policy)
        for s in range(0, length, chunk):
            module(q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk], audio_span=(20, 280),
                   chunk=(s, length))  # fmt: skip
        kept[policy] = [module.kept_indices[0, h, : module.budgets[0, h]].tolist() for h in range(2)]

    def first(policy: str) -> float:
        """Share of the first chunk's chosen audio tokens that fall in the onset (50 of 76; its window is kept)."""
        heads = [[t for t in head if 20 <= t < chunk - 4] for head in kept[policy]]
        return sum(20 <= t < 70 for head in heads for t in head) / sum(map(len, heads))

    assert first("audiokv-no-onset") < 0.75 < first("audiokv")  # 0.66 unweighted; 0.9 x 150 / 176 + 0.1 x 0.66
    later = {p: [[t for t in head if t >= chunk] for head in kept[p]] for p in kept}
    assert later["audiokv"] == later["audiokv-no-onset"]  # a later chunk's share of the span has no onset


def test_a_content_span_moves_the_density_off_the_padding_only_for_the_policy_that_reads_it(cross_module):
    """Cross-attention over 100 frames, 60 of sound then jittery padding (high key novelty)."""
    gen = torch.Generator().manual_seed(0)
    sound = torch.randn(1, 2, 1, 16, generator=gen) + 0.3 * torch.randn(1, 2, 60, 16, generator=gen)
    key = torch.cat([sound, torch.randn(1, 2, 40, 16, generator=gen)], 2)
    value, query = torch.randn(1, 2, 100, 16, generator=gen), torch.randn(1, 2, 3, 16, generator=gen)
    kept = {}
    runs = [("audiokv", None), ("audiokv", (0, 60)), ("audiokv-content", None), ("audiokv-content", (0, 60))]
    for policy, span in [*runs, ("audiokv-content-mean", (0, 60))]:
        module = cross_module(policy, 0.7)
        module(query, key, value, audio_span=span)
        kept[policy, span] = [set(module.kept_indices[0, h, : module.budgets[0, h]].tolist()) for h in range(2)]
    assert kept["audiokv", None] == kept["audiokv", (0, 60)] == kept["audiokv-content", None]  # the span is ignored
    for h in range(2):
        in_sound = sum(t < 60 for t in kept["audiokv-content", (0, 60)][h]) / len(kept["audiokv-content", (0, 60)][h])
        assert in_sound > 0.85  # the padding keeps about the uniform floor's share (0.1 x 40%)
        assert sum(t < 60 for t in kept["audiokv", None][h]) / len(kept["audiokv", None][h]) < 0.6
        at_mean = kept["audiokv-content-mean", (0, 60)][h]
        assert 0.5 < sum(t < 60 for t in at_mean) / len(at_mean) < 0.75  # the padding at the sound's rate: ~60%


def test_a_quiet_lead_in_keeps_the_floor_and_the_onset_moves_to_the_speech(cross_module):
    """Cross-attention over 300 frames: 60 of jittery room tone (high key novelty), then speech, then padding."""
    gen = torch.Generator().manual_seed(0)
    room = 2.0 * torch.randn(1, 2, 60, 16, generator=gen)
    speech = torch.randn(1, 2, 1, 16, generator=gen) + 0.3 * torch.randn(1, 2, 240, 16, generator=gen)
    key = torch.cat([room, speech], 2)
    value, query = torch.randn(1, 2, 300, 16, generator=gen), torch.randn(1, 2, 3, 16, generator=gen)

    def kept(policy: str, span: tuple[int, int] | None) -> list[list[int]]:
        module = cross_module(policy, 0.8, onset_seconds=1.0)  # 50 frames of onset
        module(query, key, value, audio_span=span)
        return [module.kept_indices[0, h, : module.budgets[0, h]].tolist() for h in range(2)]

    def share(heads: list[list[int]], lo: int, hi: int) -> float:
        return sum(lo <= t < hi for head in heads for t in head) / sum(map(len, heads))

    loud, quiet = kept("audiokv-no-quiet-lead", (60, 280)), kept("audiokv", (60, 280))
    assert loud == kept("audiokv-no-quiet-lead", None)  # the ablation ignores where the sound starts
    assert kept("audiokv", None) == loud  # and so does the default without a span
    assert share(loud, 0, 60) > 0.5  # the room tone's novelty draws most of the budget
    assert share(quiet, 0, 60) < 0.1 * 60 / 300 + 0.02  # the lead-in keeps the uniform floor's share
    assert share(quiet, 60, 110) > 2 * share(quiet, 110, 160)  # the onset weights the first 50 frames of speech


def test_a_quiet_pause_keeps_the_speechs_mean_rate_and_the_no_quiet_pauses_ablation_does_not(cross_module):
    """Cross-attention over 300 frames: speech, 60 frames of jittery room tone (a pause), speech, padding."""
    gen = torch.Generator().manual_seed(0)
    voice = torch.randn(1, 2, 1, 16, generator=gen)
    room = 2.0 * torch.randn(1, 2, 60, 16, generator=gen)
    key = torch.cat([voice + 0.3 * torch.randn(1, 2, 100, 16, generator=gen), room], 2)
    key = torch.cat([key, voice + 0.3 * torch.randn(1, 2, 140, 16, generator=gen)], 2)
    value, query = torch.randn(1, 2, 300, 16, generator=gen), torch.randn(1, 2, 3, 16, generator=gen)
    sound = torch.zeros(1, 300, dtype=torch.bool)
    sound[0, :100], sound[0, 160:280] = True, True

    def in_pause(policy: str, span: object) -> float:
        module = cross_module(policy, 0.8)
        module(query, key, value, audio_span=span)
        heads = [module.kept_indices[0, h, : module.budgets[0, h]].tolist() for h in range(2)]
        return sum(100 <= t < 160 for head in heads for t in head) / sum(map(len, heads))

    no_pauses = in_pause("audiokv-no-quiet-pauses", sound)
    assert no_pauses == in_pause("audiokv-no-quiet-pauses", (0, 280)) > 0.4  # the pause's novelty draws tokens
    assert in_pause("audiokv", (0, 280)) == no_pauses  # a span marks no pause
    assert in_pause("audiokv-pause-floor", sound) < 0.1 * 60 / 300 + 0.02  # the pause keeps the floor's share
    # at the speech's mean density: 60 of the 480 units of density mass (the onset weights 100 frames 3 times)
    assert 0.9 * 60 / 480 < in_pause("audiokv", sound) < 0.9 * 60 / 480 + 0.1 * 60 / 300 + 0.02


def test_a_content_span_splits_the_budget_by_the_heads_path_over_the_sound(cross_module):
    """Head 0: calm sound, jittery padding; head 1: livelier sound, calm padding. The content span flips their split."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 2, 1, 16, generator=gen)
    jitter = torch.tensor([0.1, 0.6])[None, :, None, None]
    sound = base + jitter * torch.randn(1, 2, 60, 16, generator=gen)
    padding = torch.stack([torch.randn(40, 16, generator=gen), 0.01 * torch.randn(40, 16, generator=gen)])[None]
    key = torch.cat([sound, padding + torch.tensor([0.0, 1.0])[None, :, None, None] * base], 2)
    value, query = torch.randn(1, 2, 100, 16, generator=gen), torch.randn(1, 2, 3, 16, generator=gen)
    budgets = {}
    for span in (None, (0, 60)):
        module = cross_module("audiokv-content", 0.7)
        module(query, key, value, audio_span=span)
        budgets[span] = module.budgets[0].tolist()
    assert budgets[None][0] > budgets[None][1] and budgets[0, 60][1] > budgets[0, 60][0]


def test_the_default_keeps_the_first_frames_denser_and_the_no_onset_ablation_does_not(cross_module):
    """Cross-attention over 300 frames whose keys change alike everywhere: the onset gets 3x the density."""
    gen = torch.Generator().manual_seed(0)
    key, value = torch.randn(1, 2, 300, 16, generator=gen), torch.randn(1, 2, 300, 16, generator=gen)
    query = torch.randn(1, 2, 3, 16, generator=gen)

    def kept(policy: str, first: int = 100, **knobs) -> tuple[list[int], float, list[list[int]]]:
        """Budgets per head, the share of kept tokens among the ``first`` frames, the kept tokens per head."""
        module = cross_module(policy, 0.8, **knobs)
        module(query, key, value)
        budgets = module.budgets[0].tolist()
        heads = [sorted(module.kept_indices[0, h, : budgets[h]].tolist()) for h in range(2)]
        return budgets, sum(t < first for head in heads for t in head) / sum(budgets), heads

    plain, onset = kept("audiokv-no-onset"), kept("audiokv")
    assert plain[0] == onset[0]  # the head split reads the unweighted novelty
    assert plain[1] < 0.4  # a third of the frames, a third of the tokens
    assert onset[1] > 0.5  # 0.9 x 300 / 500 + 0.1 x 1/3 by density, the floor spread evenly
    assert kept("audiokv", onset_weight=1.0) == plain  # weight 1 switches it off
    assert kept("audiokv", first=50, onset_seconds=1.0)[1] > 0.3  # 0.9 x 150 / 400 + 0.1 / 6; unweighted 1/6
    # the onset is set in seconds: 2 s at 25 tokens per second are the same 50 frames as 1 s at 50
    assert kept("audiokv", first=50, rate=25.0) == kept("audiokv", first=50, onset_seconds=1.0)


def test_the_onset_covers_its_seconds_at_the_models_audio_rate_and_a_bad_rate_is_an_error():
    def onset(rate: float) -> int:
        return AudioKVAttention(AudioKVConfig(), num_heads=2, num_kv_heads=2, head_dim=16,
                                audio_tokens_per_second=rate).onset_tokens  # fmt: skip

    assert [onset(50.0), onset(25.0), onset(12.5), onset(6.25)] == [100, 50, 25, 13]  # 12.5 tokens round up
    with pytest.raises(ValueError, match="audio_tokens_per_second"):
        onset(0.0)


def test_sss_over_the_sound_leaves_the_paddings_spikes_to_the_cap(cross_module):
    """200 frames: 120 of sound, then padding whose keys stand still but for 4 isolated spikes.

    Each spike asks for more than one token, so the one-token cap clips it and
    the rest goes to the other frames. SSS over every frame smears the spikes
    under the cap and the padding keeps more; SSS over the sound only leaves the
    padding as the unsmoothed density has it, and still smooths the sound.
    """
    gen = torch.Generator().manual_seed(0)
    voice = torch.randn(1, 2, 1, 16, generator=gen)
    key = torch.cat([voice + 0.2 * torch.randn(1, 2, 120, 16, generator=gen), torch.ones(1, 2, 80, 16)], 2)
    key[:, :, 125::20] = 3 * torch.randn(1, 2, 4, 16, generator=gen)
    value, query = torch.randn(1, 2, 200, 16, generator=gen), torch.randn(1, 2, 3, 16, generator=gen)

    def kept(policy: str, span: tuple[int, int] | None = (0, 120)) -> list[list[int]]:
        module = cross_module(policy, 0.8, onset_weight=1.0, coverage_floor=0.0)
        module(query, key, value, audio_span=span)
        return [module.kept_indices[0, h, : module.budgets[0, h]].tolist() for h in range(2)]

    def in_padding(heads: list[list[int]]) -> int:
        return sum(t >= 120 for head in heads for t in head)

    plain, everywhere, sound = kept("audiokv"), kept("audiokv-sss"), kept("audiokv-sss-sound")
    assert in_padding(everywhere) >= in_padding(plain) + 12  # smoothed spikes escape the cap (36 -> 52 of 80)
    assert abs(in_padding(sound) - in_padding(plain)) <= 2
    assert [[t for t in h if t < 120] for h in sound] != [[t for t in h if t < 120] for h in plain]  # smoothed
    assert kept("audiokv-sss-sound", None) == kept("audiokv-sss", None)  # no sound marked: the whole span


def one_head_kept(policy: str, cross_module, **knobs) -> tuple[list[int], Tensor]:
    """One head over 200 random frames at 0.9 (20 kept), no pooling: the kept frames and the raw window scores."""
    gen = torch.Generator().manual_seed(0)
    query, key, value = torch.randn(1, 1, 3, 16, generator=gen), *torch.randn(2, 1, 1, 200, 16, generator=gen)
    module = cross_module(policy, 0.9, heads=1, pooling_kernel=1, **knobs)
    module(query, key, value)
    raw = window_scores(query, key, scaling=16**-0.5, causal=False)[0, 0]
    return module.kept_indices[0, 0, : module.budgets[0, 0]].tolist(), raw


def test_sss_on_the_picks_keeps_the_best_smoothed_score_of_each_stratum(cross_module):
    """With a uniform density the strata are the blocks of 10 frames.

    Each block keeps its best window score; with ``smooth_picks`` its best
    score after SSS (the reference: the window's attention, low-passed here).
    """

    def best(scores: Tensor) -> list[int]:
        return (scores.view(20, 10).argmax(-1) + torch.arange(0, 200, 10)).tolist()

    kept, raw = one_head_kept("audiokv", cross_module, coverage_floor=1.0)
    assert kept == best(raw)
    smoothed, _ = one_head_kept("audiokv-sss-picks", cross_module, coverage_floor=1.0)
    assert smoothed == best(lowpass(raw, AudioKVConfig().sss_cutoff)) != best(raw)


def test_the_published_recipe_keeps_each_heads_top_window_scores_smoothed_by_sss(cross_module):
    """No coverage, so the kept frames are the top 20 window scores (after SSS)."""

    def top(scores: Tensor) -> list[int]:
        return sorted(scores.topk(20).indices.tolist())

    kept, raw = one_head_kept("audiokv-paper-no-sss", cross_module)
    assert kept == top(raw)
    smoothed, _ = one_head_kept("audiokv-paper", cross_module)
    assert smoothed == top(lowpass(raw, AudioKVConfig().sss_cutoff)) != top(raw)
