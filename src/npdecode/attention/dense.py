"""Dense masked softmax attention: the plain definition every model's forward uses, and the
KV cache's path for short blocks of queries (decoding steps)."""

from __future__ import annotations

import numpy as np

from npdecode.numerics import MASK


def dense_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, visible: np.ndarray,
                    scale: float) -> np.ndarray:
    """softmax(q k^T * scale, with hidden keys set to MASK) @ v.

    q (..., tq, D), k and v (..., W, D); ``visible`` broadcasts to (..., tq, W), True where a
    query may attend to a key. A query with no visible key gets a uniform average of v
    (finite; MASK is finite for that reason). Returns (..., tq, Dv).
    """
    scores = (q @ np.swapaxes(k, -1, -2)) * scale             # [..., tq, W]
    scores = np.where(visible, scores, MASK)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores, out=scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v                                        # [..., tq, Dv]


def causal_mask(t: int) -> np.ndarray:
    """(t, t) bool: True where query i may see key j (j <= i)."""
    return np.tril(np.ones((t, t), dtype=bool))
