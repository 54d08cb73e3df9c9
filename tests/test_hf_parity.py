"""``beam_search``: the "hf" policy against transformers ``generate`` (the oracle), the option
checks, and a scripted case where the "pool" and "hf" policies disagree in the documented way.

The parity tests build random GPT-2 checkpoints locally (no download) and skip when torch or
transformers are missing; the other tests need neither.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npdecode.search.beam_search import beam_search
from random_gpt2 import left_padded, random_gpt2

V = 64          # vocabulary of the random GPT-2 models
POSITIONS = 64


# -- transformers side ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf():
    """torch + transformers, or skip."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    return torch, transformers


def build_pair(hf, path, seed, dtype):
    """A random GPT-2 saved to ``path``, as (transformers model, npdecode GPT2, likely token).

    Weights are drawn wider than transformers' init so that the next-token distributions are
    peaked; the returned token is the one with the highest mean probability over random
    contexts (used as EOS, so that hypotheses finish often).
    """
    torch, transformers = hf
    from npdecode.models.gpt2 import GPT2
    model = random_gpt2(path, vocab=V, positions=POSITIONS, seed=seed, tied=False,
                        special_id=None)
    ours = GPT2.from_pretrained(path, dtype=np.float64 if dtype == "float64" else np.float32)
    model = model.double() if dtype == "float64" else model.float()
    contexts = np.random.default_rng(seed).integers(0, V, (256, 6))
    logits = ours.forward(contexts).astype(np.float64)                   # [256, V]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return model, ours, int(probs.mean(axis=0).argmax())


def hf_generate(hf, model, prompts, *, pad, eos, K, max_new, lp, es, n_ret, ngram):
    """transformers beam search on the left-padded batch -> per item [(tokens, score), ...]."""
    torch, transformers = hf
    ids, mask = left_padded(prompts, pad)
    W = ids.shape[1]                                  # prompt width: generation starts here
    # Every option that could add a logits processor or stopping rule is set explicitly.
    config = transformers.GenerationConfig(
        num_beams=K, do_sample=False, max_new_tokens=max_new, min_length=0, min_new_tokens=None,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None, length_penalty=lp,
        early_stopping=es, num_return_sequences=n_ret, no_repeat_ngram_size=ngram,
        repetition_penalty=1.0, temperature=None, top_k=None, top_p=None,
        forced_bos_token_id=None, forced_eos_token_id=None, suppress_tokens=None,
        begin_suppress_tokens=None, bad_words_ids=None, diversity_penalty=0.0,
        renormalize_logits=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, generation_config=config)
    # beam_indices holds -1 past each hypothesis' end: it gives the generated length.
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()
    seqs, scores = out.sequences.tolist(), out.sequences_scores.tolist()
    return [[(seqs[r][W:W + lengths[r]], scores[r])
             for r in range(i * n_ret, (i + 1) * n_ret)] for i in range(len(prompts))]


