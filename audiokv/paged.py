"""The paged pool: where the kept keys and values of one layer actually live.

Each (batch row, KV head) pair, a *row* ``r = b * H_kv + h``, owns its own
pages, so heads can keep different numbers of tokens and the memory held is
``sum_r ceil(kept_r / page) * page`` tokens (plus the decode reserve), not the
dense ``H_kv * T``. Token ``j`` of row ``r`` sits in page
``page_table[r, j // page]`` at offset ``j % page``. All pages of a layer share
one storage tensor per K and V so that one attention kernel reads every row.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def _consecutive_pages(pages: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Page tables for rows owning ``pages[r]`` consecutive fresh pages each, rows one after another.

    Returns:
        ``([R, max(pages)] int32 table, [R] int64 first page of each row)``; unused entries are 0.
    """
    counts = torch.tensor(pages, device=device)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(max(pages), device=device)
    return torch.where(col[None, :] < counts[:, None], starts[:, None] + col[None, :], 0).int(), starts


def fit_page_size(tokens_per_row: float) -> int:
    """Page size for rows that will hold ``tokens_per_row`` tokens on average.

    The largest power of two in [16, 128] that is at most a sixteenth of it:
    a row wastes half a page on average, so rounding rows up to whole pages
    costs about 3% of what they hold, while long prompts keep FlexAttention's
    default 128-token block.
    """
    page = 16
    while page < 128 and 2 * page * 16 <= tokens_per_row:
        page *= 2
    return page


