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
    if scores.size >= _MANY_ROWS * W:
        weights, total = _weights_of_many_rows(scores)
    else:  # on fewer rows the plain reductions cost less than the reshapes around them
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores, out=scores)
        total = weights.sum(axis=-1, keepdims=True)                     # [..., tq, 1]
    out = weights @ v                                                   # [..., tq, Dv]
    out /= total
    return out


def _weights_of_many_rows(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalized softmax weights of scores (..., W) and their sums (..., 1), for many rows.

    Reductions along the short last axis cost several times more per row than over the
    flattened rows. Where no score is large enough for exp to overflow, the weights are taken
    without subtracting each row's max (the same weights up to rounding: the shift cancels in
    the division), unless that left some row's weights so small that they lost precision, or
    none (a row whose keys are all hidden); then each row is shifted by its max (in place).
    einsum's sum is unrolled rather than pairwise: over these few terms its rounding stays
    within that of the products around it.
    """
    low, high = _UNSHIFTED.get(scores.dtype.type, (0.0, -np.inf))
    if scores.max() < high:
        weights = np.exp(scores)
        total = np.einsum("...j->...", weights)[..., None]
        if total.min() >= low:
            return weights, total
    W = scores.shape[-1]
    scores -= part_maxima(scores.reshape(-1, W), 1).reshape(*scores.shape[:-1], 1)
    weights = np.exp(scores, out=scores)
    return weights, np.einsum("...j->...", weights)[..., None]


_MANY_ROWS = 256  # score rows from which the reductions over flattened rows pay

# (least weight sum of any row, score bound) for exponentiating scores as they are: below
# the bound exp cannot overflow; a row whose weights sum to at least the least has its
# largest weight above 1e-34 (float32) or 1e-300 (float64) at up to 1e4 keys, where every
# weight that matters to the sum is still a normal number.
_UNSHIFTED = {np.float32: (1e-30, 80.0), np.float64: (1e-295, 700.0)}


def causal_mask(t: int) -> np.ndarray:
    """(t, t) bool: True where query i may see key j (j <= i)."""
    return np.tril(np.ones((t, t), dtype=bool))
