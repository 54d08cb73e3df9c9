"""Speculative sampling: lossless against the target's exact distribution, greedy at T = 0,
one target call per round, exact budgets and EOS, clear errors.

The statistical check. For a prompt, the exact distribution of the first two generated tokens
is P(a, b) = p(a | prompt) * p(b | prompt + a), with p the target's processed distribution
(temperature, top-k, top-p), computed here by enumerating all V * V pairs with the target's
plain ``forward`` and a processor written in this file. N seeded runs are compared with it by
Pearson's chi-square (cells with expected count < 5 pooled into one; a run landing in a cell
of probability 0 fails outright). The critical value is the chi-square quantile at a
false-alarm rate of 1e-6 (Wilson-Hilferty approximation, slightly conservative at these
degrees of freedom), so a correct implementation fails it with probability below one in a
million, while the known wrong variants written below
(resampling from p instead of the residual after a rejection; drawing the bonus token from
the draft) exceed it by far.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npdecode import TinyLM
from npdecode.search.sampling import greedy
from npdecode.search.speculative import speculative_sample
from toy_models import CachedOnly, Recording

V = 6
TARGET = TinyLM(vocab_size=V, d_model=16, seed=11)
DRAFT = TinyLM(vocab_size=V, d_model=16, seed=12)   # another seed: q differs from p
PROMPTS = ([1, 2], [3, 4, 5])                         # lengths differ: per-row cache ends
RUNS = 6000                                           # runs per prompt
Z_1E6 = 4.753424                                      # standard normal quantile 1 - 1e-6


# -- the oracle ----------------------------------------------------------------------------

def processed_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Textbook processing of one logits vector (V,): /T, keep top-k, keep the nucleus."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    keep = set(order[:top_k] if top_k else order)
    probs = np.array([probs[i] if i in keep else 0.0 for i in range(len(x))])
    probs /= probs.sum()
    if top_p < 1.0:
        mass, nucleus = 0.0, set()
        for i in sorted(range(len(x)), key=lambda i: (-probs[i], i)):
            if mass >= top_p:
                break
            nucleus.add(i)
            mass += probs[i]
        probs = np.array([probs[i] if i in nucleus else 0.0 for i in range(len(x))])
        probs /= probs.sum()
    return probs


def next_probs(model, seq, cfg) -> np.ndarray:
    return processed_probs(model.forward(np.array([seq]))[0], *cfg)


def tables(model, prompt, cfg) -> tuple[np.ndarray, np.ndarray]:
    """p(. | prompt) (V,) and p(. | prompt + a) for every a (V, V)."""
    first = next_probs(model, prompt, cfg)
    second = np.stack([next_probs(model, prompt + [a], cfg) for a in range(V)])
    return first, second


def exact_pairs(prompt, cfg) -> np.ndarray:
    """P(first two tokens = a, b) under the target alone, (V, V), by enumeration."""
    first, second = tables(TARGET, prompt, cfg)
    return first[:, None] * second


def chi_square_excess(pairs: np.ndarray, exact: np.ndarray) -> float:
    """Pearson chi-square of observed token tuples (n, m) against ``exact`` (V, ..., V) over
    m axes, divided by the critical value at a 1e-6 false-alarm rate: > 1 rejects. A tuple of
    probability 0 gives inf."""
    n = len(pairs)
    observed = np.zeros(exact.shape)
    np.add.at(observed, tuple(pairs.T), 1)
    if observed[exact == 0].sum() > 0:
        return math.inf
    expected = n * exact
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    df = len(exp) - 1
    stat = float(((obs - exp) ** 2 / exp).sum())
    critical = df * (1 - 2 / (9 * df) + Z_1E6 * math.sqrt(2 / (9 * df))) ** 3
    return stat / critical


CONFIGS = [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.5, 0, 0.8)]  # (temperature, top_k, top_p)


def run_batch(cfg, k=3):
    """RUNS runs of each prompt in one batch (rows interleaved), seeds 0..2*RUNS-1."""
    prompts = [list(PROMPTS[i % 2]) for i in range(2 * RUNS)]
    res = speculative_sample(TARGET, DRAFT, prompts, num_draft_tokens=k, max_new_tokens=2,
                             temperature=cfg[0], top_k=cfg[1], top_p=cfg[2],
                             seed=list(range(2 * RUNS)))
    pairs = np.array([g.tokens for g in res.generations])
    return pairs, res


# k = 1: an accepted draft is followed by the bonus token, so the bonus path decides the second
# token; k = 3 asked for, capped at 2 by the two-token budget: the first round may reject at
# d_1 or d_2 (residual draws at both positions).
@pytest.mark.parametrize("cfg, k", [(CONFIGS[0], 1), (CONFIGS[0], 3), (CONFIGS[1], 1),
                                    (CONFIGS[1], 3), (CONFIGS[2], 3)],
                         ids=["T1-k1", "T1-k3cap2", "T0.7-top3-k1", "T0.7-top3-k3cap2",
                              "T1.5-topp0.8-k3cap2"])
def test_first_two_tokens_follow_the_target_distribution(cfg, k):
    pairs, res = run_batch(cfg, k)
    assert pairs.shape == (2 * RUNS, 2)
    for i, prompt in enumerate(PROMPTS):
        assert chi_square_excess(pairs[i::2], exact_pairs(list(prompt), cfg)) < 1.0
    # The draft really differs from the target: rejections (residual draws) happen.
    assert 0 < res.accepted < res.proposed


# Several rounds: the first four tokens of a 4-token vocabulary (256 sequences), with one
# or two drafts per round, so that later rounds start after an accepted run, a bonus token
# or a residual draw, from where the caches were rolled back; a round that reused an earlier
# round's random numbers, or lost track of where it stands, would skew the joint law.
TARGET4 = TinyLM(vocab_size=4, d_model=16, seed=21)
DRAFT4 = TinyLM(vocab_size=4, d_model=16, seed=22)


def exact_sequences(prompt, cfg, length) -> np.ndarray:
    """P(first ``length`` tokens = t_1..t_length) under TARGET4 alone, (4,) * length."""
    probs = np.ones(())
    for _ in range(length):
        nxt = np.array([next_probs(TARGET4, prompt + list(seq), cfg)
                        for seq in np.ndindex(probs.shape)])                    # [4^i, 4]
        probs = (probs.reshape(-1, 1) * nxt).reshape(probs.shape + (4,))
    return probs


@pytest.mark.parametrize("cfg, k", [(CONFIGS[0], 1), (CONFIGS[0], 2), (CONFIGS[1], 2)],
                         ids=["T1-k1", "T1-k2", "T0.7-top3-k2"])
def test_four_tokens_over_several_rounds_follow_the_target_distribution(cfg, k):
    prompt, runs = [1, 2, 3], 8000
    res = speculative_sample(TARGET4, DRAFT4, [prompt] * runs, num_draft_tokens=k,
                             max_new_tokens=4, temperature=cfg[0], top_k=cfg[1],
                             top_p=cfg[2], seed=list(range(runs)))
    seqs = np.array([g.tokens for g in res.generations])
    assert seqs.shape == (runs, 4)
    assert chi_square_excess(seqs, exact_sequences(prompt, cfg, 4)) < 1.0
    assert 0 < res.accepted < res.proposed
    assert res.target_calls > 2  # several rounds


# -- known wrong variants, which the same check must reject ------------------------------

def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of probs (n, V), by inverse CDF."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), probs.shape[1] - 1)


def variant_pairs(prompt, cfg, n, *, residual=True, bonus_from_target=True, seed=0):
    """First two tokens of n runs of one-draft speculative sampling, from exact tables.

    residual=False: after a rejection, resample from p instead of normalize(max(0, p - q)).
    bonus_from_target=False: the bonus token comes from the draft's q instead of p.
    With both True this is the correct algorithm.
    """
    rng = np.random.default_rng(seed)
    p0, p1 = tables(TARGET, prompt, cfg)
    q0, q1 = tables(DRAFT, prompt, cfg)
    rows = np.arange(n)

    def verify(p, q):  # one round with one draft; p, q (n, V)
        d = _draw(q, rng)
        ok = rng.random(n) * q[rows, d] < p[rows, d]
        resid = np.maximum(p - q, 0.0)
        resid = np.where(resid.sum(1, keepdims=True) > 0, resid, p) if residual else p
        return np.where(ok, d, _draw(resid, rng)), ok

    a, accepted = verify(np.tile(p0, (n, 1)), np.tile(q0, (n, 1)))
    bonus = _draw(p1[a] if bonus_from_target else q1[a], rng)
    b_next, _ = verify(p1[a], q1[a])
    b = np.where(accepted, bonus, b_next)
    return np.stack([a, b], axis=1)


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=["T1", "T0.7-top3"])
def test_the_check_accepts_the_correct_variant_and_rejects_wrong_ones(cfg):
    prompt = list(PROMPTS[0])
    exact = exact_pairs(prompt, cfg)
    assert chi_square_excess(variant_pairs(prompt, cfg, RUNS), exact) < 1.0
    no_residual = variant_pairs(prompt, cfg, RUNS, residual=False)
    assert chi_square_excess(no_residual, exact) > 1.0
    bonus_from_draft = variant_pairs(prompt, cfg, RUNS, bonus_from_target=False)
    assert chi_square_excess(bonus_from_draft, exact) > 1.0


# -- temperature 0 is target greedy decoding ----------------------------------------------

BIG_T = TinyLM(vocab_size=20, d_model=16, seed=1)


def close_draft(noise: float) -> TinyLM:
    """A draft near the target (its lm_head perturbed), so rounds accept some drafts."""
    d = TinyLM(vocab_size=20, d_model=16, seed=1)
    d.lm_head = d.lm_head + noise * np.random.default_rng(5).standard_normal(d.lm_head.shape)
    return d


def oracle_greedy(model, prompt, n, eos=None):
    seq, out = list(prompt), []
    for _ in range(n):
        t = int(np.argmax(model.forward(np.array([seq]))[0]))
        out.append(t)
        seq.append(t)
        if t == eos:
            break
    return out


@pytest.mark.parametrize("k", [1, 2, 4, 7])
@pytest.mark.parametrize("eos", [None, 8])
@pytest.mark.parametrize("noise", [0.03, 1.0])
def test_temperature_zero_equals_target_greedy(k, eos, noise):
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [3, 3]]
    res = speculative_sample(BIG_T, close_draft(noise), prompts, num_draft_tokens=k,
                             max_new_tokens=23, eos_token_id=eos, temperature=0.0)
    ref = greedy(BIG_T, prompts, max_new_tokens=23, eos_token_id=eos)
    for p, got, want in zip(prompts, res.generations, ref):
        assert got.tokens == oracle_greedy(BIG_T, p, 23, eos) == want.tokens
        assert got.finished == want.finished
        assert got.logprob == pytest.approx(want.logprob, abs=1e-9)


def test_top_p_zero_equals_target_greedy():
    """top_p = 0 keeps each distribution's best token alone (never fewer than one), so p and
    q are one-hot at any temperature, as at temperature 0."""
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    res = speculative_sample(BIG_T, close_draft(1.0), prompts, num_draft_tokens=3,
                             max_new_tokens=15, temperature=1.7, top_p=0.0, seed=3)
    for p, got in zip(prompts, res.generations):
        assert got.tokens == oracle_greedy(BIG_T, p, 15, None)


# -- one target call per round -------------------------------------------------------------

def oracle_rounds(target, draft, prompt, k, n_new, eos=None):
    """Greedy speculative decoding of one prompt, simulated with plain forwards.

    Returns (drafts proposed in each round, drafts accepted in all). At temperature 0 a draft
    is accepted exactly when it is the target's argmax; a round proposes min(k, budget left).
    """
    seq, made, proposed, accepted = list(prompt), 0, [], 0
    while made < n_new:
        kr = min(k, n_new - made)
        proposal = oracle_greedy(draft, seq, kr)
        truth = oracle_greedy(target, seq, kr + 1)
        j = next((i for i in range(kr) if proposal[i] != truth[i]), kr)
        step = truth[: j + 1][: n_new - made]
        if eos in step:
            step = step[: step.index(eos) + 1]
        seq += step
        made += len(step)
        proposed.append(kr)
        accepted += j   # accepted drafts count even when an EOS among them ends the row
        if eos in step:
            break
    return proposed, accepted


def test_a_uniform_of_exactly_zero_never_accepts_a_draft_the_target_rules_out(monkeypatch):
    """u = 0.0 is a legal draw of Generator.random: acceptance is u < p/q, so a draft the
    target gives probability 0 (at T = 0, any but its argmax) is still rejected."""
    import npdecode.search.speculative as spec

    class Zeros:
        def random(self, n):
            return np.zeros(n)

    monkeypatch.setattr(spec, "make_generators", lambda seed, n: [Zeros()] * n)
    prompts = [[1, 2, 3], [4]]
    res = spec.speculative_sample(BIG_T, close_draft(1.0), prompts, num_draft_tokens=4,
                                  max_new_tokens=12, temperature=0.0)
    assert res.accepted < res.proposed   # the draft disagrees with the target somewhere
    assert [g.tokens for g in res.generations] == [oracle_greedy(BIG_T, p, 12) for p in prompts]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_the_target_is_called_once_per_round(k):
    target, draft = Recording(BIG_T), Recording(close_draft(0.03))
    res = speculative_sample(target, draft, [[1, 2, 3]], num_draft_tokens=k, max_new_tokens=30,
                             temperature=0.0)
    rounds = len(oracle_rounds(BIG_T, draft.model, [1, 2, 3], k, 30)[0])
    assert target.log[0] == ("prefill", 1, 0)
    extends = target.log[1:]
    assert len(extends) == rounds and res.target_calls == 1 + rounds
    # Each round's single call scores the last committed token and every draft of the round.
    assert all(name == "extend" and 2 <= t <= k + 1 for name, _, t in extends)
    assert res.draft_calls == len(draft.log)


def test_counts_sum_each_rows_own_proposals_when_budgets_differ():
    """Rows accept different numbers of drafts, so later rounds find them with different
    budgets left (and an EOS ends one row after its first round): each row proposes only
    min(k, its own budget), and the counts are the sums of the rows' own rounds."""
    k, n_new, eos = 4, 7, 8
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [3, 3]]
    target, draft = Recording(BIG_T), Recording(close_draft(0.03))
    res = speculative_sample(target, draft, prompts, num_draft_tokens=k, max_new_tokens=n_new,
                             eos_token_id=eos, temperature=0.0)
    rows = [oracle_rounds(BIG_T, draft.model, p, k, n_new, eos) for p in prompts]
    per_round = [[kr[r] for kr, _ in rows if len(kr) > r]      # live rows' proposals, round r
                 for r in range(max(len(kr) for kr, _ in rows))]
    # The budgets really differ within a round: counting every live row at the round's largest
    # count (n * k) would give more.
    assert sum(map(sum, per_round)) < sum(len(c) * max(c) for c in per_round)
    assert res.proposed == sum(sum(kr) for kr, _ in rows)
    assert res.accepted == sum(a for _, a in rows)
    assert 0 < res.accepted < res.proposed
    assert res.target_calls == 1 + len(per_round) == len(target.log)
    # The draft runs the round's largest count of steps, one extend each.
    assert res.draft_calls == 1 + sum(max(c) for c in per_round) == len(draft.log)
    assert any(g.finished for g in res.generations)


