"""Numerical helpers shared by models and search strategies."""

from __future__ import annotations

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
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
