"""Bad input: every bad input gets a clear error before any work starts."""

import re

import numpy as np
import pytest

from npdecode import TinyLM, batched_beam_search
from npdecode.search.validate import check_logits


class Counting(TinyLM):
    """TinyLM that counts its calls, to prove that refused input cost no model work."""

    calls = 0

    def prefill(self, prompts, cache):
        self.calls += 1
        return super().prefill(prompts, cache)

    def forward(self, ids):
        self.calls += 1
        return super().forward(ids)


@pytest.fixture
def model():
    return Counting(vocab_size=10, d_model=4, seed=0)


def run(model, prompts=([1, 2],), **kw):
    args = dict(beam_width=2, max_new_tokens=3, alpha=0.6, eos_token_id=0)
    return batched_beam_search(model, list(prompts), **{**args, **kw})


def refused(model, match, **kw):
    with pytest.raises(ValueError, match=match):
        run(model, **kw)
    assert model.calls == 0


def test_no_prompts_return_an_empty_list(model):
    assert run(model, prompts=[]) == []


def test_an_empty_prompt_names_its_batch_index(model):
    refused(model, r"prompt 1 is empty", prompts=[[1], []])


@pytest.mark.parametrize("bad, shown", [(1.5, "1.5"), (-1, "-1"), (10, "10"), ("3", "'3'")])
def test_a_bad_token_names_item_position_value_and_vocab(model, bad, shown):
    refused(model, rf"prompt 1, position 2: token {shown}.*vocab size 10",
            prompts=[[1], [1, 2, bad]])


@pytest.mark.parametrize("bad", [True, np.float64(2.0), np.int64(10), np.int8(-2)])
def test_bools_floats_and_out_of_range_numpy_scalars_are_refused(model, bad):
    refused(model, rf"prompt 0, position 1: token {re.escape(repr(bad))} is not a valid id",
            prompts=[[1, bad]])


def test_numpy_prompts_are_accepted_like_lists(model):
    want = run(model, prompts=[[1, 2], [3, 4, 5]])
    arrays = [np.array([1, 2], dtype=np.uint8), np.array([3, 4, 5])]
    assert run(model, prompts=arrays) == want
    assert run(model, prompts=[[np.int32(1), np.int64(2)], [3, 4, 5]]) == want
    model.calls = 0
    refused(model, r"prompt 1, position 1: token 10", prompts=[[1], np.array([3, 10])])
    refused(model, r"prompt 0, position 0: token np.float64\(1.0\)",
            prompts=[np.array([1.0, 2.0])])


@pytest.mark.parametrize("prompt, shape", [(np.array(3), r"\(\)"),
                                           (np.array([[1, 2]]), r"\(1, 2\)")])
def test_a_prompt_array_of_other_than_one_dimension_is_refused(model, prompt, shape):
    refused(model, rf"prompt 1 must be a list of token ids \(one dimension\), got an array "
                   rf"of shape {shape}", prompts=[[1], prompt])


@pytest.mark.parametrize("value", [0, -3, 2.0, True, None, 2 ** 63, 10 ** 400])
def test_beam_width_must_be_a_positive_integer(model, value):
    refused(model, "beam_width", beam_width=value)


@pytest.mark.parametrize("value", [-1, 1.0, "4", 2 ** 63, 10 ** 400])
def test_max_new_tokens_must_be_a_non_negative_integer(model, value):
    refused(model, "max_new_tokens", max_new_tokens=value)


def test_a_budget_whose_cache_cannot_fit_in_memory_is_refused_before_decoding(model):
    # TinyLM has no context limit; a KV cache for 10**12 positions exceeds any machine.
    refused(model, "max_new_tokens", max_new_tokens=10 ** 12)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10 ** 400])
def test_alpha_must_be_finite(model, value):
    refused(model, "alpha", alpha=value)


@pytest.mark.parametrize("value", [-1, 10, 2.0])
def test_eos_must_be_inside_the_vocabulary(model, value):
    refused(model, "eos_token_id", eos_token_id=value)


def test_a_prompt_too_long_for_the_context_is_refused_before_decoding(model):
    model.max_context = 6
    refused(model, r"prompt 1 has 4 tokens.*needs 7 positions.*context is 6",
            prompts=[[1], [1, 2, 3, 4]], max_new_tokens=3)
    refused(model, r"prompt 0 has 1 token; with max_new_tokens=6 it needs 7 positions",
            prompts=[[1]], max_new_tokens=6)
    assert run(model, prompts=[[1], [1, 2, 3]], max_new_tokens=3)  # exactly fits


