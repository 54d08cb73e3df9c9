"""Beam search semantics (the pool policy) on models whose right answer is known."""

import itertools
import math

import numpy as np
import pytest

from npdecode import TinyLM, batched_beam_search
from npdecode.numerics import log_softmax
from npdecode.search.beam import count_hypotheses
from reference_beam import reference_beam_search
from npdecode.models.scripted import ScriptedLM
from toy_models import FixedLogits

EOS = 0


def tokens(hyps):
    return [h.tokens for h in hyps]


def assert_same(got, want, tol=1e-9):
    assert tokens(got) == tokens(want)
    assert [h.finished for h in got] == [h.finished for h in want]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=tol)
    np.testing.assert_allclose([h.logprob for h in got], [h.logprob for h in want], rtol=0,
                               atol=tol)


def test_beam_width_one_without_penalty_is_greedy_argmax():
    m = TinyLM(vocab_size=50, d_model=16, seed=4)
    prompt = [5, 17, 33]
    seq, logprob = list(prompt), 0.0
    for _ in range(10):
        lp = log_softmax(m.forward(np.array([seq]))[0])
        t = int(np.argmax(lp))
        seq.append(t)
        logprob += lp[t]
    (best,), = batched_beam_search(m, [prompt], beam_width=1, max_new_tokens=10, alpha=0.0)
    assert best.tokens == seq[3:]
    assert abs(best.logprob - logprob) < 1e-9 and best.score == best.logprob


def test_a_prompt_gives_the_same_hypotheses_alone_and_in_a_batch():
    m = TinyLM(vocab_size=60, d_model=16, seed=7)
    p0, p1 = [3, 14, 15], [9, 26, 5, 35, 8]
    kw = dict(beam_width=3, max_new_tokens=8, alpha=0.6, eos_token_id=EOS)
    alone = batched_beam_search(m, [p0], **kw)[0]
    batch = batched_beam_search(m, [p0, p1], **kw)
    assert_same(batch[0], alone)
    assert tokens(batch[1]) != tokens(batch[0])  # the other prompt really is different


class EndsAtOnceAfterOne:
    """A forward-only TinyLM, except that a prompt starting with 1 makes the EOS almost
    certain at every step: that item's pool fills with finished hypotheses while the others
    go on."""

    def __init__(self, **kw):
        self.lm = TinyLM(**kw)
        self.vocab_size = self.lm.vocab_size

    def forward(self, ids):
        logits = self.lm.forward(ids)
        logits[np.asarray(ids)[:, 0] == 1, EOS] = 50.0
        return logits


def test_a_batch_of_more_items_than_a_small_integer_holds_matches_solo_runs():
    """150 prompts: item numbers beyond 127 (the grouping of survivors by item must not
    wrap them) and far more survivors than the exact sort handles alone."""
    m = TinyLM(vocab_size=30, d_model=8, seed=4)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 30, size=rng.integers(1, 5)).tolist() for _ in range(150)]
    kw = dict(beam_width=3, max_new_tokens=3, alpha=0.6, eos_token_id=2)
    batch = batched_beam_search(m, prompts, **kw)
    for p, got in zip(prompts, batch):
        (alone,) = batched_beam_search(m, [p], **kw)
        assert [h.tokens for h in got] == [h.tokens for h in alone]
        assert np.allclose([h.score for h in got], [h.score for h in alone], rtol=0, atol=1e-9)


def test_token_ids_beyond_int16_survive_the_history():
    """A 40,000-token vocabulary whose best tokens are 39,999 and then 123: the histories
    hold every id (the reference ranks them)."""
    row = np.zeros(40_000)
    row[39_999], row[123] = 5.0, 4.0
    got = batched_beam_search(FixedLogits(row), [[1]], beam_width=2, max_new_tokens=2)[0]
    want = reference_beam_search(FixedLogits(row), [[1]], beam_width=2, max_new_tokens=2)[0]
    assert [h.tokens for h in got] == [h.tokens for h in want] == [[39_999, 39_999],
                                                                   [39_999, 123]]


