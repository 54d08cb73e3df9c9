"""Numerical robustness: huge logits, masked tokens, long generations."""

import functools
import math
import warnings

import numpy as np
import pytest

from npdecode import TinyLM, batched_beam_search
from npdecode.search.beam_search import beam_search
from npdecode.numerics import log_softmax
from reference_beam import reference_beam_search
from toy_models import FixedLogits



def test_logits_of_magnitude_1e4_give_exact_finite_logprobs():
    model = FixedLogits([1e4, 1e4 - 1.0, -1e4, 1e4 - 2.0])
    res = batched_beam_search(model, [[1]], beam_width=2, max_new_tokens=3)[0]
    # log-softmax by hand: lp0 = -log(1 + e^-1 + e^-2), lp1 = lp0 - 1
    lp0 = -math.log(1 + math.exp(-1) + math.exp(-2))
    assert res[0].tokens == [0, 0, 0] and abs(res[0].logprob - 3 * lp0) < 1e-9
    assert res[1].tokens == [0, 0, 1] and abs(res[1].logprob - (3 * lp0 - 1)) < 1e-9


def test_the_hf_policy_gives_the_same_exact_logprobs_for_logits_of_magnitude_1e4():
    from npdecode import beam_search

    model = FixedLogits([1e4, 1e4 - 1.0, -1e4, 1e4 - 2.0])
    res = beam_search(model, [[1]], num_beams=2, max_new_tokens=3, length_penalty=0.0,
                      num_return_sequences=2, policy="hf")[0]
    lp0 = -math.log(1 + math.exp(-1) + math.exp(-2))
    assert res[0].tokens == [0, 0, 0] and abs(res[0].logprob - 3 * lp0) < 1e-9
    assert res[1].tokens == [0, 0, 1] and abs(res[1].logprob - (3 * lp0 - 1)) < 1e-9


@pytest.mark.parametrize("big, dtype", [(1e17, np.float64), (1e30, np.float32)])
def test_huge_equal_logits_keep_their_log_one_half(big, dtype):
    """Two equal best logits so large that log 2 vanishes next to them: each token still has
    logprob -log 2 (the normalizer is formed after shifting by the max, not added to it)."""
    class Huge(FixedLogits):
        def forward(self, token_ids):
            return super().forward(token_ids).astype(dtype)

    res = batched_beam_search(Huge([big, big, -big]), [[1]], beam_width=2, max_new_tokens=3)[0]
    assert [h.tokens for h in res] == [[0, 0, 0], [0, 0, 1]]  # equal: lowest token first
    for h in res:
        assert abs(h.logprob - 3 * -math.log(2)) < 1e-12


def test_float32_logits_far_below_a_huge_max_keep_their_own_values():
    """A row shifted by its max (100, beyond float32's unshifted range): the logprobs of
    tokens far below it are formed from their own logits in float64, so two logits that
    differ in their last bits keep their order (a float32 shift would round them equal)."""
    class Float32(FixedLogits):
        def forward(self, token_ids):
            return super().forward(token_ids).astype(np.float32)

    row = np.array([100.0, 0.0, -60.12345886230469, -60.12345504760742], dtype=np.float32)
    x = row.astype(np.float64)
    exact = x - (x.max() + math.log(math.fsum(np.exp(x - x.max()))))
    res = batched_beam_search(Float32(row), [[1]], beam_width=4, max_new_tokens=1)[0]
    assert [h.tokens for h in res] == [[0], [1], [3], [2]]
    assert [h.logprob for h in res] == pytest.approx([exact[t] for t in (0, 1, 3, 2)],
                                                     abs=1e-12, rel=0)


def test_masked_tokens_are_never_chosen_while_real_ones_remain():
    row = np.array([0.5, -np.inf, 1.0, -np.inf, 0.2, 0.1])
    model = FixedLogits(row)
    res = batched_beam_search(model, [[0]], beam_width=4, max_new_tokens=3)[0]
    assert all(t not in (1, 3) for h in res for t in h.tokens)
    assert all(np.isfinite(h.score) for h in res)
    lp = log_softmax(row)
    for h in res:
        assert abs(h.logprob - sum(lp[t] for t in h.tokens)) < 1e-12


def test_masked_tokens_follow_the_spec_when_the_pool_is_wider_than_the_real_tokens():
    # Two real tokens, K=3: the top-m candidates include a masked one, with score -inf; at
    # the next step real two-token hypotheses push it out again.
    model = FixedLogits([0.0, -np.inf, 1.0])
    for steps in (1, 2):
        got = batched_beam_search(model, [[0]], beam_width=3, max_new_tokens=steps,
                                  eos_token_id=0)[0]
        want = reference_beam_search(model, [[0]], beam_width=3, max_new_tokens=steps,
                                     eos_token_id=0)[0]
        assert [h.tokens for h in got] == [h.tokens for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-12)
        assert not any(math.isnan(h.score) for h in got)
        assert math.isinf(got[-1].score) == (steps == 1)


