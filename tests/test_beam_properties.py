"""The fast path against the slow per-beam reference on random models and settings."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npdecode import TinyLM, batched_beam_search
from npdecode import cache as cache_module
from npdecode.search import candidates
from reference_beam import reference_beam_search


class Masked(TinyLM):
    """TinyLM with some tokens masked to -inf (a legitimate way to forbid them)."""

    def __init__(self, masked, **kw):
        super().__init__(**kw)
        self.masked = list(masked)

    def forward(self, ids):
        out = super().forward(ids)
        out[:, self.masked] = -np.inf
        return out

    def extend(self, tokens, cache):
        out = super().extend(tokens, cache)
        out[..., self.masked] = -np.inf
        return out


@st.composite
def cases(draw, max_vocab=24, ngrams=(0, 0, 0, 0, 0, 0, 1, 2), max_new_tokens=6):
    vocab = draw(st.integers(2, max_vocab))
    kw = dict(vocab_size=vocab, d_model=draw(st.sampled_from([4, 8, 16])),
              seed=draw(st.integers(0, 2**16)),
              dtype=draw(st.sampled_from([np.float64, np.float32])))
    masked = draw(st.lists(st.integers(0, vocab - 1), max_size=vocab - 1, unique=True))
    model = Masked(masked, **kw) if masked else TinyLM(**kw)
    prompts = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=6),
                            min_size=1, max_size=4))
    # EOS among the likely tokens half the time, so that beams really do finish
    eos = draw(st.one_of(st.none(), st.integers(0, vocab - 1),
                         st.just(int(np.argmax(model.forward(np.array([prompts[0]]))[0])))))
    return dict(model=model, prompts=prompts, beam_width=draw(st.integers(1, 6)),
                max_new_tokens=draw(st.integers(0, max_new_tokens)),
                alpha=draw(st.floats(-1.0, 2.5)), eos_token_id=eos,
                no_repeat_ngram_size=draw(st.sampled_from(ngrams)))


def check_equal(got, want, tol=1e-9):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [h.tokens for h in g] == [h.tokens for h in w]
        assert [h.finished for h in g] == [h.finished for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], rtol=0, atol=tol)
        np.testing.assert_allclose([h.logprob for h in g], [h.logprob for h in w], rtol=0,
                                   atol=tol)


def tolerance(model):
    """1e-9 in float64. A float32 model's logits differ by ~1e-8 between batch shapes and
    between its cached and plain paths (BLAS rounding), so float32 gets 1e-5."""
    return 1e-9 if model.dtype == np.float64 else 1e-5


@settings(max_examples=80, deadline=None)
@given(cases())
def test_cached_fast_path_equals_the_reference(case):
    check_equal(batched_beam_search(**case), reference_beam_search(**case),
                tolerance(case["model"]))


@settings(max_examples=60, deadline=None)
@given(cases(max_vocab=5, ngrams=(1, 2), max_new_tokens=8))
def test_hypotheses_that_run_out_of_allowed_tokens_match_the_reference(case):
    """A few tokens and n-gram bans: hypotheses use up what they may say and stop, keeping
    their place in the pool."""
    check_equal(batched_beam_search(**case), reference_beam_search(**case),
                tolerance(case["model"]))


@settings(max_examples=30, deadline=None)
@given(cases())
def test_recompute_path_equals_the_cached_path(case):
    check_equal(batched_beam_search(**case, use_cache=False), batched_beam_search(**case),
                tolerance(case["model"]))


@settings(max_examples=30, deadline=None)
@given(cases(), st.integers(0, 3))
def test_each_prompt_gives_the_same_result_alone(case, which):
    batch = batched_beam_search(**case)
    b = which % len(case["prompts"])
    alone = batched_beam_search(**{**case, "prompts": [case["prompts"][b]]})
    check_equal([batch[b]], alone, tolerance(case["model"]))


@pytest.mark.parametrize("finishing", [True, False])
@pytest.mark.parametrize("dtype, whole_bytes", [(np.float64, None), (np.float32, None),
                                                (np.float64, 0)])
def test_fast_path_equals_the_reference_at_benchmark_scale(dtype, whole_bytes, finishing,
                                                           monkeypatch):
    """The benchmarks' TinyLM, 96 beams over 12 prompts of 4-16 tokens: the paths taken only
    by large steps (the word-wise survivor search and the smaller comparison buffer over
    96,000 logits, the grouping of hundreds of survivors, the cache's array pairing of more
    than 64 rows, float32's chunked sums over a 1000-token row; with ``whole_bytes`` 0, a
    cache read in whole, growing blocks) against the reference, with beams finishing from
    the first step on (an EOS that is a prompt's likeliest token) or none (no EOS)."""
    if whole_bytes is not None:
        monkeypatch.setattr(cache_module, "_WHOLE_BYTES", whole_bytes)
    model = TinyLM(vocab_size=1000, d_model=64, seed=0, dtype=dtype)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, 1000, size=rng.integers(4, 17)).tolist() for _ in range(12)]
    eos = int(np.argmax(model.forward(np.array([prompts[0]]))[0])) if finishing else None
    kw = dict(beam_width=8, max_new_tokens=10, alpha=0.6, eos_token_id=eos)
    assert len(prompts) * 8 * 1000 >= candidates._MANY_ELEMENTS
    assert len(prompts) * 8 > cache_module._FEW_ROWS
    got = batched_beam_search(model, prompts, **kw)
    assert any(h.finished for hyps in got for h in hyps) == finishing
    check_equal(got, reference_beam_search(model, prompts, **kw), tolerance(model))
