"""TinyLM is built exactly from its fixed construction, and its cached path agrees with forward."""

import re

import numpy as np
import pytest

from npdecode import TinyLM
from npdecode import cache as cache_module


def spec_weights(vocab_size, d_model, seed):
    """The fixed construction, written out independently."""
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(d_model)
    d = d_model
    w = {"embed": rng.standard_normal((vocab_size, d)) * s}
    for name in ("Wq", "Wk", "Wv", "Wo"):
        w[name] = rng.standard_normal((d, d)) * s
    w["W1"] = rng.standard_normal((d, 4 * d)) * s
    w["W2"] = rng.standard_normal((4 * d, d)) * s
    w["lm_head"] = rng.standard_normal((d, vocab_size)) * s
    return w


def loop_forward(w, ids):
    """The defined forward for one sequence, one query position at a time (no masking trick)."""
    x = w["embed"][ids]                                   # [T, d]
    d = x.shape[1]
    q, k, v = x @ w["Wq"], x @ w["Wk"], x @ w["Wv"]
    out = np.zeros_like(x)
    for i in range(len(ids)):
        s = k[: i + 1] @ q[i] / np.sqrt(d)                # only the past and present
        p = np.exp(s - s.max())
        out[i] = (p / p.sum()) @ v[: i + 1]
    x = x + out @ w["Wo"]
    x = x + np.maximum(x @ w["W1"], 0) @ w["W2"]
    return x[-1] @ w["lm_head"]


def test_weights_are_bit_identical_to_the_spec_construction():
    m = TinyLM(vocab_size=37, d_model=12, seed=5)
    for name, value in spec_weights(37, 12, 5).items():
        assert np.array_equal(getattr(m, name), value), name


def test_forward_matches_the_definition():
    m = TinyLM(vocab_size=30, d_model=8, seed=1)
    w = spec_weights(30, 8, 1)
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    got = m.forward(ids)
    for r in range(2):
        np.testing.assert_allclose(got[r], loop_forward(w, ids[r]), rtol=0, atol=1e-12)