def test_ten_thousand_steps_stay_finite_and_exact():
    m = TinyLM(vocab_size=20, d_model=8, seed=0)
    prompt = [1, 2, 3]
    res = batched_beam_search(m, [prompt], beam_width=2, max_new_tokens=10_000, alpha=0.6)[0]
    best = res[0]
    assert len(best.tokens) == 10_000 and np.isfinite(best.logprob)
    assert abs(best.score - best.logprob / 10_000 ** 0.6) < 1e-9
    # Teacher-force the whole sequence in one call and sum the log-probabilities.
    seq = np.array(prompt + best.tokens)
    cache = m.new_cache(rows=1, slots=len(seq))
    cache.begin(np.array([len(seq)]), len(seq))
    lp = log_softmax(m.extend(seq[None], cache)[0])          # [T, V]
    want = lp[np.arange(2, len(seq) - 1), seq[3:]].sum()
    assert abs(best.logprob - want) < 1e-8 * abs(want)


@pytest.mark.parametrize("strategy", ["beam", "greedy", "sample"])
def test_a_budget_beyond_memory_that_eos_cuts_short_costs_only_what_is_generated(strategy):
    """A model without a context limit and a cache (nothing sized by the budget outside the
    search): 10**12 tokens could not be held, but EOS (token 0, the most likely) ends every
    hypothesis within two steps, so that is all the search may hold."""
    from npdecode import greedy, sample

    model = FixedLogits([0.0, -1.0, -3.0])
    lp = log_softmax(np.array([0.0, -1.0, -3.0]))
    kw = dict(max_new_tokens=10 ** 12, eos_token_id=0)
    if strategy == "beam":
        res = batched_beam_search(model, [[1]], beam_width=2, **kw)[0]
        # [0] alone, then [1, 0]: both finished, so the search stops (global early stop).
        assert [(h.tokens, h.finished) for h in res] == [([0], True), ([1, 0], True)]
        assert abs(res[1].logprob - (lp[1] + lp[0])) < 1e-12
    else:
        run = greedy if strategy == "greedy" else functools.partial(sample, top_k=1, seed=0)
        (gen,) = run(model, [[1]], **kw)
        assert gen.tokens == [0] and gen.finished and abs(gen.logprob - lp[0]) < 1e-12


def test_candidates_of_an_impossible_hypothesis_rank_by_their_logits():
    # One real token (2) and K=5 > V: after step 1 the pool holds [2], then [0] and [1] at
    # -inf. At step 2 every candidate of the -inf parent [0] scores -inf; the tie rule takes
    # its best-logit token (2) first, then the lowest id (0) - not simply the lowest ids.
    model = FixedLogits([-np.inf, -np.inf, 0.0])
    got = batched_beam_search(model, [[1]], beam_width=5, max_new_tokens=2)[0]
    assert [h.tokens for h in got] == [[2, 2], [2, 0], [2, 1], [0, 2], [0, 0]]
    assert got[0].logprob == 0.0 and all(h.logprob == -np.inf for h in got[1:])
    want = reference_beam_search(model, [[1]], beam_width=5, max_new_tokens=2)[0]
    assert [h.tokens for h in want] == [h.tokens for h in got]


def test_banned_tokens_never_enter_the_pool_even_when_it_is_wider_than_the_allowed_ones():
    m = TinyLM(vocab_size=3, d_model=4, seed=0)
    got = batched_beam_search(m, [[0]], beam_width=3, max_new_tokens=2, no_repeat_ngram_size=1)
    (hyps,) = got
    assert all(0 not in h.tokens and len(set(h.tokens)) == len(h.tokens) for h in hyps)
    assert all(np.isfinite(h.logprob) for h in hyps)
    assert sorted(h.tokens for h in hyps) == [[1, 2], [2, 1]]   # all that is allowed
    want = reference_beam_search(m, [[0]], beam_width=3, max_new_tokens=2,
                                 no_repeat_ngram_size=1)
    assert [h.tokens for h in hyps] == [h.tokens for h in want[0]]


def test_ties_in_one_item_do_not_depend_on_an_impossible_hypothesis_in_another():
    class TwoItems:
        """Item A (prompt [1]): two candidates tie in float64; item B (prompt [2, 2]) has a
        single real token, so a beam width of 3 takes a -inf hypothesis into its pool."""

        vocab_size = 4

        def forward(self, ids):
            rows = []
            for row in np.asarray(ids):
                if row[0] == 1:
                    rows.append([0.0, 1e-17, 5.0, -50.0])
                else:
                    rows.append([0.0, -np.inf, -np.inf, -np.inf])
            return np.array(rows)

    kw = dict(beam_width=3, max_new_tokens=2)
    alone = batched_beam_search(TwoItems(), [[1]], **kw)[0]
    batch = batched_beam_search(TwoItems(), [[1], [2, 2]], **kw)[0]
    assert [h.tokens for h in alone] == [h.tokens for h in batch]