def test_a_draft_equal_to_the_target_is_always_accepted():
    """p = q: every draft accepted, each round yields k + 1 tokens; ceil(n / (k+1)) rounds."""
    k, n_new = 4, 23
    target = Recording(BIG_T)
    res = speculative_sample(target, BIG_T, [[1, 2], [7, 3, 9]], num_draft_tokens=k,
                             max_new_tokens=n_new, temperature=1.0, seed=[3, 4])
    assert res.accepted == res.proposed
    assert res.target_calls == 1 + math.ceil(n_new / (k + 1)) == len(target.log)
    assert all(n == 2 for _, n, _ in target.log)   # one call serves every row
    assert [len(g.tokens) for g in res.generations] == [n_new, n_new]


# -- budgets, EOS, seeds ---------------------------------------------------------------------

def test_budget_and_eos_are_exact():
    prompts = [[1 + i % 5] * (1 + i % 3) for i in range(300)]
    res = speculative_sample(BIG_T, close_draft(0.3), prompts, num_draft_tokens=4,
                             max_new_tokens=7, eos_token_id=9, temperature=1.2,
                             seed=list(range(300)))
    n_finished = 0
    for g in res.generations:
        assert len(g.tokens) <= 7
        assert 9 not in g.tokens[:-1]
        assert g.finished == (g.tokens[-1] == 9)
        if not g.finished:
            assert len(g.tokens) == 7
        n_finished += g.finished
    assert 0 < n_finished < 300  # both kinds of ending were exercised


