"""Flash attention forward pass: tiled attention with an online softmax.

Attention ``O = softmax(Q K^T * scale) V`` needs, for each query row, the normalizer of the
softmax over *all* its keys before any output can be formed. The dense way builds the whole
(Nq, Nk) score matrix per head. Here the keys are visited one tile at a time, and each query row
keeps three running quantities over the key tiles seen so far:

    m    the largest score so far                    [rows, 1]
    l    sum_j exp(s_j - m)                          [rows, 1]
    acc  sum_j exp(s_j - m) v_j                      [rows, D]

On a new key tile with scores ``s`` (the row's scores against that tile's keys):

    m_new = max(m, max(s))
    alpha = exp(m - m_new)                           # <= 1
    p     = exp(s - m_new)                           # <= 1
    l     = alpha * l + sum(p)
    acc   = alpha * acc + p @ V_tile
    m     = m_new

and after the last tile ``O = acc / l``. Every exponent is ``<= 0``, so no term exceeds 1 and
nothing can overflow whatever the scale of the scores; the result equals the dense softmax
because every term of ``l`` and ``acc`` is always relative to the same current max.

Why ``exp(m_old - m_new)`` and not its inverse: ``l`` and ``acc`` hold terms relative to the
old max, ``exp(s_j - m_old)``; to make them relative to the new one they must be multiplied by
``exp(s_j - m_new) / exp(s_j - m_old) = exp(m_old - m_new)``, which is at most 1 because the
max only grows. The inverse, ``exp(m_new - m_old)``, agrees with it whenever the running max
never moves (e.g. each row's largest score lies in its first key tile, or all scores are
equal), so small tests can pass with it; when the max rises it inflates the old terms instead
of shrinking them, which is wrong, and with scores in the hundreds (as unnormalized models and
long contexts produce) ``exp(m_new - m_old)`` overflows to inf, and ``acc / l`` becomes
``inf / inf = NaN``.

Masked scores are set to -inf, so they get exactly zero weight. A query row whose first key
tile is fully masked (left padding before ``key_start``, or a causal tile entirely in its
future) sees ``max(s) = -inf`` with ``m = -inf`` too, and ``exp(m - m_new)`` would be
``exp(-inf - (-inf)) = NaN``. For such rows the tile's exponentials are shifted by a stand-in
0 instead: ``alpha = exp(-inf - 0) = 0`` and ``p = exp(-inf - 0) = 0``, while the running max
itself stays ``-inf``. The row stays at ``m = -inf, l = 0, acc = 0``, exactly "no key seen
yet", and its first visible key later starts the recurrence cleanly (``alpha = exp(-inf -
m_new) = 0`` discards the empty state). Keeping the stand-in as the max would be wrong: a
later tile whose scores all lie far below 0 (say -1000) would be shifted by 0 and underflow
to zero weight. A row that never sees a
visible key (a padding query) ends with ``l = 0``; its output is defined as zeros rather than
``0 / 0``.

Memory: queries are processed one tile at a time across every (batch, head) pair, and the
accumulator is the output slice itself, so the working set is one (B, H, tile, tile) score
block plus a few (B, H, tile, D) buffers, never an (N, N) matrix. Everything stays in the
input dtype. Causal masking skips key tiles that lie wholly in a query tile's future, and
``key_start`` skips key tiles that are padding in every row.
"""

from __future__ import annotations

import math

import numpy as np

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Default tile: rows of queries and of keys per block. At (B, H) = (2, 8) in float32 a block of
# 128 x 128 scores per head is 1 MiB: small enough for cache, large enough to amortize the
# Python loop over tiles.
# KVCache.attend also uses it as the prompt length above which prefill goes through flash.
FLASH_TILE = 128


