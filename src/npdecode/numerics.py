"""Numerical helpers shared by models and search strategies."""

from __future__ import annotations

import functools

import numpy as np

# Attention mask value. It is finite on purpose: a query row whose keys are all masked (a
# left-padding slot, or the first rows of a causal tile) then gets a uniform softmax instead of
# exp(-inf - (-inf)) = NaN, and its (unused) output stays finite. -1e9 is far enough below any
# real score that exp(MASK - max) is exactly 0 in float32 and float64, so a masked key carries
# no weight whenever the row has at least one real key. TinyLM's specification uses this value.
MASK = -1e9


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Stable log-softmax over the last axis, in float64 whatever the input dtype.

    The max shift keeps exp() from overflowing at logits of 1e4 and keeps a row's best token
    at exactly 0 - log(sum) rather than losing it to underflow. -inf entries stay -inf.
    """
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # a logit more than the dtype's max below: -inf
        shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def part_maxima(x: np.ndarray, parts: int) -> np.ndarray:
    """Each row's maxima over ``parts`` equal column ranges, (n, parts) in x's dtype, when
    the rows of x (n, V) are contiguous and V divides by ``parts``; otherwise each row's
    maximum, (n, 1). A NaN is its range's maximum, as with ``max``.

    The maxima are found through ``argmax`` of x seen as (n * parts, V / parts): its fixed
    cost per row is far below ``max``'s (at a thousand columns two maxima per row cost about
    what ``max`` takes for one; on rows of a hundred, one costs a third).
    """
    n, V = x.shape
    if V % parts or not x.flags.c_contiguous or not x.size or (parts == 1 and n < 32):
        return x.max(axis=1, keepdims=True)  # (one maximum of a few rows: max has fewer calls)
    flat = x.reshape(n * parts, V // parts).argmax(axis=1).reshape(n, parts)
    flat += _part_starts(n, V, parts)                      # flat indices of the maxima
    return np.take(x, flat)


@functools.lru_cache(maxsize=16)
def _part_starts(n: int, V: int, parts: int) -> np.ndarray:
    """Flat index (n, parts) of the first entry of each column range of each row."""
    return read_only(np.arange(n)[:, None] * V + np.arange(0, V, V // parts))


# Token histories start with room for this many tokens per sequence and double as they fill
# (``grow``): a large max_new_tokens that EOS cuts short costs no more than what is generated.
FIRST_CAPACITY = 64


def grow(history: np.ndarray, need: int) -> np.ndarray:
    """``history`` (..., C) with its last axis extended by zeros to max(2 C, need) entries."""
    more = max(history.shape[-1], need - history.shape[-1])
    pad = np.zeros(history.shape[:-1] + (more,), dtype=history.dtype)
    return np.concatenate([history, pad], axis=-1)


def read_only(a: np.ndarray) -> np.ndarray:
    """``a``, made read-only: for small constant arrays cached and reused across calls."""
    a.flags.writeable = False
    return a
