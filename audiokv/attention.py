"""`AudioKVAttention`: attention whose cache is compressed after prefill and read from pages.

The module takes the projected (and position-encoded) queries, keys and
values of one attention layer. Its first call is the prefill: dense causal
attention, then scores -> smoothing -> budgets -> selection -> paged pool.
Every later call appends the new keys and values to the pool and attends
over it with compiled FlexAttention. A prompt prefilled in chunks
(``AudioKVConfig.prefill_chunk``) arrives as several calls, each compressed
into the pool before the next. Model integrations wrap it so that a model's
own projections feed it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiokv.budget import (
    ADAKV_SAFEGUARD,
    demand_scores,
    head_budgets,
    head_weights,
    layer_budget,
    layer_keeps,
    layer_shares,
    mark_mandatory,
)
from audiokv.config import AudioKVConfig
from audiokv.kernel import (
    chunk_attention,
    paged_attention,
    pages_attention,
    reference_paged_attention,
    rows_attention,
)
from audiokv.mask import PagedBlockMask
from audiokv.merge import merge_spans
from audiokv.paged import PagedKVPool, fit_page_size
from audiokv.policies import Policy, ScoreInput, get_policy
from audiokv.select import clip_onsets, cover_spans, select_tokens, weight_onset
from audiokv.spectral import Span, clip_ids, mask_spans, sound_rows, span_mask, span_rows, spectral_smooth

KERNELS = ("auto", "flex", "rows", "pages", "reference")
# From this many rows on (batch x KV heads), "auto" decodes on CPU with the per-page kernel: faster than
# the per-row one for Whisper's 48 and 64 rows (decode-cpu-whisper.json), slower for 4 or 16 long rows of
# 7 queries (decode-cpu.json); 24 is between, from an ad-hoc timing (docs/results.md, "Benchmarks").
PAGES_MIN_ROWS = 24


class KVMeter:
    """The most K/V bytes the compressed layers of one model held at once.

    Each layer reports, at every call, what its pool holds and the K/V of the
    tokens it is processing (the whole prompt at an unchunked prefill, one
    chunk, a decode step); layers run one after another, so the model holds
    every layer's pool plus the calling layer's K/V in flight.
    """

    def __init__(self) -> None:
        self.held: dict[int, int] = {}  # each layer's pool bytes
        self.total = 0  # their sum, kept up to date (observed by every layer at every decode step)
        self.peak = 0

    def observe(self, layer: int, pool_bytes: int, in_flight: int) -> None:
        self.total += pool_bytes - self.held.get(layer, 0)
        self.held[layer] = pool_bytes
        self.peak = max(self.peak, self.total + in_flight)

    def reset(self) -> None:
        """Start a new sequence."""
        self.held.clear()
        self.total = self.peak = 0


def _quieten(trend: Tensor, quiet: Tensor, heard: Tensor | None = None) -> Tensor:
    """``[B, H, T]`` coverage density with the ``quiet`` frames (``[B, T]`` bool) set to zero (the uniform
    floor only) or, given ``heard`` (``[B, T]`` bool), to each head's mean density over those frames."""
    rest: Tensor | float = 0.0
    if heard is not None:
        heard = heard[:, None, :]
        rest = (trend * heard).sum(-1, keepdim=True) / heard.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(quiet[:, None, :], rest, trend)


