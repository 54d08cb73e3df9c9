"""Greedy and sampled decoding: frequencies against exact probabilities, the processors'
arithmetic, the processing order, seeds that do not depend on the batch, EOS and budgets,
and clear errors. Expected values come from softmax arithmetic and plain loops written here.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from npdecode import TinyLM
from npdecode.search import processors as P
from npdecode.search.ngrams import banned_tokens
from npdecode.search.sampling import Generation, greedy, sample
from toy_models import FixedLogits, ForwardOnly, Recording

LOGITS = np.array([2.0, 1.6, 1.1, 0.9, 0.3, -0.2, -1.0, -2.5])  # fixed next-token logits
N_DRAWS = 60_000
SIGMAS = 5   # a frequency may stray 5 binomial standard deviations from its probability: a
#              correct sampler fails about once in a million runs whatever the seeds, while
#              a wrong token probability stands out (at most 0.01 for this N and these p)


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def same(a: list[Generation], b: list[Generation]) -> bool:
    """Equal tokens and flags; logprobs within 1e-9 (a batch changes BLAS rounding only)."""
    return len(a) == len(b) and all(
        x.tokens == y.tokens and x.finished == y.finished and abs(x.logprob - y.logprob) < 1e-9
        for x, y in zip(a, b))


def frequencies(**kwargs) -> np.ndarray:
    """Empirical next-token distribution of N_DRAWS seeded one-token samples of LOGITS."""
    gens = sample(FixedLogits(LOGITS), [[0]] * N_DRAWS, max_new_tokens=1,
                  seed=list(range(N_DRAWS)), **kwargs)
    toks = np.array([g.tokens[0] for g in gens])
    return np.bincount(toks, minlength=len(LOGITS)) / N_DRAWS


def assert_top5_close(freq, exact):
    top5 = np.argsort(-exact, kind="stable")[:5]
    tol = SIGMAS * np.sqrt(exact[top5] * (1 - exact[top5]) / N_DRAWS)
    assert (np.abs(freq[top5] - exact[top5]) <= tol).all()  # (0 <= 0 where p is 0)
    assert freq[exact == 0].sum() == 0   # filtered tokens are never drawn


# -- sampling frequencies ---------------------------------------------------------------------

def test_plain_sampling_frequencies_match_softmax():
    assert_top5_close(frequencies(), softmax(LOGITS))


def test_top_k_frequencies_match_softmax_renormalized_over_the_k():
    k = 3
    exact = np.zeros(len(LOGITS))
    best = np.argsort(-LOGITS)[:k]
    exact[best] = np.exp(LOGITS[best]) / np.exp(LOGITS[best]).sum()
    assert_top5_close(frequencies(top_k=k), exact)


def test_top_p_frequencies_match_the_nucleus():
    p = softmax(LOGITS)   # 0.36 0.24 0.15 0.12 .. (sorted already)
    top_p = 0.7
    # smallest prefix (most probable first) whose mass reaches top_p
    size = next(i + 1 for i in range(len(p)) if p[: i + 1].sum() >= top_p)
    exact = np.zeros(len(p))
    exact[:size] = p[:size] / p[:size].sum()
    assert 2 <= size < len(p)
    assert_top5_close(frequencies(top_p=top_p), exact)


def test_min_p_frequencies_match_the_kept_tokens():
    p = softmax(LOGITS)
    min_p = 0.3
    kept = p >= min_p * p.max()          # tokens at least min_p times the best's probability
    assert 1 < kept.sum() < len(p)
    assert_top5_close(frequencies(min_p=min_p), np.where(kept, p, 0.0) / p[kept].sum())


def test_penalties_then_temperature_frequencies():
    """Counts include the prompt; penalties hit the raw logits, then / T."""
    prompt = [0, 0, 0, 1, 2, 2]
    counts = np.bincount(prompt, minlength=len(LOGITS))
    x = LOGITS - 0.4 * counts - 0.3 * (counts > 0)
    exact = softmax(x / 2.0)
    gens = sample(FixedLogits(LOGITS), [prompt] * N_DRAWS, max_new_tokens=1, temperature=2.0,
                  frequency_penalty=0.4, presence_penalty=0.3, seed=list(range(N_DRAWS)))
    freq = np.bincount([g.tokens[0] for g in gens], minlength=len(LOGITS)) / N_DRAWS
    assert_top5_close(freq, exact)


# -- processors -------------------------------------------------------------------------------

X = np.array([[2.0, -1.0, 0.5, 0.5, 3.0, -np.inf],
              [0.0, 0.0, 0.0, 1.0, -2.0, 4.0]])


def test_temperature_scales_logits_by_one_over_t_exactly():
    for t in (0.3, 0.7, 1.0, 2.5):
        assert np.array_equal(P.apply_temperature(X, t), X / t)
        want = np.stack([softmax(row / t) for row in X])
        np.testing.assert_allclose(P.distribution(X, temperature=t), want, rtol=1e-12, atol=0)


def test_a_huge_temperature_brings_logits_further_apart_than_float64_back_together():
    """Logits 3e308 apart (their difference overflows float64) at T = 1e308 are 1.5 and -1.5:
    p = 1 / (1 + e^-3) and its complement, not a one-hot on the max."""
    x = np.array([[1.5e308, -1.5e308]])
    p0 = 1 / (1 + math.exp(-3.0))
    got = P.distribution(x, temperature=1e308)
    np.testing.assert_allclose(got, [[p0, 1 - p0]], rtol=1e-12)
    # A difference that overflows even after the division has probability 0 either way.
    assert P.distribution(x, temperature=1.5).tolist() == [[1.0, 0.0]]


def test_top_k_keeps_k_best_with_ties_to_lowest_id():
    out = P.top_k_filter(X, 3)
    assert np.isfinite(out).sum(axis=1).tolist() == [3, 3]
    assert np.flatnonzero(np.isfinite(out[0])).tolist() == [0, 2, 4]   # 0.5 tie: id 2 wins
    assert np.flatnonzero(np.isfinite(out[1])).tolist() == [0, 3, 5]   # 0.0 tie: id 0 wins
    assert np.array_equal(P.top_k_filter(X, 0), X) and np.array_equal(P.top_k_filter(X, 9), X)


def test_top_p_keeps_the_smallest_set_reaching_p_and_at_least_one():
    for row in X:
        p = softmax(row)
        order = sorted(range(len(p)), key=lambda i: (-p[i], i))
        for top_p in (0.0, 0.01, 0.5, 0.8, 0.95):  # 0: the best token alone
            size = next(i + 1 for i in range(len(p)) if p[order[: i + 1]].sum() >= top_p)
            kept = np.flatnonzero(np.isfinite(P.top_p_filter(row[None], top_p)[0]))
            assert sorted(kept.tolist()) == sorted(order[:size])


@pytest.mark.parametrize("size", [1, 5, 12, 23])
def test_top_p_equal_to_a_running_sum_keeps_exactly_that_many(size):
    """p exactly the probability of the `size` best tokens: the set stops there (24 equal
    logits, so the probabilities and their running sums are the same in any order)."""
    row = np.zeros((1, 24))
    top_p = np.cumsum(P.softmax(row)[0])[size - 1]
    kept = np.flatnonzero(np.isfinite(P.top_p_filter(row, top_p)[0]))
    assert kept.tolist() == list(range(size))   # ties: lowest ids first


def test_min_p_keeps_tokens_above_a_fraction_of_the_best():
    for row in X:
        p = softmax(row)
        for min_p in (0.05, 0.2, 0.5, 1.0):
            kept = np.flatnonzero(np.isfinite(P.min_p_filter(row[None], min_p)[0]))
            assert kept.tolist() == np.flatnonzero(p >= min_p * p.max()).tolist()


def test_penalties_subtract_penalty_times_count():
    counts = np.array([[0, 3, 1, 0, 2, 0], [5, 0, 0, 1, 0, 0]])
    assert np.array_equal(P.apply_penalties(X, counts, frequency=0.5), X - 0.5 * counts)
    assert np.array_equal(P.apply_penalties(X, counts, presence=0.7), X - 0.7 * (counts > 0))
    both = P.apply_penalties(X, counts, frequency=0.5, presence=0.7)
    assert np.array_equal(both, X - 0.5 * counts - 0.7 * (counts > 0))


@pytest.mark.parametrize("frequency, presence", [(1e308, 0.0), (-1e308, 0.0), (5e307, 1e308)])
def test_penalties_that_overflow_the_logits_are_an_error(frequency, presence):
    counts = np.full(X.shape, 2)
    with pytest.raises(ValueError, match="overflow the logits"):
        P.apply_penalties(X, counts, frequency=frequency, presence=presence)
    masked = np.where(np.eye(*X.shape, dtype=bool), -np.inf, X)  # -inf logits stay -inf
    assert np.array_equal(P.apply_penalties(masked, counts, frequency=2.0),
                          masked - 2.0 * counts)


@pytest.mark.parametrize("frequency, presence, ok", [
    (1e300, 0.0, False),    # 3 + 2 = 5 occurrences at most: a shift of 5e300, refused
    (-1e300, 0.0, False),
    (0.0, 2e300, False),
    (1.9e299, 0.0, True),   # 9.5e299: allowed, and a logit of size 1 stays finite
])
def test_penalties_that_could_leave_float64_are_refused_before_any_call(frequency, presence,
                                                                        ok):
    model = Recording(TinyLM(vocab_size=10, d_model=4, seed=0))
    kw = dict(max_new_tokens=2, seed=0, frequency_penalty=frequency, presence_penalty=presence)
    if ok:
        assert len(sample(model, [[0, 1, 2]], **kw)[0].tokens) == 2
        return
    with pytest.raises(ValueError, match=r"can shift a logit by up to .* in sequences of up "
                                         r"to 5 tokens, beyond float64's range"):
        sample(model, [[0, 1, 2]], **kw)
    assert model.log == []


def test_processors_do_not_modify_their_input():
    before = X.copy()
    P.warp(X, temperature=0.5, top_k=2, top_p=0.5, min_p=0.1)
    P.apply_penalties(X, np.ones_like(X), frequency=1.0, presence=1.0)
    assert np.array_equal(X, before)


def test_top_p_is_applied_after_temperature():
    row, t, top_p = X[1], 3.0, 0.6
    p = softmax(row / t)   # the hotter distribution needs more tokens to reach top_p
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    size = next(i + 1 for i in range(len(p)) if p[order[: i + 1]].sum() >= top_p)
    got = P.distribution(row[None], temperature=t, top_p=top_p)[0]
    assert sorted(np.flatnonzero(got > 0).tolist()) == sorted(order[:size])
    np.testing.assert_allclose(got[order[:size]], p[order[:size]] / p[order[:size]].sum())


SPEC_ORDER = ("temperature", "top_k", "top_p", "min_p")   # SPEC section 5
TIES = [1.0, 3.0, 1.0, 2.0, 1.0, 0.0, -1.0, 1.0]   # four tied logits of 1.0: ids 0, 2, 4, 7


def oracle_distribution(row, *, temperature, top_k=0, top_p=1.0, min_p=0.0,
                        order=SPEC_ORDER) -> list[float]:
    """The processed distribution of one row, in plain Python: the steps one by one in
    ``order``, each filter on the renormalized probabilities of the tokens still kept."""
    z, kept = [float(v) for v in row], set(range(len(row)))

    def probs():   # softmax over the kept tokens only (the others have probability 0)
        m = max(z[i] for i in kept)
        e = {i: math.exp(z[i] - m) for i in kept}
        return {i: e[i] / sum(e.values()) for i in kept}

    for step in order:
        p = probs()
        best = sorted(kept, key=lambda i: (-p[i], i))   # most probable first, ties: lowest id
        if step == "temperature":
            z = [v / temperature for v in z]
        elif step == "top_k" and top_k > 0:
            kept = set(best[:top_k])
        elif step == "top_p":   # the smallest set of best tokens whose mass reaches top_p
            kept, mass = set(), 0.0
            for i in best:
                kept.add(i)
                mass += p[i]
                if mass >= top_p:
                    break
        elif step == "min_p":
            kept = {i for i in kept if p[i] >= min_p * p[best[0]]}
    p = probs()
    return [p.get(i, 0.0) for i in range(len(row))]


KP = ("temperature", "top_p", "top_k", "min_p")   # top-k and top-p swapped
PM = ("temperature", "top_k", "min_p", "top_p")   # top-p and min-p swapped
LAST_T = ("top_k", "top_p", "min_p", "temperature")   # temperature after the filters


@pytest.mark.parametrize("options, wrong_orders", [
    # LOGITS: top-k keeps 3, then the nucleus of those is 2; the nucleus first keeps 3
    (dict(temperature=1.0, top_k=3, top_p=0.7), [KP]),
    # TIES: top-k's 5 (a tie cut: ids 0, 2 kept, 7 not) then the nucleus is 4; swapped, 5
    (dict(temperature=1.0, top_k=5, top_p=0.9), [KP]),
    # LOGITS: the nucleus keeps 4, all above 0.2 of the best; min-p first leaves a nucleus of 3
    (dict(temperature=1.0, top_p=0.8, min_p=0.2), [PM]),
    # LOGITS: at T = 2.5 the nucleus needs 5 tokens; before the temperature, 3
    (dict(temperature=2.5, top_p=0.7), [LAST_T]),
    # LOGITS: at T = 0.5 only 2 tokens are within 0.3 of the best; before the temperature, 4
    (dict(temperature=0.5, min_p=0.3), [LAST_T]),
    # every filter at once (5 tokens kept in both rows; in TIES ids 0, 2, 4 but not 7)
    (dict(temperature=1.3, top_k=6, top_p=0.9, min_p=0.2), [KP, PM, LAST_T]),
])
def test_filters_apply_in_the_spec_order(options, wrong_orders):
    """Temperature, then top-k, top-p, min-p (SPEC section 5), against a plain loop applying
    them in that order; each case is one where the wrong orders give another distribution."""
    rows = [LOGITS.tolist(), TIES]
    want = [oracle_distribution(row, **options) for row in rows]
    for order in wrong_orders:   # the case bites: a wrong order keeps other tokens in a row
        wrong = [oracle_distribution(row, order=order, **options) for row in rows]
        assert any([q > 0 for q in a] != [q > 0 for q in b] for a, b in zip(want, wrong))
    got = P.distribution(np.array(rows), **options)
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12, atol=0)   # zeros exactly 0
    warped = P.warp(np.array(rows), **options)   # filtered tokens are -inf, the others finite
    assert np.array_equal(np.isfinite(warped), np.array(want) > 0)


def test_sample_categorical_never_draws_a_zero_probability_token():
    probs = np.array([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4)
    u = np.array([0.0, 0.4999999, 0.5, 1 - 2**-53])
    assert P.sample_categorical(probs, u).tolist() == [1, 1, 3, 3]


def test_sample_categorical_stays_inside_the_vocabulary_when_rounding_reaches_the_total():
    # A subnormal total: u * total rounds up to the total itself, past every cumulative value.
    assert P.sample_categorical(np.array([[5e-324, 0.0]]), np.array([0.9])).tolist() == [0]


def test_sample_categorical_refuses_a_row_with_nothing_to_draw():
    for bad in ([0.0, 0.0, 0.0], [0.5, np.nan, 0.5], [0.5, np.inf, 0.5], [0.7, -0.2, 0.5]):
        with pytest.raises(ValueError, match="row 1 has no probability"):
            P.sample_categorical(np.array([[0.2, 0.3, 0.5], bad]), np.array([0.5, 0.5]))


@pytest.mark.parametrize("call, match", [
    (lambda x: P.top_k_filter(x, -1), "k >= 0"),
    (lambda x: P.top_p_filter(x, -0.1), "0 <= p <= 1"),
    (lambda x: P.top_p_filter(x, float("nan")), "0 <= p <= 1"),
    (lambda x: P.top_p_filter(x, 1.5), "0 <= p <= 1"),
    (lambda x: P.min_p_filter(x, 1.5), "0 <= min_p <= 1"),
    (lambda x: P.min_p_filter(x, float("nan")), "0 <= min_p <= 1"),
    (lambda x: P.distribution(x, temperature=1.0, top_p=-1e-300), "0 <= p <= 1"),
])
def test_processors_refuse_options_that_would_keep_no_token(call, match):
    with pytest.raises(ValueError, match=match):
        call(X)


def test_softmax_of_logits_at_the_ends_of_the_float_range_is_silent_and_exact():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = P.softmax(np.array([[1e308, -1e308, 1e308]]))
    assert got.tolist() == [[0.5, 0.0, 0.5]]


# -- greedy and its equivalents ---------------------------------------------------------------

MODEL = TinyLM(vocab_size=30, d_model=16, seed=3)
PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [3, 3]]


def oracle_greedy(model, prompt, n, eos=None):
    """Token by token with plain forward; returns (tokens, logprob, finished) and the gaps
    between the best and second-best logits along the way."""
    seq, out, lp, gaps = list(prompt), [], 0.0, []
    for _ in range(n):
        x = model.forward(np.array([seq]))[0]
        t = int(np.argmax(x))
        top2 = np.sort(x)[-2:]
        gaps.append(top2[1] - top2[0])
        lp += x[t] - x.max() - math.log(np.exp(x - x.max()).sum())
        out.append(t)
        seq.append(t)
        if t == eos:
            return out, lp, True, gaps
    return out, lp, False, gaps


@pytest.mark.parametrize("eos", [None, 7, 21])
def test_greedy_matches_a_token_by_token_oracle(eos):
    gens = greedy(MODEL, PROMPTS, max_new_tokens=12, eos_token_id=eos)
    for p, g in zip(PROMPTS, gens):
        toks, lp, fin, _ = oracle_greedy(MODEL, p, 12, eos)
        assert g.tokens == toks and g.finished == fin
        assert g.logprob == pytest.approx(lp, abs=1e-9)


def test_temperature_zero_top_k_one_and_top_p_zero_equal_greedy():
    ref = greedy(MODEL, PROMPTS, max_new_tokens=12)
    assert same(sample(MODEL, PROMPTS, max_new_tokens=12, temperature=0.0, seed=1), ref)
    assert same(sample(MODEL, PROMPTS, max_new_tokens=12, top_k=1, seed=[1, 2, 3, 4]), ref)
    # top_p = 0: the smallest set reaching 0 is empty, and never fewer than one token
    assert same(sample(MODEL, PROMPTS, max_new_tokens=12, top_p=0.0, seed=5), ref)


def test_temperature_towards_zero_equals_greedy():
    """At T = 1e-4 the runner-up token has probability < exp(-gap / T) < 1e-40 per step."""
    t = 1e-4
    for p in PROMPTS:
        *_, gaps = oracle_greedy(MODEL, p, 12)
        assert min(gaps) / t > 92   # exp(-92) < 1e-40: the claim below is then certain
    ref = greedy(MODEL, PROMPTS, max_new_tokens=12)
    got = sample(MODEL, PROMPTS, max_new_tokens=12, temperature=t, seed=[1, 2, 3, 4])
    assert [g.tokens for g in got] == [g.tokens for g in ref]


def test_greedy_ties_go_to_the_lowest_id():
    gens = greedy(FixedLogits([0.0, 1.0, 3.0, 3.0, 3.0]), [[0]], max_new_tokens=3)
    assert gens[0].tokens == [2, 2, 2]


def test_frequency_penalty_changes_greedy_path_as_arithmetic_says():
    """Greedy with penalties on fixed logits, against a plain loop over the counts."""
    logits = np.array([3.0, 2.0, 1.5, 0.0])
    prompt, fp, pp, n = [2, 0], 0.6, 0.25, 10
    seq, want = list(prompt), []
    for _ in range(n):
        c = np.bincount(seq, minlength=4)
        t = int(np.argmax(logits - fp * c - pp * (c > 0)))
        want.append(t)
        seq.append(t)
    got = sample(FixedLogits(logits), [prompt], max_new_tokens=n, temperature=0.0,
                 frequency_penalty=fp, presence_penalty=pp)[0]
    assert got.tokens == want and len(set(want)) > 2
    # logprob stays the raw model's: every step scores under the unchanged logits
    raw = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
    assert got.logprob == pytest.approx(sum(raw[t] for t in want), abs=1e-12)


def test_cached_and_recompute_paths_agree():
    kw = dict(max_new_tokens=10, temperature=0.9, top_k=8, top_p=0.9, min_p=0.05,
              frequency_penalty=0.3, no_repeat_ngram_size=3, eos_token_id=5, seed=[7, 8, 9, 10])
    a = sample(MODEL, PROMPTS, **kw)
    b = sample(ForwardOnly(MODEL), PROMPTS, **kw)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    for x, y in zip(a, b):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-9)


# -- log-probabilities ------------------------------------------------------------------------

def test_sampled_logprob_is_the_raw_models_whatever_the_processors():
    """At T = 1.3 with top-k, top-p and penalties, ``logprob`` still scores each sampled token
    under the unmodified model: plain forward on the growing prefix, log-softmax written here."""
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    gens = sample(MODEL, prompts, max_new_tokens=8, temperature=1.3, top_k=4, top_p=0.9,
                  frequency_penalty=0.3, presence_penalty=0.2, seed=[3, 4, 5])
    for prompt, g in zip(prompts, gens):
        seq, want = list(prompt), 0.0
        for t in g.tokens:
            x = MODEL.forward(np.array([seq]))[0].astype(np.float64).tolist()   # raw logits
            m = max(x)
            want += x[t] - m - math.log(sum(math.exp(v - m) for v in x))
            seq.append(t)
        assert len(g.tokens) == 8
        assert g.logprob == pytest.approx(want, abs=1e-9)


def test_logprobs_of_logits_of_size_1e4_are_finite_and_exact():
    """Logits [1e4, 1e4 - 1, 0, 0]: exp(1e4) overflows, so only a max-shifted log-softmax gives
    log p(0) = -log(1 + e^-1) and log p(1) = -1 - log(1 + e^-1) (e^-1e4 is 0 in float64)."""
    model = FixedLogits([1e4, 1e4 - 1.0, 0.0, 0.0])
    lse = math.log(1.0 + math.exp(-1.0))   # log(e^1e4 + e^(1e4 - 1) + 2) - 1e4
    n = 5
    for g in greedy(model, [[0], [2, 3]], max_new_tokens=n):
        assert g.tokens == [0] * n
        assert g.logprob == pytest.approx(-n * lse, abs=1e-12)
    gens = sample(model, [[0]] * 8, max_new_tokens=n, temperature=1.0, seed=list(range(8)))
    drawn = [t for g in gens for t in g.tokens]
    assert set(drawn) == {0, 1}   # both finite scores are exercised (p(1) = 0.27 per draw)
    for g in gens:
        want = sum((0.0 if t == 0 else -1.0) - lse for t in g.tokens)
        assert g.logprob == pytest.approx(want, abs=1e-12)


# -- n-gram ban -------------------------------------------------------------------------------

def repeated_bigram(seq) -> bool:
    bigrams = list(zip(seq, seq[1:]))
    return len(bigrams) != len(set(bigrams))


def test_no_repeat_ngram_2_never_repeats_a_bigram_prompt_included():
    small = TinyLM(vocab_size=12, d_model=16, seed=4)
    prompts = [[1, 2, 1], [3, 3], [5]] * 20
    seeds = list(range(len(prompts)))
    banned = sample(small, prompts, max_new_tokens=15, no_repeat_ngram_size=2, seed=seeds)
    assert not any(repeated_bigram(p + g.tokens) for p, g in zip(prompts, banned))
    free = sample(small, prompts, max_new_tokens=15, seed=seeds)
    assert any(repeated_bigram(p + g.tokens) for p, g in zip(prompts, free))  # the check bites


def test_banned_tokens_match_enumeration():
    """Every sequence of up to 8 tokens over 3, n = 1..5: the banned next tokens are those
    whose n-gram (the last n - 1 tokens, then it) already occurs in the sequence."""
    for length in range(9):
        for seq in itertools.product(range(3), repeat=length):
            for n in range(1, 6):
                grams = {seq[i:i + n] for i in range(length - n + 1)}
                want = [t for t in range(3) if length + 1 >= n and (seq + (t,))[-n:] in grams]
                assert banned_tokens(np.array(seq, dtype=np.int64), n).tolist() == want


def test_penalties_and_bans_follow_their_items_when_rows_finish():
    """Rows drop out of the batch as they finish; each remaining row must keep its own
    counts and n-gram history, so every prompt decodes alone as in the batch."""
    small = TinyLM(vocab_size=12, d_model=16, seed=4)
    prompts = [[1, 2, 1], [3, 3], [5], [7, 8, 9, 10], [0, 6]]
    kw = dict(max_new_tokens=10, eos_token_id=4)
    for options in (dict(temperature=0.0, frequency_penalty=0.7, presence_penalty=0.3),
                    dict(temperature=0.0, no_repeat_ngram_size=2),
                    dict(temperature=1.2, frequency_penalty=0.7, no_repeat_ngram_size=3)):
        batch = sample(small, prompts, seed=list(range(len(prompts))), **kw, **options)
        assert len({len(g.tokens) for g in batch}) > 1   # rows finish at different steps
        for i, prompt in enumerate(prompts):
            assert same(sample(small, [prompt], seed=i, **kw, **options), [batch[i]]), options


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_with_every_token_banned_stops_unfinished(temperature):
    # (top_k=1: the same tokens at either temperature; above 0 the banned row must not
    # reach the sampler's processors)
    gens = sample(FixedLogits([1.0, 2.0, 0.5]), [[0]], max_new_tokens=5, temperature=temperature,
                  top_k=1, no_repeat_ngram_size=1, seed=0)
    assert [(g.tokens, g.finished) for g in gens] == [([1, 2], False)]
    # the raw row's log-softmax at 1 then 2: (2 - 2) + (0.5 - 2) - 2 log(e^-1 + 1 + e^-1.5)
    want = -1.5 - 2 * math.log(math.exp(-1.0) + 1.0 + math.exp(-1.5))
    assert gens[0].logprob == pytest.approx(want, abs=1e-12)


# -- seeds ------------------------------------------------------------------------------------

def test_a_prompt_gives_the_same_sample_alone_or_in_any_batch():
    seeds = [11, 12, 13, 14]
    kw = dict(max_new_tokens=12, temperature=1.3, top_p=0.95, eos_token_id=7)
    batch = sample(MODEL, PROMPTS, seed=seeds, **kw)
    for i, p in enumerate(PROMPTS):
        assert same(sample(MODEL, [p], seed=seeds[i], **kw), [batch[i]])
    order = [2, 0, 3, 1]
    shuffled = sample(MODEL, [PROMPTS[i] for i in order], seed=[seeds[i] for i in order], **kw)
    assert same(shuffled, [batch[i] for i in order])
    # and the seed matters: other seeds give other samples somewhere
    assert not same(sample(MODEL, PROMPTS, seed=[21, 22, 23, 24], **kw), batch)


def test_an_int_seed_is_every_prompts_seed():
    kw = dict(max_new_tokens=10, temperature=1.0)
    assert same(sample(MODEL, PROMPTS, seed=5, **kw), sample(MODEL, PROMPTS, seed=[5] * 4, **kw))
    assert same(sample(MODEL, PROMPTS, seed=np.array(5), **kw), sample(MODEL, PROMPTS, seed=5,
                                                                       **kw))


# -- EOS, budgets, finished rows --------------------------------------------------------------

def test_finished_rows_stop_being_computed():
    eos = oracle_greedy(MODEL, PROMPTS[0], 1)[0][0]   # prompt 0 ends at its first token
    wrapped = Recording(MODEL)
    gens = greedy(wrapped, PROMPTS, max_new_tokens=6, eos_token_id=eos)
    assert gens[0].tokens == [eos] and gens[0].finished
    assert wrapped.extend_rows[0] == sum(eos not in g.tokens[:1] for g in gens) < len(PROMPTS)
    assert len(wrapped.extend_rows) == 5   # 6 tokens: prefill + 5 extends


def test_budget_and_eos_semantics_when_sampling():
    gens = sample(MODEL, [[1]] * 200, max_new_tokens=6, eos_token_id=4, temperature=1.5,
                  seed=list(range(200)))
    for g in gens:
        assert len(g.tokens) <= 6 and 4 not in g.tokens[:-1]
        assert g.finished == (g.tokens[-1] == 4)
        assert g.finished or len(g.tokens) == 6
    assert 0 < sum(g.finished for g in gens) < 200


def test_eos_id_0_finishes_a_row():
    model, kw = FixedLogits([5.0, 0.0, 0.0]), dict(max_new_tokens=4, eos_token_id=0)
    for g in (greedy(model, [[1]], **kw)[0], sample(model, [[1]], top_k=1, seed=0, **kw)[0]):
        assert (g.tokens, g.finished) == ([0], True)


def test_zero_new_tokens_and_empty_batch():
    assert sample(MODEL, [], max_new_tokens=3) == []
    for decode in (greedy, sample):
        wrapped = Recording(MODEL)
        assert decode(wrapped, [[1], [2, 3]], max_new_tokens=0) == [Generation(), Generation()]
        assert wrapped.log == []   # no model call for no tokens


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(top_p=-0.0001), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(frequency_penalty=float("inf")), "frequency_penalty"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(seed=1.0), "seed"),
    (dict(seed=[1, 2]), "seed"),
    (dict(seed=[1, 2, "3"]), "seed"),
    (dict(seed=-1), "seed"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(max_new_tokens=2 ** 63), "max_new_tokens"),
    (dict(eos_token_id=30), "eos_token_id"),
    # Numbers beyond float64 (float() of them overflows): refused by name, not an OverflowError.
    (dict(temperature=10 ** 400), "temperature"),
    (dict(top_p=10 ** 400), "top_p"),
    (dict(frequency_penalty=-10 ** 400), "frequency_penalty"),
    (dict(top_k=10 ** 400), "top_k"),
])
def test_bad_options_are_refused_before_any_work(kwargs, match):
    class Untouchable(ForwardOnly):
        def forward(self, ids):
            raise AssertionError("the model must not be called")

    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        sample(Untouchable(MODEL), [[1], [2], [3]], **args)


def test_bad_prompts_are_refused():
    with pytest.raises(ValueError, match="prompt 1"):
        greedy(MODEL, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 0, position 1.*vocab size 30"):
        sample(MODEL, [[1, 30]], max_new_tokens=2)


def test_bad_logits_name_the_batch_item():
    class NaNForItem2(ForwardOnly):
        def forward(self, ids):
            x = self.model.forward(ids).copy()
            x[ids[:, 0] == 9] = np.nan
            return x

    with pytest.raises(ValueError, match="NaN.*batch item 2"):
        sample(NaNForItem2(MODEL), [[1], [2], [9, 1]], max_new_tokens=3, seed=0)
    wrong_width = FixedLogits(np.zeros(4))
    wrong_width.vocab_size = 5   # declares 5 tokens, returns 4 logits
    with pytest.raises(ValueError, match="shape"):
        greedy(wrong_width, [[1]], max_new_tokens=1)


def test_a_tiny_temperature_is_greedy_not_nan():
    m = TinyLM(vocab_size=30, d_model=8, seed=3)
    kw = dict(max_new_tokens=6, eos_token_id=None)
    want = [g.tokens for g in greedy(m, [[1, 2], [3]], **kw)]
    got = [g.tokens for g in sample(m, [[1, 2], [3]], temperature=1e-310, seed=0, **kw)]
    assert got == want