def test_logprob_is_the_raw_target_logprob():
    prompts = [[1, 2, 3], [4]]
    res = speculative_sample(BIG_T, close_draft(0.3), prompts, num_draft_tokens=3,
                             max_new_tokens=12, temperature=0.8, top_k=4, seed=[1, 2])
    for p, g in zip(prompts, res.generations):
        want, seq = 0.0, list(p)
        for t in g.tokens:
            x = BIG_T.forward(np.array([seq]))[0]
            want += x[t] - x.max() - math.log(np.exp(x - x.max()).sum())
            seq.append(t)
        assert g.logprob == pytest.approx(want, abs=1e-9)


def test_same_seed_same_output():
    kw = dict(num_draft_tokens=3, max_new_tokens=15, temperature=1.0, seed=[5, 6])
    a = speculative_sample(BIG_T, close_draft(0.3), [[1], [2, 3]], **kw)
    b = speculative_sample(BIG_T, close_draft(0.3), [[1], [2, 3]], **kw)
    assert a == b


# -- errors ------------------------------------------------------------------------------------

class ForwardOnly:
    vocab_size = 20

    def forward(self, ids):
        return BIG_T.forward(ids)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_draft_tokens=0), "num_draft_tokens"),
    (dict(num_draft_tokens=2.5), "num_draft_tokens"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=-0.01), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(seed=[1, 2, 3]), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(eos_token_id=20), "eos_token_id"),
])
def test_bad_options_are_refused(kwargs, match):
    args = dict(num_draft_tokens=2, max_new_tokens=5) | kwargs
    with pytest.raises(ValueError, match=match):
        speculative_sample(BIG_T, BIG_T, [[1], [2]], **args)