def test_an_item_that_finishes_early_stops_no_other_item():
    m = EndsAtOnceAfterOne(vocab_size=30, d_model=8, seed=2)
    prompts = [[1, 5], [7, 8, 9]]
    kw = dict(beam_width=2, max_new_tokens=6, alpha=0.6, eos_token_id=EOS)
    batch = batched_beam_search(m, prompts, **kw)
    assert all(h.finished for h in batch[0]) and max(len(h.tokens) for h in batch[0]) <= 2
    assert_same(batch[1], batched_beam_search(m, [prompts[1]], **kw)[0])
    assert_same(batch[1], reference_beam_search(m, [prompts[1]], **kw)[0])
    # it went on after the first item's pool had finished
    assert max(len(h.tokens) for h in batch[1]) > max(len(h.tokens) for h in batch[0])


def test_each_step_is_one_model_call_over_every_live_beam_of_every_prompt():
    from toy_models import Recording

    m = Recording(TinyLM(vocab_size=40, d_model=8, seed=3))
    prompts = [[1, 2], [3, 4, 5, 6], [7]]
    batched_beam_search(m, prompts, beam_width=2, max_new_tokens=5)
    # one prefill of the three prompts, then per step one extend of one token for all
    # 3 x 2 beams (no EOS: none finishes); the last step needs no further call
    assert m.log == [("prefill", 3, 0)] + [("extend", 6, 1)] * 4


def test_three_ragged_prompts_each_match_their_solo_run():
    m = TinyLM(vocab_size=80, d_model=16, seed=11)
    prompts = [[1, 2], [3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13]]
    eos = int(np.argmax(m.forward(np.array([prompts[0]]))[0]))  # a likely token: EOS is frequent
    kw = dict(beam_width=3, max_new_tokens=10, alpha=0.6, eos_token_id=eos)
    batch = batched_beam_search(m, prompts, **kw)
    for b, p in enumerate(prompts):
        assert_same(batch[b], batched_beam_search(m, [p], **kw)[0])


def eos_retention_model():
    # Step 1: EOS at -3.0, token 1 at -4.0; the other 98 tokens share the rest (-4.65 each).
    # After [1]: token 1 at -1.0, EOS far below, the others at -5.04 each.
    return ScriptedLM(vocab_size=100, prompt_len=3, script={
        (): {EOS: -3.0, 1: -4.0},
        (1,): {1: -1.0, EOS: -20.0},
    })


def drop_finished_variant(model, prompt, K, T, alpha):
    """The common bug: a beam that emits EOS leaves the pool and never competes again."""
    pool = [((), 0.0)]
    for _ in range(T):
        cands = []
        for g, lp in pool:
            out = log_softmax(model.forward(np.array([prompt + list(g)]))[0])
            cands += [(g + (t,), lp + out[t]) for t in range(len(out)) if t != EOS]
        pool = sorted(cands, key=lambda c: -c[1] / len(c[0]) ** alpha)[:K]
    return [list(g) for g, _ in pool]


def test_a_finished_beam_keeps_its_place_in_the_pool():
    model = eos_retention_model()
    prompt = [4, 1, 2]
    first, second = batched_beam_search(model, [prompt], beam_width=2, max_new_tokens=2,
                                        alpha=0.6, eos_token_id=EOS)[0]
    assert first.tokens == [EOS] and first.finished and abs(first.score - (-3.0)) < 1e-12
    assert second.tokens == [1, 1] and not second.finished
    assert abs(second.logprob - (-5.0)) < 1e-12
    assert abs(second.score - (-5.0 / 2 ** 0.6)) < 1e-12
    # The same scenario through the buggy variant puts [1, 1] first: the test tells them apart.
    assert drop_finished_variant(eos_retention_model(), prompt, 2, 2, 0.6)[0] == [1, 1]


