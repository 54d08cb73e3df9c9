"""What a model must provide, and the optional cached protocol that makes decoding fast.

Every model is an object with ``forward(token_ids) -> logits``: ``token_ids`` an int array
(N, T), all rows the same length; the logits (N, V) are those of each row's last position.
That is all a search strategy needs; it then recomputes each hypothesis's prefix every step.

A model that also implements :class:`CachedLM` is decoded incrementally: one ``prefill`` of
the prompts, then one ``extend`` per step over every live row, with a :class:`KVCache` that
the search reorders by beam parent and rolls back after rejected speculative tokens.
"""

from __future__ import annotations

import math
import numbers
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from npdecode.cache import KVCache


@runtime_checkable
class LM(Protocol):
    """The whole contract of a model: logits for the last position of each row."""

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids (N, T) int -> logits (N, V)."""
        ...


@runtime_checkable
class CachedLM(LM, Protocol):
    """A model that decodes incrementally with a preallocated KV cache."""

    vocab_size: int
    max_context: int | None  # longest prompt + generation the model accepts (None: no limit)

    def new_cache(self, rows: int, slots: int) -> KVCache:
        """An empty cache for up to ``rows`` sequences of up to ``slots`` tokens."""
        ...

    def prefill(self, prompts: Sequence[Sequence[int]], cache: KVCache) -> np.ndarray:
        """Write the prompts (lengths may differ) into cache rows 0..N-1, left-padded.

        Returns the logits (N, V) of each prompt's last token.
        """
        ...

    def extend(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Append tokens (n, t) to cache rows 0..n-1; return their logits (n, t, V)."""
        ...


def check_int(name: str, value: object, *, minimum: int) -> int:
    """An integer >= minimum and below 2**63 (bools are refused), else ValueError saying how
    to fix it. (Counts and sizes become array dimensions and indices, which are int64.)"""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_brief(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {_brief(value)}")
    if value >= INT64_END:
        raise ValueError(f"{name} must be below 2**63, got {_brief(value)}")
    return int(value)


INT64_END = 2 ** 63  # counts and sizes stay below it: they become int64 dimensions


def check_finite(name: str, value: object) -> float:
    """A finite real number, else ValueError."""
    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:  # an integer or fraction beyond float64's range
            number = math.inf
        if math.isfinite(number):
            return number
    raise ValueError(f"{name} must be a finite number, got {_brief(value)}")


def checked_weights(what: str, w: np.ndarray, dtype) -> np.ndarray:
    """Model weights ``w`` as ``dtype``, refused (naming ``what``) unless they are finite
    floating-point numbers: integers, booleans or complex numbers would be cast silently, and
    a NaN would only show in the logits."""
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise ValueError(f"{what} holds {w.dtype} values; model weights must be floating-point")
    if not np.isfinite(w).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return w.astype(dtype, copy=False)


def _brief(value: object) -> str:
    """``repr(value)``, shortened when long (an integer of hundreds of digits, say)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-10:]} ({len(text)} characters)"


def id_list(ids: Sequence[int], vocab_size: int) -> list[int]:
    """A sequence of token ids as a list of ints, each checked to be an integer (not a bool)
    in [0, vocab_size), else ValueError naming its position and value (decoders use it, so
    that no id is truncated, wrapped or skipped)."""
    out = []
    for pos, tok in enumerate(ids):
        if isinstance(tok, (bool, np.bool_)) or not isinstance(tok, numbers.Integral):
            raise ValueError(f"token id {tok!r} at position {pos} is not an integer")
        if not 0 <= tok < vocab_size:
            raise ValueError(f"token id {tok} at position {pos} is outside [0, {vocab_size})")
        out.append(int(tok))
    return out


def is_cached(model: object) -> bool:
    """True when ``model`` implements the cached protocol (and can take the fast path)."""
    return all(callable(getattr(model, name, None)) for name in ("new_cache", "prefill", "extend"))


def model_dtype(dtype: object) -> np.dtype:
    """float32 or float64, the precisions the models compute in, in the machine's byte order
    (a byte-swapped '>f8' computes as float64); anything else is refused."""
    try:
        dt = np.dtype(dtype) if dtype is not None else None  # np.dtype(None) is float64
    except TypeError:
        dt = None
    if dt is None or dt.name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(dt.name)


def token_array(tokens, name: str = "token_ids", *, forward: bool = False) -> np.ndarray:
    """``tokens`` as an integer array (N, T), or a ValueError naming ``name``. For
    ``forward``, whose logits are the last position's, every row needs a token."""
    ids = np.asarray(tokens)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":  # bools and floats too: not token ids
        raise ValueError(f"{name} must be an integer array (N, T), got {ids.dtype} of shape "
                         f"{ids.shape}")
    if forward and not ids.shape[1]:
        raise ValueError(f"forward needs at least one token per row (the logits are the last "
                         f"position's), got {name} of shape {ids.shape}")
    return ids


def check_token_ids(tokens, vocab_size: int, name: str = "token_ids", *,
                    forward: bool = False) -> np.ndarray:
    """``token_array(tokens, name, forward=forward)``, refused unless every id is in
    [0, vocab_size) (NumPy indexing would wrap negative ones)."""
    ids = token_array(tokens, name, forward=forward)
    if not ids.size:
        return ids
    if ids.size <= 64:  # a decoding step's few ids: plain Python is cheaper than two reductions
        flat = ids.ravel().tolist()
        lo, hi = min(flat), max(flat)
    else:
        lo, hi = ids.min(), ids.max()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {int(lo if lo < 0 else hi)}")
    return ids


def vocab_size_of(model: object) -> int | None:
    """The model's vocabulary size if it declares one, else None (read from its logits)."""
    v = getattr(model, "vocab_size", None)
    return int(v) if v is not None else None


def prefill_with_extend(model: CachedLM, prompts: Sequence[Sequence[int]], cache: KVCache
                        ) -> np.ndarray:
    """``prefill`` for a model whose ``extend`` takes the prompts as one left-padded block:
    the cache is begun for the block, which then goes through ``extend``; logits (N, V) of
    each prompt's last token."""
    ids, lengths = left_pad(prompts)
    cache.begin(lengths, ids.shape[1])
    return model.extend(ids, cache)[:, -1]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (ids (N, T) right-aligned, lengths (N,)). Padding slots hold ``pad_id``.
    A prompt that is not a sequence of integers is refused (it would be cast silently), and
    so are no prompts and an empty one (there is no last token to predict from)."""
    if not len(prompts):
        raise ValueError("no prompts to prefill: give at least one")
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)
    if not lengths.min():
        raise ValueError(f"prompt {int(lengths.argmin())} is empty: a model needs at least one "
                         f"token to predict the next")
    width = int(lengths.max())
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    for i, p in enumerate(prompts):
        row = np.asarray(p)
        if row.ndim != 1 or (row.size and row.dtype.kind not in "iu"):
            raise ValueError(f"prompt {i} must be a sequence of integer token ids, got "
                             f"{row.dtype} of shape {row.shape}")
        ids[i, width - len(p):] = row
    return ids, lengths