def test_models_without_the_cached_protocol_are_refused():
    with pytest.raises(ValueError, match="cached protocol"):
        speculative_sample(ForwardOnly(), BIG_T, [[1]], max_new_tokens=3)
    with pytest.raises(ValueError, match="draft"):
        speculative_sample(BIG_T, ForwardOnly(), [[1]], max_new_tokens=3)


def test_models_must_share_the_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_sample(BIG_T, TinyLM(vocab_size=21, d_model=16), [[1]], max_new_tokens=3)


@pytest.mark.parametrize("undeclared", ["target", "draft"])
def test_a_model_that_does_not_declare_another_vocabulary_is_named(undeclared):
    """One model declares 20 tokens, the other declares nothing and returns 21 logits: the
    error says the two must share the vocabulary and which one returned what."""
    other = Recording(TinyLM(vocab_size=21, d_model=16, seed=3))
    del other.vocab_size
    target, draft = (other, BIG_T) if undeclared == "target" else (BIG_T, other)
    with pytest.raises(ValueError, match=f"share the vocabulary; the {undeclared} model "
                                         f"returned 21 logits per token, expected 20"):
        speculative_sample(target, draft, [[1]], max_new_tokens=3)


def test_bad_prompts_and_empty_batch():
    assert speculative_sample(BIG_T, BIG_T, [], max_new_tokens=3).generations == []
    with pytest.raises(ValueError, match="prompt 1"):
        speculative_sample(BIG_T, BIG_T, [[1], []], max_new_tokens=3)
    with pytest.raises(ValueError, match="position 1"):
        speculative_sample(BIG_T, BIG_T, [[1, 20]], max_new_tokens=3)