class Faulty:
    """Returns good logits except for one fault, on the row of batch item 1 at step 2."""

    vocab_size = 5

    def __init__(self, fault):
        self.fault, self.calls = fault, 0

    def forward(self, ids):
        ids = np.asarray(ids)
        logits = np.tile(np.linspace(0, 1, 5), (len(ids), 1))
        if ids.shape[1] == 4 and ids[0, 0] == 3:  # item 1 (prompt [3, 3]) at step 2
            if self.fault == "shape":
                return logits[:, :3]
            logits[0] = {"nan": [0, np.nan, 0, 0, 0], "posinf": [0, np.inf, 0, 0, 0],
                         "neginf": [-np.inf] * 5}[self.fault]
        return logits


@pytest.mark.parametrize("fault, match", [
    ("shape", r"shape \(\d+, 3\).*expected"), ("nan", "NaN.*batch item 1"),
    ("posinf", r"\+inf.*batch item 1"), ("neginf", "entirely -inf.*batch item 1")])
def test_bad_model_output_is_reported_with_its_batch_item(fault, match):
    with pytest.raises(ValueError, match=match):
        batched_beam_search(Faulty(fault), [[1], [3, 3]], beam_width=1, max_new_tokens=4)


class FaultyCached(TinyLM):
    """Cached TinyLM whose logits at its third step get a NaN in one row of batch item
    ``bad`` (found through the cache, whose rows are in no particular order by then)."""

    def __init__(self, bad, **kw):
        super().__init__(**kw)
        self.bad, self.steps, self.rows = bad, 0, None

    def extend(self, tokens, cache):
        logits = super().extend(tokens, cache)
        self.steps += 1
        if self.steps == 3:
            self.rows = np.flatnonzero(cache.group[:cache.n] == self.bad)
            logits[self.rows[-1], 0, 1] = np.nan
        return logits


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_a_fault_on_the_cached_path_names_its_batch_item_after_rows_were_reordered(bad):
    m = FaultyCached(bad, vocab_size=12, d_model=8, seed=3)
    with pytest.raises(ValueError, match=f"NaN in the logits for batch item {bad}$"):
        batched_beam_search(m, [[1, 2], [3], [4, 5, 6]], beam_width=3, max_new_tokens=6)
    # The item's rows were not where sequence order puts them (3 per item, in item order).
    assert m.steps == 3 and set(m.rows) != {3 * bad, 3 * bad + 1, 3 * bad + 2}


class MisshapenExtend(TinyLM):
    """Cached TinyLM whose decoding steps return something other than (n, 1, V) logits
    (its prefill, which runs through ``extend`` too, is left alone)."""

    def __init__(self, fault, **kw):
        super().__init__(**kw)
        self.fault, self.calls = fault, 0

    def extend(self, tokens, cache):
        logits = super().extend(tokens, cache)
        self.calls += 1
        if self.calls == 1:  # the prefill
            return logits
        return {"None": None, "list": logits.tolist(), "row missing": logits[:-1],
                "no position axis": logits[:, 0]}[self.fault]


@pytest.mark.parametrize("strategy", ["pool", "hf", "greedy", "sample"])
@pytest.mark.parametrize("fault, shown", [("None", "NoneType"), ("list", "list"),
                                          ("row missing", r"\(69, 1, 5\)"),
                                          ("no position axis", r"\(70, 5\)")])
def test_extend_output_of_the_wrong_shape_is_reported_as_such(strategy, fault, shown):
    from npdecode import beam_search, greedy, sample

    m = MisshapenExtend(fault, vocab_size=5, d_model=4, seed=0)
    prompts = [[1, 2]] * 70  # more rows than the runner checks for order in plain Python
    run = {"pool": lambda: beam_search(m, prompts, num_beams=1, max_new_tokens=3),
           "hf": lambda: beam_search(m, prompts, num_beams=1, max_new_tokens=3, policy="hf"),
           "greedy": lambda: greedy(m, prompts, max_new_tokens=3),
           "sample": lambda: sample(m, prompts, max_new_tokens=3, seed=0)}[strategy]
    with pytest.raises(ValueError, match=rf"the model's extend returned logits of shape {shown}; "
                                         rf"expected \(70, 1, V\)"):
        run()


