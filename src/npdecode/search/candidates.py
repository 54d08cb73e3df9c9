"""Selecting each batch item's best candidates from a step's logits, without sorting them all.

A beam step scores candidate (row r, token t) by its row's logprob so far plus the token's
max-shifted log-softmax, ``logprob[r] + ((logits[r, t] - max[r]) - lse[r])``. Only each
item's K best candidates can enter its pool. They are found with one comparison pass against
an exact lower bound on the item's K-th best candidate, and the few survivors are ranked
exactly.
"""

from __future__ import annotations

import functools

import numpy as np

from npdecode.numerics import read_only


def log_normalizer(logits: np.ndarray, maxima: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's max and log(sum(exp(logits - max))): (shift, lse), both (n,) float64.
    ``maxima`` holds each row's max (n,), or its maxima over column ranges (n, c).

    Token t of row r then has log-probability ``(logits[r, t] - shift[r]) - lse[r]``, the
    textbook max-shifted log-softmax: nothing overflows or underflows whatever the logits'
    magnitude, rows that differ by a constant get equal log-probabilities, and lse >= 0 (the
    max's term is exactly 1), so no log-probability is positive and a row's only finite token
    has exactly 0. The caller keeps the parts apart: with huge logits, ``shift + lse`` would
    round lse away.

    Float64 logits are normalized in float64. Float32 logits are shifted, exponentiated and
    summed (pairwise) in float32 and the log taken in float64: the error, a few 1e-7, is the
    size of the rounding already in a float32 model's logits, and the passes over (n, V) cost
    half.
    """
    if logits.dtype not in (np.float32, np.float64):
        logits = np.asarray(logits, dtype=np.float64)
    if not len(maxima):
        return np.zeros(0), np.zeros(0)
    row_max = maxima if maxima.ndim == 1 else maxima[:, 0]                         # [n]
    for j in range(1, maxima.shape[1] if maxima.ndim == 2 else 1):
        row_max = np.maximum(row_max, maxima[:, j])  # (max(axis=1) of a few columns is slower)
    e = per_row(np.subtract, logits, row_max.astype(logits.dtype, copy=False))  # [n, V]
    np.exp(e, out=e)
    return row_max.astype(np.float64, copy=False), np.log(_row_sums(e))


def _row_sums(e: np.ndarray) -> np.ndarray:
    """Row sums (n,) of non-negative e (n, V), as float64."""
    if e.dtype == np.float64:
        # einsum's unrolled sums are about twice as fast as sum()'s pairwise ones; in float64
        # their error (at most V/8 rounding steps, relative) stays far below 1e-12.
        return np.einsum("ij->i", e)
    # In float32 a whole-row einsum would lose up to V/64 rounding steps (3e-5 at V = 50k):
    # sum chunks of at most _CHUNK terms with einsum (a few roundings each) and add the chunk
    # sums in float64. As accurate as sum()'s pairwise sum, and twice as fast.
    n, V = e.shape
    c = -(-V // _CHUNK)                                                   # chunks per row
    size = V // c                                                         # terms per chunk
    sums = np.einsum("ijk->ij", e[:, :c * size].reshape(n, c, size)) @ _ones(c)  # [n]
    if c * size < V:  # fewer than c terms left over
        sums += e[:, c * size:].sum(axis=1)
    return sums


_CHUNK = 128


@functools.lru_cache(maxsize=8)
def _ones(c: int) -> np.ndarray:
    """A read-only float64 vector of c ones (the chunk sums are added by one product)."""
    return read_only(np.ones(c))


def kth_largest(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest entry of each row of x (n, m), k <= m."""
    return np.partition(x, x.shape[1] - k, axis=1)[:, x.shape[1] - k]


def candidate_bounds(best: np.ndarray, offset: np.ndarray, x: np.ndarray, shift: np.ndarray,
                     item: np.ndarray, k: int, batch: int, rows: np.ndarray | None = None
                     ) -> np.ndarray:
    """A per-row threshold on candidate logprobs that each item's top-k candidates all pass.

    ``best[r, j]`` (n, c) is row r's best candidate among the j-th of c disjoint column ranges
    and ``offset[r]`` the logprob its candidates add to their shifted logit (the logit less
    ``shift[r]``); rows are grouped by item,
    in item order. An item never has more than k rows (its pool holds k). Its rows' c best
    values are distinct candidates, so with at least k of them their k-th largest bounds the
    item's k-th best candidate from below (with c = 1 and k rows: the worst row's best). With
    fewer, each row's own k-th best candidate bounds it the same way. Row r's logits are
    ``x[rows[r]]`` (default: ``x[r]``).
    Returns (n,) thresholds in logprob units.
    """
    n, c = best.shape
    kc = k * c
    if n == batch * k:  # every item has k rows (no beam has finished): [B, k * c] blocks
        if kc == 1:
            return best[:, 0]
        return np.repeat(np.partition(best.reshape(batch, kc), kc - k, axis=1)[:, kc - k], k)
    rows_of = np.bincount(item, minlength=batch)                          # [B]
    place = np.arange(n) - (np.cumsum(rows_of) - rows_of)[item]           # row's place in item
    table = np.full((batch, kc), -np.inf)                                 # [B, k * c]
    table[item[:, None], place[:, None] * c + np.arange(c)] = best
    bound = np.partition(table, kc - k, axis=1)[item, kc - k]              # [n]
    few = rows_of[item] * c < k
    if few.any():
        k_row = min(k, x.shape[1])  # a row cannot offer more candidates than the vocabulary
        few_x = x[few] if rows is None else x[rows[few]]
        kth = kth_largest(few_x, k_row)   # in x's dtype; the float64 offsets promote it
        bound[few] = offset[few] + (kth - shift[few])
    return bound


def at_or_above(x: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Flat indices, ascending, of the entries of x (n, V) at or above their row's threshold."""
    return sparse_flatnonzero(per_row(np.greater_equal, x, threshold))


def per_row(ufunc: np.ufunc, x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``ufunc(x, v[:, None])``: x (n, V) with one value of v (n,) per row."""
    if x.nbytes >= _MANY_BYTES and _ROW_BUFFER < x.shape[1] < np.getbufsize():
        # NumPy copies a per-row operand into a buffer several rows long whenever a row
        # fits its buffer; with rows of 1000 that makes the call ~1.5x slower than running
        # along each row. A smaller buffer, for this call only, avoids the copy (changing it
        # costs more than the copy on a few rows).
        old = np.setbufsize(_ROW_BUFFER)
        try:
            return ufunc(x, v[:, None])
        finally:
            np.setbufsize(old)
    return ufunc(x, v[:, None])


def sparse_flatnonzero(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(mask)`` for a C-contiguous bool array with few True entries.

    Seen as 8-byte words, the mask has an eighth as many entries to test; only the words
    that hold a True are then looked at byte by byte. At 256k entries with a few hundred
    True, half the time of ``flatnonzero``.
    """
    if mask.size < _MANY_ELEMENTS or mask.size % 8 or not mask.flags.c_contiguous:
        return np.flatnonzero(mask)  # (on a few rows, the fewer calls of the plain way pay)
    words = mask.reshape(-1).view(np.uint64)
    some = np.flatnonzero(words != 0)                                     # words with a True
    hit = np.flatnonzero(words[some].view(np.bool_))        # bytes of those words, in order
    return some[hit >> 3] * 8 + (hit & 7)


_ROW_BUFFER = 512       # elements; a multiple of 16, as NumPy requires
_MANY_BYTES = 100_000   # from about this size (32 rows of 1000 float32) the smaller buffer
#                         pays for its extra calls
_MANY_ELEMENTS = 32768  # from about this many (32 rows of 1000) the word-wise survivor
#                         search pays for its extra calls


# Beyond this many survivors of the threshold, sorting them all by the four keys of the tie
# rule costs more than first cutting them down to each item's k best values.
_FEW_SURVIVORS = 64


@functools.lru_cache(maxsize=8)
def _upto(k: int) -> np.ndarray:
    """A read-only 0..k-1."""
    return read_only(np.arange(k))


def group_by_item(value: np.ndarray, item: np.ndarray, batch: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the values (C,) grouped by item (0..batch-1), each item's best value first
    (equal values in no particular order), with each item's count and first position (B,)."""
    by_value = np.argsort(value)[::-1]                                    # [C] best first
    # A stable sort of small integers is a radix sort: it groups by item, best value first.
    by_item = by_value[np.argsort(item[by_value].astype(_item_dtype(batch)), kind="stable")]
    counts = np.bincount(item, minlength=batch)                           # [B]
    return by_item, counts, np.cumsum(counts) - counts


def _item_dtype(batch: int) -> type:
    return np.int16 if batch <= _INT16_MAX else np.int64


_INT16_MAX = int(np.iinfo(np.int16).max)


def top_candidates(x: np.ndarray, part_max: np.ndarray, logprob: np.ndarray, shift: np.ndarray,
                   lse: np.ndarray, item: np.ndarray, k: int, batch: int,
                   banned: np.ndarray | None = None, rows: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's k best candidates (sequence, token) by logprob
    ``logprob[seq] + ((x[row, token] - shift[seq]) - lse[seq])``, the
    sequence's logprob so far plus the token's max-shifted log-softmax, summed in that order.

    Sequences are numbered 0..n-1, grouped by item in item order: ``item`` (n,) is each
    sequence's batch item, ``logprob``, ``lse`` and ``shift`` (n,) float64 its logprob and
    the parts of its row's log-normalizer (``log_normalizer``), ``part_max`` (n, c) its
    largest logits less its shift in c disjoint column ranges (more ranges: a tighter bound,
    fewer survivors). ``x`` (n, V) holds the logits in the model's dtype; candidate logprobs
    are float64; sequence i's are row ``rows[i]`` (default: row i), so logits need not be
    gathered into sequence order first. ``banned`` (n, V), if given, marks tokens that are
    never candidates (then ``rows`` must be None). Ties go to the lower sequence (the
    parent's place in the pool), then the higher logit, then the lower token id.
    Returns (value, seq, token), each (B, k); missing entries have seq -1.
    """
    offset = logprob - lse    # what a sequence's candidates add to their shifted logit
    n, V = x.shape
    best = offset[:, None] + part_max                                     # [n, c]
    bound = candidate_bounds(best, offset, x, shift, item, k, batch, rows)          # [n]
    # A margin so that rounding in (bound - offset) can never exclude an entry equal to it;
    # the threshold is then rounded down into x's dtype so the comparison runs natively. Both
    # can only admit extra candidates, which the exact ranking below sorts out.
    # A row whose hypothesis has logprob -inf has only -inf candidates. Its offset is clamped
    # (a lower threshold, never a higher one): where its item's bound is -inf as well, this
    # keeps -inf - (-inf) = NaN out (it takes every token, and the tie rule decides among
    # them); elsewhere its threshold is about 1e30, above every logit yet within float32.
    margin = 1e-9 * (1.0 + np.abs(bound))
    threshold = bound - np.maximum(offset, -1e30) - margin + shift       # [n] in x's units
    threshold = np.nextafter(threshold.astype(x.dtype), -np.inf)
    if rows is not None:  # thresholds and sequence numbers in x's row order
        seq_of_row = np.empty(n, dtype=np.int64)
        seq_of_row[rows] = _upto(n)
        threshold = threshold[seq_of_row]
    flat = at_or_above(x, threshold)                       # [C] in (row, token) order
    if len(flat) > 4 * k * n:
        # The bound was loose (beams far apart): no row can place more than its own k best
        # tokens, so raise each row's threshold to its k-th largest value. Ties with that
        # value still pass, so the ranking below stays exact.
        threshold = np.maximum(threshold, kth_largest(x, min(k, V)))
        flat = at_or_above(x, threshold)
    if banned is not None:
        flat = flat[~banned.ravel()[flat]]
    seq = flat // V
    if rows is not None:
        seq = seq_of_row[seq]
    logit = x.ravel()[flat]                  # [C] in x's dtype (float64 arithmetic below)
    lp = (logit - shift[seq]) - lse[seq]                                  # [C]
    value = logprob[seq] + lp                                             # [C] float64
    if k == 1 and len(flat) == n == batch and rows is None and banned is None:
        # One sequence per item, in item order, and one survivor each: its best (K = 1).
        return value[:, None], seq[:, None], (flat % V)[:, None]
    it = item[seq]
    if len(flat) > _FEW_SURVIVORS:
        # Many survivors (the beams of an item are far apart): group them by item, best value
        # first, without the tie rule. Where no two of an item's k+1 best values are equal,
        # its k best are already ranked; otherwise keep the values at or above the k-th,
        # ties included, for the exact sort below.
        by_item, counts, starts = group_by_item(value, it, batch)
        if counts.min() >= k:
            # Each item's k best and the value after them: its (k+1)-th, or where it has
            # only k, the next item's best (the last item's wraps to the first item's). An
            # equality there is a false alarm, which only costs the exact sort below.
            top = by_item[(starts[:, None] + _upto(k + 1)) % len(flat)]      # [B, k+1]
            top_value = value[top]
            if not (top_value[:, 1:] == top_value[:, :-1]).any():
                best = top[:, :k]
                return top_value[:, :k], seq[best], flat[best] % V
        kth = np.full(batch, -np.inf)
        full = np.flatnonzero(counts >= k)
        kth[full] = value[by_item[starts[full] + k - 1]]
        keep = np.flatnonzero(value >= kth[it])
        flat, seq, logit, value, it = flat[keep], seq[keep], logit[keep], value[keep], it[keep]
    token = flat % V
    # Sort by item, then value (highest first), then the tie rule: sequence (the parent's
    # place in the pool), logit (highest first; it matters where a hypothesis's logprob is
    # -inf and all its candidates tie), token (the stable sort keeps flat order, in which a
    # sequence's tokens ascend).
    order = np.lexsort((-logit, seq, -value, it))                        # [C]
    counts = np.bincount(it, minlength=batch)                             # [B]
    starts = np.cumsum(counts) - counts             # each item's first place in the order
    if counts.min() >= k:  # every item has k candidates: its first k in the order
        sel = order[starts[:, None] + np.arange(k)]                       # [B, k]
        return value[sel], seq[sel], token[sel]
    it = it[order]                                                        # ascending
    rank = np.arange(len(order)) - starts[it]                             # rank within item
    keep = np.flatnonzero(rank < k)
    sel = order[keep]
    b, j = it[keep], rank[keep]
    out_value = np.full((batch, k), -np.inf)
    out_seq = np.full((batch, k), -1, dtype=np.int64)
    out_token = np.zeros((batch, k), dtype=np.int64)
    out_value[b, j] = value[sel]
    out_seq[b, j] = seq[sel]
    out_token[b, j] = token[sel]
    return out_value, out_seq, out_token