class NaNAfterPrefill(Recording):
    def extend(self, tokens, cache):
        out = self.model.extend(tokens, cache).copy()
        out[1] = np.nan
        return out


class NaNInPrefill(Recording):
    def prefill(self, prompts, cache):
        out = self.model.prefill(prompts, cache).copy()
        out[1] = np.nan
        return out


@pytest.mark.parametrize("broken", [NaNAfterPrefill, NaNInPrefill])
@pytest.mark.parametrize("who", ["target", "draft"])
def test_nan_names_the_model_and_the_batch_item(broken, who):
    models = {"target": BIG_T, "draft": BIG_T, who: broken(BIG_T)}
    with pytest.raises(ValueError, match=f"^the {who} model returned NaN .*batch item 1$"):
        speculative_sample(models["target"], models["draft"], [[1], [2]], max_new_tokens=3)


def test_a_huge_draft_count_costs_no_more_than_the_budget():
    # No round proposes more than max_new_tokens drafts, so asking for 10**7 per round gives
    # what asking for max_new_tokens does, without caches or draws sized for 10**7.
    kw = dict(max_new_tokens=3, seed=[1, 2, 3])
    draft, prompts = close_draft(0.5), [[1], [2, 3], [4]]
    huge = speculative_sample(BIG_T, draft, prompts, num_draft_tokens=10**7, **kw)
    cap = speculative_sample(BIG_T, draft, prompts, num_draft_tokens=3, **kw)
    assert [g.tokens for g in huge.generations] == [g.tokens for g in cap.generations]
    assert (huge.proposed, huge.accepted, huge.target_calls) == (
        cap.proposed, cap.accepted, cap.target_calls)


