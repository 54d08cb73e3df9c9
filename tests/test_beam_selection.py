"""The candidate selection inside a beam step, against sorting every candidate by hand."""

import math

import numpy as np
import pytest

from npdecode.numerics import part_maxima
from npdecode.search import candidates
from npdecode.search.candidates import log_normalizer, top_candidates


def maxima(x, parts):
    """Each row's maxima over ``parts`` column ranges, as the search passes them (float64)."""
    return part_maxima(x, parts).astype(np.float64)


def lognorm(logits, row_max):
    """log(sum(exp(logits))) per row, from the parts ``log_normalizer`` returns."""
    shift, lse = log_normalizer(logits, row_max)
    return shift + lse


def top_candidates_of(x, parts, offset, item, k, batch, rng=None):
    """``top_candidates`` on sequences' logits x (n, V); with ``rng``, the logits are handed
    over with their rows shuffled (sequence i's logits in row rows[i])."""
    rows, logits = None, x
    if rng is not None:
        rows = rng.permutation(len(x))
        logits = np.empty_like(x)
        logits[rows] = x
    zero = np.zeros(len(x))  # no shift and no normalizer: a candidate scores offset + logit
    return top_candidates(logits, maxima(x, parts), offset, zero, zero, item, k, batch,
                          rows=rows)


def brute_force(x, offset, item, k, batch):
    """Each item's k best (value, row, token): value desc, then row, then token."""
    out = []
    for b in range(batch):
        cands = [(offset[r] + float(x[r, t]), r, t)
                 for r in np.flatnonzero(item == b) for t in range(x.shape[1])]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        out.append(cands[:k])
    return out


@pytest.mark.parametrize("parts", [1, 2, 5])  # the row max alone, or maxima of column ranges
@pytest.mark.parametrize("cut", [False, True])  # survivors first cut to each item's k best
@pytest.mark.parametrize("permuted", [False, True])  # logits rows in another order than sequences
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spread", [0.5, 50.0])   # 50: beams far apart, the loose-bound path
@pytest.mark.parametrize("seed", range(6))
def test_top_candidates_equal_a_full_sort_including_ties(dtype, spread, seed, permuted, cut,
                                                         parts, monkeypatch):
    if cut:
        monkeypatch.setattr(candidates, "_FEW_SURVIVORS", 0)
    rng = np.random.default_rng(seed)
    batch, k, V = 5, 3, 40   # V > 4k, so a loose bound really takes the fallback
    rows_of = rng.integers(0, k + 1, size=batch)           # items with 0..k live rows
    item = np.repeat(np.arange(batch), rows_of)
    n = len(item)
    x = rng.integers(-3, 3, size=(n, V)).astype(dtype)      # small integers: many exact ties
    x[rng.random((n, V)) < 0.1] = -np.inf                   # and some masked tokens
    x[:, 0] = np.maximum(x[:, 0], 0)                        # every row keeps a real token
    offset = np.round(rng.normal(0, spread, size=n))        # integer offsets keep ties exact
    value, row, token = top_candidates_of(x, parts, offset, item, k, batch,
                                          rng if permuted else None)
    for b, want in enumerate(brute_force(x, offset, item, k, batch)):
        got = [(value[b, j], row[b, j], token[b, j]) for j in range(k) if row[b, j] >= 0]
        assert got == want