def test_a_hypothesis_whose_every_token_is_banned_stops_and_keeps_its_place():
    import warnings

    m = TinyLM(vocab_size=3, d_model=8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = batched_beam_search(m, [[0, 1, 2], [0]], beam_width=2, max_new_tokens=3,
                                  no_repeat_ngram_size=1)
    # The prompt already holds every token: its empty hypothesis stops at once, as with
    # max_new_tokens=0. The other prompt's hypotheses use up tokens 1 and 2, then stop.
    assert [(h.tokens, h.score, h.logprob, h.finished) for h in res[0]] == [([], 0.0, 0.0,
                                                                                False)]
    assert sorted(h.tokens for h in res[1]) == [[1, 2], [2, 1]]
    assert not any(h.finished for h in res[1])
    for h in res[1]:  # each logprob is its tokens' log-softmax values, summed
        want = sum(log_softmax(m.forward(np.array([[0] + h.tokens[:i]]))[0])[t]
                   for i, t in enumerate(h.tokens))
        assert abs(h.logprob - want) < 1e-12


def test_running_out_of_allowed_tokens_is_the_same_as_reaching_the_length_limit():
    # Ten tokens, none repeated: every hypothesis has used all of them after nine steps (the
    # prompt holds one), so a longer limit changes nothing, and nothing is dropped.
    m = TinyLM(vocab_size=10, d_model=8, seed=1)
    kw = dict(beam_width=4, alpha=0.6, no_repeat_ngram_size=1)
    at_limit = batched_beam_search(m, [[1]], max_new_tokens=9, **kw)[0]
    beyond = batched_beam_search(m, [[1]], max_new_tokens=12, **kw)[0]
    assert len(beyond) == 4 and all(sorted(h.tokens) == [0, 2, 3, 4, 5, 6, 7, 8, 9]
                                    for h in beyond)
    want = reference_beam_search(m, [[1]], max_new_tokens=12, **kw)[0]
    for other in (at_limit, want):
        assert [(h.tokens, h.finished) for h in beyond] == [(h.tokens, h.finished)
                                                            for h in other]
        assert max(abs(h.score - o.score) for h, o in zip(beyond, other)) < 1e-9


class PrefixRows:
    """A forward-only model whose logits are a fixed row per generated prefix."""

    def __init__(self, rows, dtype, prompt_len=1):
        self.rows, self.dtype, self.prompt_len = rows, dtype, prompt_len
        self.vocab_size = len(next(iter(rows.values())))

    def forward(self, token_ids):
        return np.array([self.rows[tuple(r[self.prompt_len:])] for r in token_ids.tolist()],
                        dtype=self.dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rows_that_differ_by_a_constant_tie_exactly_and_the_tie_rule_decides(dtype):
    # Two beams at -log 2; the logits after [0] are those after [1] plus 2, so all four
    # children have logprob -2 log 2 exactly, and the tie goes to the first beam's children.
    inf = np.inf
    model = PrefixRows({(): [0, 0, -inf, -inf], (0,): [3, 3, -inf, -inf],
                        (1,): [1, 1, -inf, -inf]}, dtype)
    kw = dict(beam_width=2, max_new_tokens=2)
    got = batched_beam_search(model, [[2]], **kw)[0]
    assert [h.tokens for h in got] == [[0, 0], [0, 1]]
    assert [h.logprob for h in got] == [-2 * math.log(2)] * 2
    want = reference_beam_search(model, [[2]], **kw)[0]
    assert [h.tokens for h in want] == [h.tokens for h in got]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hypotheses_adding_the_same_log_probs_tie_exactly(dtype):
    # [0, 1] and [1, 0] add the same two log-softmax values: the tie rule (the parent's place)
    # takes [0, 1], whatever rounding a different order of additions would have left.
    model = PrefixRows({(): [0.0, -4.0, -np.inf]} | {(t,): [0.0, -4.0, -np.inf] for t in
                                                      range(3)}, dtype)
    lp = log_softmax(np.array([0.0, -4.0, -np.inf]))
    got = batched_beam_search(model, [[2]], beam_width=3, max_new_tokens=2)[0]
    assert [h.tokens for h in got] == [[0, 0], [0, 1], [1, 0]]
    assert got[1].logprob == got[2].logprob
    assert abs(got[1].logprob - (lp[0] + lp[1])) <= (0 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("logit", [0.5, 3.0, -7.25])
def test_a_rows_only_finite_token_has_log_probability_exactly_zero(dtype, logit):
    model = FixedLogits([-np.inf, logit, -np.inf])
    model.row = model.row.astype(dtype)
    best = batched_beam_search(model, [[0]], beam_width=1, max_new_tokens=3)[0][0]
    assert best.tokens == [1, 1, 1] and best.logprob == 0.0 and best.score == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logits_spanning_the_whole_float_range_give_exact_logprobs_without_warnings(dtype):
    big = float(np.finfo(dtype).max)
    model = FixedLogits([big, -big, 0.0, -np.inf])
    model.row = model.row.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from (logit - max)
        got = batched_beam_search(model, [[1]], beam_width=3, max_new_tokens=2)[0]
        hf = beam_search(model, [[1]], num_beams=3, max_new_tokens=2, policy="hf")[0]
    assert [h.tokens for h in got] == [[0, 0], [0, 2], [2, 0]]
    assert got[0].logprob == 0.0 and got[1].logprob == got[2].logprob == -big
    assert hf[0].tokens == [0, 0] and hf[0].logprob == 0.0
