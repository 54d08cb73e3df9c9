"""Dense masked softmax attention: the plain definition every model's forward uses, and the
KV cache's path for short blocks of queries (decoding steps)."""

from __future__ import annotations

import numpy as np

from npdecode.numerics import MASK, part_maxima


def dense_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, visible: np.ndarray,
                    scale: float, hidden: np.ndarray | None = None) -> np.ndarray:
    """softmax(q k^T * scale, with hidden keys set to MASK) @ v.

    q (..., tq, D), k and v (..., W, D); ``visible`` broadcasts to (..., tq, W), True where a
    query may attend to a key (``hidden``, if given, must be its negation: callers that reuse
    a mask across layers pass both). A query with no visible key gets a uniform average of v
    (finite; MASK is finite for that reason). Returns (..., tq, Dv).
    """
    # The definition above in fewer passes over the (tq, W) scores (equal up to rounding):
    # the scale goes on whichever of q and the scores is smaller, the mask is written in
    # place, and the output rather than the weights is divided by the weights' sum.
    scale = float(scale)  # a NumPy float64 scale would turn float32 scores into float64
    D, W = q.shape[-1], k.shape[-2]
    if D <= W:
        scores = (q * scale) @ np.swapaxes(k, -1, -2)                  # [..., tq, W]
    else:
        scores = q @ np.swapaxes(k, -1, -2)
        scores *= scale
    np.copyto(scores, MASK, where=~visible if hidden is None else hidden)
    # Row maxima and sums over the flattened rows: the reductions along a short last axis
    # cost several times more per row. einsum's sum is unrolled rather than pairwise; over
    # weights in (0, 1] its rounding stays within that of the products around it.
    if scores.size >= _MANY_ROWS * W:
        scores -= part_maxima(scores.reshape(-1, W), 1).reshape(*scores.shape[:-1], 1)
        weights = np.exp(scores, out=scores)
        total = np.einsum("...j->...", weights)[..., None]              # [..., tq, 1]
    else:  # on fewer rows the plain reductions cost less than the reshapes around them
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores, out=scores)
        total = weights.sum(axis=-1, keepdims=True)
    out = weights @ v                                                   # [..., tq, Dv]
    out /= total
    return out


_MANY_ROWS = 256  # score rows from which the reductions over flattened rows pay


def causal_mask(t: int) -> np.ndarray:
    """(t, t) bool: True where query i may see key j (j <= i)."""
    return np.tril(np.ones((t, t), dtype=bool))
