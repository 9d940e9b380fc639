"""Attention over a paged pool: compiled FlexAttention (GPU), per-row and per-page kernels (CPU), a dense reference."""

from __future__ import annotations

import functools
import itertools

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from audiokv.paged import PagedKVPool

# Every pool size is its own static-shape kernel: torch 2.13's CPU code generator fails on
# flex_attention with dynamic key lengths. Give the kernel room for many sizes so dynamo never
# silently falls back to the unfused, score-materialising path.
RECOMPILE_LIMIT = 256


@functools.cache
def compiled_flex():
    """`flex_attention` compiled once per process with static shapes."""
    return torch.compile(flex_attention, dynamic=False)


def _group_rows(query: Tensor, num_kv_heads: int) -> tuple[Tensor, int]:
    """``[B, H_q, q, D]`` -> ``[B*H_kv, G', q, D]`` with G padded to a power of two."""
    bsz, heads, q_len, dim = query.shape
    group = heads // num_kv_heads
    padded = 1 << (group - 1).bit_length()
    rows = query.reshape(bsz * num_kv_heads, group, q_len, dim)
    if padded != group:
        rows = torch.nn.functional.pad(rows, (0, 0, 0, 0, 0, padded - group))
    return rows, group


def paged_attention(query: Tensor, pool: PagedKVPool, block_mask: BlockMask, *, scale: float) -> Tensor:
    """Compiled FlexAttention of new queries over every row's pages (merged tokens weighted by their mass).

    Args:
        query: ``[B, H_q, q, D]`` queries of the tokens just appended to ``pool``.
        pool: the layer's pool (rows ``b * H_kv + h``).
        block_mask: from :meth:`PagedBlockMask.update` for this ``q``.
        scale: softmax scale.

    Returns:
        ``[B, H_q, q, D]`` attention output.
    """
    bsz, heads, q_len, dim = query.shape
    rows, group = _group_rows(query, pool.num_kv_heads)
    key = pool.key_pages.view(1, 1, -1, dim)
    value = pool.value_pages.view(1, 1, -1, dim)
    score_mod = None if pool.mass_pages is None else _add_mass(pool.mass_pages.view(-1))
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=True)
    if torch.compiler.is_compiling():  # traced into a compiled model (its graph compiles the kernel)
        out = flex_attention(rows, key, value, **kwargs)
    else:
        limits = dict(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=4 * RECOMPILE_LIMIT)
        with torch._dynamo.config.patch(**limits):
            out = compiled_flex()(rows, key, value, **kwargs)
    return out[:, :group].reshape(bsz, heads, q_len, dim)


