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


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER after :func:`normalize_text`: total edits over total reference words (jiwer)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs, hyps = [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]
    if not any(r.split() for r in refs):
        raise ValueError("references contain no words")
    keep = [i for i, r in enumerate(refs) if r.split()]  # jiwer refuses empty references
    edits = sum(len(hyps[i].split()) for i, r in enumerate(refs) if not r.split())  # all insertions
    out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
    words = sum(len(refs[i].split()) for i in keep)
    return (out.substitutions + out.deletions + out.insertions + edits) / words
