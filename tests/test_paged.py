import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from audiokv.kernel import pages_attention, reference_paged_attention, rows_attention
from audiokv.paged import PagedKVPool, fit_page_size


@st.composite
def selections(draw, shape=None):
    """``(key, value, indices, counts, page, reserve)``; ``shape``: ``(bsz, heads, dim)``, else drawn."""
    bsz, heads, dim = shape or (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.sampled_from([4, 8])))
    length = draw(st.integers(1, 90))
    counts = torch.tensor([[draw(st.integers(0, length)) for _ in range(heads)] for _ in range(bsz)], dtype=torch.long)
    g = torch.Generator().manual_seed(draw(st.integers(0, 999)))
    indices = torch.full((bsz, heads, length), length)
    for b in range(bsz):
        for h in range(heads):
            indices[b, h, : counts[b, h]] = torch.randperm(length, generator=g)[: counts[b, h]].sort().values
    key, value = (
        torch.randn(bsz, heads, length, dim, generator=g),
        torch.randn(bsz, heads, length, dim, generator=g),
    )
    return key, value, indices, counts, draw(st.sampled_from([16, 32, 64])), draw(st.integers(0, 40))


@given(selections())
def test_pool_holds_exactly_the_kept_tokens_in_the_promised_memory(sel):
    key, value, indices, counts, page, reserve = sel
    pool = PagedKVPool.from_selection(key, value, indices, counts, page_size=page, reserve=reserve)
    heads = key.shape[1]
    for r, n in enumerate(counts.flatten().tolist()):
        b, h = divmod(r, heads)
        k, v = pool.row_tokens(r)
        assert torch.equal(k, key[b, h, indices[b, h, :n]]) and torch.equal(v, value[b, h, indices[b, h, :n]])
    pages = [max(1, math.ceil((n + reserve) / page)) for n in counts.flatten().tolist()]
    assert pool.tokens_allocated == sum(pages) * page
    if reserve == 0:  # the bound of the method: sum_h ceil(kept_h / page) * page (an empty head keeps one page)
        assert pool.tokens_allocated == sum(max(1, math.ceil(n / page)) * page for n in counts.flatten().tolist())
    assert pool.nbytes == 2 * pool.tokens_allocated * key.shape[-1] * key.element_size()