def test_an_early_confident_finish_beats_a_longer_beam_without_penalty():
    # Beam A: 2, 2, EOS at -1.0 each (-3.0 at step 3). Beam B: 3, 3, 3, 3, 3 at -1.0 each.
    # The other tokens of a 20-token vocabulary share what is left: at most -3.4 each, so no
    # other branch ever ranks in the top 2.
    script = {(): {2: -1.0, 3: -1.0}, (2,): {2: -1.0}, (2, 2): {EOS: -1.0}}
    for n in range(1, 5):
        script[(3,) * n] = {3: -1.0}
    model = ScriptedLM(vocab_size=20, prompt_len=2, script=script)
    a, b = batched_beam_search(model, [[1, 1]], beam_width=2, max_new_tokens=5, alpha=0.0,
                               eos_token_id=EOS)[0]
    assert a.tokens == [2, 2, EOS] and a.finished and abs(a.score - (-3.0)) < 1e-12
    assert b.tokens == [3, 3, 3, 3, 3] and not b.finished and abs(b.score - (-5.0)) < 1e-12


def test_a_beam_that_emits_eos_is_never_expanded_again():
    model = eos_retention_model()
    batched_beam_search(model, [[1, 2, 3]], beam_width=2, max_new_tokens=4, alpha=0.6,
                        eos_token_id=EOS)
    assert model.seen, "the model was never called"
    assert all(EOS not in prefix for prefix in model.seen)
    # cached path: count the rows the model is run on, and check no EOS is ever fed back
    fed = []

    class Counting(TinyLM):
        def extend(self, toks, cache):
            fed.append(np.asarray(toks).copy())
            return super().extend(toks, cache)

    m = Counting(vocab_size=30, d_model=8, seed=0)
    eos = int(np.argmax(m.forward(np.array([[4, 5]]))[0]))
    res = batched_beam_search(m, [[4, 5]], beam_width=2, max_new_tokens=6, eos_token_id=eos)[0]
    assert any(h.finished for h in res)
    steps = fed[1:]  # fed[0] is the prompt prefill
    assert all(eos not in s for s in steps)
    assert all(len(s) <= 2 for s in steps)   # never more rows than live beams


def test_search_stops_once_every_pool_holds_k_finished_hypotheses():
    # EOS has probability 0.98 after every prefix. Step 1: [EOS] and [1] fill the pool;
    # step 2 extends [1] only, and [1, EOS] finishes too: every pool (one here) holds K = 2
    # finished hypotheses, so the search stops (SPEC §3, step 1) far before max_new_tokens.
    model = ScriptedLM(3, prompt_len=1, script={}, default={EOS: math.log(0.98)})
    res = batched_beam_search(model, [[1]], beam_width=2, max_new_tokens=50, alpha=0.6,
                              eos_token_id=EOS)[0]
    assert tokens(res) == [[EOS], [1, EOS]] and all(h.finished for h in res)
    assert model.seen == [(), (1,)] and model.calls == 2


