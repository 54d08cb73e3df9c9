"""Dense masked softmax attention: the plain definition every model's forward uses, and the
KV cache's path for short blocks of queries (decoding steps)."""

from __future__ import annotations

import math

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
        unshifted = _unshifted_weights(scores)
        if unshifted is not None:
            # Unshifted weights reach e^80 / W in float32: with large values their products
            # can overflow. Then the shifted weights (at most 1) below, as the definition;
            # the overflow is expected, not warned about.
            with np.errstate(over="ignore", invalid="ignore"):
                out = unshifted[0] @ v                                  # [..., tq, Dv]
                out /= unshifted[1]
                finite = math.isfinite(out.sum())
            if finite:
                return out
        scores -= part_maxima(scores.reshape(-1, W), 1).reshape(*scores.shape[:-1], 1)
        weights = np.exp(scores, out=scores)
        total = np.einsum("...j->...", weights)[..., None]
    else:  # on fewer rows the plain reductions cost less than the reshapes around them
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores, out=scores)
        total = weights.sum(axis=-1, keepdims=True)                     # [..., tq, 1]
    out = weights @ v                                                   # [..., tq, Dv]
    out /= total
    return out


def _unshifted_weights(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Unnormalized softmax weights of scores (..., W) and their sums (..., 1), without
    subtracting each row's max, or None where that is not safe.

    On many rows, reductions along the short last axis cost several times more per row than
    over the flattened rows, and the shift by each row's max is one of them. Where no score
    is large enough for exp, or a row's sum of W weights, to overflow, the weights are taken
    as they are (the same weights up to rounding: the shift cancels in the division), unless
    that left some row's weights so small that they lost precision, or none (a row whose
    keys are all hidden). einsum's sum is unrolled rather than pairwise: over these few
    terms its rounding stays within that of the products around it.
    """
    low, high = _UNSHIFTED.get(scores.dtype.type, (0.0, -np.inf))
    if not scores.max() < high - math.log(scores.shape[-1]):
        return None
    weights = np.exp(scores)
    total = np.einsum("...j->...", weights)[..., None]
    return (weights, total) if total.min() >= low else None


_MANY_ROWS = 256  # score rows from which the reductions over flattened rows pay

# (least weight sum of any row, score bound) for exponentiating scores as they are: below
# the bound less log W neither exp nor a row's sum of W weights can overflow; a row whose
# weights sum to at least the least has its largest weight above 1e-34 (float32) or 1e-300
# (float64) at up to 1e4 keys, where every weight that matters to the sum is still a normal
# number.
_UNSHIFTED = {np.float32: (1e-30, 80.0), np.float64: (1e-295, 700.0)}


def causal_mask(t: int) -> np.ndarray:
    """(t, t) bool: True where query i may see key j (j <= i)."""
    return np.tril(np.ones((t, t), dtype=bool))