def grid(n_cases, seed):
    """A reproducible sample of the option grid (the full product would take too long)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_cases):
        K = int(rng.choice([2, 3, 4, 5]))
        cases.append(dict(
            batch=int(rng.choice([1, 2, 4])), K=K,
            lp=float(rng.choice([-1.0, 0.0, 0.6, 1.0, 2.0])),
            es=[True, False, "never"][rng.integers(3)], n_ret=int(rng.integers(1, K + 1)),
            ngram=int(rng.choice([0, 0, 1, 2, 3])), max_new=int(rng.integers(1, 12)),
            eos=bool(rng.random() < 0.85), seed=int(rng.integers(1 << 30))))
    return cases


# Hand-picked corners, then a sampled grid. (batch, K, lp, es, n_ret, ngram, max_new, eos)
CORNERS = [
    dict(batch=3, K=4, lp=1.0, es=False, n_ret=4, ngram=0, max_new=10, eos=True, seed=1),
    dict(batch=3, K=3, lp=2.0, es="never", n_ret=3, ngram=0, max_new=10, eos=True, seed=2),
    dict(batch=3, K=3, lp=-1.0, es="never", n_ret=2, ngram=0, max_new=10, eos=True, seed=3),
    dict(batch=4, K=2, lp=1.0, es=True, n_ret=2, ngram=0, max_new=10, eos=True, seed=4),
    # Ragged prompts padded with EOS and a unigram ban: transformers bans the padding token
    # for padded rows only (its n-gram history is the padded row).
    dict(batch=4, K=3, lp=1.0, es=False, n_ret=3, ngram=1, max_new=8, eos=True, seed=5),
    dict(batch=4, K=4, lp=0.6, es="never", n_ret=1, ngram=2, max_new=12, eos=True, seed=6),
    dict(batch=2, K=3, lp=1.0, es=False, n_ret=3, ngram=0, max_new=6, eos=False, seed=7),
    dict(batch=2, K=2, lp=0.0, es=False, n_ret=1, ngram=0, max_new=1, eos=True, seed=8),
    # Prompts for which the heuristic (False) and the exact bound ("never") give different
    # hypotheses on model 11 (checked by the next test), each against transformers.
    dict(batch=4, K=2, lp=1.0, es="never", n_ret=2, ngram=0, max_new=12, eos=True, seed=100),
    dict(batch=4, K=2, lp=1.0, es=False, n_ret=2, ngram=0, max_new=12, eos=True, seed=100),
    dict(batch=4, K=4, lp=1.0, es="never", n_ret=4, ngram=0, max_new=12, eos=True, seed=106),
    dict(batch=4, K=4, lp=1.0, es=False, n_ret=4, ngram=0, max_new=12, eos=True, seed=106),
]
CASES = CORNERS + grid(24, seed=2024)


def case_id(c):
    return (f"B{c['batch']}-K{c['K']}-lp{c['lp']}-es{c['es']}-ret{c['n_ret']}-ng{c['ngram']}"
            f"-T{c['max_new']}-{'eos' if c['eos'] else 'noeos'}-s{c['seed']}")


@pytest.fixture(scope="module", params=["float64", "float32"])
def models(request, hf, tmp_path_factory):
    """Two random GPT-2 pairs per dtype (model seed alternates across cases)."""
    return [build_pair(hf, tmp_path_factory.mktemp(f"gpt2_{request.param}_{s}"), s,
                       request.param) for s in (11, 12)]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_hf_policy_matches_transformers_generate(hf, models, case):
    hf_model, ours, likely = models[case["seed"] % 2]
    rng = np.random.default_rng(case["seed"])
    lengths = rng.integers(1, 9, case["batch"])
    prompts = [[int(t) for t in rng.integers(0, V, n)] for n in lengths]
    eos = likely if case["eos"] else None
    pad = likely  # GPT-2's usual padding: the EOS token
    opts = dict(K=case["K"], max_new=case["max_new"], lp=case["lp"], es=case["es"],
                n_ret=case["n_ret"], ngram=case["ngram"])
    want = hf_generate(hf, hf_model, prompts, pad=pad, eos=eos, **opts)
    got = beam_search(ours, prompts, num_beams=case["K"], max_new_tokens=case["max_new"],
                      eos_token_id=eos, length_penalty=case["lp"], early_stopping=case["es"],
                      num_return_sequences=case["n_ret"], no_repeat_ngram_size=case["ngram"],
                      policy="hf", pad_token_id=pad)
    assert len(got) == len(prompts)
    for b, (hyps, ref) in enumerate(zip(got, want)):
        assert [h.tokens for h in hyps] == [tokens for tokens, _ in ref], f"item {b}"
        # transformers accumulates in float32 whatever the model's dtype: 1e-5 absolute, or
        # float32's relative precision for large scores (length_penalty < 0 multiplies).
        np.testing.assert_allclose([h.score for h in hyps], [s for _, s in ref],
                                   atol=1e-5, rtol=5e-7, err_msg=f"item {b}")
        for h in hyps:  # the score is the logprob over the generated length, EOS included
            assert h.score == pytest.approx(h.logprob / len(h.tokens) ** case["lp"], abs=1e-12)
            assert h.finished == (eos is not None and h.tokens[-1] == eos)


def test_grid_covers_early_stopping_values_that_change_the_result(hf, models):
    """Guards the grid: the "never" corners must differ from the heuristic on their prompts,
    else the parity cases above could not tell the two stopping rules apart."""
    _, ours, likely = models[0]
    for seed, K in ((100, 2), (106, 4)):
        rng = np.random.default_rng(seed)
        prompts = [[int(t) for t in rng.integers(0, V, n)] for n in rng.integers(1, 9, 4)]
        kw = dict(num_beams=K, max_new_tokens=12, eos_token_id=likely, num_return_sequences=K,
                  policy="hf", pad_token_id=likely)
        a = beam_search(ours, prompts, early_stopping=False, **kw)
        b = beam_search(ours, prompts, early_stopping="never", **kw)
        assert [[h.tokens for h in r] for r in a] != [[h.tokens for h in r] for r in b]


def test_grid_exercises_finishing_and_padding(hf, models):
    """Guards the grid itself: EOS must actually end hypotheses early in some cases."""
    _, ours, likely = models[0]
    res = beam_search(ours, [[1, 2, 3], [4]], num_beams=3, max_new_tokens=10,
                      eos_token_id=likely, num_return_sequences=3, policy="hf")
    lengths = [len(h.tokens) for hyps in res for h in hyps]
    assert min(lengths) < 10 and any(h.finished for hyps in res for h in hyps)


def test_length_penalty_counts_generated_tokens_only(hf, models):
    """Independent of our implementation: transformers' own per-step log-probs, summed over
    the generated tokens and divided by their number (EOS included) ** length_penalty, give
    its sequences_scores."""
    torch, _ = hf
    hf_model, _, likely = models[0]
    prompt = torch.tensor([[5, 9, 33, 2, 17, 40, 8]])
    out = hf_model.generate(prompt, num_beams=3, do_sample=False, max_new_tokens=9,
                            eos_token_id=likely, pad_token_id=likely, length_penalty=1.5,
                            min_length=0, output_scores=True, return_dict_in_generate=True)
    steps = hf_model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                               normalize_logits=False)
    n = int((out.beam_indices[0] >= 0).sum())
    total = float(steps[0, :n].sum())
    assert float(out.sequences_scores[0]) == pytest.approx(total / n ** 1.5, abs=1e-5)
    assert float(out.sequences_scores[0]) != pytest.approx(total / (n + 7) ** 1.5, abs=1e-5)


# -- a scripted model: pool and hf disagree -------------------------------------------------

EOS, A, B, C = 0, 1, 2, 3
# Next-token probabilities given the last token (a Markov chain over 4 tokens).
TABLE = {C: [0.40, 0.31, 0.28, 0.01],     # after the prompt [C]
         A: [0.10, 0.40, 0.30, 0.20],
         B: [0.97, 0.01, 0.01, 0.01],
         EOS: [0.25, 0.25, 0.25, 0.25]}


class MarkovLM:
    """Logits = log P(next | last token); only ``forward``, so the recompute path is used."""

    vocab_size = 4

    def __init__(self):
        self.calls = 0

    def forward(self, token_ids):
        self.calls += 1
        ids = np.asarray(token_ids)
        return np.log(np.array([TABLE[int(t)] for t in ids[:, -1]]))   # [N, 4]


def test_pool_and_hf_policies_disagree_as_documented():
    """K=2, length_penalty=1: at step 1 the candidates are EOS (.40), A (.31), B (.28).

    pool: the finished [EOS] keeps one of the two slots, so only [A] stays live and [B] is
    pruned; [A, ...] never beats [EOS]. Best: [EOS], log .40.
    hf:   [EOS] goes to the finished set and two beams keep running, [A] and [B]; [B, EOS]
    finishes at step 2 with (log .28 + log .97) / 2, better than log .40. Best: [B, EOS].
    """
    lg = math.log
    pool = beam_search(MarkovLM(), [[C]], num_beams=2, max_new_tokens=3, eos_token_id=EOS,
                       length_penalty=1.0, num_return_sequences=2, policy="pool")[0]
    hf_model = MarkovLM()
    hf_ = beam_search(hf_model, [[C]], num_beams=2, max_new_tokens=3, eos_token_id=EOS,
                      length_penalty=1.0, num_return_sequences=2, policy="hf")[0]

    assert [h.tokens for h in pool] == [[EOS], [A, A, A]]
    assert pool[0].score == pytest.approx(lg(.40), abs=1e-12)
    assert pool[1].score == pytest.approx((lg(.31) + 2 * lg(.40)) / 3, abs=1e-12)
    assert not pool[1].finished  # the length limit stopped it

    assert [h.tokens for h in hf_] == [[B, EOS], [EOS]]
    assert hf_[0].score == pytest.approx((lg(.28) + lg(.97)) / 2, abs=1e-12)
    assert hf_[1].score == pytest.approx(lg(.40), abs=1e-12)
    # hf stops after step 2, one step before the length limit: its best running beam [A, A]
    # scores (log .31 + log .40) / 2, worse than its worst finished one, [EOS] at log .40, so
    # the heuristic ends the search.
    assert (lg(.31) + lg(.40)) / 2 < lg(.40)
    assert hf_model.calls == 2


def test_hf_early_stopping_true_stops_at_k_finished():
    """K=2, early_stopping=True: the search ends once [EOS] and [B, EOS] have finished, even
    with a length penalty that rewards length; with "never" it continues (exact bound) and the
    finished set can only improve."""
    kw = dict(num_beams=2, max_new_tokens=6, eos_token_id=EOS, length_penalty=3.0,
              num_return_sequences=2, policy="hf")
    early = beam_search(MarkovLM(), [[C]], early_stopping=True, **kw)[0]
    never = beam_search(MarkovLM(), [[C]], early_stopping="never", **kw)[0]
    assert [h.tokens for h in early] == [[B, EOS], [EOS]]
    assert never[0].score >= early[0].score and never[1].score >= early[1].score
    assert len(never[0].tokens) > 2  # a longer hypothesis won once the search went on


def test_hf_finished_set_keeps_an_older_hypothesis_ahead_of_a_new_one_at_equal_score():
    """Step 1 offers four tokens at exactly -log 4, the EOS among them; after 1 or 2 the EOS
    is certain (log-probability exactly 0). With no length penalty [EOS], [1, EOS] and
    [2, EOS] all score -log 4: the one finished first ranks first, then the new ones in
    candidate order."""

    class Ties:
        vocab_size = 4

        def forward(self, ids):
            rows = [[0.0, 0.0, 0.0, 0.0] if len(r) == 1 else [0.0, -np.inf, -np.inf, -np.inf]
                    for r in np.asarray(ids)]
            return np.array(rows)

    res = beam_search(Ties(), [[3]], num_beams=2, max_new_tokens=2, eos_token_id=0,
                      length_penalty=0.0, num_return_sequences=2, policy="hf")[0]
    assert res[0].score == res[1].score and abs(res[0].score + math.log(4)) < 1e-15
    assert [h.tokens for h in res] == [[0], [1, 0]]


# -- options and bad input ------------------------------------------------------------------

def test_options_are_checked():
    m = MarkovLM()
    with pytest.raises(ValueError, match="policy"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=2, policy="greedy")
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=2, early_stopping="sometimes",
                    policy="hf")
    with pytest.raises(ValueError, match="num_return_sequences"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=2, num_return_sequences=3,
                    policy="hf")
    with pytest.raises(ValueError, match="hf"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=2, early_stopping=True)


def test_padding_without_an_id_bans_no_token_and_pad_token_id_is_checked():
    class Loves3:  # token 3, the last id, is the likely next token whatever the context
        vocab_size = 4

        def forward(self, token_ids):
            return np.tile(np.log([0.1, 0.1, 0.1, 0.7]), (len(token_ids), 1))

    kw = dict(num_beams=2, max_new_tokens=1, no_repeat_ngram_size=1, policy="hf")
    alone = beam_search(Loves3(), [[0]], **kw)[0]
    assert alone[0].tokens == [3]
    # left-padded next to a longer prompt, with neither pad nor EOS id: nothing more banned
    assert beam_search(Loves3(), [[0], [1, 2, 0, 1, 0]], **kw)[0] == alone
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=f"pad_token_id {bad} is outside"):
            beam_search(Loves3(), [[0], [1, 2]], pad_token_id=bad, **kw)


@pytest.mark.parametrize("policy", ["hf", "pool"])
def test_bad_input_is_refused_before_decoding(policy):
    m = MarkovLM()
    assert beam_search(m, [], num_beams=2, max_new_tokens=2, policy=policy) == []
    with pytest.raises(ValueError, match="prompt 1"):
        beam_search(m, [[C], []], num_beams=2, max_new_tokens=2, policy=policy)
    with pytest.raises(ValueError, match="vocab"):
        beam_search(m, [[C], [1, 4]], num_beams=2, max_new_tokens=2, policy=policy)
    with pytest.raises(ValueError, match="eos_token_id"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=2, eos_token_id=4, policy=policy)
    with pytest.raises(ValueError, match="max_new_tokens"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=-1, policy=policy)
    with pytest.raises(ValueError, match="num_beams|beam_width"):
        beam_search(m, [[C]], num_beams=0, max_new_tokens=2, policy=policy)
    with pytest.raises(ValueError, match="length_penalty|alpha"):
        beam_search(m, [[C]], num_beams=2, max_new_tokens=2, length_penalty=float("nan"),
                    policy=policy)


def test_hf_policy_reports_bad_logits_with_the_batch_item():
    class Broken(MarkovLM):
        def forward(self, token_ids):
            out = super().forward(token_ids)
            out[np.asarray(token_ids)[:, 0] == A] = np.nan   # prompt 1 starts with A
            return out
    with pytest.raises(ValueError, match="NaN.*batch item 1"):
        beam_search(Broken(), [[C], [A]], num_beams=2, max_new_tokens=3, policy="hf")


class ThreeTokens:
    """V = 3, EOS 0: token probabilities .2, .5, .3 after every prefix (forward only)."""

    vocab_size = 3
    max_context = None

    def __init__(self):
        self.calls = 0

    def forward(self, token_ids):
        self.calls += 1
        return np.tile(np.log([0.2, 0.5, 0.3]), (len(token_ids), 1))


class NothingAfterEOS(ThreeTokens):
    """The same, but no token may follow an EOS: an all -inf row there."""

    def forward(self, token_ids):
        out = super().forward(token_ids)
        out[np.asarray(token_ids)[:, -1] == 0] = -np.inf
        return out


@pytest.mark.parametrize("K", [3, 5])
def test_hf_policy_ignores_the_logits_of_dead_beams(K):
    # With K >= V the first step has fewer than K live candidates, so dead placeholder beams
    # (one continuing after the EOS) run alongside; their logits must not matter.
    kw = dict(num_beams=K, max_new_tokens=3, eos_token_id=0, num_return_sequences=K,
              policy="hf")
    got = beam_search(NothingAfterEOS(), [[1], [2, 2]], **kw)
    assert got == beam_search(ThreeTokens(), [[1], [2, 2]], **kw)
    assert all(len(hyps) == K and all(math.isfinite(h.score) for h in hyps) for hyps in got)


def test_hf_policy_caps_a_huge_num_beams_at_every_distinct_hypothesis():
    import tracemalloc
    kw = dict(max_new_tokens=3, eos_token_id=0, num_return_sequences=39, policy="hf")
    every = beam_search(ThreeTokens(), [[1]], num_beams=3 + 9 + 27, **kw)  # all sequences
    tracemalloc.start()
    try:
        huge = beam_search(ThreeTokens(), [[1]], num_beams=10**5, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert huge == every
    assert peak < 2**20   # a state of 10^5 beams would take tens of MB


def test_hf_policy_refuses_bad_input_without_calling_the_model():
    m = ThreeTokens()
    for kw in (dict(num_beams=0), dict(max_new_tokens=-1), dict(eos_token_id=3),
               dict(length_penalty=float("inf")), dict(num_return_sequences=3)):
        args = dict(num_beams=2, max_new_tokens=2, policy="hf") | kw
        with pytest.raises(ValueError):
            beam_search(m, [[1]], **args)
    with pytest.raises(ValueError, match="vocab"):
        beam_search(m, [[1, 3]], num_beams=2, max_new_tokens=2, policy="hf")
    assert m.calls == 0


def test_hf_policy_is_batch_independent_without_ngram_bans(hf, models):
    """Each item's search is its own: alone or in a batch, the same hypotheses. (With n-gram
    bans transformers lets the left padding into the history, so a batch can change them.)"""
    _, ours, likely = models[1]
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7]]
    kw = dict(num_beams=3, max_new_tokens=8, eos_token_id=likely, length_penalty=0.6,
              num_return_sequences=3, policy="hf")
    together = beam_search(ours, prompts, **kw)
    tol = 1e-9 if ours.dtype == np.float64 else 1e-5  # float32 matmuls round by batch shape
    for p, hyps in zip(prompts, together):
        alone = beam_search(ours, [p], **kw)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        np.testing.assert_allclose([h.score for h in alone], [h.score for h in hyps],
                                   atol=tol, rtol=0)


@pytest.mark.parametrize("kw", [
    dict(num_beams=3, length_penalty=0.6, early_stopping=False, num_return_sequences=3),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never", num_return_sequences=2,
         no_repeat_ngram_size=2),
    dict(num_beams=2, length_penalty=1.0, early_stopping=True, num_return_sequences=2,
         pad_token_id=7),
])
def test_hf_policy_gives_the_same_results_through_the_cache_and_through_forward(kw):
    """TinyLM through its KV cache, and through ``forward`` alone (the prefixes re-run)."""
    from npdecode import TinyLM
    from toy_models import ForwardOnly
    model = TinyLM(vocab_size=12, d_model=8, seed=5)
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3]]
    cached = beam_search(model, prompts, max_new_tokens=7, eos_token_id=4, policy="hf", **kw)
    plain = beam_search(ForwardOnly(model), prompts, max_new_tokens=7, eos_token_id=4,
                        policy="hf", **kw)
    assert any(h.finished for hyps in cached for h in hyps)  # EOS is reached: both kinds
    for a, b in zip(cached, plain, strict=True):
        assert [(h.tokens, h.finished) for h in a] == [(h.tokens, h.finished) for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-9,
                                   rtol=0)
        np.testing.assert_allclose([h.logprob for h in a], [h.logprob for h in b], atol=1e-9,
                                   rtol=0)


def test_hf_policy_zero_new_tokens_and_context_limit():
    res = beam_search(MarkovLM(), [[C], [A, B]], num_beams=2, max_new_tokens=0, policy="hf")
    assert [[(h.tokens, h.score, h.finished) for h in r] for r in res] == [[([], 0.0, False)]] * 2

    class Limited(MarkovLM):
        max_context = 4
    with pytest.raises(ValueError, match="context"):
        beam_search(Limited(), [[C, A]], num_beams=2, max_new_tokens=3, policy="hf")