def test_hypotheses_are_immutable():
    import dataclasses

    h = batched_beam_search(TinyLM(vocab_size=5, d_model=4), [[1]], beam_width=1,
                            max_new_tokens=1)[0][0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.score = 0.0


def test_a_larger_alpha_favours_the_longer_of_two_finished_hypotheses():
    # short: [EOS] at -2.0 (length 1); long: [1, 1, EOS] at -1.0 each, -3.0 (length 3)
    # (token 3 takes the probability left over in each row)
    script = {(): {EOS: -2.0, 1: -1.0, 2: -5.0}, (1,): {1: -1.0, EOS: -6.0, 2: -6.0},
              (1, 1): {EOS: -1.0, 1: -6.0, 2: -6.0}}
    model = ScriptedLM(vocab_size=4, prompt_len=1, script=script, default={EOS: -0.5})
    short, long_ = [EOS], [1, 1, EOS]
    order = {}
    for alpha in (0.0, 2.0):
        res = batched_beam_search(model, [[3]], beam_width=64, max_new_tokens=3, alpha=alpha,
                                  eos_token_id=EOS)[0]
        found = {tuple(h.tokens): (i, h.score) for i, h in enumerate(res)}
        (i_s, s_s), (i_l, s_l) = found[tuple(short)], found[tuple(long_)]
        assert abs(s_s - (-2.0)) < 1e-12 and abs(s_l - (-3.0 / 3 ** alpha)) < 1e-12
        order[alpha] = i_s < i_l
    assert order == {0.0: True, 2.0: False}  # -2 > -3 at alpha 0; -2 < -3/9 at alpha 2


def brute_force(model, prompt, V, T, alpha, eos):
    """Every finished sequence (EOS last) and every unfinished one of length T, ranked."""
    out = []
    for n in range(1, T + 1):
        for g in itertools.product(range(V), repeat=n):
            if eos in g[:-1] or (n < T and g[-1] != eos):
                continue
            lp = sum(log_softmax(model.forward(np.array([prompt + list(g[:i])]))[0])[g[i]]
                     for i in range(n))
            out.append((lp / n ** alpha, list(g), g[-1] == eos))
    return sorted(out, key=lambda e: -e[0])


def test_unpruned_beam_search_equals_brute_force_ranking():
    for V, T, alpha, seed in [(4, 3, 0.0, 0), (4, 3, 0.7, 1), (5, 2, 1.5, 2), (3, 4, 0.6, 3)]:
        model = TinyLM(vocab_size=V, d_model=8, seed=seed)
        prompt = [1, 2]
        want = brute_force(model, prompt, V, T, alpha, EOS)
        got = batched_beam_search(model, [prompt], beam_width=len(want), max_new_tokens=T,
                                  alpha=alpha, eos_token_id=EOS)[0]
        assert [h.tokens for h in got] == [g for _, g, _ in want]
        assert [h.finished for h in got] == [f for _, _, f in want]
        np.testing.assert_allclose([h.score for h in got], [s for s, _, _ in want], atol=1e-9)


def test_max_new_tokens_zero_returns_the_empty_hypothesis():
    m = TinyLM(vocab_size=10, d_model=4, seed=0)
    res = batched_beam_search(m, [[1], [2, 3]], beam_width=3, max_new_tokens=0, alpha=0.6)
    for hyps in res:
        assert len(hyps) == 1
        h = hyps[0]
        assert h.tokens == [] and h.score == 0.0 and h.logprob == 0.0 and not h.finished


@pytest.mark.parametrize("vocab", [1, 2, 3])
@pytest.mark.parametrize("steps", [0, 1, 2, 4])
@pytest.mark.parametrize("cap", [1, 5, 10**6])
def test_pool_widths_are_capped_by_the_number_of_distinct_hypotheses(vocab, steps, cap):
    every = sum(1 for n in range(1, steps + 1) for _ in itertools.product(range(vocab), repeat=n))
    assert count_hypotheses(vocab, steps, cap=cap) == min(max(every, 1), cap)


def test_a_one_token_vocabulary_with_a_huge_horizon_is_counted_at_once():
    # one sequence of each length: counted without a round per step
    assert count_hypotheses(1, 10**15, cap=10**12) == 10**12
    assert count_hypotheses(1, 7, cap=10**12) == 7


def test_beam_width_beyond_the_vocabulary_returns_fewer_hypotheses():
    m = TinyLM(vocab_size=3, d_model=4, seed=0)
    res = batched_beam_search(m, [[1]], beam_width=10, max_new_tokens=1, eos_token_id=None)[0]
    assert sorted(tokens(res)) == [[0], [1], [2]]
    assert_same(res, reference_beam_search(m, [[1]], beam_width=10, max_new_tokens=1)[0])


def test_no_repeat_ngram_bans_repeated_bigrams_and_matches_the_reference():
    m = TinyLM(vocab_size=6, d_model=8, seed=5)  # a tiny vocabulary repeats itself quickly
    prompts = [[1, 2, 1], [3, 4]]
    kw = dict(beam_width=3, max_new_tokens=8, alpha=0.6, eos_token_id=None,
              no_repeat_ngram_size=2)
    got = batched_beam_search(m, prompts, **kw)
    for p, hyps in zip(prompts, got):
        for h in hyps:
            seq = p + h.tokens
            bigrams = list(zip(seq, seq[1:]))
            assert len(bigrams) == len(set(bigrams)), seq
    for g, w in zip(got, reference_beam_search(m, prompts, **kw)):
        assert_same(g, w)


class ShiftedTable:
    """A forward-only model whose logits depend on the last token through a table of
    half-steps (many exact ties) and are raised by ``shift`` for prompts starting with 0:
    a softmax does not change, but the magnitude of the logits does."""

    def __init__(self, vocab_size: int, seed: int, shift: float):
        rng = np.random.default_rng(seed)
        self.vocab_size = vocab_size
        self.table = np.round(rng.normal(size=(vocab_size, vocab_size)) * 2) / 2
        self.shift = shift

    def forward(self, ids):
        ids = np.asarray(ids)
        logits = self.table[ids[:, -1]].copy()
        logits[ids[:, 0] == 0] += self.shift
        return logits


@pytest.mark.parametrize("shift", [700.0, -700.0])
def test_a_batch_neighbour_with_huge_logits_changes_nothing(shift):
    """Each row's log-softmax is computed the same way whatever the other rows hold (a
    neighbour's logits near +-700 must not switch this prompt's arithmetic, or exact ties
    would break differently)."""
    kw = dict(beam_width=4, max_new_tokens=6)
    for seed in range(60):
        m = ShiftedTable(5, seed, shift)
        rng = np.random.default_rng(seed)
        p = rng.integers(1, 5, size=2).tolist()
        alone = batched_beam_search(m, [p], **kw)[0]
        batch = batched_beam_search(m, [p, [0, 1]], **kw)[0]
        assert [(h.tokens, h.score) for h in batch] == [(h.tokens, h.score) for h in alone]


# -- the scripted model itself ----------------------------------------------------------------

@pytest.mark.parametrize("given, want", [
    ({0: 0.0}, [1.0, 0.0, 0.0]),                             # a certain token
    ({0: math.log(0.5), 1: math.log(0.5)}, [0.5, 0.5, 0.0]),  # summing to exactly 1
    ({0: math.log(0.1), 1: math.log(0.2), 2: math.log(0.7)}, [0.1, 0.2, 0.7, 0.0]),  # 1 + ulp
    ({1: math.log(0.4)}, [0.3, 0.4, 0.3]),                    # the rest spread evenly
])
def test_scripted_probabilities_are_the_script_and_unlisted_tokens_share_the_rest(given, want):
    vocab = len(want)
    model = ScriptedLM(vocab, prompt_len=1, script={(): given})
    np.testing.assert_allclose(np.exp(model.forward(np.array([[0]]))[0]), want, atol=1e-15)


@pytest.mark.parametrize("given, says", [
    ({0: math.log(0.7), 1: math.log(0.5)}, "exceed 1"),
    ({-1: -1.0}, r"token -1 after \(\) is not a token id in \[0, 3\)"),
    ({3: -1.0}, r"token 3 after \(\) is not a token id"),
    ({True: -1.0}, "token True"),
])
def test_a_bad_script_is_refused_naming_what_is_wrong(given, says):
    with pytest.raises(ValueError, match=says):
        ScriptedLM(3, prompt_len=1, script={(): given}).forward(np.array([[0]]))
