"""Attention over a paged pool: the compiled FlexAttention kernel and its dense reference."""

from __future__ import annotations

import functools

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
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=4 * RECOMPILE_LIMIT):
        out = compiled_flex()(
            rows, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=True
        )
    return out[:, :group].reshape(bsz, heads, q_len, dim)


def _add_mass(mass: Tensor):
    """score_mod: key slot ``kv`` stands for ``exp(mass[kv])`` tokens (:mod:`audiokv.merge`)."""

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + mass[kv]

    return score_mod


def reference_paged_attention(query: Tensor, pool: PagedKVPool, *, scale: float, causal: bool = True) -> Tensor:
    """Dense softmax attention over each row's tokens, one row at a time (pure PyTorch, fp32).

    Same contract as :func:`paged_attention`; query ``i`` of a row sees its
    tokens ``0 .. len - q + i`` (causal) or all of them, each token's logit
    raised by its log mass.
    """
    bsz, heads, q_len, dim = query.shape
    group = heads // pool.num_kv_heads
    rows = query.reshape(pool.num_rows, group, q_len, dim).float()
    out = torch.empty_like(rows)
    for r, n in enumerate(pool.row_lengths):
        k, v = pool.row_tokens(r)
        logits = rows[r] @ k.float().T * scale + pool.row_mass(r)  # [G, q, n]
        last = n - q_len + torch.arange(q_len, device=k.device) if causal else torch.full((q_len,), n - 1)
        visible = torch.arange(n, device=k.device)[None, :] <= last[:, None].to(k.device)
        out[r] = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1) @ v.float()
    return out.reshape(bsz, heads, q_len, dim).to(query.dtype)