class ContextLimited(Recording):
    """A model with a context limit that fails loudly if any position reaches it."""

    def __init__(self, model, limit):
        super().__init__(model)
        self.max_context = limit

    def extend(self, tokens, cache):
        pos = cache.positions(np.shape(tokens)[1])
        assert pos.max() < self.max_context, "a position beyond the model's context was written"
        return super().extend(tokens, cache)


def test_a_context_limit_is_checked_up_front_and_never_crossed():
    target, draft = ContextLimited(BIG_T, 12), ContextLimited(BIG_T, 12)
    prompts = [[1, 2, 3, 4], [5], [6, 7]]
    # prompt 0 has 4 tokens: 8 new tokens fill the context exactly
    res = speculative_sample(target, draft, prompts, num_draft_tokens=5, max_new_tokens=8,
                             temperature=1.0, seed=[1, 2, 3])
    assert [len(g.tokens) for g in res.generations] == [8, 8, 8]
    with pytest.raises(ValueError, match="context"):
        speculative_sample(target, draft, prompts, num_draft_tokens=5, max_new_tokens=9)


class Counting:
    """A cached model that counts every call of any of its methods."""

    def __init__(self, model, max_context=None):
        self.model, self.calls = model, 0
        self.vocab_size, self.max_context = model.vocab_size, max_context

    def _count(self, name, *args):
        self.calls += 1
        return getattr(self.model, name)(*args)

    def forward(self, ids):
        return self._count("forward", ids)

    def new_cache(self, rows, slots):
        return self._count("new_cache", rows, slots)

    def prefill(self, prompts, cache):
        return self._count("prefill", prompts, cache)

    def extend(self, tokens, cache):
        return self._count("extend", tokens, cache)


