"""Compression policies: AudioKV and the baselines, behind one interface.

A policy decides two things for a layer: how prompt tokens are *scored*
(``score``) and how the layer budget is *split* across KV heads (uniformly, or
AdaKV-style by the scores), plus whether SSS and the calibrated head prior are
used. Everything after that (sinks and window kept, selection, the page pool,
the kernel) is shared, so memory and speed compare fairly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from audiokv.scoring import key_novelty, pool_scores, rerank, value_rarity, window_scores
from audiokv.select import ranks
from audiokv.spectral import span_mask, spectral_smooth


@dataclass(frozen=True)
class ScoreInput:
    """What a policy may look at: the prompt of one layer.

    Attributes:
        query: ``[B, H_q, T_q, D]`` prompt queries (for cross-attention, the decoder's first queries).
        key: ``[B, H_kv, T, D]`` prompt keys.
        scaling: softmax scale.
        key_mask: ``[B, T]`` bool or None (False on padding).
        value: ``[B, H_kv, T, D]`` prompt values.
        window: observation window (last queries).
        causal: False for cross-attention.
        pooling, pooling_kernel: score pooling.
        seed: seed of this layer and call, for randomized policies.
        spans: ``[B, 2]`` audio span of each row, or None.
        novelty_cutoff: with spans, the keys are low-passed along time inside
            them (:func:`~audiokv.spectral.spectral_smooth`, this cutoff) before
            their novelty is read; 1 reads the raw keys.
    """

    query: Tensor
    key: Tensor
    value: Tensor
    scaling: float
    key_mask: Tensor | None
    window: int
    causal: bool
    pooling: str
    pooling_kernel: int
    seed: int = 0
    spans: Tensor | None = None
    novelty_cutoff: float = 1.0

    @cached_property
    def novelty(self) -> Tensor:
        """``[B, H_kv, T]`` :func:`~audiokv.scoring.key_novelty` of the keys, computed once per layer and call."""
        key = self.key
        if self.spans is not None and self.novelty_cutoff < 1:
            key = spectral_smooth(key.transpose(2, 3), self.novelty_cutoff, self.spans).transpose(2, 3)
        return key_novelty(key)

    def window_attention(self, all_queries: bool = False) -> Tensor:
        """``[B, H_kv, T]`` attention of the observation window (or of every prompt query)."""
        queries = self.query if (all_queries or not self.causal) else self.query[:, :, -self.window :]
        return window_scores(queries, self.key, scaling=self.scaling, key_mask=self.key_mask, causal=self.causal)


@dataclass(frozen=True)
class Policy:
    """Base policy: SnapKV scoring with a uniform split.

    Attributes:
        name: the name used on the command line.
        head_budgets: split the layer budget across heads by score (AdaKV) instead of uniformly.
        smooth: apply Spectral Score Smoothing over the audio span.
        use_prior: weight heads by the calibrated audio-critical head scores.
        coverage: spend the audio span's budget by coverage (:func:`audiokv.select.cover_spans`)
            instead of by top scores.
        merge: fold each dropped audio token into a kept neighbour (:mod:`audiokv.merge`)
            instead of evicting it.
        path_budgets: split an audio row's budget across heads by :meth:`head_demand`
            (query-free) instead of by the scores.
        text_rarity: choose the text tokens a head keeps by its scores *or* by
            how rare their values are (:meth:`text_scores`), not by the scores alone.
        layer_split: with ``use_prior``, rows with audio spend the model's budget
            across layers by the calibration (``AudioKVConfig.layer_prior``)
            instead of the same ratio in every layer.
        path_safeguard: the least share of the average per-head budget every head
            keeps in a row split by :meth:`head_demand` (elsewhere AdaKV's 0.2;
            ``AudioKVConfig.safeguard`` overrides both).
        joint_law: spend the audio budget by one law over every (head, frame):
            density ``novelty^(2/3)``, a head's demand its sum (instead of
            density ``novelty`` and demand ``(sum novelty)^(2/3)``); rejected on
            the tune split (``audiokv-joint``).
        content_density: where a cross-attention row's real sound ends before
            its padding (the span given to the engine), read the density and
            the path lengths over the sound only; the padding keeps the uniform
            coverage floor (and merging keeps its attention mass); rejected on
            the tune split (``audiokv-content``: Whisper base stops early).
        padding_at_mean: with ``content_density``, the padding's density is the
            sound's mean instead of zero: it keeps tokens at the sound's average
            rate (``audiokv-content-mean``); rejected on the tune split.
        pick_novelty: inside a coverage stratum keep the frame of highest key
            novelty instead of the best window score; rejected on the tune
            split (``audiokv-pick``, ``audiokv-pick-sss``).
        smooth_keys: SSS on the keys instead of the scores: before their
            novelty (density and path length) is read, the keys are low-passed
            along time over the audio span at a cutoff equal to the layer's
            kept fraction (the finest variation its kept tokens can sample),
            so jitter that merging averages away draws no tokens; rejected on
            the tune split (``audiokv-sss-keys``: base loops at 0.9).
        smooth_sound: with ``smooth``, where a cross-attention row's real sound
            ends before its padding (the span given to the engine), SSS smooths
            the density over the sound only; the padding keeps its own. Whisper's
            padding has a spiky novelty (arithmetic over geometric mean 26-36
            per head against 1.6-2.3 over speech, base, tune clips): the
            one-token cap clips its spikes and hands their mass to the rest, and
            smoothing across the padding hid the spikes from the cap, so the
            padding kept more tokens than without SSS (``audiokv-sss-sound``).
            A row with no frame of sound marked is not smoothed.
        smooth_picks: SSS on the scores that choose the token inside each
            coverage stratum (the window's), over the span ``smooth_sound``
            gives: a stratum keeps the middle of where the queries look, not
            one frame they happen to peak on; the density is not smoothed
            (``audiokv-sss-picks``).
        quiet_lead: where a cross-attention row's sound starts after a quiet
            lead-in (the span's start given to the engine, from
            :func:`audiokv.transcribe.log_mel`'s mask), the lead-in keeps only the
            uniform coverage floor and the onset starts with the speech. In
            Whisper quiet room tone has keys that jitter from frame to frame, 9-25
            times the median novelty of the speech, so without it the lead-in
            draws tokens the words need. On in ``audiokv``, chosen on the tune
            split with 1.5 s of room tone before each clip
            (``audiokv-no-quiet-lead`` switches it off); a no-op where the
            speech starts within 0.2 s, as in every committed split.
        quiet_pauses: the quiet frames a cross-attention row's sound mask
            leaves out between its first and last frame of sound (pauses of room
            tone longer than 0.4 s: :func:`audiokv.audio.speech_frames`, read by
            :func:`audiokv.transcribe.log_mel`) get no density from their keys'
            novelty: Whisper's keys jitter there as over a quiet lead-in. On in
            ``audiokv``, chosen on the tune split with each pause lengthened by
            1 s of room tone (``audiokv-no-quiet-pauses`` switches it off).
        pauses_at_mean: with ``quiet_pauses``, a pause's density is the
            speech's mean instead of zero: it keeps tokens at the rate of an
            average stretch of speech, not only the uniform floor's. On in
            ``audiokv``, chosen on the tune split with pauses of room tone at
            -60 and -40 dBFS (``audiokv-pause-floor`` switches it off).
        onset: the first ``AudioKVConfig.onset_seconds`` of an audio span get
            ``onset_weight`` times their density (the uniform floor is not
            weighted). On in ``audiokv``, chosen on the tune split
            (``audiokv-no-onset`` switches it off): every loop of the former
            default there began within the transcript's first seven words.
            Measured on Whisper only (2 s: 100 of its encoder frames; each
            family counts its own audio tokens, 50 of Qwen2-Audio's).
    """

    name: str
    head_budgets: bool = False
    smooth: bool = False
    use_prior: bool = False
    coverage: bool = False
    merge: bool = False
    path_budgets: bool = False
    text_rarity: bool = False
    layer_split: bool = False
    path_safeguard: float = 0.5
    joint_law: bool = False
    pick_novelty: bool = False
    content_density: bool = False
    padding_at_mean: bool = False
    onset: bool = False
    smooth_keys: bool = False
    smooth_sound: bool = False
    smooth_picks: bool = False
    quiet_lead: bool = False
    quiet_pauses: bool = False
    pauses_at_mean: bool = False

    def score(self, inp: ScoreInput) -> Tensor:
        """``[B, H_kv, T]`` token scores, higher = keep."""
        return pool_scores(inp.window_attention(), inp.pooling_kernel, inp.pooling)

    def layer_ratio(self, ratio: float, layer: int, num_layers: int) -> float:
        """Compression ratio of one layer; the mean over layers is ``ratio``."""
        return ratio

    def density(self, inp: ScoreInput, raw: Tensor) -> Tensor:
        """``[B, H_kv, T]`` how many tokens each stretch of audio deserves (coverage policies); ``raw`` by default."""
        return raw

    def stratum_scores(self, inp: ScoreInput, raw: Tensor) -> Tensor:
        """``[B, H_kv, T]`` which token a coverage stratum keeps (the highest); ``raw`` by default."""
        return raw

    def head_demand(self, inp: ScoreInput, spans: Tensor) -> Tensor | None:
        """``[B, H_kv]`` how much of an audio row's budget each head deserves; None: split by the scores."""
        return None

    def text_scores(self, inp: ScoreInput, raw: Tensor, text: Tensor) -> Tensor:
        """``[B, H_kv, T]`` scores with the text tokens' (``text``: ``[B, T]`` bool) re-chosen; ``raw`` by default.

        With ``text_rarity`` each head keeps as many text tokens as ``raw`` gives it
        (the scores are only permuted among them), chosen by whichever ranks a
        token higher: ``raw`` (the window's queries) or :func:`value_rarity`
        (no query). A context compressed before its question has a window that
        says little about the question; rare values are what no later query can
        recover from the rest.
        """
        if not self.text_rarity or not text.any():
            return raw
        masked = text[:, None, :]

        def rank(scores: Tensor) -> Tensor:  # [B, H, T] 0 = lowest; non-text tokens rank below all text
            return ranks(scores.masked_fill(~masked, float("-inf")))

        positions = text.any(0).nonzero()[:, 0]  # text tokens of any row: audio spans are not scored
        rarity = raw.new_full(raw.shape, float("-inf"))
        rarity[..., positions] = value_rarity(inp.value, inp.key_mask, positions).to(raw.dtype)
        by_window = rank(raw)
        either = torch.maximum(by_window, rank(rarity))
        return rerank(raw, either * raw.shape[-1] + by_window, text)  # ties go to the window's choice


class AudioKV(Policy):
    """AudioKV: window scores pick tokens; the audio span is covered by a density of key novelty.

    The density is the novelty of each key against its neighbours
    (:func:`audiokv.scoring.key_novelty`), so silence, padding and held sounds
    get few tokens and changing sound gets many, whatever the queries; the
    first seconds of the span (``onset``) count more, because a decoder reads
    its first words from the audio alone. With ``smooth`` (``audiokv-sss``)
    SSS turns it into a trend over time before the coverage selection; that
    is off by default: on the tune split it did not help tiny.en and hurt
    base (docs/results.md).

    With ``path_budgets`` a head's share of the budget follows the length of
    its keys' path over the audio span (summed novelty) to the power 2/3: a
    merged group stands for its keys by their mean, so a head whose keys barely
    move loses little with few tokens and one whose keys move a lot needs many.
    Approximating a path of length ``L`` by ``k`` group means errs by about
    ``(L / k)^2`` per token; the sum over heads is smallest when ``k ∝ L^(2/3)``.
    """

    def density(self, inp: ScoreInput, raw: Tensor) -> Tensor:
        if self.joint_law:
            return inp.novelty.clamp_min(0) ** (2 / 3)  # 1 - cos rounds to just below 0 for equal keys
        return inp.novelty  # shared with head_demand: whoever smooths or reshapes it must not do so in place

    def stratum_scores(self, inp: ScoreInput, raw: Tensor) -> Tensor:
        return inp.novelty if self.pick_novelty else raw

    def head_demand(self, inp: ScoreInput, spans: Tensor) -> Tensor | None:
        if not self.path_budgets:
            return None
        inside = span_mask(spans.to(inp.key.device), inp.key.shape[2], inp.key_mask)  # [B, T]
        if self.joint_law:
            return (self.density(inp, inp.novelty) * inside[:, None, :]).sum(-1).clamp_min(1e-6)
        path = (inp.novelty * inside[:, None, :]).sum(-1)  # [B, H_kv]
        return path.clamp_min(1e-6) ** (2 / 3)


class Full(Policy):
    """No compression (the reference)."""

    def layer_ratio(self, ratio: float, layer: int, num_layers: int) -> float:
        return 0.0


GOLDEN = (5**0.5 - 1) / 2


class Stride(Policy):
    """Evenly spread tokens, no scoring: token ``t`` ranks by ``frac(0.618 t)``.

    The tokens whose ``frac`` falls below any threshold are spread with at most
    three distinct gaps (the three-distance theorem), whatever the budget.
    """

    def score(self, inp: ScoreInput) -> Tensor:
        pos = torch.arange(inp.key.shape[2], device=inp.key.device, dtype=torch.float64)
        return (1 - torch.frac(pos * GOLDEN)).float().expand(inp.key.shape[:3])


class TOVA(Policy):
    """TOVA: the attention of the last prompt query, averaged over all heads of the layer."""

    def score(self, inp: ScoreInput) -> Tensor:
        last = window_scores(inp.query[:, :, -1:], inp.key, scaling=inp.scaling, key_mask=inp.key_mask,
                             causal=inp.causal)  # fmt: skip
        return last.mean(1, keepdim=True).expand_as(last)


class ExpectedAttention(Policy):
    """Expected attention of future queries modelled as a Gaussian fitted to the observed ones.

    With query mean ``mu`` and per-dimension variance ``s2`` (per query head),
    ``E[exp(s q.k)] = exp(s mu.k + s^2 sum(s2 k^2) / 2)``; scores are those
    expectations normalized over the keys, averaged over each GQA group and
    weighted by the value norm. The queries are the observation window (every
    prompt query for cross-attention); they are not rotated to future positions.
    """

    def score(self, inp: ScoreInput) -> Tensor:
        queries = inp.query if not inp.causal else inp.query[:, :, -inp.window :]
        bsz, heads = queries.shape[:2]
        kv_heads = inp.key.shape[1]
        mean = queries.float().mean(2)  # [B, H_q, D]
        var = queries.float().var(2, unbiased=False)
        key = inp.key.float().repeat_interleave(heads // kv_heads, dim=1)  # [B, H_q, T, D]
        s = inp.scaling
        logits = s * (key @ mean[..., None])[..., 0] + 0.5 * s**2 * (key**2 @ var[..., None])[..., 0]
        if inp.key_mask is not None:
            logits = logits.masked_fill(~inp.key_mask.bool()[:, None, :], float("-inf"))
        expected = logits.softmax(-1).view(bsz, kv_heads, heads // kv_heads, -1).mean(2)
        return expected * inp.value.float().norm(dim=-1)


class RandomScores(Policy):
    """Random tokens (a floor every method must beat), drawn from the layer's and call's seed."""

    def score(self, inp: ScoreInput) -> Tensor:
        gen = torch.Generator(device=inp.key.device).manual_seed(inp.seed)
        return torch.rand(inp.key.shape[:3], generator=gen, device=inp.key.device)


class KNorm(Policy):
    """Keep keys with the *smallest* L2 norm (low-norm keys draw the most attention)."""

    def score(self, inp: ScoreInput) -> Tensor:
        return -inp.key.float().norm(dim=-1)


class StreamingLLM(Policy):
    """Attention sinks plus the most recent tokens."""

    def score(self, inp: ScoreInput) -> Tensor:
        length = inp.key.shape[2]
        return torch.arange(length, device=inp.key.device, dtype=torch.float32).expand(inp.key.shape[:3])


class H2O(Policy):
    """Heavy hitters: attention accumulated over *all* prompt queries (no pooling)."""

    def score(self, inp: ScoreInput) -> Tensor:
        return inp.window_attention(all_queries=True)


class PyramidKV(Policy):
    """SnapKV scores with budgets shrinking from the first layer to the last (same average)."""

    def layer_ratio(self, ratio: float, layer: int, num_layers: int) -> float:
        if num_layers < 2:
            return ratio
        keep = 1.0 - ratio
        slope = min(0.5, (1 - 1e-3) / keep - 1)  # every layer keeps between keep/2 and (almost) all
        depth = layer / (num_layers - 1)  # 0 at the bottom, 1 at the top
        return 1.0 - keep * (1 + slope * (1 - 2 * depth))


# AudioKV's parts; each ablation switches one off
AUDIOKV = dict(
    head_budgets=True,
    smooth=False,
    use_prior=True,
    coverage=True,
    merge=True,
    path_budgets=True,
    text_rarity=True,
    layer_split=True,
    onset=True,
    quiet_lead=True,
    quiet_pauses=True,
    pauses_at_mean=True,
)

POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Full("full"),
        RandomScores("random"),
        KNorm("knorm"),
        StreamingLLM("streamingllm"),
        H2O("h2o"),
        Policy("snapkv"),
        PyramidKV("pyramidkv"),
        Policy("adakv", head_budgets=True),
        Stride("stride"),
        TOVA("tova"),
        ExpectedAttention("expected-attention"),
        AudioKV("audiokv", **AUDIOKV),
        AudioKV("audiokv-sss", **{**AUDIOKV, "smooth": True}),
        AudioKV("audiokv-no-heads", **{**AUDIOKV, "use_prior": False}),
        AudioKV("audiokv-even-layers", **{**AUDIOKV, "layer_split": False}),
        AudioKV("audiokv-no-coverage", **{**AUDIOKV, "coverage": False}),
        AudioKV("audiokv-no-merge", **{**AUDIOKV, "merge": False}),
        AudioKV("audiokv-score-split", **{**AUDIOKV, "path_budgets": False}),
        AudioKV("audiokv-window-text", **{**AUDIOKV, "text_rarity": False}),
        AudioKV("audiokv-no-onset", **{**AUDIOKV, "onset": False}),
        AudioKV("audiokv-no-quiet-lead", **{**AUDIOKV, "quiet_lead": False}),
        AudioKV("audiokv-no-quiet-pauses", **{**AUDIOKV, "quiet_pauses": False}),
        AudioKV("audiokv-pause-floor", **{**AUDIOKV, "pauses_at_mean": False}),
        # AudioKV as published (our reading of the paper): the calibrated prior weights layers and heads,
        # AdaKV splits each layer's budget by the window scores, SSS smooths them, each head keeps its top
        # ones; no coverage, merging or onset. With and without SSS, to measure SSS where the paper put it.
        Policy("audiokv-paper", head_budgets=True, use_prior=True, layer_split=True, smooth=True),
        Policy("audiokv-paper-no-sss", head_budgets=True, use_prior=True, layer_split=True),
        # variants the tune split rejected (docs/results.md), kept so that their rows can be remade
        AudioKV("audiokv-joint", **{**AUDIOKV, "joint_law": True}),
        AudioKV("audiokv-pick", **{**AUDIOKV, "pick_novelty": True}),
        AudioKV("audiokv-pick-sss", **{**AUDIOKV, "pick_novelty": True, "smooth": True}),
        AudioKV("audiokv-content", **{**AUDIOKV, "content_density": True}),
        AudioKV("audiokv-content-mean", **{**AUDIOKV, "content_density": True, "padding_at_mean": True}),
        AudioKV("audiokv-sss-keys", **{**AUDIOKV, "smooth_keys": True}),
        AudioKV("audiokv-sss-sound", **{**AUDIOKV, "smooth": True, "smooth_sound": True}),
        AudioKV("audiokv-sss-picks", **{**AUDIOKV, "smooth_picks": True, "smooth_sound": True}),
    )
}


def get_policy(name: str | Policy) -> Policy:
    """A policy by name (or the policy itself); a clear error listing the names."""
    if isinstance(name, Policy):
        return name
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from: {', '.join(POLICIES)}")
    return POLICIES[name]