@pytest.mark.parametrize("shift", [0.0, -45.0, 45.0, -700.0, 700.0])  # logits far from 0 too
def test_float32_normalizer_is_accurate_to_float32_rounding(shift):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((64, 1000)) * 4 + shift).astype(np.float32)
    x = logits.astype(np.float64)
    exact = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    got = lognorm(logits, logits.max(1).astype(np.float64))
    assert np.abs(got - exact).max() < 1e-6
    got64 = lognorm(x, x.max(1))
    assert np.abs(got64 - exact).max() < 1e-12


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("permuted", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_many_survivors_without_ties_are_ranked_by_value(seed, permuted, parts, monkeypatch):
    """Beams far apart leave many survivors; without equal values the ranking skips the full
    tie-rule sort (and ties, when present, still take it: the test above)."""
    monkeypatch.setattr(candidates, "_FEW_SURVIVORS", 0)
    rng = np.random.default_rng(seed)
    batch, k, V = 4, 3, 50
    item = np.repeat(np.arange(batch), k)                    # every item has k live rows
    n = len(item)
    x = rng.normal(0, 2, size=(n, V))                        # continuous: no equal values
    offset = rng.normal(0, 5, size=n)
    value, row, token = top_candidates_of(x, parts, offset, item, k, batch,
                                          rng if permuted else None)
    for b, want in enumerate(brute_force(x, offset, item, k, batch)):
        assert [(value[b, j], row[b, j], token[b, j]) for j in range(k)] == want


def test_float64_normalizer_of_many_equal_terms_is_exact_to_1e12():
    """Long rows of equal terms are where a sum's rounding piles up; fsum is the oracle."""
    x = np.full((3, 50_000), -3.0)
    x[:, 0] = 5.0
    x[1] += 30.0   # the same row moved by a constant
    x[2] -= 700.0  # far below 0
    exact = np.array([math.log(math.fsum(math.exp(v - r.max()) for v in r)) + r.max()
                      for r in x])
    assert np.abs(lognorm(x, x.max(1)) - exact).max() < 1e-12


@pytest.mark.parametrize("V", [7, 128, 1000, 1001, 50_257])  # one chunk, exact chunks, leftovers
def test_float32_normalizer_of_many_equal_terms_is_accurate(V):
    """Float32 rows are summed in chunks; rows of equal terms are where a sequential sum's
    rounding piles up. fsum of the same float32 exponentials is the oracle."""
    x = np.full((3, V), -1.5, dtype=np.float32)
    x[:, 0] = 2.0
    x[1] += 20.0   # the same row moved by a constant
    x[2, 1::2] = -30.0
    row_max = x.max(1, keepdims=True)
    e = np.exp(x - row_max).astype(np.float64)  # the float32 exponentials, exactly
    exact = np.array([math.log(math.fsum(r)) for r in e]) + row_max[:, 0]
    # pairwise summation's own guarantee for these rows is a few 1e-7: ask for the same
    assert np.abs(lognorm(x, x.max(1).astype(np.float64)) - exact).max() < 3e-7


@pytest.mark.parametrize("rows", [6, 64])  # too few and enough rows for the smaller buffer
@pytest.mark.parametrize("V", [5, 1000, 20_000])  # below, inside and above the buffer range
def test_at_or_above_matches_the_plain_comparison_and_leaves_numpy_settings(V, rows):
    rng = np.random.default_rng(V)
    x = rng.standard_normal((rows, V)).astype(np.float32)
    threshold = np.float32(rng.standard_normal(rows))
    before = np.getbufsize()
    got = candidates.at_or_above(x, threshold)
    assert np.getbufsize() == before
    np.testing.assert_array_equal(got, np.flatnonzero(x >= threshold[:, None]))


@pytest.mark.parametrize("shape", [(0, 8), (3, 8), (40, 1000), (37, 1001), (64, 1024)])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 1.0])
def test_sparse_flatnonzero_finds_every_true_entry_in_order(shape, density):
    """Small masks, sizes that are not whole words and views take the plain path; the rest
    go through 8-byte words."""
    rng = np.random.default_rng(shape[1])
    mask = rng.random(shape) < density
    got = candidates.sparse_flatnonzero(mask)
    np.testing.assert_array_equal(got, np.flatnonzero(mask))
    assert got.dtype == np.flatnonzero(mask).dtype
    # a view that is not contiguous takes the plain path
    np.testing.assert_array_equal(candidates.sparse_flatnonzero(mask.T), np.flatnonzero(mask.T))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_one_beam_per_item_takes_each_rows_best(seed, ties):
    """K = 1: one row per item; its single best token, with the lowest id among equal ones."""
    rng = np.random.default_rng(seed)
    batch, V = 6, 30
    x = rng.integers(-3, 3, size=(batch, V)) if ties else rng.normal(0, 2, size=(batch, V))
    x = x.astype(np.float32)
    offset = rng.normal(0, 5, size=batch)
    item = np.arange(batch)
    zero = np.zeros(batch)  # no shift and no normalizer: a candidate scores offset + logit
    value, row, token = top_candidates(x, maxima(x, 1), offset, zero, zero, item, 1, batch)
    for b, want in enumerate(brute_force(x, offset, item, 1, batch)):
        assert [(value[b, 0], row[b, 0], token[b, 0])] == want