def chunk_layout(first: int, total: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the chunks of a ``total``-token prompt: ``first`` tokens, then ``chunk`` at a time."""
    return [(0, min(first, total))] + [(s, min(s + chunk, total)) for s in range(first, total, chunk)]


def clip_order(audio: Tensor, key_mask: Tensor | None, sinks: int, window: int) -> Tensor:
    """``[B, T]`` an order of each row's positions in which its audio between its sinks and its window is one run.

    ``audio``: ``[B, T]`` bool; ``key_mask``: ``[B, T]`` bool (False on padding) or None.
    Padding, the first ``sinks`` valid tokens and the last ``window`` tokens (the
    observation window) stay where they are. Between them come the tokens
    before the row's first audio token, then its audio tokens, then the text
    between and after its clips, each in prompt order. A row whose audio is
    one run keeps its order.
    """
    length = audio.shape[-1]
    pos = torch.arange(length, device=audio.device)
    valid = torch.ones_like(audio) if key_mask is None else key_mask.bool().to(audio.device)
    lead = valid.cumsum(-1) <= sinks  # padding and sinks
    first = torch.where(audio, pos, length).amin(-1, keepdim=True)
    group = torch.where(audio, 1, torch.where(pos < first, 0, 2))
    group = torch.where(lead, 0, torch.where(pos >= length - window, 3, group))
    return group.sort(stable=True).indices


def in_order(x: Tensor, order: Tensor) -> Tensor:
    """``x`` (``[B, T]``, ``[B, H, T]`` or ``[B, H, T, D]``) with its token axis taken in ``[B, T]`` ``order``."""
    index = order.to(x.device)
    if x.dim() > 2:
        index = index[:, None, :].expand(*x.shape[:2], -1)
    if x.dim() > 3:
        index = index[..., None].expand(-1, -1, -1, x.shape[-1])
    return x.gather(min(x.dim() - 1, 2), index)


class AudioKVAttention(nn.Module):
    """Attention over an AudioKV-compressed, paged KV cache for one layer.

    Args:
        config: compression settings.
        num_heads: query heads ``H_q``.
        num_kv_heads: key/value heads ``H_kv`` (``H_q`` must be a multiple).
        head_dim: ``D``.
        scaling: softmax scale, ``1/sqrt(D)`` by default.
        head_prior: optional ``[H_kv]`` calibrated audio-criticality of this layer's heads.
        layer_prior: optional ``[num_layers]`` mean calibrated audio-criticality of
            every compressed layer; with ``config.layer_prior`` > 0 rows holding
            audio spend the model's budget across layers by it
            (:func:`audiokv.budget.layer_shares`).
        kernel: how new queries attend over the pool: ``"flex"`` (compiled
            FlexAttention), ``"rows"`` (each row's tokens read in place, two matrix
            products per row: faster on CPU), ``"pages"`` (decode steps of one
            token over all pages at once, :func:`~audiokv.kernel.pages_attention`;
            longer steps as ``"rows"``), ``"auto"`` (the default: flex on GPU; on
            CPU pages for one-token steps over at least ``PAGES_MIN_ROWS`` rows,
            else rows) or ``"reference"`` (dense PyTorch, for tests).
        policy: how tokens are scored and budgets split (``"audiokv"`` by default;
            see :mod:`audiokv.policies` for the baselines).
        layer_idx, num_layers: this layer's place in the model (for layer-wise budgets).
        cross_attention: the keys are another sequence (Whisper's encoder
            frames): the first call's queries see every key, all keys count as
            audio for SSS, only sinks are mandatory, and later calls attend
            over the pool without appending (their key/value are ignored).
        audio_tokens_per_second: how many of the model's audio tokens stand for
            one second of sound (Whisper's encoder frames: 50, the default;
            :func:`~audiokv.integrations.apply_audiokv` sets each family's own),
            so that ``config.onset_seconds`` covers the same stretch of speech in
            every model.
    """

    def __init__(
        self,
        config: AudioKVConfig,
        *,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scaling: float | None = None,
        head_prior: Tensor | None = None,
        layer_prior: Tensor | None = None,
        kernel: Literal["auto", "flex", "rows", "pages", "reference"] = "auto",
        policy: str | Policy = "audiokv",
        layer_idx: int = 0,
        num_layers: int = 1,
        cross_attention: bool = False,
        audio_tokens_per_second: float = 50.0,
    ) -> None:
        super().__init__()
        if not audio_tokens_per_second > 0:
            raise ValueError(f"audio_tokens_per_second must be > 0, got {audio_tokens_per_second}")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
        if head_prior is not None and head_prior.shape != (num_kv_heads,):
            raise ValueError(f"head_prior must be [{num_kv_heads}], got {tuple(head_prior.shape)}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.config = config
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scaling = head_dim**-0.5 if scaling is None else scaling
        self.kernel = kernel
        self.cross_attention = cross_attention
        self.onset_tokens = int(config.onset_seconds * audio_tokens_per_second + 0.5)  # the span's first tokens
        self.policy = get_policy(policy)
        self.layer_idx, self.num_layers = layer_idx, num_layers
        if layer_prior is not None and self.policy.use_prior and self.policy.layer_split:
            layer_shares(layer_prior, config.layer_prior)  # finite and non-negative, or an error now
            if layer_prior.shape != (num_layers,):
                raise ValueError(f"layer_prior must be [{num_layers}], got {tuple(layer_prior.shape)}")
        self.register_buffer("head_prior", head_prior, persistent=False)
        self.register_buffer("layer_prior", layer_prior, persistent=False)
        self.pool: PagedKVPool | None = None
        self.block_mask: PagedBlockMask | None = None
        self.budgets: Tensor | None = None  # [B, H_kv] tokens kept per head at compression
        self.kept_indices: Tensor | None = None  # [B, H_kv, K] kept prompt positions (see select_tokens)
        self.decoding = False  # the last call appended to the pool (False: it was the prefill)
        self.prompt_length = 0  # tokens of the compressed prompt (before any appended)
        self._evicted_kept: Tensor | None = None  # decoded_kept once decode-time eviction has dropped some
        self.compressions = 0  # compression calls so far: each draws its own random stream
        self.peak_kv_bytes = 0  # the most K/V bytes this layer held at once since the prefill (see `_track`)
        self.meter: KVMeter | None = None  # shared by the layers of one model (`apply_audiokv`)
        self._chunks: list[tuple[Tensor, Tensor]] | None = None  # selections of the chunks prefilled so far
        self.held_before_chunk: list[int] | None = None  # tokens per row before the chunk being prefilled
        self._begun = 0  # new tokens of the decode call `begin_step` prepared (0: none yet)
        self.owner: object | None = None  # the cache layer whose sequence the pool holds (`AudioKVLayer`)

    def reset(self) -> None:
        """Forget the cached sequence (the next call is a prefill)."""
        self.pool = self.block_mask = self.budgets = self.kept_indices = self._evicted_kept = None
        self._chunks = self.held_before_chunk = None
        self.decoding, self._begun = False, 0
        self.prompt_length = self.peak_kv_bytes = 0

    def select_batch(self, indices: Tensor) -> None:
        """Keep batch rows ``indices`` of the cached sequence, in that order (may repeat or drop rows).

        Beam search reorders its beams this way; expanding or filtering a batch too.
        Every resulting row owns a copy of its pages.
        """
        if self.pool is None:
            return
        idx = indices.long().to(self.pool.lengths.device)
        rows = (idx[:, None] * self.num_kv_heads + torch.arange(self.num_kv_heads, device=idx.device)).flatten()
        self.pool = self.pool.select_rows(rows)
        self.block_mask = PagedBlockMask(self.pool, causal=not self.cross_attention)
        self.budgets, self.kept_indices = self.budgets[idx], self.kept_indices[idx]
        if self._evicted_kept is not None:
            self._evicted_kept = self._evicted_kept[rows.to(self._evicted_kept.device)]

    @property
    def decoded_kept(self) -> Tensor:
        """``[B*H_kv, A]`` which of the tokens appended since compression each row holds (0 = the first)."""
        if self._evicted_kept is not None:
            return self._evicted_kept
        return torch.arange(self.pool.appended, device=self.pool.lengths.device).expand(self.pool.num_rows, -1)

    def drop_last(self, tokens: int) -> None:
        """Forget the last ``tokens`` decoded (or appended) tokens of every row; the compressed prompt stays."""
        if self.pool is not None and not self.cross_attention:
            if self._evicted_kept is not None:
                raise ValueError("cannot drop decoded tokens after decode-time eviction (decode_keep) dropped some")
            self.pool.drop_last(tokens)

    @property
    def kv_bytes(self) -> int:
        """Bytes of K/V storage held for the current sequence (``peak_kv_bytes``: the most held at once)."""
        return 0 if self.pool is None else self.pool.nbytes

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        audio_span: Span | Tensor | None = None,
        key_mask: Tensor | None = None,
        decode_tokens: int | None = None,
        chunk: tuple[int, int] | None = None,
    ) -> Tensor:
        """Attend, compressing the cache on the first (prefill) call.

        Args:
            query: ``[B, H_q, q, D]`` new queries.
            key, value: ``[B, H_kv, q, D]`` new keys and values.
            audio_span: prefill only; the audio tokens ``(start, end)``, ``[B, 2]``,
                or a ``[B, T]`` bool mask, which may hold several clips per row.
                None: no audio. In cross-attention every key is audio, and the
                span (if given) marks the frames of real sound, before the padding
                of a fixed-length input; there the mask leaves out pauses.
            key_mask: prefill only; ``[B, T]`` bool, False on padding tokens,
                which are never kept.
            decode_tokens: prefill only; how many tokens will be appended after
                the prompt, if known: the pool reserves room for no more.
            chunk: ``(start, total)`` when this call is the part from ``start`` of
                a ``total``-token prompt prefilled in chunks (``AudioKVConfig.prefill_chunk``;
                self-attention only); ``audio_span`` and ``key_mask`` describe the whole prompt.

        Returns:
            ``[B, H_q, q, D]`` attention output.
        """
        if chunk is not None and not self.cross_attention:
            return self._prefill_chunk(query, key, value, *chunk, audio_span, key_mask, decode_tokens)
        if self.pool is None:
            self._check_shapes(query, key, value)
            out = prompt_attention(query, key, value, self.scaling, key_mask, causal=not self.cross_attention)
            self.compress(query, key, value, audio_span=audio_span, key_mask=key_mask, decode_tokens=decode_tokens)
            self._track(key.nbytes + value.nbytes)
            return out
        with torch.no_grad():  # inference only: no gradients
            if not self.cross_attention:
                self._check_shapes(query, key, value)
                self.pool.check_new(key)
            if not self._begun:  # called directly, not after a model's `begin_step`
                self.begin_step(query.shape[2])
            elif self._begun != query.shape[2]:
                raise ValueError(f"this decode step was prepared for {self._begun} new tokens, got {query.shape[2]}")
            self._begun = 0
            if not self.cross_attention:
                self.pool.write(key.detach(), value.detach())
                if self._evicted_kept is not None:  # bounded by decode_keep + decode_every
                    held = self._evicted_kept
                    new = held[:, -1:] + 1 + torch.arange(key.shape[2], device=held.device)
                    self._evicted_kept = torch.cat([held, new], 1)
            out = self.attend(query.detach())
            keep = self.config.decode_keep
            if keep is not None and self.pool.appended >= keep + self.config.decode_every:
                self._evict_decoded(query.detach()[:, :, -1], keep)
                if self.kernel_for(query.device) == "flex":  # layers sharing this pool read it in this step still
                    self.block_mask.update(query.shape[2])
            return out

    def begin_step(self, tokens: int) -> None:
        """The host side of the next decode call, of ``tokens`` new tokens: room in the pool, counts, the meter.

        A model patched by :func:`audiokv.apply_audiokv` runs it from its forward
        pre-hook, outside a compiled ``model.forward``, so the decode step itself
        is tensor work only: one graph, recompiled only when the pool grows. A
        direct call of this module runs it itself.
        """
        if not self.cross_attention:
            self.pool.claim(tokens)
            self._track(2 * self.pool.num_rows * tokens * self.head_dim * self.pool.key_pages.element_size())
        if self.kernel_for(self.pool.key_pages.device) == "flex":
            self.block_mask.update(tokens)
        self.decoding = True
        self._begun = tokens

    def cancel_step(self, tokens: int) -> None:
        """Undo a :meth:`begin_step` of ``tokens`` (the model's forward raised): the pool forgets their slots."""
        if not self.cross_attention:
            self.pool.drop_last(tokens)
        self._begun = 0

    def _evict_decoded(self, query: Tensor, keep: int) -> None:
        """Keep ``keep`` appended tokens per row: the most recent ``min(window, keep)`` and the best by ``query``.

        ``query``: ``[B, H_q, D]`` the latest query; a row's score is its GQA
        group's mean softmax attention over the row's appended tokens.
        """
        keys = self.pool.appended_keys()  # [R, A, D]
        rows = query.reshape(self.pool.num_rows, -1, query.shape[-1]).to(keys.dtype)  # [R, G, D]
        scores = torch.softmax((rows @ keys.transpose(1, 2)).float() * self.scaling, -1).mean(1)  # [R, A]
        scores[:, scores.shape[1] - min(self.config.window, keep) :] = float("inf")
        kept = scores.topk(keep, dim=-1).indices.sort(-1).values
        self._evicted_kept = self.decoded_kept.gather(1, kept.to(self.pool.lengths.device))  # before the pool shrinks
        self.pool.keep_appended(kept)

    def kernel_for(self, device: torch.device) -> str:
        """The kernel that attends over the pool on ``device``: ``auto`` is rows on CPU, flex elsewhere."""
        if self.kernel != "auto":
            return self.kernel
        return "rows" if torch.device(device).type == "cpu" else "flex"

    def step_kernel(self, device: torch.device, q_len: int = 1) -> str:
        """The kernel a step of ``q_len`` new queries per head runs on ``device``: flex, rows, pages or reference."""
        kernel = self.kernel_for(device)
        if kernel not in ("rows", "pages"):
            return kernel
        many = self.kernel == "auto" and self.pool is not None and self.pool.num_rows >= PAGES_MIN_ROWS
        return "pages" if q_len == 1 and (kernel == "pages" or many) else "rows"

    def attend(self, query: Tensor, scaling: float | None = None) -> Tensor:
        """Attention of ``[B, H_q, q, D]`` new queries over the pool (causal: its last ``q`` tokens are theirs).

        Layers that share this layer's cache (Gemma 3n) call it with their own queries and ``scaling``.
        """
        scale = self.scaling if scaling is None else scaling
        kernel = self.step_kernel(query.device, query.shape[2])
        if kernel == "flex":
            return paged_attention(query, self.pool, self.block_mask.mask(query.shape[2]), scale=scale)
        if torch.compiler.is_compiling():
            raise RuntimeError(f"a compiled decode step needs apply_audiokv(kernel='flex'), not {kernel!r}")
        if kernel == "pages":
            return pages_attention(query, self.pool, scale=scale)
        attend = rows_attention if kernel == "rows" else reference_paged_attention
        return attend(query, self.pool, scale=scale, causal=not self.cross_attention)

    def _check_shapes(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        if query.dim() != 4 or key.shape != value.shape or key.dim() != 4:
            raise ValueError(
                f"expected query [B, H_q, q, D] and key/value [B, H_kv, q, D], got "
                f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        bsz, heads, q_len, dim = query.shape
        kv_len = key.shape[2] if self.cross_attention else q_len
        if (heads, dim) != (self.num_heads, self.head_dim) or key.shape != (bsz, self.num_kv_heads, kv_len, dim):
            raise ValueError(
                f"this layer has {self.num_heads} query / {self.num_kv_heads} KV heads of dim "
                f"{self.head_dim}; got query {tuple(query.shape)} and key {tuple(key.shape)}"
            )

    @torch.compiler.disable  # data-dependent (scores, budgets, selection): eager in a compiled model
    @torch.no_grad()
    def compress(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        audio_span: Span | Tensor | None = None,
        key_mask: Tensor | None = None,
        decode_tokens: int | None = None,
    ) -> None:
        """Score, smooth, budget and select the prompt's tokens; fill the pool.

        Args:
            query: ``[B, H_q, T, D]`` prompt queries (only the last ``window`` are read).
            key, value: ``[B, H_kv, T, D]`` prompt keys and values.
            audio_span, key_mask, decode_tokens: as in :meth:`forward`.
        """
        bsz, _, length, _ = key.shape
        if self.cross_attention:
            selected = self._select_cross(query, key, value, audio_span, key_mask)
        else:
            audio = self._audio(audio_span, bsz, length)
            selected = self._select_clips(query, key, value, audio, key_mask, self.config.sinks)
        key, value, indices, budgets, log_mass = selected
        reserve = self._reserve(decode_tokens)
        page = self.config.page_size or fit_page_size(budgets.float().mean().item() + reserve)
        self.pool = PagedKVPool.from_selection(
            key, value, indices, budgets, page_size=page, reserve=reserve, log_mass=log_mass
        )
        self._compressed(indices, budgets, length)

    def _select_cross(
        self, query: Tensor, key: Tensor, value: Tensor, sound: Span | Tensor | None, key_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`_select` of cross-attention, where every key is audio and ``sound`` marks the real sound."""
        bsz, _, length, _ = key.shape
        content = mask = None  # for the policies that read where the sound starts, ends or pauses
        policy = self.policy
        reads_sound = policy.content_density or policy.quiet_lead or policy.quiet_pauses or policy.smooth_sound
        if sound is not None and reads_sound:
            content, mask = sound_rows(sound, bsz, length)
        spans = span_rows(None, bsz, length)
        return self._select(query, key, value, spans, key_mask, self.config.sinks, content, sound=mask)

    @staticmethod
    def _audio(audio_span: Span | Tensor | None, bsz: int, length: int) -> Tensor | None:
        """``[B, T]`` bool audio tokens of a self-attention prompt, or None (no audio)."""
        if audio_span is None:
            return None
        if isinstance(audio_span, Tensor) and audio_span.dtype == torch.bool:
            if audio_span.shape != (bsz, length):
                raise ValueError(f"audio mask must be [B, T] = [{bsz}, {length}], got {tuple(audio_span.shape)}")
            return audio_span.detach().cpu()
        return span_mask(span_rows(audio_span, bsz, length), length)

    def _select_clips(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        audio: Tensor | None,
        key_mask: Tensor | None,
        sinks: int,
        onset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`_select` of a self-attention prompt whose ``[B, T]`` bool ``audio`` may hold several clips per row.

        Coverage, merging, SSS and the text scores read the audio as one span.
        A row with text between its clips is therefore selected in
        :func:`clip_order`, where its audio is one run; its token scores are
        computed in prompt order first (every query sees what it saw, and
        pooling reads the prompt's neighbours), and the kept positions, keys,
        values and log masses are mapped back. Tokens merge only within their
        own clip, and each clip has its onset. ``onset``: ``[B, T]`` bool, or None
        (each clip's first ``onset_tokens``).
        """
        if audio is None:
            return self._select(query, key, value, None, key_mask, sinks)
        onset = clip_onsets(audio, self.onset_tokens) if onset is None else onset
        spans, clips = mask_spans(audio), clip_ids(audio)
        one_run = clips.amax(-1) <= 1
        policy = self.policy
        reads_places = policy.coverage or policy.merge or policy.smooth or policy.text_rarity
        if not reads_places or one_run.all():
            return self._select(query, key, value, spans, key_mask, sinks, onset=onset, clips=clips)
        length = key.shape[2]
        order = clip_order(audio, key_mask, sinks, self.config.window)
        moved = in_order(audio, order)
        ahead = torch.arange(length) < length - self.config.window  # the window is kept whole: no span reaches it
        spans = torch.where(one_run[:, None], spans, mask_spans(moved & ahead))
        raw = None
        if self._ratio(length) > 0:
            raw = in_order(self.policy.score(self._score_input(query, key, value, key_mask, None)).float(), order)
        key, value, indices, budgets, log_mass = self._select(
            query, in_order(key, order), in_order(value, order), spans,
            None if key_mask is None else in_order(key_mask, order), sinks,
            onset=in_order(onset, order), clips=in_order(clips, order), raw=raw, audio_rows=audio.any(-1),
        )  # fmt: skip
        back = order.argsort(-1)
        key, value = in_order(key, back), in_order(value, back)
        log_mass = None if log_mass is None else in_order(log_mass, back)
        placed = order.to(indices.device).gather(1, indices.clamp(max=length - 1).flatten(1)).view_as(indices)
        indices = torch.where(indices < length, placed, length).sort(-1).values
        return key, value, indices, budgets, log_mass

    def _score_input(
        self, query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None, spans: Tensor | None
    ) -> ScoreInput:
        """What this layer's policy reads of a prompt (``[B, H_kv, T, D]`` keys) in this compression."""
        cfg = self.config
        seed = hash((cfg.seed, self.layer_idx, self.compressions)) % 2**63  # ints hash the same in every run
        cutoff = 1.0 - self._ratio(key.shape[2]) if self.policy.smooth_keys else 1.0
        return ScoreInput(
            query, key, value, self.scaling, key_mask, cfg.window, not self.cross_attention, cfg.pooling,
            cfg.pooling_kernel, seed, spans, cutoff,
        )  # fmt: skip

    def _reserve(self, decode_tokens: int | None) -> int:
        """Room per row for tokens appended after the prompt."""
        cfg = self.config
        reserve = cfg.decode_reserve if decode_tokens is None else min(cfg.decode_reserve, decode_tokens)
        if cfg.decode_keep is not None:  # the appended part never holds more
            reserve = min(reserve, cfg.decode_keep + cfg.decode_every)
        return 0 if self.cross_attention else reserve

    def _ratio(self, length: int) -> float:
        """This layer's compression ratio for a prompt (or chunk) of ``length`` tokens."""
        if length <= self.config.window and not self.cross_attention:
            return 0.0  # the observation window covers the whole prompt: a short prompt is kept whole
        return self.policy.layer_ratio(self.config.compression_ratio, self.layer_idx, self.num_layers)

    def _row_ratios(self, ratio: float, audio: Tensor, valid: Tensor, mandatory: Tensor) -> Tensor:
        """``[B]`` float64 ratio of each row: ``ratio``, or the layer prior's where ``audio`` (``[B]`` bool) is set.

        ``valid``, ``mandatory``: ``[B]`` tokens of each row and those it must keep; no
        layer is given fewer (nor fewer than one), so the mean over layers stays exact.
        """
        cfg, policy = self.config, self.policy
        out = torch.full(audio.shape, ratio, dtype=torch.float64, device=valid.device)
        if ratio == 0 or not (policy.use_prior and policy.layer_split) or self.layer_prior is None:
            return out
        shares = layer_shares(self.layer_prior, cfg.layer_prior)
        keep = 1.0 - cfg.compression_ratio
        ratios: dict[float, float] = {}  # rows of one length share one water-filling
        for row in audio.nonzero()[:, 0].tolist():
            low = min(max(int(mandatory[row]), 1) / max(int(valid[row]), 1), keep)
            if low not in ratios:
                ratios[low] = 1.0 - float(layer_keeps(keep, shares, low)[self.layer_idx])
            out[row] = ratios[low]
        return out

    def _select(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        spans: Tensor | None,
        key_mask: Tensor | None,
        sinks: int,
        content: Tensor | None = None,
        onset: Tensor | None = None,
        sound: Tensor | None = None,
        clips: Tensor | None = None,
        raw: Tensor | None = None,
        audio_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """What each head keeps of ``[B, H_kv, T, D]`` keys and values: ``(key, value, indices, budgets, log_mass)``.

        ``key``/``value`` come back merged (:mod:`audiokv.merge`), ``indices`` are
        :func:`select_tokens`' ``[B, H_kv, K]``, ``budgets`` ``[B, H_kv]``, ``log_mass``
        ``[B, H_kv, T]`` or None; ``sinks`` first valid tokens are always kept.
        ``content`` (``[B, 2]`` inside ``spans``, or None) is the real sound of each
        span: the density and the path lengths are read there only, and the rest of
        the span keeps the uniform floor (``content_density`` policies); for
        ``quiet_lead`` policies only the span's part before it does, and the onset
        starts where it does; for ``quiet_pauses`` policies the frames inside it
        that ``sound`` (``[B, T]`` bool, or None) leaves out.
        ``onset`` (``[B, T]`` bool, or None: the first ``self.onset_tokens`` of ``spans``) is
        what the ``onset`` policies weight: a later prefill chunk holds none of it.
        ``clips`` (``[B, T]`` int64, or None) says which clip each token of a span
        belongs to: merging stays inside a clip (:meth:`_select_clips`). ``raw``
        (``[B, H_kv, T]``, or None: the policy scores the prompt as given) are the
        token scores, and ``audio_rows`` (``[B]`` bool, or None: a non-empty span)
        the rows that hold audio, for a prompt given in another order.
        """
        cfg = self.config
        bsz, heads, length, _ = key.shape
        valid = torch.ones(bsz, length, dtype=torch.bool, device=key.device) if key_mask is None else key_mask.bool()
        policy = self.policy
        ratio = self._ratio(length)
        if ratio == 0:
            scores = torch.zeros(bsz, heads, length, device=key.device)
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
            budgets = valid.sum(-1)[:, None].expand(bsz, heads)
        else:
            cross = self.cross_attention
            inp = self._score_input(query, key, value, key_mask, spans)
            raw = policy.score(inp).float() if raw is None else raw
            text = valid if spans is None else valid & ~span_mask(spans.to(key.device), length)
            raw = policy.text_scores(inp, raw, text)
            trend = policy.density(inp, raw) if policy.coverage and spans is not None else raw
            if content is not None and policy.coverage and policy.content_density:
                inside = span_mask(content.to(key.device), length)
                trend = _quieten(trend, ~inside, inside if policy.padding_at_mean else None)
            if content is not None and policy.coverage and policy.quiet_lead:
                lead = torch.stack([spans[:, 0], torch.maximum(spans[:, 0], content[:, 0])], -1)
                trend = _quieten(trend, span_mask(lead.to(key.device), length))
                onset = clip_onsets(span_mask(torch.stack([lead[:, 1], spans[:, 1]], -1), length), self.onset_tokens)
            if sound is not None and policy.coverage and policy.quiet_pauses:
                inside = span_mask(content, length).to(key.device)
                sound = sound.to(key.device)
                trend = _quieten(trend, inside & ~sound, inside & sound if policy.pauses_at_mean else None)
            if policy.onset and policy.coverage and spans is not None:
                onset = clip_onsets(span_mask(spans, length), self.onset_tokens) if onset is None else onset
                trend = weight_onset(trend, onset, cfg.onset_weight)
            smoothed = content if content is not None and policy.smooth_sound else spans  # where SSS runs
            if policy.smooth and spans is not None:
                trend = spectral_smooth(trend, cfg.sss_cutoff, smoothed)
            ranked = raw if policy.coverage else trend  # coverage policies smooth their density, not their scores
            scores = mark_mandatory(ranked, sinks=sinks, window=0 if cross else cfg.window, key_mask=key_mask)
            mandatory = torch.isposinf(scores[:, 0]).sum(-1)
            audio = torch.zeros(bsz, 1, dtype=torch.bool, device=key.device)  # [B, 1] rows holding audio
            if audio_rows is not None:
                audio = audio_rows.to(key.device)[:, None]
            elif spans is not None:
                audio = (spans[:, 1] > spans[:, 0]).to(key.device)[:, None]
            row_ratio = self._row_ratios(ratio, audio[:, 0], valid.sum(-1), mandatory)
            budget = layer_budget(valid.sum(-1), heads, row_ratio, mandatory)
            weights, split = None, scores
            by_path = torch.zeros(bsz, dtype=torch.bool, device=key.device)  # rows split by key path
            if spans is not None:  # text-only rows (empty span) get neither the audio prior nor the demand split
                if policy.use_prior and self.head_prior is not None and cfg.head_prior_strength > 0:
                    weights = torch.where(audio, head_weights(self.head_prior, cfg.head_prior_strength), 1.0)
                demand = policy.head_demand(inp, content if content is not None and policy.content_density else spans)
                if demand is not None:
                    split = torch.where(audio[..., None], demand_scores(scores, demand), scores)
                    by_path = audio[:, 0]
            safeguard: float | Tensor = 1.0  # without head budgets every head keeps the average
            if policy.head_budgets and cfg.safeguard is not None:
                safeguard = cfg.safeguard
            elif policy.head_budgets:
                safeguard = torch.full((bsz,), ADAKV_SAFEGUARD, dtype=torch.float64, device=key.device)
                safeguard = safeguard.masked_fill(by_path, policy.path_safeguard)
            budgets = head_budgets(split, budget, safeguard=safeguard, weights=weights)
            if policy.coverage and spans is not None:
                pick = policy.stratum_scores(inp, raw)
                if policy.smooth_picks:
                    pick = spectral_smooth(pick, cfg.sss_cutoff, smoothed)
                scores = cover_spans(scores, pick, trend, budgets, spans, cfg.coverage_floor)
        self.compressions += 1
        indices = select_tokens(scores, budgets)
        log_mass = None
        if policy.merge and spans is not None:
            kept = torch.zeros(bsz, heads, length + 1, dtype=torch.bool, device=key.device)
            kept = kept.scatter_(-1, indices, True)[..., :length]  # padding entries point at T
            key, value, log_mass = merge_spans(key, value, kept, spans, key_mask, clips)
        return key, value, indices, budgets, log_mass

    def _compressed(self, indices: Tensor, budgets: Tensor, length: int) -> None:
        """Record a finished compression of a ``length``-token prompt and start attending over the pool."""
        self.budgets, self.kept_indices = budgets, indices
        self.block_mask = PagedBlockMask(self.pool, causal=not self.cross_attention)
        self._evicted_kept = None
        self.prompt_length = length

    @torch.compiler.disable
    @torch.no_grad()
    def _prefill_chunk(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        start: int,
        total: int,
        audio_span: Span | Tensor | None,
        key_mask: Tensor | None,
        decode_tokens: int | None,
    ) -> Tensor:
        """One chunk of a prompt prefilled in chunks: attend, then keep a selection of the chunk in the pool.

        The chunk's queries see what the pool kept of the earlier chunks and
        their own chunk causally; the chunk is then compressed on its own (its
        last ``window`` queries score it, its share of the audio span is covered
        and merged), so every chunk keeps ``1 - ratio`` of its tokens (in rows
        holding audio, the ratio the layer prior gives this layer), but at
        least its last ``window`` (a chunk no longer than the window is kept
        whole). The pool is allocated at the first chunk for what all chunks
        will keep, so it is never reallocated during the prefill.
        """
        self._check_shapes(query, key, value)
        bsz, _, length, _ = key.shape
        end, in_flight = start + length, key.nbytes + value.nbytes
        whole = self._audio(audio_span, bsz, total)
        mask = None if key_mask is None else key_mask[:, start:end]
        if start == 0:
            self.reset()
            out = prompt_attention(query, key, value, self.scaling, mask)
        else:
            if mask is not None and not mask.all():
                raise ValueError("padding after the first prefill chunk: the first chunk must reach past it")
            out = chunk_attention(query, key, value, self.pool, scale=self.scaling)
            self.held_before_chunk = self.pool.row_lengths  # for the layers that read this pool (Gemma 3n)
        audio = onset = None
        if whole is not None:  # an onset cut by the chunk's start goes on in this chunk
            audio, onset = whole[:, start:end], clip_onsets(whole, self.onset_tokens)[:, start:end]
        key, value, indices, budgets, log_mass = self._select_clips(
            query, key, value, audio, mask, self.config.sinks if start == 0 else 0, onset
        )
        if start == 0:
            rows = budgets.numel()
            held = self._chunked_budget(mask, bsz, length, total, whole) + rows * self._reserve(decode_tokens)
            page = self.config.page_size or fit_page_size(held / rows)
            room = (held + rows * (page - 1)) // page  # every row wastes under a page
            self.pool = PagedKVPool.from_selection(
                key, value, indices, budgets, page_size=page, log_mass=log_mass, min_pages=room
            )
            self._chunks = []
        else:
            self.pool.extend(key, value, indices, budgets, log_mass)
        self._track(in_flight)
        used = torch.arange(indices.shape[-1], device=indices.device) < budgets[..., None]
        self._chunks.append((torch.where(used, indices + start, total), budgets))
        if end == total:  # the last chunk: the pool now holds the compressed prompt
            indices = torch.cat([i for i, _ in self._chunks], -1).sort(-1).values
            budgets = sum(b for _, b in self._chunks)
            self.pool.reserve = self._reserve(decode_tokens)
            self.pool.make_room(self.pool.reserve)
            self._compressed(indices[..., : int(budgets.max())], budgets, total)
            self._chunks = None  # held_before_chunk stays: the layers reading this pool have yet to run
        return out

    def _chunked_budget(self, first_mask: Tensor | None, bsz: int, first: int, total: int, audio: Tensor | None) -> int:
        """Tokens the pool will hold over all chunks of a ``total``-token prompt at most (all rows, all heads).

        ``first``: the first chunk's length, ``first_mask`` its ``[B, first]`` padding mask or None;
        ``audio``: ``[B, T]`` bool audio tokens of the whole prompt, or None.
        """
        cfg = self.config
        held = 0
        for i, (start, end) in enumerate(chunk_layout(first, total, cfg.prefill_chunk or total)):
            n = end - start
            valid = torch.full((bsz,), n) if i or first_mask is None else first_mask.sum(-1).cpu()
            mandatory = torch.clamp(valid, max=(cfg.sinks if i == 0 else 0) + cfg.window)
            holds_audio = torch.zeros(bsz, dtype=torch.bool)  # rows with audio in this chunk: the layer prior's ratio
            if audio is not None:
                holds_audio = audio[:, start:end].any(-1)
            ratio = self._row_ratios(self._ratio(n), holds_audio, valid, mandatory)
            held += int(layer_budget(valid, self.num_kv_heads, ratio, mandatory).sum())
        return held

    def _track(self, in_flight: int) -> None:
        """Raise ``peak_kv_bytes`` (and the model's meter) to the pool plus the ``in_flight`` bytes of this call's K/V.

        Those are the keys and values the model projected for the tokens being
        processed (the whole prompt at an unchunked prefill, one chunk, a decode
        step); temporaries of scoring and merging are not counted.
        """
        held = self.kv_bytes
        self.peak_kv_bytes = max(self.peak_kv_bytes, held + in_flight)
        if self.meter is not None:
            self.meter.observe(self.layer_idx, held, in_flight)


def prompt_attention(
    query: Tensor, key: Tensor, value: Tensor, scale: float, key_mask: Tensor | None, causal: bool = True
) -> Tensor:
    """Dense attention of a whole prompt: ``[B, H_q, T, D]`` queries over ``[B, H_kv, S, D]`` keys.

    ``key_mask`` (``[B, S]`` bool) hides padding keys; a padding query still
    sees itself so that its row is not empty.
    """
    if causal and key_mask is None:  # no explicit mask: SDPA may pick a flash kernel
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=True)
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    if causal:
        length = query.shape[2]
        tril = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
        mask = (tril & mask) | torch.eye(length, dtype=torch.bool, device=query.device)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=True)


class SharedKVAttention(nn.Module):
    """Attention of a layer that has no K/V of its own and reads another layer's (Gemma 3n KV sharing).

    At prefill it attends densely over the keys and values the producer
    layer hands over; afterwards over the producer's compressed pool, so the
    shared cache is stored, and compressed, once.

    Args:
        source: the producer layer's engine (not registered as a submodule).
        scaling: this layer's softmax scale.
    """

    def __init__(self, source: AudioKVAttention, scaling: float) -> None:
        super().__init__()
        self._source = (source,)  # a tuple keeps the producer out of this module's children
        self.scaling = scaling

    @property
    def source(self) -> AudioKVAttention:
        return self._source[0]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        audio_span: object = None,
        key_mask: Tensor | None = None,
        decode_tokens: int | None = None,
        chunk: object = None,
    ) -> Tensor:
        """``[B, H_q, q, D]`` output; ``key``/``value`` are the producer's K/V of this call (read at prefill only).

        ``audio_span`` and ``decode_tokens`` are accepted for a uniform call and ignored: the producer
        compresses. A prompt prefilled in chunks (``chunk``: ``(start, total)``) is read as the producer
        reads it: what its pool held before this chunk, then the chunk itself.
        """
        source = self.source
        if chunk is not None and not source.decoding:
            start, _ = chunk
            if start > 0:  # the producer has already added this chunk's selection: read only what came before
                dev = source.pool.key_pages.device  # the producer's pool may live on another device
                held = source.held_before_chunk
                out = chunk_attention(
                    query.to(dev), key.to(dev), value.to(dev), source.pool, scale=self.scaling, held=held
                )
                return out.to(query.device)
            key_mask = None if key_mask is None else key_mask[:, : key.shape[2]]
        if not source.decoding:
            return prompt_attention(query, key, value, self.scaling, key_mask)
        with torch.no_grad():  # the producer's pool may live on another device
            out = source.attend(query.detach().to(source.pool.key_pages.device), self.scaling)
            return out.to(query.device)
