"""Audio-critical heads: the semantic-acoustic alignment score and its safetensors file.

A head is *audio-critical* when, while the model emits a transcript, the head
looks at the audio the way an aligner would: each emitted token attends to a
narrow stretch of audio (sharp), and that stretch moves forward as the
transcript moves forward (monotonic). For one utterance and one head, with
``a_i`` the attention of the query emitting transcript token ``i`` over the
``F`` audio positions:

- ``mass_i = sum_f a_i(f)``: the share of attention on the audio at all;
- ``sharp_i = 1 - H(a_i / mass_i) / log F``: 1 for a single frame, 0 for uniform;
- ``focus = mean_i(mass_i * sharp_i)``;
- ``mono = max(0, spearman(i, centroid_i))``, ``centroid_i`` the attention-weighted
  mean audio position of token ``i``;
- ``score = mono * focus``, in [0, 1].

A head that spreads its attention, stares at one fixed frame, or mostly looks
at text scores near 0. Scores are averaged over the calibration utterances and
stored per (layer, KV head): for grouped-query attention the group's query
heads are averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

METHOD = "semantic-acoustic-alignment/v1"
TIMED_METHOD = "word-timed-alignment/v1"


def _tied_ranks(x: Tensor) -> Tensor:
    """``[..., N]`` float64 ranks along the last axis, equal values sharing the mean of their ranks (Spearman's)."""
    ordered, order = x.sort(-1)
    start = torch.ones_like(ordered, dtype=torch.bool)
    start[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    run = start.long().cumsum(-1) - 1  # [..., N] which run of equal values each sorted entry is in
    place = torch.arange(x.shape[-1], dtype=torch.float64, device=x.device).expand(order.shape)
    total = torch.zeros_like(place).scatter_add_(-1, run, place)
    size = torch.zeros_like(place).scatter_add_(-1, run, torch.ones_like(place))
    return torch.empty_like(place).scatter_(-1, order, (total / size.clamp_min(1)).gather(-1, run))


def alignment_score(attn: Tensor) -> Tensor:
    """Semantic-acoustic alignment of each head for one utterance.

    Args:
        attn: ``[H, N, F]`` attention of the ``N`` queries that emit transcript
            tokens over the ``F`` audio positions (rows may sum to less than 1:
            attention outside the audio counts against the head). ``N >= 3``.

    Returns:
        ``[H]`` float32 scores in [0, 1] (see the module docstring).
    """
    if attn.dim() != 3:
        raise ValueError(f"attention must be [H, N, F], got {tuple(attn.shape)}")
    _, n_tok, frames = attn.shape
    if n_tok < 3 or frames < 2:
        raise ValueError(f"need at least 3 transcript tokens and 2 audio positions, got {n_tok} and {frames}")
    attn = attn.double().clamp_min(0)
    mass = attn.sum(-1)  # [H, N]
    p = attn / mass.clamp_min(1e-12)[..., None]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    focus = (mass * (1 - entropy / math.log(frames))).mean(-1)  # [H]
    centroid = (p * torch.arange(frames, dtype=torch.float64)).sum(-1)  # [H, N]
    rc = _tied_ranks(centroid)
    rc = rc - rc.mean(-1, keepdim=True)
    ri = torch.arange(n_tok, dtype=torch.float64)
    ri = ri - ri.mean()
    denom = (rc.norm(dim=-1) * ri.norm()).clamp_min(1e-12)
    mono = ((rc * ri).sum(-1) / denom).clamp_min(0)
    return (mono * focus).float()


def timed_alignment_score(attn: Tensor, spans: Tensor) -> Tensor:
    """Alignment of each head against known word timings, for one utterance.

    Each frame's attention is first standardized over the transcript's
    tokens (as Whisper's own aligner does before DTW), so a frame every token
    looks at (a sink, the padding) counts for nothing; the score is the share
    of each token's positive standardized attention that falls on the audio
    from the start of its word to the end of the next token's word (where
    the transcript is and is going), averaged over tokens.

    Args:
        attn: ``[H, N, F]`` attention of the ``N >= 2`` queries that emit transcript
            tokens over the ``F`` audio frames.
        spans: ``[N, 2]`` int, the frames ``[start, end)`` of the word each token belongs to.

    Returns:
        ``[H]`` float32 in [0, 1]. A head that spreads its attention, stares
        at fixed frames or trails the transcript scores low.
    """
    if attn.dim() != 3 or attn.shape[1] < 2 or spans.shape != (attn.shape[1], 2):
        raise ValueError(
            f"expected attention [H, N>=2, F] and spans [N, 2], got {tuple(attn.shape)}, {tuple(spans.shape)}"
        )
    attn = attn.double()
    std = attn.std(1, keepdim=True)
    z = torch.where(std > 1e-9, (attn - attn.mean(1, keepdim=True)) / std.clamp_min(1e-9), 0.0).clamp_min(0)
    ahead = torch.maximum(torch.cat([spans[1:, 1], spans[-1:, 1]]), spans[:, 1])
    frames = torch.arange(attn.shape[-1], device=attn.device)
    window = (frames[None, :] >= spans[:, :1]) & (frames[None, :] < ahead[:, None])  # [N, F]
    share = (z * window).sum(-1) / z.sum(-1).clamp_min(1e-12)
    return share.mean(-1).float()


def group_heads(scores: Tensor, num_kv_heads: int) -> Tensor:
    """``[..., H_q]`` per-query-head scores -> ``[..., H_kv]`` (mean over each GQA group)."""
    heads = scores.shape[-1]
    if heads % num_kv_heads:
        raise ValueError(f"{heads} query heads do not split into {num_kv_heads} KV heads")
    return scores.reshape(*scores.shape[:-1], num_kv_heads, heads // num_kv_heads).mean(-1)


@dataclass
class HeadScores:
    """Calibrated audio-criticality of every (layer, KV head) of one model.

    Attributes:
        scores: ``[num_layers, num_kv_heads]`` float32, higher = more audio-critical.
        model: the model's name (files for another model are refused).
        data: what the calibration ran on.
        version: audiokv version that made the file.
        method: how the scores were computed (``METHOD`` or ``TIMED_METHOD``).
    """

    scores: Tensor
    model: str
    data: str
    version: str = ""
    method: str = METHOD

    def __post_init__(self) -> None:
        if self.scores.dim() != 2:
            raise ValueError(f"head scores must be [num_layers, num_kv_heads], got {tuple(self.scores.shape)}")
        if not torch.isfinite(self.scores).all():
            raise ValueError("head scores must be finite")
        if not self.version:
            from audiokv import __version__

            self.version = __version__

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.scores.shape)

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as ``(layer, kv_head, score)``."""
        flat = self.scores.flatten()
        idx = flat.argsort(descending=True)[:k].tolist()
        heads = self.scores.shape[1]
        return [(i // heads, i % heads, flat[i].item()) for i in idx]

    def with_layer_split(self, other: HeadScores) -> HeadScores:
        """These scores' split of each layer's budget over its heads, on ``other``'s split over the layers.

        The engine splits the model's budget over the layers by their mean scores
        and a layer's budget over its heads by their standardized scores
        (:func:`~audiokv.budget.head_weights`), which a shift leaves alone: here each
        layer's scores are shifted to ``other``'s mean in that layer. ``[L, H_kv]`` both.
        """
        if self.shape != other.shape:
            raise ValueError(f"cannot take the layer split of {other.shape} scores for {self.shape} scores")
        mine = self.scores.float()
        scores = mine - mine.mean(-1, keepdim=True) + other.scores.float().mean(-1, keepdim=True)
        data = f"{self.data}; layer split of {other.method} ({other.data})"
        return HeadScores(scores, self.model, data, method=f"{self.method}+layers")

    def save(self, path: str | Path) -> None:
        """Write ``head_scores`` and the metadata to a safetensors file."""
        layers, heads = self.shape
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"head_scores": self.scores.float().contiguous()},
            str(path),
            metadata={
                "model": self.model,
                "num_layers": str(layers),
                "num_kv_heads": str(heads),
                "data": self.data,
                "method": self.method,
                "audiokv_version": self.version,
            },
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        num_layers: int | None = None,
        num_kv_heads: int | None = None,
    ) -> HeadScores:
        """Read a calibration file and check it belongs to the model at hand.

        Raises ``ValueError`` when the file is not a calibration file, was made
        for another model, or its shape does not match the given layer/head counts.
        """
        path = Path(path)
        if not path.exists():
            raise ValueError(f"calibration file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "head_scores" not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                    raise ValueError(f"{path} holds no 'head_scores' tensor: not an audiokv calibration file")
                scores = f.get_tensor("head_scores").float()
        except (OSError, RuntimeError, SafetensorError) as err:
            raise ValueError(f"cannot read calibration file {path}: {err}") from None
        stored = cls(
            scores,
            meta.get("model", ""),
            meta.get("data", ""),
            meta.get("audiokv_version", "?"),
            meta.get("method", "?"),
        )
        if model is not None and stored.model != model:
            raise ValueError(f"calibration file {path} was made for model {stored.model!r}, not {model!r}")
        expected = (num_layers or stored.shape[0], num_kv_heads or stored.shape[1])
        if stored.shape != expected:
            raise ValueError(
                f"calibration file {path} has {stored.shape[0]} layers x {stored.shape[1]} KV heads, "
                f"but the model has {expected[0]} x {expected[1]}"
            )
        return stored