def flash_attention_fwd(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                        tile_size: int = FLASH_TILE, causal: bool = True, *,
                        key_start: np.ndarray | None = None,
                        scale: float | None = None) -> np.ndarray:
    """Tiled softmax attention ``softmax(Q K^T * scale) V`` with an online softmax.

    Args:
        Q: queries (B, H, Nq, D), float32 or float64.
        K: keys (B, H, Nk, D), same dtype, ``Nq <= Nk``. The queries are aligned to the end of
            the keys: query i sits at key position ``Nk - Nq + i`` (prefill: ``Nq == Nk``).
        V: values (B, H, Nk, Dv), same dtype.
        tile_size: rows of queries and of keys per tile (>= 1).
        causal: query i attends only to keys at positions ``<= Nk - Nq + i``.
        key_start: optional int (B,): keys before ``key_start[b]`` are left padding of batch
            row b and are never attended to. A query row with no visible key at all (a padding
            query) gets an all-zero output.
        scale: score scale; default ``1 / sqrt(D)``.

    Returns:
        (B, H, Nq, Dv) in the input dtype.
    """
    B, H, Nq, D, Nk, Dv = _check_inputs(Q, K, V, tile_size)
    starts = _check_key_start(key_start, B, Nk)
    if not isinstance(causal, (bool, np.bool_)):
        raise ValueError(f"causal must be True or False, got {causal!r}")
    scale = 1.0 / math.sqrt(D) if scale is None else _check_scale(scale)
    out = np.empty((B, H, Nq, Dv), dtype=Q.dtype)                  # [B, H, Nq, Dv]
    offset = Nk - Nq                                                # key position of query 0
    for q0 in range(0, Nq, tile_size):
        q1 = min(q0 + tile_size, Nq)
        _query_tile(Q[:, :, q0:q1], K, V, out[:, :, q0:q1], offset + q0, tile_size, causal,
                    starts, scale)
    return out


def _query_tile(q: np.ndarray, K: np.ndarray, V: np.ndarray, acc: np.ndarray, pos0: int,
                tile_size: int, causal: bool, starts: np.ndarray | None, scale: float) -> None:
    """Attend one query tile (B, H, tq, D) at key positions pos0.. over all key tiles.

    ``acc`` (B, H, tq, Dv) is the output slice; it serves as the running accumulator and holds
    the normalized output on return.
    """
    B, H, tq, _ = q.shape
    Nk = K.shape[2]
    dtype = q.dtype
    q = q * dtype.type(scale)                                       # [B, H, tq, D]
    m = np.full((B, H, tq, 1), -np.inf, dtype=dtype)                # [B, H, tq, 1] running max
    l = np.zeros((B, H, tq, 1), dtype=dtype)                        # [B, H, tq, 1] running sum
    acc[...] = 0                                                    # [B, H, tq, Dv]
    pv = np.empty_like(acc)                                         # [B, H, tq, Dv] p @ V_tile
    # One score buffer reused by every key tile: assigning a fresh ``q @ K^T`` would hold the
    # previous tile's block alive while the new one is built, doubling the peak.
    s_buf = np.empty((B, H, tq, min(tile_size, Nk)), dtype=dtype)  # [B, H, tq, tile]
    qpos = pos0 + np.arange(tq)                                     # [tq] query key positions
    k_hi = min(Nk, pos0 + tq) if causal else Nk                     # later keys: all future
    k_lo = 0 if starts is None else (int(starts.min()) // tile_size) * tile_size
    for k0 in range(k_lo, k_hi, tile_size):
        k1 = min(k0 + tile_size, Nk)
        s = np.matmul(q, K[:, :, k0:k1].transpose(0, 1, 3, 2),
                      out=s_buf[..., :k1 - k0])                     # [B, H, tq, tk]
        hidden = _hidden(qpos, k0, k1, causal, starts)              # [B|1, 1, tq|1, tk] or None
        if hidden is not None:
            np.copyto(s, -np.inf, where=hidden)
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))        # [B, H, tq, 1]
        # Rows with every key so far masked have m_new = -inf; their exponentials are shifted
        # by 0 instead, so alpha and p are exp(-inf) = 0 rather than exp(-inf - (-inf)) =
        # NaN. Their running max itself stays -inf: a stand-in kept as the max would later
        # shift real scores far below 0 into underflow.
        shift = np.where(np.isneginf(m_new), dtype.type(0), m_new)  # [B, H, tq, 1]
        alpha = np.exp(m - shift)                                   # [B, H, tq, 1]  <= 1
        s -= shift
        p = np.exp(s, out=s)                                        # [B, H, tq, tk] <= 1
        l *= alpha
        l += p.sum(axis=-1, keepdims=True)
        acc *= alpha
        acc += np.matmul(p, V[:, :, k0:k1], out=pv)                 # [B, H, tq, Dv]
        m = m_new
    # Rows that never saw a visible key have l = 0 and acc = 0: divide by 1, output zeros.
    np.copyto(l, 1, where=l == 0)
    acc /= l


