"""The cached runner against recomputing every sequence from scratch."""

import numpy as np
import pytest

from npdecode import TinyLM, batched_beam_search, beam_search, greedy, sample
from npdecode.search.runner import CachedRunner, RecomputeRunner
from toy_models import CachedOnly


@pytest.mark.parametrize("moves", ["none", "forks"])  # rows stay in order, or beams fork
def test_cached_logits_equal_recomputed_ones_in_either_row_order(moves):
    model = TinyLM(vocab_size=17, d_model=8, seed=3)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    rng = np.random.default_rng(0)
    cached = CachedRunner(model, prompts, rows=6, new_tokens=5)
    slow = RecomputeRunner(model, prompts)
    np.testing.assert_allclose(cached.start(), slow.start(), rtol=0, atol=1e-10)
    n, in_order = len(prompts), 0
    for _ in range(5):
        if moves == "none":
            parents = np.arange(n)
        else:  # each sequence continues a random earlier one; rows may grow to 6
            parents = np.sort(rng.integers(0, n, size=6))
        tokens = rng.integers(0, 17, size=len(parents))
        logits, rows = cached.advance_rows(parents, tokens)
        in_order += rows is None
        got = logits if rows is None else logits[rows]
        np.testing.assert_allclose(got, slow.advance(parents, tokens), rtol=0, atol=1e-10)
        n = len(parents)
    assert in_order == (5 if moves == "none" else 0)  # the order check takes the short path


@pytest.mark.parametrize("search", ["beam", "greedy", "sample", "hf"])
def test_an_object_that_is_no_model_is_refused_saying_what_a_model_needs(search):
    model = object()
    call = {"beam": lambda: batched_beam_search(model, [[1]], beam_width=2, max_new_tokens=3),
            "greedy": lambda: greedy(model, [[1]], max_new_tokens=3),
            "sample": lambda: sample(model, [[1]], max_new_tokens=3, seed=0),
            "hf": lambda: beam_search(model, [[1]], num_beams=2, max_new_tokens=3,
                                      policy="hf")}[search]
    with pytest.raises(ValueError, match=r"object is not a model this search can call: it "
                                         r"needs forward\(token_ids\) -> logits, or the "
                                         r"cached protocol"):
        call()


def test_a_cached_model_without_forward_cannot_be_recomputed_and_says_so():
    model = CachedOnly(TinyLM(20, 8, seed=0))
    assert batched_beam_search(model, [[1]], beam_width=2, max_new_tokens=3)  # cached: fine
    with pytest.raises(ValueError, match=r"CachedOnly .* needs forward\(token_ids\) -> "
                                         r"logits, which use_cache=False runs"):
        batched_beam_search(model, [[1]], beam_width=2, max_new_tokens=3, use_cache=False)
