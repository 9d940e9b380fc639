"""Calls into transformers models that work across the transformers versions the package supports."""

from audiokv.cache import cache_argument


def cached(model, cache) -> dict:
    """``{name: cache}`` for ``model(...)`` and ``generate(...)``, by the name this transformers takes.

    ``cache`` from transformers 5.2x on, ``past_key_values`` before (:func:`audiokv.cache.cache_argument`).
    """
    return {cache_argument(model): cache}


def cache_in(model, out):
    """The cache a ``model(...)`` or ``generate(...)`` output returns, under the name this transformers gives it."""
    return out[cache_argument(model)]
