"""Evaluation: transcription quality and KV memory per (policy, compression ratio)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from audiokv.audio import split_at_pauses
from audiokv.config import AudioKVConfig
from audiokv.data import checkout_relative
from audiokv.dataset import Utterance
from audiokv.heads import HeadScores
from audiokv.integrations import apply_audiokv
from audiokv.metrics import normalize_text, word_error_rate
from audiokv.models.whisper import SpeechModel
from audiokv.policies import POLICIES, get_policy
from audiokv.transcribe import transcribe


def has_repetition(text: str, times: int = 3, min_words: int = 9, max_period: int = 40) -> bool:
    """True when a phrase of 1 to ``max_period`` words repeats ``times`` times in a row (a decoding loop).

    That is, some stretch of at least ``max(min_words, times * p)`` words is
    periodic with period ``p``: "the sound is very nice, the sound is very
    nice, the sound is very nice" (period 5) as well as "and and and ...".
    Stretches under ``min_words`` ("no, no, no") are speech, not loops.
    """
    words = normalize_text(text).split()
    for period in range(1, max_period + 1):
        span = max(min_words, times * period)
        run = 0  # how many words in a row equal the word one period earlier
        for i in range(period, len(words)):
            run = run + 1 if words[i] == words[i - period] else 0
            if run + period >= span:
                return True
    return False


def stops_early(text: str, reference: str, share: float = 0.5) -> bool:
    """True when a transcript holds fewer than ``share`` of its reference's words (both normalized).

    The decoder ended before the speech did: a cache that no longer shows
    where the speech goes on lets it emit end-of-text early. It is a loop's
    opposite failure and costs few insertions, so WER alone understates it.
    """
    return len(normalize_text(text).split()) < share * len(normalize_text(reference).split())


def dense_cross_bytes(speech: SpeechModel) -> int:
    """Bytes of the full cross-attention cache of one 30 s window (what transformers would hold)."""
    cfg = speech.model.config
    element = next(speech.model.parameters()).element_size()
    return cfg.decoder_layers * 2 * cfg.max_source_positions * cfg.d_model * element


def evaluate_speech(
    speech: SpeechModel,
    data: list[Utterance],
    policies: list[str],
    ratios: list[float],
    *,
    calibration: HeadScores | None = None,
    config: AudioKVConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    beams: int = 1,
) -> list[dict]:
    """Transcription of ``data`` under every (policy, ratio), greedy or with ``beams``; ``full`` runs once at ratio 0.

    ``config`` sets every knob but the ratio (defaults: :class:`AudioKVConfig`).
    Returns one row per run: ``policy``, ``compression_ratio``, ``wer``, ``kv_bytes``
    (mean bytes the compressed cross-attention pools held per utterance, measured
    from their tensors), ``kv_bytes_full`` (the dense cache per utterance: one per 30 s window it is cut into
    and per beam, as transformers' beam search holds one per beam),
    ``repetition_rate``, ``short_rate`` (:func:`stops_early`), ``n`` and ``seconds``.
    """
    for name in policies:
        get_policy(name)  # fail before any work
    audio = [u.audio() for u in data]
    windows = sum(len(split_at_pauses(a)) for a in audio)  # 30 s windows: a dense cache each
    refs = [u.text for u in data]
    runs = [(p, 0.0 if p == "full" else r) for p in policies for r in (ratios if p != "full" else [0.0])]
    rows = []
    bar = tqdm(total=len(runs) * len(audio), desc="evaluating", unit="clip", disable=not progress)
    for policy, ratio in runs:
        hyps, held = [], 0
        start = time.perf_counter()
        cfg = replace(config or AudioKVConfig(), compression_ratio=ratio)
        with apply_audiokv(speech.model, cfg, calibration, policy) as handle:
            for i in range(0, len(audio), batch_size):
                batch = audio[i : i + batch_size]
                hyps += transcribe(speech, batch, beams=beams)
                held += handle.kv_bytes
                bar.update(len(batch))
        rows.append(
            {
                "policy": policy,
                "compression_ratio": ratio,
                "wer": word_error_rate(refs, hyps),
                "kv_bytes": held / len(audio),
                "kv_bytes_full": dense_cross_bytes(speech) * windows * beams / len(audio),  # a copy per beam
                "repetition_rate": sum(map(has_repetition, hyps)) / len(hyps),
                "short_rate": sum(map(stops_early, hyps, refs)) / len(hyps),
                "n": len(hyps),
                "seconds": time.perf_counter() - start,
                "hypotheses": hyps,
            }
        )
    bar.close()
    return rows


# what must agree for two runs' rows to share one results file
SAME_RUN = ("model", "task", "data", "calibration", "seed", "n", "beams")


def check_same_run(previous: object, new: dict) -> None:
    """Refuse to add ``new`` run's rows to ``previous`` (a results file) unless they come from the same run.

    ``new`` holds the :data:`SAME_RUN` keys; ``n`` (clips or prompts) is read from
    ``previous``'s rows. A calibration only counts when both runs had one.
    """
    if not isinstance(previous, dict) or not isinstance(previous.get("rows"), list) or "commit" not in previous:
        raise ValueError("--update: the file is not an audiokv eval results file")
    old = {**previous, "n": previous["rows"][0]["n"] if previous["rows"] else None}

    def key(result: dict, k: str) -> object:
        if k == "beams":
            return result.get(k, 1)  # files made before beam search was an option decoded greedily
        return checkout_relative(result.get(k)) if k in ("data", "calibration") else result.get(k)

    both_calibrated = old.get("calibration") is not None and new.get("calibration") is not None
    differ = [k for k in SAME_RUN if key(old, k) != key(new, k) and (k != "calibration" or both_calibrated)]
    if differ:
        what = ", ".join(f"{k} {key(old, k)!r} != {key(new, k)!r}" for k in differ)
        raise ValueError(f"--update: the results file is of another run ({what})")


def merge_results(previous: dict, new: dict) -> dict:
    """``new`` with the rows of ``previous`` whose policy it did not rerun (``audiokv eval --update``).

    Each row keeps the commit and device it was made on (rows of files written
    before rows carried them get their file's). Rows of policies that no longer
    exist are dropped: nobody could remake them. Refuses another run's file
    (:func:`check_same_run`). Rows come out in the previous file's policy
    order, new policies last.
    """
    check_same_run(previous, {**new, "n": new["rows"][0]["n"]})
    rerun = {r["policy"] for r in new["rows"]}
    kept = [
        {"commit": previous["commit"], "device": previous.get("device"), **r}
        for r in previous["rows"]
        if r["policy"] not in rerun and r["policy"] in POLICIES
    ]
    order = list(dict.fromkeys(r["policy"] for r in previous["rows"] + new["rows"]))
    rows = sorted(kept + new["rows"], key=lambda r: order.index(r["policy"]))  # stable: ratios stay in order
    return {**new, "rows": rows}


def plot_results(rows: list[dict], path: str | Path, title: str) -> None:
    """WER (or passkey accuracy) against compression ratio, one line per policy (full dashed)."""
    from audiokv.plots import _pyplot

    plt = _pyplot()
    metric = "wer" if "wer" in rows[0] else "accuracy"
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        pts = sorted((r["compression_ratio"], 100 * r[metric]) for r in rows if r["policy"] == policy)
        if policy == "full":
            ax.axhline(pts[0][1], ls="--", color="gray", label="full cache")
        else:
            ax.plot(*zip(*pts, strict=True), marker="o", label=policy)
    ax.set_xlabel("compression ratio (fraction of KV entries removed)")
    ax.set_ylabel("WER (%)" if metric == "wer" else "passkey accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