class PagedKVPool:
    """Per-layer page pool.

    Attributes:
        key_pages, value_pages: ``[P, page, D]`` storage of all pages.
        page_table: ``[R, P_row]`` int32 page ids of each row in logical order
            (entries past a row's pages are 0 and never read).
        lengths: ``[R]`` int32 tokens held by each row.
        page_owner: ``[P]`` int32 row owning each page.
        page_rank: ``[P]`` int32 position of each page in its owner's table.
        mass_pages: ``[P, page]`` float32 log of how many prompt tokens each slot
            stands for (:mod:`audiokv.merge`), added to its attention logits;
            None when every token stands for itself.

    Pages no row owns yet (``free_pages``) are handed out when there are enough
    for a request (a prompt prefilled in chunks allocates once for all its
    chunks); otherwise the storage is reallocated with every row's pages
    consecutive and the free pages dropped (:meth:`_regroup`).
    """

    def __init__(
        self,
        key_pages: Tensor,
        value_pages: Tensor,
        page_table: Tensor,
        lengths: Tensor,
        pages_per_row: list[int],
        num_kv_heads: int,
        reserve: int,
        mass_pages: Tensor | None = None,
        free_pages: list[int] | None = None,
    ) -> None:
        self.key_pages = key_pages
        self.mass_pages = mass_pages
        self.value_pages = value_pages
        self.page_table = page_table
        self.lengths = lengths
        self.num_kv_heads = num_kv_heads
        self.reserve = reserve
        self._pages_per_row = pages_per_row
        self._free = [] if free_pages is None else list(free_pages)  # page ids no row owns
        self._lengths_host = lengths.tolist()
        self.version = 0  # bumped whenever storage or tables are reallocated
        self._page_runs: tuple[int, list[list[tuple[int, int]]]] | None = None  # (version, runs), see token_runs
        self._appended = 0  # tokens appended since the selection
        self._index_pages()

    @property
    def page_size(self) -> int:
        return self.key_pages.shape[1]

    @property
    def num_rows(self) -> int:
        return self.page_table.shape[0]

    @property
    def num_pages(self) -> int:
        return self.key_pages.shape[0]

    @property
    def appended(self) -> int:
        """Tokens every row holds beyond its selected prompt tokens."""
        return self._appended

    @classmethod
    def from_selection(
        cls,
        key: Tensor,
        value: Tensor,
        indices: Tensor,
        counts: Tensor,
        *,
        page_size: int,
        reserve: int = 0,
        log_mass: Tensor | None = None,
        min_pages: int = 0,
    ) -> PagedKVPool:
        """Gather the kept tokens of every head into freshly allocated pages.

        Args:
            key, value: ``[B, H_kv, T, D]`` the prompt's keys and values.
            indices: ``[B, H_kv, K]`` kept positions (see :func:`select_tokens`);
                only the first ``counts[b, h]`` of each head are read.
            counts: ``[B, H_kv]`` tokens kept per head.
            page_size: tokens per page.
            reserve: extra tokens of room per row for decoding.
            log_mass: ``[B, H_kv, T]`` log of how many tokens each kept token
                stands for, gathered like the keys (see ``mass_pages``); None: 0.
            min_pages: allocate at least this many pages in all; those beyond the
                rows' own stay free for :meth:`extend`.

        Returns:
            A pool holding exactly those tokens, each row in ``ceil((count +
            reserve) / page_size)`` pages (at least one).
        """
        bsz, heads, _, dim = key.shape
        rows = bsz * heads
        pages = [max(1, math.ceil((c + reserve) / page_size)) for c in counts.reshape(rows).tolist()]
        total = max(sum(pages), min_pages)
        table, _ = _consecutive_pages(pages, key.device)
        mass = None if log_mass is None else torch.zeros(total, page_size, device=key.device)
        lengths = torch.zeros(rows, dtype=torch.int32, device=key.device)
        storage = key.new_zeros(total, page_size, dim), value.new_zeros(total, page_size, dim)
        free = list(range(sum(pages), total))
        pool = cls(*storage, table, lengths, pages, heads, reserve, mass, free)
        pool._write(key, value, indices, counts, log_mass)
        return pool

    def extend(
        self, key: Tensor, value: Tensor, indices: Tensor, counts: Tensor, log_mass: Tensor | None = None
    ) -> None:
        """Add a selection of new prompt tokens after each row's tokens (the next chunk of a prompt).

        Arguments as in :meth:`from_selection`; rows take free pages first and the
        storage grows only when there are too few.
        """
        if self._appended:
            raise ValueError("cannot extend the prompt of a pool that already holds decoded tokens")
        if log_mass is not None and self.mass_pages is None:
            raise ValueError("this pool keeps no log mass: build it with log_mass to extend it with some")
        per_row = counts.reshape(self.num_rows).tolist()
        self._give_pages(self._pages_needed([n + c for n, c in zip(self._lengths_host, per_row, strict=True)]))
        self._write(key, value, indices, counts, log_mass)

    def _write(self, key: Tensor, value: Tensor, indices: Tensor, counts: Tensor, log_mass: Tensor | None) -> None:
        """Copy each row's first ``counts`` selected tokens after the ones it holds (its pages must have room)."""
        bsz, heads, length, dim = key.shape
        rows = bsz * heads
        device = self.key_pages.device
        kept = indices.reshape(rows, -1).to(device)
        count = counts.reshape(rows, 1).to(device)
        col = torch.arange(kept.shape[1], device=device)[None, :]
        used = col < count
        src = kept.clamp(max=length - 1) + (torch.arange(rows, device=device) * length)[:, None]
        slots = self._slots(torch.where(used, self.lengths.long()[:, None] + col, 0))
        src, slots = src[used], slots[used]
        self.key_pages.view(-1, dim)[slots] = key.reshape(rows * length, dim)[src].to(self.key_pages.dtype)
        self.value_pages.view(-1, dim)[slots] = value.reshape(rows * length, dim)[src].to(self.value_pages.dtype)
        if self.mass_pages is not None:
            mass = 0.0 if log_mass is None else log_mass.reshape(rows * length).float()[src]
            self.mass_pages.view(-1)[slots] = mass
        self.lengths += count.reshape(rows).int()
        self._lengths_host = [n + c for n, c in zip(self._lengths_host, count.reshape(rows).tolist(), strict=True)]

    def _index_pages(self) -> None:
        rows = torch.arange(self.num_rows, device=self.page_table.device)
        per_row = torch.tensor(self._pages_per_row, device=self.page_table.device)
        col = torch.arange(self.page_table.shape[1], device=self.page_table.device)
        used = col[None, :] < per_row[:, None]
        owner = torch.full((self.num_pages,), -1, dtype=torch.int32, device=self.page_table.device)  # -1: free
        rank = torch.zeros_like(owner)
        ids = self.page_table.long()[used]
        owner[ids] = rows[:, None].expand_as(used)[used].int()
        rank[ids] = col[None, :].expand_as(used)[used].int()
        self.page_owner, self.page_rank = owner, rank

    def free_slots(self) -> int:
        """Tokens every row can still take before the pool must grow."""
        pairs = zip(self._pages_per_row, self._lengths_host, strict=True)
        return min(p * self.page_size - n for p, n in pairs)

    def _pages_needed(self, lengths: list[int]) -> list[int]:
        """Pages each row lacks to hold ``lengths[r]`` tokens."""
        ps = self.page_size
        return [max(0, -(-n // ps) - p) for n, p in zip(lengths, self._pages_per_row, strict=True)]

    def make_room(self, tokens: int) -> None:
        """Give every row room for at least ``tokens`` more tokens (free pages first, then new storage)."""
        self._give_pages(self._pages_needed([n + tokens for n in self._lengths_host]))

    def _give_pages(self, need: list[int]) -> None:
        """Append ``need[r]`` pages to row ``r``'s table: free pages if there are enough, else new storage."""
        wanted = sum(need)
        if wanted == 0:
            return
        if wanted > len(self._free):
            self._regroup(need)
        else:
            dev = self.page_table.device
            ids = torch.tensor(self._free[:wanted], dtype=torch.int32, device=dev)
            del self._free[:wanted]
            counts = torch.tensor(need, device=dev)
            owned = torch.tensor(self._pages_per_row, device=dev)
            rows = torch.arange(self.num_rows, device=dev).repeat_interleave(counts)
            first = (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
            cols = owned.repeat_interleave(counts) + torch.arange(wanted, device=dev) - first
            width = max(p + n for p, n in zip(self._pages_per_row, need, strict=True))
            table = torch.nn.functional.pad(self.page_table, (0, max(0, width - self.page_table.shape[1])))
            table[rows, cols] = ids
            self.page_table = table
            self._pages_per_row = [p + n for p, n in zip(self._pages_per_row, need, strict=True)]
        self.version += 1
        self._index_pages()

    def _regroup(self, need: list[int]) -> None:
        """New storage with ``need[r]`` more pages for row ``r``, each row's pages consecutive again.

        Growing copies every page anyway; laying rows out one after another on the
        way keeps each row one run of slots (:meth:`token_runs`), so the CPU kernel
        reads it with one product however often the pool grew. Free pages are
        dropped. Pages are copied a run at a time and K, V and the log mass one
        after another, so at most one old and one new tensor are held at once.
        """
        pages = [p + n for p, n in zip(self._pages_per_row, need, strict=True)]
        table, starts = _consecutive_pages(pages, self.page_table.device)
        moves = [
            (start + offset, first, count)
            for start, row in zip(starts.tolist(), self._page_run_table(), strict=True)
            for (first, count), offset in zip(row, itertools.accumulate((c for _, c in row), initial=0), strict=False)
        ]  # (new first page, old first page, pages) of every run

        def moved(storage: Tensor) -> Tensor:
            out = storage.new_zeros((sum(pages), *storage.shape[1:]))  # new slots: zeros (log mass 0: themselves)
            for new, old, count in moves:
                out[new : new + count] = storage[old : old + count]
            return out

        self.key_pages = moved(self.key_pages)
        self.value_pages = moved(self.value_pages)
        if self.mass_pages is not None:
            self.mass_pages = moved(self.mass_pages)
        self.page_table, self._pages_per_row, self._free = table, pages, []

    def append(self, key: Tensor, value: Tensor) -> None:
        """Write new tokens at the end of every row, in place: :meth:`claim`, then :meth:`write`.

        Args:
            key, value: ``[B, H_kv, q, D]`` the new tokens' keys and values.
        """
        self.check_new(key)
        self.claim(key.shape[2])
        self.write(key, value)

    def claim(self, tokens: int) -> None:
        """Make ``tokens`` more slots the last ones of every row: room in the pages, the lengths, the host's counts.

        Growing is geometric, so it happens O(log(steps)) times (each a new
        kernel shape). Kept apart from :meth:`write` so that a compiled decode
        step changes no Python integer (dynamo would recompile for each value).
        """
        if self.free_slots() < tokens:
            self.make_room(max(tokens, self.reserve, self._appended))
        self.lengths += tokens
        self._lengths_host = [n + tokens for n in self._lengths_host]
        self._appended += tokens

    def write(self, key: Tensor, value: Tensor) -> None:
        """Fill each row's last ``q`` slots (:meth:`claim` made them) with ``[B, H_kv, q, D]`` keys and values."""
        dim, q_len = key.shape[-1], key.shape[2]
        pos = self.lengths.long()[:, None] - q_len + torch.arange(q_len, device=self.lengths.device)
        slots = self._slots(pos).reshape(-1)
        self.key_pages.view(-1, dim).index_copy_(0, slots, key.reshape(-1, dim).to(self.key_pages.dtype))
        self.value_pages.view(-1, dim).index_copy_(0, slots, value.reshape(-1, dim).to(self.value_pages.dtype))

    def check_new(self, key: Tensor) -> None:
        """Raise unless ``[B, H_kv, q, D]`` new keys fit the pool's rows and head size."""
        bsz, heads, _, dim = key.shape
        if bsz * heads != self.num_rows or dim != self.key_pages.shape[-1]:
            raise ValueError(
                f"new keys {tuple(key.shape)} do not match the pool's {self.num_rows} rows "
                f"of head_dim {self.key_pages.shape[-1]}"
            )

    def _slots(self, pos: Tensor) -> Tensor:
        """``[R, n]`` storage slots of each row's logical positions ``pos`` (``[R, n]``)."""
        page = self.page_table.long().gather(1, pos // self.page_size)
        return page * self.page_size + pos % self.page_size

    def appended_keys(self) -> Tensor:
        """``[R, A, D]`` keys of the ``A`` tokens appended to every row since the selection, in order."""
        pos = (self.lengths.long() - self._appended)[:, None] + torch.arange(self._appended, device=self.lengths.device)
        return self.key_pages.view(-1, self.key_pages.shape[-1])[self._slots(pos)]

    def keep_appended(self, keep: Tensor) -> None:
        """Keep only the appended tokens ``keep`` (``[R, k]`` increasing offsets into them) of every row, in place.

        They move to the front of the appended part, in order; the pool keeps
        its pages (no reallocation), so decoding stays within them.
        """
        start = (self.lengths.long() - self._appended)[:, None]
        src = self._slots(start + keep.long()).reshape(-1)
        dst = self._slots(start + torch.arange(keep.shape[1], device=keep.device)).reshape(-1)
        dim = self.key_pages.shape[-1]
        for pages in (self.key_pages, self.value_pages):  # appended tokens have log mass 0 everywhere: no move
            flat = pages.view(-1, dim)
            flat[dst] = flat[src]  # gathered before written
        self.drop_last(self._appended - keep.shape[1])

    def drop_last(self, tokens: int) -> None:
        """Forget the last ``tokens`` appended to every row (their slots are reused by the next append).

        Raises:
            ValueError: if that reaches into the selected prompt tokens.
        """
        if not 0 <= tokens <= self._appended:
            raise ValueError(f"can drop 0..{self._appended} appended tokens per row, not {tokens}")
        self.lengths -= tokens
        self._lengths_host = [n - tokens for n in self._lengths_host]
        self._appended -= tokens

    def select_rows(self, rows: Tensor) -> PagedKVPool:
        """A new pool whose row ``i`` is a copy of row ``rows[i]`` of this one (beam reordering, batch expansion).

        Args:
            rows: ``[R']`` int64 source rows; may repeat or drop rows.

        Returns:
            A pool with the same page size, reserve and growth state; every row
            owns copies of its pages, so rows copied from one source diverge safely.
        """
        src = rows.tolist()
        pages = [self._pages_per_row[r] for r in src]
        ids = torch.cat([self.page_table[r, : self._pages_per_row[r]] for r in src]).long()
        table, _ = _consecutive_pages(pages, self.page_table.device)
        mass = None if self.mass_pages is None else self.mass_pages[ids]
        lengths = self.lengths[rows.to(self.lengths.device)].clone()
        pool = PagedKVPool(
            self.key_pages[ids], self.value_pages[ids], table, lengths, pages, self.num_kv_heads, self.reserve, mass
        )
        pool._appended = self._appended
        pool.version = self.version + 1
        return pool

    def _page_run_table(self) -> list[list[tuple[int, int]]]:
        """Each row's pages as runs of consecutive page ids, ``(first page, pages)``; cached per table version."""
        if self._page_runs is None or self._page_runs[0] != self.version:
            runs = []
            for pages, owned in zip(self.page_table.tolist(), self._pages_per_row, strict=True):
                row: list[tuple[int, int]] = []
                for page in pages[:owned]:
                    if row and row[-1][0] + row[-1][1] == page:
                        row[-1] = (row[-1][0], row[-1][1] + 1)
                    else:
                        row.append((page, 1))
                runs.append(row)
            self._page_runs = (self.version, runs)
        return self._page_runs[1]

    def token_runs(self, lengths: list[int] | None = None) -> list[list[tuple[int, int]]]:
        """Each row's tokens as runs of consecutive storage slots, ``(first slot, tokens)`` in logical order.

        A row is one run after a selection or a growth (:meth:`_regroup`); a
        prompt prefilled in chunks adds a run per chunk that took free pages.
        ``lengths``: only each row's first ``lengths[r]`` tokens (default: all it holds).
        """
        ps, out = self.page_size, []
        for row, n in zip(self._page_run_table(), self._lengths_host if lengths is None else lengths, strict=True):
            slots = []
            for page, count in row:
                if n <= 0:
                    break
                slots.append((page * ps, min(count * ps, n)))
                n -= count * ps
            out.append(slots)
        return out

    def row_tokens(self, row: int) -> tuple[Tensor, Tensor]:
        """Keys and values held by one row, in logical order: two ``[len, D]`` tensors."""
        pages = self._row_pages(row)
        dim = self.key_pages.shape[-1]
        n = self._lengths_host[row]
        return self.key_pages[pages].reshape(-1, dim)[:n], self.value_pages[pages].reshape(-1, dim)[:n]

    def row_mass(self, row: int) -> Tensor:
        """``[len]`` float32 log mass of one row's tokens, in logical order (zeros without merging)."""
        n = self._lengths_host[row]
        if self.mass_pages is None:
            return torch.zeros(n, device=self.key_pages.device)
        return self.mass_pages[self._row_pages(row)].reshape(-1)[:n]

    def _row_pages(self, row: int) -> Tensor:
        return self.page_table[row, : math.ceil(self._lengths_host[row] / self.page_size)].long()

    @property
    def row_lengths(self) -> list[int]:
        """Tokens held per row (host copy, no device sync)."""
        return list(self._lengths_host)

    @property
    def nbytes(self) -> int:
        """Bytes of K, V (and log-mass) storage this pool holds (allocated, reserve included)."""
        mass = 0 if self.mass_pages is None else self.mass_pages.nbytes
        return self.key_pages.nbytes + self.value_pages.nbytes + mass

    @property
    def tokens_allocated(self) -> int:
        """Token slots allocated over all rows: ``num_pages * page_size``."""
        return self.num_pages * self.page_size
