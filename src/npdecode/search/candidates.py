"""Selecting each batch item's best candidates from a step's logits, without sorting them all.

A beam step scores candidate (row r, token t) by ``offset[r] + logits[r, t]``, where
``offset[r]`` is the row's logprob so far minus its log-normalizer. Only each item's K best
candidates can enter its pool. They are found with one comparison pass against an exact
lower bound on the item's K-th best candidate, and the few survivors are ranked exactly.
"""

from __future__ import annotations

import numpy as np


def log_normalizer(logits: np.ndarray, row_max: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) per row (n,) as float64, shifted by the row max (n,).

    Float64 logits are normalized in float64. Float32 logits are exponentiated and summed
    (pairwise) in float32 and the log taken in float64: the error, a few 1e-7, is the size of
    the rounding already in a float32 model's logits, and the passes over (n, V) cost half.
    """
    if logits.dtype == np.float32:
        shifted = logits - row_max.astype(np.float32)[:, None]            # [n, V] float32
        np.exp(shifted, out=shifted)
        return row_max + np.log(shifted.sum(axis=1).astype(np.float64))
    shifted = np.asarray(logits, dtype=np.float64) - row_max[:, None]     # [n, V]
    np.exp(shifted, out=shifted)
    return row_max + np.log(shifted.sum(axis=1))


def kth_largest(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest entry of each row of x (n, m), k <= m."""
    return np.partition(x, x.shape[1] - k, axis=1)[:, x.shape[1] - k]


def candidate_bounds(value_max: np.ndarray, offset: np.ndarray, x: np.ndarray,
                     item: np.ndarray, k: int, batch: int) -> np.ndarray:
    """A per-row threshold on candidate logprobs that each item's top-k candidates all pass.

    ``value_max[r]`` is row r's best candidate and ``offset[r]`` the logprob its candidates
    add to their logit; rows are grouped by item, in item order. An
    item never has more than k rows (its pool holds k). With exactly k rows, their k best
    candidates are k distinct candidates, so the worst of them bounds the item's k-th best
    from below. With fewer rows, each row's own k-th best candidate bounds it the same way.
    Returns (n,) thresholds in logprob units.
    """
    if len(item) == batch * k:  # every item has k rows (no beam has finished): [B, k] blocks
        return np.repeat(value_max.reshape(batch, k).min(axis=1), k)
    rows_of = np.bincount(item, minlength=batch)                          # [B]
    has_rows = np.flatnonzero(rows_of)
    starts = (np.cumsum(rows_of) - rows_of)[has_rows]
    worst_best = np.full(batch, -np.inf)
    worst_best[has_rows] = np.minimum.reduceat(value_max, starts)         # [B]
    bound = worst_best[item]                                              # [n]
    few = rows_of[item] < k
    if few.any():
        k_row = min(k, x.shape[1])  # a row cannot offer more candidates than the vocabulary
        bound[few] = kth_largest(x[few], k_row) + offset[few]
    return bound


def top_candidates(x: np.ndarray, x_max: np.ndarray, offset: np.ndarray, item: np.ndarray,
                   k: int, batch: int, banned: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's k best candidates (row, token) by logprob ``offset[row] + x[row, token]``.

    ``x`` (n, V) is in the model's dtype (candidate logprobs are formed in float64);
    ``x_max`` (n,) is each row's max of x, in float64. ``item`` (n,) is each row's batch item,
    ascending. ``banned`` (n, V), if given, marks tokens that are never candidates. Ties go
    to the lower row (the parent's place in the pool), then the higher logit, then the lower
    token id. Returns (value, row, token), each (B, k); missing entries have row -1.
    """
    n, V = x.shape
    value_max = offset + x_max                                            # [n]
    bound = candidate_bounds(value_max, offset, x, item, k, batch)                # [n]
    # A margin so that rounding in (bound - offset) can never exclude an entry equal to it;
    # the threshold is then rounded down into x's dtype so the comparison runs natively. Both
    # can only admit extra candidates, which the exact ranking below sorts out.
    # A row whose hypothesis has logprob -inf makes its item's bound -inf (its best candidate
    # is -inf); clamping its offset keeps -inf - (-inf) = NaN out: it takes every token, and
    # the tie rule decides among them.
    margin = 1e-9 * (1.0 + np.abs(bound))
    threshold = bound - np.maximum(offset, -1e300) - margin              # [n]
    threshold = np.nextafter(threshold.astype(x.dtype), -np.inf)
    flat = np.flatnonzero(x >= threshold[:, None])         # [C] in (row, token) order
    if len(flat) > 4 * k * n:
        # The bound was loose (beams far apart): no row can place more than its own k best
        # tokens, so raise each row's threshold to its k-th largest value. Ties with that
        # value still pass, so the ranking below stays exact.
        threshold = np.maximum(threshold, kth_largest(x, min(k, V)))
        flat = np.flatnonzero(x >= threshold[:, None])
    if banned is not None:
        flat = flat[~banned.ravel()[flat]]
    row, token = np.divmod(flat, V)
    value = offset[row] + x.ravel()[flat].astype(np.float64)              # [C]
    it = item[row]  # ascending: rows are grouped by item and flat is in row order
    # Sort by item, then value (highest first), then the tie rule: row (the parent's place in
    # the pool), logit (highest first; it matters where a hypothesis's logprob is -inf and
    # all its candidates tie), token (the stable sort keeps flat order). The items stay in
    # their groups, so it[order] == it.
    order = np.lexsort((-x.ravel()[flat], row, -value, it))               # [C]
    counts = np.bincount(it, minlength=batch)                             # [B]
    rank = np.arange(len(order)) - (np.cumsum(counts) - counts)[it]       # rank within item
    keep = np.flatnonzero(rank < k)
    sel, b, j = order[keep], it[keep], rank[keep]
    out_value = np.full((batch, k), -np.inf)
    out_row = np.full((batch, k), -1, dtype=np.int64)
    out_token = np.zeros((batch, k), dtype=np.int64)
    out_value[b, j] = value[sel]
    out_row[b, j] = row[sel]
    out_token[b, j] = token[sel]
    return out_value, out_row, out_token