def test_cached_prefill_and_steps_agree_with_forward():
    m = TinyLM(vocab_size=40, d_model=16, seed=2)
    rng = np.random.default_rng(0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    cache = m.new_cache(rows=6, slots=20)
    logits = m.prefill(prompts, cache)
    seqs = [list(p) for p in prompts]
    for r, s in enumerate(seqs):
        assert np.abs(logits[r] - m.forward(np.array([s]))[0]).max() < 1e-10
    for _ in range(5):
        # reorder by random parents (rows may duplicate or vanish), then one step
        parents = rng.integers(0, len(seqs), size=rng.integers(1, 7))
        tokens = rng.integers(0, 40, size=len(parents))
        cache.reorder(parents)
        seqs = [seqs[p] + [int(t)] for p, t in zip(parents, tokens)]
        logits = m.extend(tokens[:, None], cache)[:, 0]
        for r, s in enumerate(seqs):
            assert np.abs(logits[r] - m.forward(np.array([s]))[0]).max() < 1e-10


def test_rollback_then_multi_token_extend_agrees_with_forward():
    m = TinyLM(vocab_size=40, d_model=16, seed=3)
    prompts = [[1, 2, 3, 4], [5, 6]]
    cache = m.new_cache(rows=2, slots=16)
    m.prefill(prompts, cache)
    m.extend(np.array([[7, 8, 9], [10, 11, 12]]), cache)
    cache.truncate(cache.end[:2] - np.array([2, 0]))   # row 0 drops 2 tokens, row 1 none
    seqs = [prompts[0] + [7], prompts[1] + [10, 11, 12]]
    new = np.array([[13, 14], [15, 16]])
    logits = m.extend(new, cache)                        # [2, 2, V]
    for r in range(2):
        for j in range(2):
            ref = m.forward(np.array([seqs[r] + new[r, : j + 1].tolist()]))[0]
            assert np.abs(logits[r, j] - ref).max() < 1e-10


def test_float32_option():
    m32 = TinyLM(vocab_size=20, d_model=8, seed=0, dtype=np.float32)
    m64 = TinyLM(vocab_size=20, d_model=8, seed=0)
    assert m32.embed.dtype == np.float32
    ids = np.array([[1, 2, 3]])
    assert m32.forward(ids).dtype == np.float32
    # Logits up to 0.81, where a float32 ulp is 6e-8: measured 1.7e-7 (weights rounded to
    # float32 plus a few roundings per layer), <= 5.5e-7 over 50 other seeds and inputs.
    # Absolute, not relative: logits near 0 carry the same absolute error.
    np.testing.assert_allclose(m32.forward(ids), m64.forward(ids), rtol=0, atol=1e-6)


def test_cache_refuses_overflow():
    m = TinyLM(vocab_size=20, d_model=8, seed=0)
    cache = m.new_cache(rows=1, slots=3)
    m.prefill([[1, 2, 3]], cache)
    with pytest.raises(ValueError, match="full"):
        m.extend(np.array([[4]]), cache)


@pytest.mark.parametrize("dims, old, need", [
    ((2, 5, 3, 4), 7, 9),      # layers, rows, heads, head_dim
    ((1, 1, 1, 2), 2, 3),      # one block, which never moves
    ((1, 3, 1, 5), 1, 2),      # every block overlaps its own new place
    ((3, 4, 2, 3), 10, 50),    # straight to the full width
])
def test_cache_stride_grows_in_place_keeping_every_filled_slot(dims, old, need):
    """Widening the blocks moves each (row, head)'s slots to its new place in the same buffer,
    never allocating another and never overwriting a block before it has moved."""
    layers, rows, heads, head_dim = dims
    cache = cache_module.KVCache(layers=layers, rows=rows, heads=heads, slots=50,
                                 head_dim=head_dim)
    cache._lay_out(old)
    cache.kv[...] = np.random.default_rng(0).standard_normal(cache.kv.shape)
    before, buffer = cache.kv.copy(), cache._buf
    cache._make_room(need)
    assert need <= cache.kv.shape[4] <= 50
    assert np.shares_memory(cache.kv, buffer) and cache._buf is buffer
    assert np.array_equal(cache.kv[..., :old, :], before)


@pytest.mark.parametrize("whole_bytes", [0, 1 << 60])  # whole blocks (and growth), or never
def test_long_cached_decoding_agrees_with_forward_as_the_blocks_grow(whole_bytes, monkeypatch):
    """Sixty steps from a 2-token prompt: the slots per row grow many times, and the later
    steps read whole blocks whose unfilled slots must not count. (A cache this small reads
    whole blocks only with the size limit lowered.)"""
    monkeypatch.setattr(cache_module, "_WHOLE_BYTES", whole_bytes)
    m = TinyLM(vocab_size=30, d_model=8, seed=4)
    prompts = [[1, 2], [3]]
    cache = m.new_cache(rows=2, slots=70)
    m.prefill(prompts, cache)
    seqs = [list(p) for p in prompts]
    strides = {cache.k.shape[3]}
    rng = np.random.default_rng(2)
    for step in range(60):
        tokens = rng.integers(0, 30, size=2)
        seqs = [s + [int(t)] for s, t in zip(seqs, tokens)]
        logits = m.extend(tokens[:, None], cache)[:, 0]
        strides.add(cache.k.shape[3])
        if step % 7 == 0 or step == 59:
            for r, s in enumerate(seqs):
                assert np.abs(logits[r] - m.forward(np.array([s]))[0]).max() < 1e-10
    assert (len(strides) > 5 and max(strides) < 70) if whole_bytes == 0 else strides == {70}


@pytest.mark.parametrize("sort_parents", [True, False])
@pytest.mark.parametrize("few_rows", [64, 0])  # pairing in Python, with arrays
@pytest.mark.parametrize("rows", [8, 48])   # few forks copy row by row, many in one gather
def test_fork_copies_only_forked_rows_and_agrees_with_forward(rows, few_rows, sort_parents,
                                                              monkeypatch):
    monkeypatch.setattr(cache_module, "_FEW_ROWS", few_rows)
    m = TinyLM(vocab_size=40, d_model=16, seed=2)
    rng = np.random.default_rng(1)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]]
    cache = m.new_cache(rows=rows, slots=20)
    m.prefill(prompts, cache)
    seqs, perm = [list(p) for p in prompts], np.arange(3)
    for _ in range(6):
        parents = rng.integers(0, len(seqs), size=rng.integers(rows // 2, rows + 1))
        if sort_parents:
            parents = np.sort(parents)
        before_k, before_v = cache.k.copy(), cache.v.copy()
        filled = slice(int(cache.start[:cache.n].min()), int(cache.end[:cache.n].max()))
        new_perm = cache.fork(perm, parents)
        assert sorted(new_perm.tolist()) == list(range(len(parents)))
        for i, p in enumerate(parents):
            # every sequence's row now holds its parent's keys and values (copies start where
            # the rows first differ, so this checks they missed nothing)
            row, old = new_perm[i], perm[p]
            assert np.array_equal(cache.k[:, row, :, filled], before_k[:, old, :, filled])
            assert np.array_equal(cache.v[:, row, :, filled], before_v[:, old, :, filled])
            if row == old:  # a sequence whose parent's row was kept in place was not copied
                assert np.array_equal(cache.k[:, row], before_k[:, old])
        perm = new_perm
        tokens = rng.integers(0, 40, size=len(parents))
        seqs = [seqs[p] + [int(t)] for p, t in zip(parents, tokens)]
        in_cache = np.empty_like(tokens)
        in_cache[perm] = tokens
        logits = m.extend(in_cache[:, None], cache)[perm, 0]
        for r, s in enumerate(seqs):
            assert np.abs(logits[r] - m.forward(np.array([s]))[0]).max() < 1e-10


@pytest.mark.parametrize("seed", range(20))
def test_fork_pairings_in_python_and_with_arrays_agree(seed):
    """Both ways of choosing which sequences get copied rows, and which rows, agree."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 40))
    old_rows = int(rng.integers(1, 50))
    src = rng.integers(0, old_rows, size=m)              # the row each sequence continues
    group = rng.integers(0, 4, size=max(m, old_rows))    # the prompt of each row
    few, many = cache_module._pair_few(src, group), cache_module._pair_many(src, group)
    for a, b in zip(few, many):
        np.testing.assert_array_equal(a, b)
    need, holes = (a.tolist() for a in few)
    stay = [i for i in range(m) if i not in need]
    # a sequence keeps its row when it is the first to continue a row below m ...
    assert all(src[i] < m and src[i] not in src[:i] for i in stay)
    assert all(src[i] >= m or src[i] in src[:i] for i in need)
    # ... and the copies go to exactly the rows below m that nobody kept
    assert sorted(holes) == sorted(set(range(m)) - set(src[stay].tolist()))


def test_fork_of_rows_with_nothing_filled_yet():
    """Forking before any slot is written copies nothing and still lays out every sequence."""
    cache = cache_module.KVCache(layers=1, rows=4, heads=1, slots=5, head_dim=2)
    cache.begin(np.array([0, 0]), 0)
    new_perm = cache.fork(np.arange(2), np.array([0, 0, 1]))
    assert sorted(new_perm.tolist()) == [0, 1, 2] and cache.n == 3
    assert new_perm[0] == 0 and new_perm[2] == 1  # first children keep their rows


@pytest.mark.parametrize("make", ["tinylm", "chargpt"])
@pytest.mark.parametrize("bad", [-1, 10**6])
def test_token_ids_outside_the_vocabulary_are_refused_not_wrapped(make, bad):
    from npdecode.models.pretrained import load_draft

    model = TinyLM(vocab_size=10, d_model=4, seed=0) if make == "tinylm" else load_draft()
    for ids in ([[1, bad]], [[1] * 70 + [bad]]):  # few ids, and more than 64
        with pytest.raises(ValueError, match=rf"must be in \[0, {model.vocab_size}\), got {bad}"):
            model.forward(np.array(ids)[:, -model.max_context:] if make == "chargpt"
                          else np.array(ids))
    cache = model.new_cache(1, 8)
    model.prefill([[1, 2]], cache)
    with pytest.raises(ValueError, match=f"got {bad}"):
        model.extend(np.array([[bad]]), cache)


@pytest.mark.parametrize("kw, message", [
    (dict(vocab_size=10.0), "vocab_size must be an integer >= 1, got 10.0"),
    (dict(vocab_size=True), "vocab_size must be an integer >= 1, got True"),
    (dict(vocab_size=0), "vocab_size must be >= 1, got 0"),
    (dict(d_model=2.5), "d_model must be an integer >= 1, got 2.5"),
    (dict(seed=-1), "seed must be >= 0, got -1"),
    (dict(seed=None), "seed must be an integer >= 0, got None"),
])
def test_tinylm_sizes_and_seed_must_be_integers(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TinyLM(**kw)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "complex128", "nonsense", None])
def test_models_compute_in_float32_or_float64_only(dtype):
    from npdecode.models.pretrained import load_draft

    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        TinyLM(vocab_size=10, d_model=4, seed=0, dtype=dtype)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        load_draft(dtype=dtype)


@pytest.mark.parametrize("swapped, native", [(">f8", np.float64), ("<f4", np.float32),
                                             (np.dtype("f8").newbyteorder(), np.float64)])
def test_a_byte_swapped_dtype_computes_in_the_native_one(swapped, native):
    from npdecode import batched_beam_search
    from npdecode.models.pretrained import load_draft

    model = TinyLM(vocab_size=10, d_model=4, seed=0, dtype=swapped)
    assert model.dtype == np.dtype(native) and model.dtype.isnative
    assert load_draft(dtype=swapped).dtype == np.dtype(native)
    want = batched_beam_search(TinyLM(vocab_size=10, d_model=4, seed=0, dtype=native),
                               [[1, 2], [3]], beam_width=2, max_new_tokens=3)
    assert batched_beam_search(model, [[1, 2], [3]], beam_width=2, max_new_tokens=3) == want


@pytest.mark.parametrize("ids", [
    np.array([[1.0, 2.0]]),                  # floats, even whole ones
    np.array([[True, False]]),               # bools
    np.array([1, 2]),                        # one dimension
    np.array([[[1, 2]]]),                    # three
    np.array(3),                             # none
    np.array([["a", "b"]]),
])
@pytest.mark.parametrize("call", ["forward", "extend"])
def test_token_ids_must_be_an_integer_array_of_rows(call, ids):
    model = TinyLM(vocab_size=10, d_model=4, seed=0)
    name = "token_ids" if call == "forward" else "tokens"
    message = f"{name} must be an integer array (N, T), got {ids.dtype} of shape {ids.shape}"
    with pytest.raises(ValueError, match=re.escape(message)):
        if call == "forward":
            model.forward(ids)
        else:
            cache = model.new_cache(1, 8)
            model.prefill([[1, 2]], cache)
            model.extend(ids, cache)


def test_forward_needs_a_token_in_every_row():
    model = TinyLM(vocab_size=10, d_model=4, seed=0)
    with pytest.raises(ValueError, match=re.escape("at least one token per row (the logits are "
                                                   "the last position's), got token_ids of "
                                                   "shape (2, 0)")):
        model.forward(np.zeros((2, 0), dtype=np.int64))


@pytest.mark.parametrize("prompt", [[1.0, 2.0], [1.5], [True, False], [[1, 2]]])
def test_prefill_refuses_prompts_that_are_not_integer_ids(prompt):
    model = TinyLM(vocab_size=10, d_model=4, seed=0)
    with pytest.raises(ValueError, match="prompt 1 must be a sequence of integer token ids"):
        model.prefill([[3, 4], prompt], model.new_cache(2, 8))