@pytest.mark.parametrize("V, parts, split", [(1000, 2, True), (1000, 5, True), (12, 3, True),
                                             (7, 2, False), (3, 5, False), (1000, 1, False)])
def test_part_maxima_are_the_maxima_of_equal_column_ranges(V, parts, split):
    rng = np.random.default_rng(V + parts)
    x = rng.standard_normal((9, V)).astype(np.float32)
    x[1, : V // 2] = -np.inf       # a row with a range of -inf only
    x[2, V - 1] = np.nan           # a NaN is its range's maximum
    x[3, 0] = 1e30                 # as is a huge value
    got = part_maxima(x, parts)
    edges = np.arange(parts + 1) * V // parts if split else [0, V]
    want = np.stack([x[:, lo:hi].max(axis=1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    np.testing.assert_array_equal(got, want)        # NaN positions included
    # Rows that are not contiguous in memory take the row maximum alone.
    np.testing.assert_array_equal(part_maxima(np.asfortranarray(x), parts),
                                  x.max(axis=1, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_rows_normalizer_is_the_same_alone_and_among_others(dtype):
    """Each row's result must not depend on which other rows share the call (nor on the
    other rows' magnitudes)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 300))
    x[1] += 20.0      # rows of very different magnitudes
    x[3] += 60.0
    x[5] -= 800.0
    x = x.astype(dtype)
    row_max = x.max(axis=1).astype(np.float64)
    shift, lse = log_normalizer(x, row_max)
    for r in range(len(x)):
        s1, l1 = log_normalizer(x[r:r + 1], row_max[r:r + 1])
        assert shift[r] == s1[0]
        assert lse[r] == l1[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_is_max_shifted_equal_for_shifted_rows_and_never_positive(dtype):
    """Rows that differ by a constant get the same normalizer and log-probabilities; a row's
    only finite token has log-probability exactly 0; no log-probability is positive."""
    rng = np.random.default_rng(7)
    base = rng.integers(-20, 20, size=300).astype(np.float64)   # exact in float32 too
    one = np.full(300, -np.inf)
    one[5] = 0.5                                                # the only finite token
    x = np.stack([base, base + 7.0, base - 300.0, base + 1e4, one,
                  rng.normal(0.0, 3.0, size=300), rng.normal(30.0, 0.01, size=300)])
    x = x.astype(dtype)
    shift, lse = log_normalizer(x, x.max(axis=1))
    np.testing.assert_array_equal(shift, x.max(axis=1))
    assert lse[0] == lse[1] == lse[2] == lse[3]
    assert lse[4] == 0.0
    assert (lse >= 0.0).all()
    lp = (x.astype(np.float64) - shift[:, None]) - lse[:, None]  # as the search forms them
    np.testing.assert_array_equal(lp[0], lp[3])
    assert lp[4, 5] == 0.0
    assert (lp <= 0.0).all()


@pytest.mark.parametrize("other", [(1, 5), (0, 4)])  # the tie's other side: another row, a token
@pytest.mark.parametrize("parts", [1, 2])
def test_a_tie_just_past_the_kth_best_goes_to_the_tie_rule(other, parts, monkeypatch):
    """The k-th and (k+1)-th best candidates are equal while the k best are distinct: ranking
    by value alone would leave the choice between them to chance."""
    monkeypatch.setattr(candidates, "_FEW_SURVIVORS", 0)
    x = np.zeros((2, 6))
    x[0, 0], x[0, 1] = 9.0, 4.0
    x[other] = 4.0                 # equal to (row 0, token 1), which the tie rule prefers
    offset, item = np.zeros(2), np.zeros(2, dtype=np.int64)
    for rows in (None, np.array([1, 0])):
        logits = x if rows is None else x[::-1].copy()
        zero = np.zeros(2)  # no shift and no normalizer: a candidate scores offset + logit
        value, row, token = top_candidates(logits, maxima(x, parts), offset, zero, zero,
                                           item, 2, 1, rows=rows)
        want = brute_force(x, offset, item, 2, 1)[0]
        assert [(value[0, j], row[0, j], token[0, j]) for j in range(2)] == want