def rows_attention(
    query: Tensor,
    pool: PagedKVPool,
    *,
    scale: float,
    causal: bool = True,
    return_lse: bool = False,
    block: int = 2048,
    lengths: list[int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of new queries over every row's tokens read in place, one row at a time (the CPU kernel).

    Same contract as :func:`reference_paged_attention`. A row's tokens are
    slices of the storage (:meth:`PagedKVPool.token_runs`), so nothing is
    gathered: each row costs two matrix products over exactly the tokens it
    holds, its GQA group's queries together, ``block`` of them at a time (the
    logits held are ``[block, tokens]``: a prefill chunk's queries over a long
    pool fit). On a CPU this reads the kept bytes once, where the compiled
    FlexAttention walks every block of the pool; math in float32. ``lengths``
    limits row ``r`` to its first ``lengths[r]`` tokens (not causal only).
    """
    bsz, heads, q_len, dim = query.shape
    group = heads // pool.num_kv_heads
    rows = query.reshape(pool.num_rows, group * q_len, dim).float() * scale  # [R, G*q, D], query g*q + i
    keys = pool.key_pages.view(-1, dim)
    values = pool.value_pages.view(-1, dim)
    mass = None if pool.mass_pages is None else pool.mass_pages.view(-1)
    future = None
    if causal and q_len > 1:  # query i sees the new tokens up to its own
        future = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).triu(1).repeat(group, 1)
    out = torch.zeros_like(rows)
    lse = torch.full(rows.shape[:-1], float("-inf"), device=rows.device)
    if lengths is not None and causal:
        raise ValueError("rows_attention: lengths reads a prefix of each row, which the causal new tokens are not")
    for r, runs in enumerate(pool.token_runs(lengths)):
        if not runs:
            continue  # a row without tokens: zeros, -inf
        offsets = list(itertools.accumulate((n for _, n in runs), initial=0))
        row_keys = [keys[s : s + n].float().T for s, n in runs]  # views in fp32 storage: nothing copied
        row_values = [values[s : s + n].float() for s, n in runs]
        row_mass = None if mass is None else _joined([mass[s : s + n] for s, n in runs])
        for b in range(0, group * q_len, block):
            logits = _joined([rows[r, b : b + block] @ k for k in row_keys])  # [block, n]
            if row_mass is not None:
                logits += row_mass
            if future is not None:
                logits[:, -q_len:].masked_fill_(future[b : b + block], float("-inf"))
            if return_lse:
                lse[r, b : b + block] = torch.logsumexp(logits, -1)
                weights = (logits - lse[r, b : b + block, None]).exp_()
            else:
                weights = torch.softmax(logits, -1)
            for v, o, (_, n) in zip(row_values, offsets, runs, strict=False):
                out[r, b : b + block].addmm_(weights[:, o : o + n], v)
    out = out.reshape(bsz, heads, q_len, dim).to(query.dtype)
    return (out, lse.reshape(bsz, heads, q_len)) if return_lse else out


def pages_attention(query: Tensor, pool: PagedKVPool, *, scale: float) -> Tensor:
    """One new query per head over every row's tokens, all pages at once (the CPU decode kernel for many rows).

    Split-K by page, as flash-decoding splits a long row: each page's keys
    meet its owner's queries in one batched matrix product over the whole
    storage, read in place; each page keeps its logits' max, its exponentials'
    sum and its weighted values, and a row adds its pages up rescaled to the
    row's max. A dozen tensor operations per call however many rows, where
    :func:`rows_attention` runs a few per row: faster when rows are many and
    short (Whisper's cross-attention: a head per row, batch times heads
    rows), slower for a few long ones. Slots past a row's length and pages no
    row owns are masked; math in float32.

    Args:
        query: ``[B, H_q, 1, D]`` the new queries (their own tokens already in the pool).
        pool: the layer's pool.
        scale: softmax scale.

    Returns:
        ``[B, H_q, 1, D]``; a row without tokens gets zeros.
    """
    bsz, heads, q_len, dim = query.shape
    if q_len != 1:
        raise ValueError(f"pages_attention takes one new query per head, got {q_len}")
    rows = query.reshape(pool.num_rows, heads // pool.num_kv_heads, dim).float() * scale  # [R, G, D]
    owner = pool.page_owner.long()  # [P], -1 for a free page
    row = owner.clamp_min(0)
    size = pool.page_size
    held = torch.where(owner >= 0, pool.lengths.long()[row], 0)  # [P] tokens of the page's row
    valid = pool.page_rank.long()[:, None] * size + torch.arange(size, device=owner.device) < held[:, None]
    logits = torch.bmm(rows[row], pool.key_pages.float().transpose(1, 2))  # [P, G, page]
    if pool.mass_pages is not None:
        logits += pool.mass_pages[:, None, :]
    logits.masked_fill_(~valid[:, None, :], float("-inf"))
    top = logits.amax(-1)  # [P, G], -inf on a page without tokens
    seen = torch.isfinite(top)
    page_max = torch.where(seen, top, 0.0)
    weights = (logits - page_max[..., None]).exp_()  # 0 on masked slots
    row_max = torch.full_like(rows[..., 0], float("-inf")).scatter_reduce_(0, row[:, None].expand_as(top), top, "amax")
    shift = page_max - torch.where(torch.isfinite(row_max), row_max, 0.0)[row]
    rescale = torch.where(seen, shift.exp(), 0.0)  # [P, G]; an empty page's shift may overflow: never multiplied
    total = torch.zeros_like(row_max).index_add_(0, row, rescale * weights.sum(-1))  # [R, G]
    out = torch.zeros_like(rows).index_add_(0, row, rescale[..., None] * torch.bmm(weights, pool.value_pages.float()))
    out = out / total.clamp_min(torch.finfo(out.dtype).tiny)[..., None]
    return out.reshape(bsz, heads, 1, dim).to(query.dtype)


def _joined(parts: list[Tensor]) -> Tensor:
    """``parts`` concatenated along the last axis (a single part as it is, uncopied)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def _add_mass(mass: Tensor):
    """score_mod: key slot ``kv`` stands for ``exp(mass[kv])`` tokens (:mod:`audiokv.merge`)."""

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + mass[kv]

    return score_mod


def reference_paged_attention(
    query: Tensor, pool: PagedKVPool, *, scale: float, causal: bool = True, return_lse: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Dense softmax attention over each row's tokens, one row at a time (pure PyTorch, fp32).

    Same contract as :func:`paged_attention`; query ``i`` of a row sees its
    tokens ``0 .. len - q + i`` (causal) or all of them, each token's logit
    raised by its log mass. ``return_lse`` also returns the ``[B, H_q, q]``
    log-sum-exp of the logits, for :func:`merge_attention` (FlexAttention's
    CPU kernel cannot return it; one row's tokens are copied at a time).
    """
    bsz, heads, q_len, dim = query.shape
    group = heads // pool.num_kv_heads
    rows = query.reshape(pool.num_rows, group, q_len, dim).float()
    out = torch.zeros_like(rows)
    lse = torch.full(rows.shape[:-1], float("-inf"), device=rows.device)
    for r, n in enumerate(pool.row_lengths):
        k, v = pool.row_tokens(r)
        logits = rows[r] @ k.float().T * scale + pool.row_mass(r)  # [G, q, n]
        last = n - q_len + torch.arange(q_len, device=k.device) if causal else torch.full((q_len,), n - 1)
        visible = torch.arange(n, device=k.device)[None, :] <= last[:, None].to(k.device)
        out[r], lse[r] = _softmax_attention(logits.masked_fill(~visible, float("-inf")), v.float())
    out = out.reshape(bsz, heads, q_len, dim).to(query.dtype)
    return (out, lse.reshape(bsz, heads, q_len)) if return_lse else out


def _softmax_attention(logits: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax of ``[..., q, n]`` logits applied to ``[..., n, D]`` values, and the logits' log-sum-exp.

    A query that sees no key gets zeros and -inf.
    """
    lse = torch.logsumexp(logits, -1)
    weights = torch.exp(logits - lse.clamp_min(torch.finfo(logits.dtype).min)[..., None])
    return weights @ value, lse


def causal_attention(
    query: Tensor, key: Tensor, value: Tensor, *, scale: float, block: int = 256
) -> tuple[Tensor, Tensor]:
    """Dense causal attention of ``[B, H_q, q, D]`` queries over their own ``[B, H_kv, q, D]`` keys (fp32 math).

    Queries go ``block`` at a time, so the logits held are ``[block, q]`` per head, not ``[q, q]``.

    Returns:
        ``([B, H_q, q, D]`` output, ``[B, H_q, q]`` float32 log-sum-exp of the logits).
    """
    bsz, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    rows = query.float().reshape(bsz, kv_heads, heads // kv_heads, q_len, dim)
    keys, values = key.float()[:, :, None], value.float()[:, :, None]
    out, lse = torch.empty_like(rows), rows.new_empty(rows.shape[:-1])
    for s in range(0, q_len, block):
        e = min(s + block, q_len)
        logits = rows[..., s:e, :] @ keys[..., :e, :].transpose(-1, -2) * scale  # [B, H_kv, G, e - s, e]
        future = torch.arange(e, device=query.device)[None, :] > torch.arange(s, e, device=query.device)[:, None]
        logits = logits.masked_fill(future, float("-inf"))
        out[..., s:e, :], lse[..., s:e] = _softmax_attention(logits, values[..., :e, :])
    return out.reshape(bsz, heads, q_len, dim).to(query.dtype), lse.reshape(bsz, heads, q_len)


def chunk_attention(
    query: Tensor, key: Tensor, value: Tensor, pool: PagedKVPool, *, scale: float, held: list[int] | None = None
) -> Tensor:
    """Attention of one prefill chunk: what ``pool`` held before the chunk, then the chunk itself causally.

    Args:
        query: ``[B, H_q, q, D]`` the chunk's queries.
        key, value: ``[B, H_kv, q, D]`` the chunk's keys and values (not in ``held``).
        held: tokens each of the pool's rows held before the chunk; default: all it holds now.

    Returns:
        ``[B, H_q, q, D]``; both parts and their merge in float32, rounded once.
    """
    fp32 = query.float()
    own = causal_attention(fp32, key, value, scale=scale)
    past = rows_attention(fp32, pool, scale=scale, causal=False, return_lse=True, lengths=held)
    return merge_attention([past, own]).to(query.dtype)


def merge_attention(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Attention over the union of disjoint key sets from each set's ``(output, log-sum-exp)``.

    Each output is weighted by its share of the softmax mass, ``exp(lse_i) / sum_j exp(lse_j)``.
    """
    lse = torch.stack([p[1] for p in parts])  # [N, B, H, q]
    weights = torch.softmax(lse, 0)[..., None]
    total = sum(w * torch.nan_to_num(out.float()) for w, (out, _) in zip(weights, parts, strict=True))
    return total.to(parts[0][0].dtype)
