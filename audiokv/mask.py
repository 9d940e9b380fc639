"""The BlockMask over a paged pool: which pages each row's queries read.

FlexAttention sees the pool as one long key sequence ``[1, 1, P * page, D]``
and every row ``(b, h_kv)`` as one entry of its batch axis (the mask has
H = 1; the row's query heads are the GQA group). Each row's block list is
its page table: pages fully visible to the row's queries are *full* blocks
(no `mask_mod` call), the rest (the tail page, causal chunks) are partial
blocks checked by `mask_mod`. The mask_mod is complete on its own (it checks
page ownership and logical position), as FlexAttention requires.

The mask is built once per query length with `BlockMask.from_kv_blocks` and
updated in place as the pool grows; it is rebuilt only when the pool
reallocates its storage.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from audiokv.paged import PagedKVPool

Q_BLOCK = 128  # FlexAttention's query block; a decode step is one partial query block.


class PagedBlockMask:
    """In-place-updated BlockMasks for the queries of one layer."""

    def __init__(self, pool: PagedKVPool, causal: bool = True) -> None:
        self.pool = pool
        self.causal = causal
        self._bind()

    def _bind(self) -> None:
        pool = self.pool
        rows = pool.num_rows
        width = pool.num_pages  # FlexAttention wants as many block slots as the key has blocks
        dev = pool.page_table.device
        self._version = pool.version
        self.full_idx = torch.nn.functional.pad(pool.page_table, (0, width - pool.page_table.shape[1])).view(
            rows, 1, 1, width
        )
        self.full_num = torch.zeros(rows, 1, 1, dtype=torch.int32, device=dev)
        self.partial_num = torch.zeros_like(self.full_num)
        self.partial_idx = torch.zeros(rows, 1, 1, width, dtype=torch.int32, device=dev)
        self.q_offset = torch.zeros(rows, dtype=torch.int32, device=dev)
        self._masks: dict[int, BlockMask] = {}
        self.mask_mod = _paged_mask_mod(pool.page_owner, pool.page_rank, self.q_offset, pool.page_size, self.causal)

    def update(self, q_len: int) -> BlockMask:
        """The mask for ``q_len`` new queries whose slots are the last ``q_len`` of every row.

        Query ``i`` of row ``r`` sees the row's logical tokens ``0 .. lengths[r] - q_len + i``
        (causal), or all ``lengths[r]`` tokens (not causal: cross-attention).
        A decode step updates it before a compiled forward runs, so that
        FlexAttention there takes its tables as inputs (:meth:`mask`).
        """
        pool = self.pool
        if pool.version != self._version:
            self._bind()
        if q_len not in self._masks:
            self._masks[q_len] = self._build(q_len)
        ps = pool.page_size
        offset = pool.lengths - (q_len if self.causal else 1)  # last token the first query sees
        full = (offset + 1) // ps  # pages entirely visible to the first query
        touched = (pool.lengths + ps - 1) // ps
        self.q_offset.copy_(offset)
        self.full_num.view(-1).copy_(full)
        self.partial_num.view(-1).copy_(touched - full)
        width = self.full_idx.shape[-1]
        cols = (full.long()[:, None] + torch.arange(width, device=full.device)).clamp(max=width - 1)
        self.partial_idx.view(-1, width).copy_(self.full_idx.view(-1, width).gather(1, cols))
        return self._masks[q_len]

    def mask(self, q_len: int) -> BlockMask:
        """The mask :meth:`update` last set for ``q_len`` queries."""
        return self._masks[q_len]

    def _build(self, q_len: int) -> BlockMask:
        q_blocks = -(-q_len // Q_BLOCK)
        rows = self.pool.num_rows

        def per_q_block(t: Tensor) -> Tensor:
            return t.expand(rows, 1, q_blocks, *t.shape[3:])

        return BlockMask.from_kv_blocks(
            per_q_block(self.partial_num),
            per_q_block(self.partial_idx),
            per_q_block(self.full_num),
            per_q_block(self.full_idx),
            BLOCK_SIZE=(Q_BLOCK, self.pool.page_size),
            mask_mod=self.mask_mod,
            seq_lengths=(q_len, self.pool.num_pages * self.pool.page_size),
            compute_q_blocks=False,
        )


def _paged_mask_mod(owner: Tensor, rank: Tensor, q_offset: Tensor, page_size: int, causal: bool):
    """mask_mod: key slot ``kv`` is visible to query ``q`` of row ``b``."""

    def causal_mask(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        page = kv // page_size
        logical = rank[page] * page_size + kv % page_size
        return (owner[page] == b) & (logical <= q_offset[b] + q)

    def full_mask(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        page = kv // page_size
        return (owner[page] == b) & (rank[page] * page_size + kv % page_size <= q_offset[b])

    return causal_mask if causal else full_mask
