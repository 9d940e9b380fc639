"""Word error rate as published Whisper numbers compute it: Whisper's English normalizer, then jiwer.

The normalizer (transformers' port of openai/whisper's) lower-cases, removes
punctuation and filler words, expands contractions and writes spoken numbers
as digits, on references and hypotheses alike. Its British-to-American
spelling table ships with hub tokenizers (``normalizer.json``), not with the
offline weights, so it is left empty here: "colour" and "color" differ.
"""

from __future__ import annotations

from functools import cache

import jiwer


@cache
def _normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalize_text(text: str) -> str:
    """Whisper's English text normalization (see the module docstring)."""
    return _normalizer()(text)


def word_errors(refs: list[str], hyps: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance, after :func:`normalize_text`: ``(edits, reference words)``.

    Edits are jiwer's substitutions, deletions and insertions of each pair; an
    empty reference counts every hypothesis word as an insertion.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs, hyps = [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]
    if not any(r.split() for r in refs):
        raise ValueError("references contain no words")
    edits, words = [], []
    for ref, hyp in zip(refs, hyps, strict=True):
        if ref.split():  # jiwer refuses empty references
            out = jiwer.process_words(ref, hyp)
            edits.append(out.substitutions + out.deletions + out.insertions)
        else:
            edits.append(len(hyp.split()))
        words.append(len(ref.split()))
    return edits, words


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER after :func:`normalize_text`: total edits over total reference words (jiwer)."""
    edits, words = word_errors(refs, hyps)
    return sum(edits) / sum(words)