def _hidden(qpos: np.ndarray, k0: int, k1: int, causal: bool,
            starts: np.ndarray | None) -> np.ndarray | None:
    """Mask (True = not attended) of key tile k0..k1-1 for queries at ``qpos``; None if none."""
    kpos = np.arange(k0, k1)                                        # [tk]
    hidden = None
    if causal and k1 - 1 > qpos[0]:  # the tile reaches into some query's future
        hidden = (kpos > qpos[:, None])[None, None]                 # [1, 1, tq, tk]
    if starts is not None and k0 < starts.max():  # the tile holds some row's padding
        pad = (kpos < starts[:, None])[:, None, None]               # [B, 1, 1, tk]
        hidden = pad if hidden is None else hidden | pad            # [B, 1, tq|1, tk]
    return hidden


def _check_inputs(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                  tile_size: int) -> tuple[int, int, int, int, int, int]:
    """Validate shapes, dtypes and tile size; return (B, H, Nq, D, Nk, Dv)."""
    for name, x in (("Q", Q), ("K", K), ("V", V)):
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"{name} must be a 4-D numpy array (B, H, N, D), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if x.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")
    if not Q.dtype == K.dtype == V.dtype:
        raise ValueError(f"Q, K, V must share one dtype, got {Q.dtype}, {K.dtype}, {V.dtype}; "
                         "cast them with .astype()")
    B, H, Nq, D = Q.shape
    if K.shape[:2] != (B, H) or V.shape[:2] != (B, H):
        raise ValueError(f"Q, K, V must agree on (B, H): got {Q.shape}, {K.shape}, {V.shape}")
    if K.shape[3] != D:
        raise ValueError(f"Q and K must have the same head dim, got {D} and {K.shape[3]}")
    if D == 0 or V.shape[3] == 0:
        raise ValueError(f"head dims must be at least 1, got Q/K {D} and V {V.shape[3]}")
    Nk = K.shape[2]
    if V.shape[2] != Nk:
        raise ValueError(f"K and V must have the same number of keys, got {Nk} and {V.shape[2]}")
    if Nq > Nk:
        raise ValueError(f"need Nq <= Nk (queries are aligned to the end of the keys), "
                         f"got Nq={Nq}, Nk={Nk}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) \
            or tile_size < 1:
        raise ValueError(f"tile_size must be an int >= 1, got {tile_size!r}")
    return B, H, Nq, D, Nk, V.shape[3]


def _check_scale(scale) -> float:
    """``scale`` as a float, which must be finite."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"scale must be a real number, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r} (None: 1 / sqrt(D))")
    return float(scale)


def _check_key_start(key_start: np.ndarray | None, B: int, Nk: int) -> np.ndarray | None:
    """Validate ``key_start`` (int (B,), each in 0..Nk); None stays None."""
    if key_start is None or B == 0:
        return None
    starts = np.asarray(key_start)
    if starts.shape != (B,) or not np.issubdtype(starts.dtype, np.integer):
        raise ValueError(f"key_start must be an int array of shape ({B},), got "
                         f"{starts.dtype} {starts.shape}")
    if B and (starts.min() < 0 or starts.max() > Nk):
        raise ValueError(f"key_start values must lie in 0..{Nk}, got {starts.tolist()}")
    return starts.astype(np.int64)