def test_wrong_width_logits_name_the_items_that_returned_them():
    class Narrow(Faulty):  # declares 5 tokens; prompts of length 1 (item 0) get 4 columns
        def forward(self, ids):
            logits = super().forward(ids)
            return logits[:, :4] if np.asarray(ids).shape[1] == 1 else logits

    with pytest.raises(ValueError, match=r"shape \(1, 4\).*batch items \[0\]\); expected \(1, 5\)"):
        batched_beam_search(Narrow("none"), [[1], [3, 3]], beam_width=1, max_new_tokens=2)


@pytest.mark.parametrize("policy", ["pool", "hf"])
def test_a_length_penalty_that_overflows_float64_is_refused(policy):
    from npdecode import beam_search

    model = Counting(vocab_size=10, d_model=4, seed=0)
    for lp in (1100.0, -1100.0):  # 3 ** 1100 overflows; 3 ** -1100 underflows to 0
        with pytest.raises(ValueError, match=rf"length_penalty={lp} makes len \*\* "):
            beam_search(model, [[1]], num_beams=2, max_new_tokens=3, length_penalty=lp,
                        policy=policy)
    assert model.calls == 0
    assert beam_search(model, [[1]], num_beams=2, max_new_tokens=3, length_penalty=600.0,
                       policy=policy)  # 3 ** 600 is about 1e286: still a float
    refused(Counting(vocab_size=10, d_model=4, seed=0), r"alpha=1100.*\|alpha\| <= 637",
            alpha=1100)


def test_a_model_without_a_vocab_size_is_checked_against_its_logits():
    class Anonymous:
        def forward(self, ids):
            return np.zeros((len(ids), 4))

    with pytest.raises(ValueError, match="vocab size 4"):
        batched_beam_search(Anonymous(), [[5]], beam_width=1, max_new_tokens=2)
    with pytest.raises(ValueError, match="eos_token_id 4"):
        batched_beam_search(Anonymous(), [[1]], beam_width=1, max_new_tokens=2, eos_token_id=4)
    with pytest.raises(ValueError, match=f"eos_token_id {2**70} is outside"):
        batched_beam_search(Anonymous(), [[1]], beam_width=1, max_new_tokens=2,
                            eos_token_id=2**70)


@pytest.mark.parametrize("strategy", ["pool", "hf", "greedy", "sample"])
def test_every_strategy_checks_ids_against_a_vocabulary_read_off_the_logits(strategy):
    from npdecode import beam_search, greedy, sample

    class Anonymous:  # declares no vocab_size; its logits have 4 columns
        def forward(self, ids):
            return np.tile(np.linspace(0, 1, 4), (len(ids), 1))

    run = {"pool": lambda p: beam_search(Anonymous(), p, num_beams=2, max_new_tokens=2),
           "hf": lambda p: beam_search(Anonymous(), p, num_beams=2, max_new_tokens=2,
                                       policy="hf"),
           "greedy": lambda p: greedy(Anonymous(), p, max_new_tokens=2),
           "sample": lambda p: sample(Anonymous(), p, max_new_tokens=2, seed=0)}[strategy]
    assert run([[1, 2]])  # fine
    with pytest.raises(ValueError, match="prompt 1, position 0: token 7.*vocab size 4"):
        run([[1], [7]])
    # Too large for any vocabulary: refused before the model runs, not an OverflowError.
    with pytest.raises(ValueError, match=rf"prompt 1, position 1: token {2**70} .*below 2\*\*63"):
        run([[1], [2, 2**70]])


@pytest.mark.parametrize("policy", ["pool", "hf"])
def test_beam_search_names_length_penalty_in_its_error(policy):
    from npdecode import beam_search

    with pytest.raises(ValueError, match="length_penalty must be a finite number"):
        beam_search(TinyLM(10, 4), [[1]], num_beams=2, max_new_tokens=2,
                    length_penalty=float("nan"), policy=policy)


class ForwardOnly:
    """A model with only ``forward`` and no declared vocabulary (TinyLM's logits)."""

    def __init__(self, model):
        self.forward = model.forward