@given(selections(), st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_append_and_grow_keep_every_row_in_order(sel, chunks):
    key, value, indices, counts, page, reserve = sel
    pool = PagedKVPool.from_selection(key, value, indices, counts, page_size=page, reserve=reserve)
    bsz, heads, _, dim = key.shape
    rows = [list(pool.row_tokens(r)) for r in range(bsz * heads)]
    for q in chunks:
        k_new, v_new = torch.randn(bsz, heads, q, dim), torch.randn(bsz, heads, q, dim)
        pool.append(k_new, v_new)
        for r in range(bsz * heads):
            b, h = divmod(r, heads)
            rows[r] = [torch.cat([rows[r][0], k_new[b, h]]), torch.cat([rows[r][1], v_new[b, h]])]
    for r in range(bsz * heads):
        k, v = pool.row_tokens(r)
        assert torch.equal(k, rows[r][0]) and torch.equal(v, rows[r][1])
    assert pool.lengths.tolist() == [len(x[0]) for x in rows]
    # every page has exactly one owner, and owners/ranks agree with the tables
    for r in range(bsz * heads):
        n_pages = math.ceil(len(rows[r][0]) / page)
        ids = pool.page_table[r, :n_pages].long()
        assert (pool.page_owner[ids] == r).all() and torch.equal(pool.page_rank[ids].long(), torch.arange(n_pages))


def test_long_decoding_reallocates_a_logarithmic_number_of_times():
    key, value = torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    indices = torch.arange(64).expand(1, 2, 64)
    pool = PagedKVPool.from_selection(key, value, indices, torch.full((1, 2), 32), page_size=16, reserve=16)
    for _ in range(2000):
        pool.append(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
    # room grows 16, 32, 64, ... tokens: 7 reallocations for 2,000 steps, not 125
    assert pool.version == 7
    assert pool.tokens_allocated <= 2 * (32 + 2000) * 2  # never more than twice what the rows hold
    assert torch.equal(pool.row_tokens(1)[0][:32], key[0, 1, :32])


@given(selections(), st.data())
def test_selected_rows_are_copies_that_diverge_independently(sel, data):
    key, value, indices, counts, page, reserve = sel
    bsz, heads, _, dim = key.shape
    log_mass = torch.randn(bsz, heads, key.shape[2])
    pool = PagedKVPool.from_selection(key, value, indices, counts, page_size=page, reserve=reserve, log_mass=log_mass)
    rows = torch.tensor(data.draw(st.lists(st.integers(0, bsz * heads - 1), min_size=1, max_size=8)))
    picked = pool.select_rows(rows)
    for new, old in enumerate(rows.tolist()):
        assert all(torch.equal(a, b) for a, b in zip(picked.row_tokens(new), pool.row_tokens(old), strict=True))
        assert torch.equal(picked.row_mass(new), pool.row_mass(old))
    extra = torch.randn(len(rows), 1, 3, dim)  # one head per "batch row"
    picked.append(extra, extra)
    for new, old in enumerate(rows.tolist()):  # each copy got its own tokens; the source is untouched
        assert torch.equal(picked.row_tokens(new)[0][-3:], extra[new, 0])
        assert picked.row_lengths[new] == pool.row_lengths[old] + 3
    assert pool.row_lengths == counts.flatten().tolist()


@given(st.floats(0, 1e5))
def test_fitted_pages_waste_little_of_what_a_row_holds(tokens):
    page = fit_page_size(tokens)
    assert page in (16, 32, 64, 128)
    assert page == 16 or page * 16 <= tokens  # half a page wasted on average: at most ~3% of the row
    assert page == 128 or tokens < 2 * page * 16  # and never smaller than that needs


@given(st.data(), st.integers(0, 12))
def test_extend_appends_a_second_selection_from_spare_pages_then_grows(data, spare):
    key, value, indices, counts, page, _ = data.draw(selections())
    bsz, heads, _, dim = key.shape
    k2, v2, i2, c2, _, _ = data.draw(selections((bsz, heads, dim)))
    mass, mass2 = torch.rand(key.shape[:3]), torch.rand(k2.shape[:3])
    used = sum(max(1, math.ceil(n / page)) for n in counts.flatten().tolist())
    pool = PagedKVPool.from_selection(
        key, value, indices, counts, page_size=page, log_mass=mass, min_pages=used + spare
    )
    storage = pool.num_pages
    pool.extend(k2, v2, i2, c2, mass2)
    for r in range(bsz * heads):
        b, h = divmod(r, heads)
        n, m = counts[b, h], c2[b, h]
        k, v = pool.row_tokens(r)
        assert torch.equal(k, torch.cat([key[b, h, indices[b, h, :n]], k2[b, h, i2[b, h, :m]]]))
        assert torch.equal(v, torch.cat([value[b, h, indices[b, h, :n]], v2[b, h, i2[b, h, :m]]]))
        assert torch.equal(pool.row_mass(r), torch.cat([mass[b, h, indices[b, h, :n]], mass2[b, h, i2[b, h, :m]]]))
    held = sum(max(1, math.ceil(n / page)) for n in (counts + c2).flatten().tolist())
    assert pool.num_pages == max(storage, held) and storage == used + spare  # spare pages first, then growth
    owned = pool.page_owner >= 0
    assert int(owned.sum()) == held  # pages no row holds stay free (owner -1)


@given(st.data(), st.sampled_from([1, 3]), st.integers(1, 5), st.sampled_from([1, 4, 2048]))
def test_the_rows_kernel_reads_each_row_in_place_as_the_reference_gathers_it(data, group, q_len, block):
    """Rows of one or several runs of pages (a second selection appended), log mass, empty rows, query blocks."""
    key, value, indices, counts, page, _ = data.draw(selections())
    bsz, heads, _, dim = key.shape
    k2, v2, i2, c2, _, _ = data.draw(selections((bsz, heads, dim)))
    spare = data.draw(st.integers(0, 12))  # free pages the second selection takes: rows of several runs
    used = sum(max(1, math.ceil(n / page)) for n in counts.flatten().tolist())
    mass = torch.rand(key.shape[:3])
    pool = PagedKVPool.from_selection(
        key, value, indices, counts, page_size=page, log_mass=mass, min_pages=used + spare
    )
    first = PagedKVPool.from_selection(key, value, indices, counts, page_size=page, log_mass=mass)
    pool.extend(k2, v2, i2, c2, torch.rand(k2.shape[:3]))
    query = torch.randn(bsz, heads * group, q_len, dim, generator=torch.Generator().manual_seed(q_len))
    got, lse = rows_attention(query, pool, scale=0.3, causal=False, return_lse=True, block=block)
    want, want_lse = reference_paged_attention(query, pool, scale=0.3, causal=False, return_lse=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)  # -inf where a row holds nothing
    torch.testing.assert_close(rows_attention(query, pool, scale=0.3, causal=False, block=block), got)
    # the rows' first selection only, as a layer sharing the pool reads it during a chunked prefill
    prefix = rows_attention(query, pool, scale=0.3, causal=False, block=block, lengths=first.row_lengths)
    want = reference_paged_attention(query, first, scale=0.3, causal=False)
    torch.testing.assert_close(prefix, want, atol=1e-5, rtol=1e-5)


@given(st.data(), st.sampled_from([1, 3, 7]), st.booleans())
def test_the_pages_kernel_adds_up_each_rows_pages_as_the_reference_attends_over_the_row(data, group, mass):
    """Rows of one or several runs, free pages no row owns, empty rows, with and without log mass, GQA."""
    key, value, indices, counts, page, _ = data.draw(selections())
    bsz, heads, _, dim = key.shape
    k2, v2, i2, c2, _, _ = data.draw(selections((bsz, heads, dim)))
    used = sum(max(1, math.ceil(n / page)) for n in counts.flatten().tolist())
    spare = data.draw(st.integers(0, 30))
    masses = (torch.rand(key.shape[:3]), torch.rand(k2.shape[:3])) if mass else (None, None)
    pool = PagedKVPool.from_selection(
        key, value, indices, counts, page_size=page, log_mass=masses[0], min_pages=used + spare
    )
    pool.extend(k2, v2, i2, c2, masses[1])
    query = torch.randn(bsz, heads * group, 1, dim, generator=torch.Generator().manual_seed(group))
    got = pages_attention(query, pool, scale=0.3)
    torch.testing.assert_close(got, reference_paged_attention(query, pool, scale=0.3), atol=1e-5, rtol=1e-5)
    empty = torch.tensor([n == 0 for n in pool.row_lengths]).repeat_interleave(group)
    assert torch.equal(got.reshape(-1, dim)[empty], torch.zeros(int(empty.sum()), dim))  # a row without tokens: 0


def test_the_pages_kernel_stays_finite_when_every_logit_is_far_below_zero():
    """Rows whose pages include empty ones (decode reserve, free pages) and logits near -1000."""
    key, value = torch.ones(1, 2, 40, 8), torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(0))
    indices, counts = torch.arange(40).expand(1, 2, 40), torch.tensor([[40, 5]])
    pool = PagedKVPool.from_selection(key, value, indices, counts, page_size=16, reserve=20, min_pages=12)
    query = torch.full((1, 2, 1, 8), -125.0)  # logits of -1000 at scale 1
    got = pages_attention(query, pool, scale=1.0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference_paged_attention(query, pool, scale=1.0), atol=1e-5, rtol=1e-5)


def test_growing_lays_every_row_out_in_one_run_and_drops_free_pages():
    key, value = torch.randn(2, 3, 50, 8), torch.randn(2, 3, 50, 8)
    indices = torch.arange(50).expand(2, 3, 50)
    counts = torch.tensor([[40, 7, 20], [3, 50, 16]])
    mass = torch.rand(2, 3, 50)
    pool = PagedKVPool.from_selection(key, value, indices, counts, page_size=16, log_mass=mass, min_pages=20)
    pool.extend(key, value, indices, torch.full((2, 3), 9), mass)  # free pages: rows of two runs
    before = [(*pool.row_tokens(r), pool.row_mass(r)) for r in range(6)]
    assert max(len(runs) for runs in pool.token_runs()) == 2
    pool.make_room(100)  # more than the free pages: new storage
    assert [len(runs) for runs in pool.token_runs()] == [1] * 6
    assert pool.num_pages == sum(-(-(n + 100) // 16) for n in pool.row_lengths)  # no free page left
    assert bool((pool.page_owner >= 0).all())
    for r, (k, v, m) in enumerate(before):
        assert torch.equal(pool.row_tokens(r)[0], k) and torch.equal(pool.row_tokens(r)[1], v)
        assert torch.equal(pool.row_mass(r), m)
