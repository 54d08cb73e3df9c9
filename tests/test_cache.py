"""The KV cache under any mix of its operations, and the calls it refuses."""

import re

import numpy as np
import pytest

from npdecode import TinyLM
from npdecode import cache as cache_module
from npdecode.cache import KVCache

VOCAB = 23


def check_against_forward(model, seqs, new, logits):
    """logits (n, t, V) of tokens new[j] (t,) appended to seqs[j], each position against
    ``forward`` on that sequence's whole prefix."""
    for j, s in enumerate(seqs):
        for i in range(new.shape[1]):
            ref = model.forward(np.array([s + new[j, : i + 1].tolist()]))[0]
            np.testing.assert_allclose(logits[j, i], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("whole_bytes", [0, 1 << 60])  # blocks grow and are read whole, or not
@pytest.mark.parametrize("seed", range(8))
def test_any_mix_of_fork_reorder_truncate_and_extend_agrees_with_forward(seed, whole_bytes,
                                                                         monkeypatch):
    """Random forks (parents repeated and dropped), plain reorders, ragged rollbacks and
    extends of 1-3 tokens: after every extend, each row's logits are those of ``forward``
    on its whole sequence. A fork after a rollback and a re-extend must not trust what the
    cache remembers about the slots it rolled back."""
    monkeypatch.setattr(cache_module, "_WHOLE_BYTES", whole_bytes)
    rng = np.random.default_rng(seed)
    model = TinyLM(vocab_size=VOCAB, d_model=8, seed=seed)
    rows, ops = 8, 100
    prompts = [rng.integers(0, VOCAB, size=rng.integers(1, 6)).tolist()
               for _ in range(rng.integers(1, 5))]
    cache = model.new_cache(rows, 5 + 3 * ops)
    model.prefill(prompts, cache)
    seqs = [list(p) for p in prompts]  # sequence j's tokens; it lives in cache row perm[j]
    perm = np.arange(len(seqs))
    extends = 0
    for op in rng.choice(["fork", "reorder", "truncate", "extend"], size=ops,
                         p=[0.3, 0.15, 0.2, 0.35]):
        n = len(seqs)
        if op == "fork":
            parents = rng.integers(0, n, size=rng.integers(1, rows + 1))
            perm = cache.fork(perm, parents)
            seqs = [list(seqs[p]) for p in parents]
        elif op == "reorder":  # by cache row: new row i is old row parents[i]
            parents = rng.integers(0, n, size=rng.integers(1, rows + 1))
            in_row = [None] * n
            for j, r in enumerate(perm):
                in_row[r] = seqs[j]
            cache.reorder(parents)
            seqs, perm = [list(in_row[p]) for p in parents], np.arange(len(parents))
        elif op == "truncate":  # every row keeps at least one token
            drop = np.array([rng.integers(0, min(3, len(s) - 1) + 1) for s in seqs])  # [n]
            end = cache.end[:n].copy()
            end[perm] -= drop
            cache.truncate(end)
            seqs = [s[: len(s) - d] for s, d in zip(seqs, drop)]
        else:
            new = rng.integers(0, VOCAB, size=(n, rng.integers(1, 4)))  # [n, t] by sequence
            in_cache = np.empty_like(new)
            in_cache[perm] = new
            logits = model.extend(in_cache, cache)[perm]                # [n, t, V]
            check_against_forward(model, seqs, new, logits)
            seqs = [s + t.tolist() for s, t in zip(seqs, new)]
            extends += 1
    assert extends >= 5


@pytest.mark.parametrize("after", ["reorder", "truncate"])
def test_a_long_extend_through_flash_attention_after_a_reorder_or_a_ragged_rollback(after):
    """An extend longer than the flash tile, (a) when every remaining row is left-padded (the
    longest prompt's row is gone: the keys start before every row's first real slot), and
    (b) when the rows' ends differ (a ragged rollback: flash needs a common end, so the dense
    path runs)."""
    from npdecode.attention.flash import FLASH_TILE
    model = TinyLM(vocab_size=VOCAB, d_model=8, seed=4)
    rng = np.random.default_rng(0)
    cache = model.new_cache(2, 20 + FLASH_TILE)
    if after == "reorder":
        model.prefill([list(range(1, 11)), [4, 5, 6]], cache)
        cache.reorder(np.array([1]))
        seqs = [[4, 5, 6]]
    else:
        model.prefill([[1, 2, 3], [4, 5]], cache)
        cache.truncate(cache.end[:2] - np.array([0, 1]))
        seqs = [[1, 2, 3], [4]]
    new = rng.integers(0, VOCAB, size=(len(seqs), FLASH_TILE + 2))
    logits = model.extend(new, cache)
    for j, s in enumerate(seqs):  # the last position, and one inside the first tile
        for i in (new.shape[1] - 1, 5):
            ref = model.forward(np.array([s + new[j, : i + 1].tolist()]))[0]
            np.testing.assert_allclose(logits[j, i], ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["tinylm", "chargpt"])
def test_an_extend_of_no_rows_gives_no_logits(kind):
    from npdecode.models.chargpt import CharGPT, CharGPTConfig
    model = (TinyLM(vocab_size=VOCAB, d_model=4, seed=0) if kind == "tinylm" else
             CharGPT.init(CharGPTConfig(vocab_size=VOCAB, d_model=4, n_layers=2, n_heads=2,
                                        d_ff=8, max_context=8)))
    cache = model.new_cache(2, 8)
    model.prefill([[1, 2], [3]], cache)
    cache.reorder([])
    assert model.extend(np.zeros((0, 2), dtype=np.int64), cache).shape == (0, 2, VOCAB)


@pytest.mark.parametrize("prompts, says", [
    ([], "no prompts to prefill"),
    ([[1], []], "prompt 1 is empty: a model needs at least one token"),
])
def test_prefill_refuses_no_prompts_and_an_empty_one(prompts, says):
    model = TinyLM(vocab_size=VOCAB, d_model=4, seed=0)
    with pytest.raises(ValueError, match=says):
        model.prefill(prompts, model.new_cache(2, 8))


@pytest.mark.parametrize("end, says", [
    ([2], r"truncate takes one end per row in use \(2\), got shape \(1,\)"),
    ([1.9, 1], "truncate takes integer ends, got float64"),
    ([4, 2], "truncate can only shorten rows"),
    ([3, 0], "not below their first real slot"),   # row 1's prompt starts at slot 1
])
def test_truncate_refuses_ends_it_cannot_apply_exactly(end, says):
    cache = cache_with_two_rows()
    before = cache.end[:2].copy()
    with pytest.raises(ValueError, match=says):
        cache.truncate(np.array(end))
    np.testing.assert_array_equal(cache.end[:2], before)


def cache_with_two_rows():
    model = TinyLM(vocab_size=VOCAB, d_model=4, seed=0)
    cache = model.new_cache(4, 8)
    model.prefill([[1, 2, 3], [4, 5]], cache)
    return cache


@pytest.mark.parametrize("parents, bad", [([-1, 1], -1), ([0, 2], 2), ([1, 3, 0], 3),
                                          (np.array([0, -2], dtype=np.int32), -2)])
@pytest.mark.parametrize("call", ["reorder", "fork"])
def test_parents_must_be_rows_in_use(call, parents, bad):
    """A negative parent would wrap and one past the rows in use would copy a stale row."""
    cache = cache_with_two_rows()
    before = (cache.n, cache.end.copy(), cache.kv.copy())
    message = f"{call} got parent {bad}, not one of the 2 rows in use: parents must be in 0..1"
    with pytest.raises(ValueError, match=re.escape(message)):
        if call == "reorder":
            cache.reorder(parents)
        else:
            cache.fork(np.arange(2), parents)
    assert cache.n == before[0] and np.array_equal(cache.end, before[1])
    assert np.array_equal(cache.kv, before[2])


@pytest.mark.parametrize("rows", [70, 300])  # parents checked in plain Python, or with arrays
def test_out_of_range_parents_are_refused_for_many_rows_too(rows):
    cache = KVCache(layers=1, rows=rows, heads=1, slots=4, head_dim=2)
    cache.begin(np.ones(rows, dtype=np.int64), 1)
    parents = np.arange(rows)
    parents[rows // 2] = -5
    with pytest.raises(ValueError, match="reorder got parent -5"):
        cache.reorder(parents)
    parents[rows // 2] = rows
    with pytest.raises(ValueError, match=f"fork got parent {rows}"):
        cache.fork(np.arange(rows), parents)


@pytest.mark.parametrize("parents", [[0.0, 1.0], [True, False], [[0, 1]], np.int64(0)])
@pytest.mark.parametrize("call", ["reorder", "fork"])
def test_parents_must_be_a_one_dimensional_integer_array(call, parents):
    cache = cache_with_two_rows()
    with pytest.raises(ValueError, match=f"{call} takes parents as a 1-D integer array"):
        if call == "reorder":
            cache.reorder(parents)
        else:
            cache.fork(np.arange(2), parents)


def test_fork_refuses_a_perm_that_does_not_cover_the_rows_in_use():
    cache = cache_with_two_rows()
    with pytest.raises(ValueError, match="fork got a perm of 3 rows for a cache holding 2"):
        cache.fork(np.arange(3), [0, 1])


def test_empty_parents_leave_no_rows():
    cache = cache_with_two_rows()
    cache.reorder([])
    assert cache.n == 0


@pytest.mark.parametrize("model_dtype, cache_dtype", [(np.float64, np.float32),
                                                      (np.float32, np.float64)])
def test_a_cache_of_another_dtype_than_the_model_is_refused(model_dtype, cache_dtype):
    """Storing the model's keys and values in another precision would change its logits."""
    model = TinyLM(vocab_size=VOCAB, d_model=4, seed=0, dtype=model_dtype)
    cache = KVCache(layers=1, rows=2, heads=1, slots=8, head_dim=4, dtype=cache_dtype)
    message = (f"the KV cache holds {np.dtype(cache_dtype)} but the model computes in "
               f"{np.dtype(model_dtype)}: make the cache with the model's new_cache")
    with pytest.raises(ValueError, match=re.escape(message)):
        model.prefill([[1, 2], [3]], cache)