@pytest.mark.parametrize("vocab", ["declared", "read off the logits"])
def test_a_huge_beam_width_costs_no_more_than_every_hypothesis(vocab):
    import tracemalloc

    m = TinyLM(vocab_size=3, d_model=4, seed=0)
    if vocab != "declared":
        m = ForwardOnly(m)
    tracemalloc.start()
    res = batched_beam_search(m, [[1]], beam_width=10**6, max_new_tokens=3)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(res) == 27  # no EOS: every full-length sequence, and nothing else, survives
    assert len({tuple(h.tokens) for h in res}) == 27
    assert peak < 5 * 2**20  # a beam width of 10**6 would allocate hundreds of MB


@pytest.mark.parametrize("fault, match", [("ints", r"dtype int64 for batch items \[1\]"),
                                          ("width", r"shape \(1, 3\) for 1 sequences of "
                                                    r"length 3 \(batch items \[1\]\); "
                                                    r"expected \(1, 5\)")])
def test_a_forward_only_model_is_checked_group_by_group(fault, match):
    class Uneven:  # fine for length-2 rows; faulty for the length-3 row (the second group)
        vocab_size = 5

        def forward(self, ids):
            ids = np.asarray(ids)
            if ids.shape[1] == 3:
                return (np.zeros((len(ids), 5), dtype=np.int64) if fault == "ints"
                        else np.zeros((len(ids), 3)))
            return np.tile(np.linspace(0, 1, 5), (len(ids), 1))

    with pytest.raises(ValueError, match=match):
        batched_beam_search(Uneven(), [[1, 2], [1, 2, 3]], beam_width=1, max_new_tokens=2)



def test_forward_only_logits_of_mixed_float_dtypes_are_not_narrowed():
    class Mixed:  # float32 for the short row, float64 for the long one
        vocab_size = 4

        def forward(self, ids):
            ids = np.asarray(ids)
            row = np.array([0.0, 1e-9, 0.5, 0.25])
            out = np.tile(row, (len(ids), 1))
            return out.astype(np.float32) if ids.shape[1] == 1 else out

    from npdecode.search.runner import RecomputeRunner
    logits = RecomputeRunner(Mixed(), [[1], [1, 2]]).start()
    assert logits.dtype == np.float64 and logits[1, 1] == 1e-9


class Huge:
    """Float32 logits whose rows peak near float32's largest value: finite, so accepted
    (a check that added the row maxima up would overflow and call them a fault)."""

    vocab_size = 4

    def forward(self, ids):
        logits = np.tile(np.array([3e38, 2e38, 0, -1], dtype=np.float32), (len(ids), 1))
        logits[:, 0] -= np.float32(1e37) * np.arange(len(ids), dtype=np.float32)
        return logits


def test_finite_logits_whose_maxima_overflow_a_sum_are_accepted():
    got = batched_beam_search(Huge(), [[1], [2], [3]], beam_width=2, max_new_tokens=2)
    assert [h.tokens for h in got[0]] == [[0, 0], [0, 1]]  # token 0 is certain, then token 1


def test_logits_checked_by_column_ranges_still_find_every_fault():
    """The search checks logits through the maxima of column ranges: a range that is all -inf
    is fine while the row has a real token, and a fault is found in any range."""
    items = np.array([0, 1])
    good = np.zeros((2, 6))
    good[1, :3] = -np.inf
    np.testing.assert_array_equal(check_logits(good, 2, 6, items, parts=2),
                                  [[0, 0], [-np.inf, 0]])
    for value, match in [(np.nan, "NaN"), (np.inf, r"\+inf")]:
        for col in (0, 4):
            bad = good.copy()
            bad[1, col] = value
            with pytest.raises(ValueError, match=match + ".*batch item 1"):
                check_logits(bad, 2, 6, items, parts=2)
    bad = good.copy()
    bad[1] = -np.inf
    with pytest.raises(ValueError, match="entirely -inf.*batch item 1"):
        check_logits(bad, 2, 6, items, parts=2)


def test_the_hf_policy_refuses_a_budget_its_buffers_cannot_hold():
    from npdecode import beam_search
    from toy_models import FixedLogits

    with pytest.raises(ValueError, match="max_new_tokens"):
        beam_search(FixedLogits([0.0, -1.0]), [[1]], num_beams=2, max_new_tokens=10 ** 12,
                    eos_token_id=0, policy="hf")