def test_the_drafts_own_context_limit_is_checked_up_front():
    # The target has no limit; the draft's 6 positions cannot hold 4 prompt tokens + 5 new.
    target, draft = Counting(BIG_T), Counting(BIG_T, max_context=6)
    with pytest.raises(ValueError, match=r"needs 9 positions but the draft model's context is 6"):
        speculative_sample(target, draft, [[1, 2, 3, 4], [5]], num_draft_tokens=3,
                           max_new_tokens=5, temperature=1.0, seed=[1, 2])
    assert target.calls == draft.calls == 0   # refused before any work
    # Within the draft's limit the same call runs.
    res = speculative_sample(target, draft, [[1, 2, 3, 4], [5]], num_draft_tokens=3,
                             max_new_tokens=2, temperature=1.0, seed=[1, 2])
    assert [len(g.tokens) for g in res.generations] == [2, 2]


def test_temperature_zero_equals_greedy_on_a_model_with_positions():
    """The shipped CharGPT pair: learned positions, a context of 16, about half the drafts
    accepted. Rolled-back rows must get their positions right, up to the last one."""
    from npdecode.models import pretrained
    target, draft = pretrained.load_target(), pretrained.load_draft()
    from npdecode.models.chars import EOS, encode
    prompts = [encode(p) for p in ("", "em", "jo", "christoph", "a", "zzz")]
    n_new = target.max_context - max(len(p) for p in prompts)
    for eos in (EOS, None):
        res = speculative_sample(target, draft, prompts, num_draft_tokens=4,
                                 max_new_tokens=n_new, eos_token_id=eos, temperature=0.0)
        for p, g in zip(prompts, res.generations):
            assert g.tokens == oracle_greedy(target, p, n_new, eos)
        assert 0 < res.accepted < res.proposed



@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 3)])
def test_a_prompt_with_its_seed_gives_the_same_tokens_alone_or_in_a_batch(temperature, top_k):
    kw = dict(num_draft_tokens=3, max_new_tokens=9, eos_token_id=0, temperature=temperature,
              top_k=top_k)
    prompt, others = [1, 2, 3], [[4], [5, 5, 5, 5, 5], [2, 3]]
    differs = 0
    for s in range(25):
        alone = speculative_sample(TARGET, DRAFT, [prompt], seed=[s], **kw).generations[0]
        batch = speculative_sample(TARGET, DRAFT, [others[0], prompt] + others[1:],
                                   seed=[100 + s, s, 200 + s, 300 + s], **kw).generations
        assert batch[1].tokens == alone.tokens, s
        assert abs(batch[1].logprob - alone.logprob) < 1e-9
        differs += batch[0].tokens != alone.tokens
    assert differs > 0  # the other prompts really were decoded differently


def test_a_cached_model_without_a_max_context_attribute_is_accepted():
    # the cached protocol, and no max_context attribute at all
    res = speculative_sample(CachedOnly(TARGET), CachedOnly(DRAFT), [[1, 2]], max_new_tokens=4,
                             temperature=0.0)
    assert res.generations[0].tokens == greedy(TARGET, [[1, 2]], max_new_tokens=4)[0].tokens
