"""Flash attention against a naive softmax attention written here, in float64."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import npdecode.cache
from npdecode import TinyLM
from npdecode.attention import flash_attention_fwd

# -- the oracle -----------------------------------------------------------------------------


def naive_attention(Q, K, V, causal=True, key_start=None):
    """Dense stable softmax attention in float64; rows with no visible key give zeros.

    Query i sits at key position Nk - Nq + i; keys before key_start[b] are never visible.
    """
    Q, K, V = (np.asarray(x, dtype=np.float64) for x in (Q, K, V))
    B, _, Nq, D = Q.shape
    Nk = K.shape[2]
    scores = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(D)               # [B, H, Nq, Nk]
    kpos = np.arange(Nk)                                            # [Nk]
    qpos = Nk - Nq + np.arange(Nq)                                  # [Nq]
    visible = np.ones((B, 1, Nq, Nk), dtype=bool)                   # [B, 1, Nq, Nk]
    if causal:
        visible &= kpos[None, :] <= qpos[:, None]
    if key_start is not None:
        visible &= (kpos[None, :] >= np.asarray(key_start)[:, None])[:, None, None]
    scores = np.where(visible, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)                    # [B, H, Nq, 1]
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)          # rows with no key
    weights = np.exp(scores - row_max)                              # [B, H, Nq, Nk]
    total = weights.sum(axis=-1, keepdims=True)
    return (weights @ V) / np.where(total == 0, 1.0, total)        # [B, H, Nq, Dv]


# Max relative error allowed against the float64 oracle, a few times the worst measured here.
# float64: measured <= 2e-15 in every comparison (a few ulps of 64-term dot products and sums
# over up to 4100 keys); 1e-12 still fails a kernel that rounds Q to float32 (1e-8 to
# 2e-6).
# float32, unit-scale scores (|s| <= 6): measured <= 5.3e-7 (<= 8.6e-7 over 12 seeds per
# shape), hence 2e-6.
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6}
# float32 with large scores: a score s rounded to float32 is off by up to ~2**-24 |s|, which
# is the relative error of its softmax weight, so the error grows with the largest score
# (measured 0.01 to 0.5 of 2**-24 max|s| over 30 seeds). Per test input, a few times above
# what was measured there:
TOL_F32_SCORES_900 = 3e-5    # max |s| 870 (scale 12, D 16): measured 1.23e-5
TOL_F32_SCORES_5000 = 1e-4   # max |s| 4975 (sqrt(1000), D 64, seed 9): measured 4.0e-5


def assert_matches(out, ref, tol=None):
    """The check every comparison uses: all finite, max relative error below ``tol``.

    ``tol`` defaults to ``TOL`` for the output's dtype (unit-scale scores).
    """
    assert np.isfinite(out).all(), "output has inf or NaN"
    tol = TOL[out.dtype] if tol is None else tol
    err = np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-300)
    assert err < tol, f"max relative error {err:.3g} >= {tol}"


def qkv(B, H, Nq, D, dtype, Nk=None, seed=0, scale=1.0):
    """Random Q (B, H, Nq, D), K and V (B, H, Nk, D) in ``dtype``; Q and K times ``scale``."""
    rng = np.random.default_rng(seed)
    Nk = Nq if Nk is None else Nk
    Q = rng.standard_normal((B, H, Nq, D)) * scale
    K = rng.standard_normal((B, H, Nk, D)) * scale
    V = rng.standard_normal((B, H, Nk, D))
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


# -- agreement with the oracle ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tile", [32, 64])
def test_matches_naive_attention(tile, causal, dtype):
    Q, K, V = qkv(1, 1, 256, 64, dtype)
    out = flash_attention_fwd(Q, K, V, tile, causal)
    assert out.dtype == dtype and out.shape == (1, 1, 256, 64)
    assert_matches(out, naive_attention(Q, K, V, causal))


@pytest.mark.parametrize("n, dtype", [(1000, np.float64), (4100, np.float32)])
def test_partial_last_tile(n, dtype):
    Q, K, V = qkv(1, 1, n, 64, dtype, seed=1)
    assert_matches(flash_attention_fwd(Q, K, V, 128), naive_attention(Q, K, V))


@pytest.mark.parametrize("tile", [128, 1000])
@pytest.mark.parametrize("causal", [True, False])
def test_tile_larger_than_sequence(tile, causal):
    Q, K, V = qkv(1, 2, 100, 16, np.float64, seed=2)
    assert_matches(flash_attention_fwd(Q, K, V, tile, causal), naive_attention(Q, K, V, causal))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [True, False])
def test_batch_and_heads(causal, dtype):
    Q, K, V = qkv(3, 4, 200, 32, dtype, seed=3)
    out = flash_attention_fwd(Q, K, V, 64, causal)
    assert out.dtype == dtype
    assert_matches(out, naive_attention(Q, K, V, causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("nq", [1, 100, 128])
def test_fewer_queries_than_keys(nq, causal):
    # 300 keys: the queries start at key position 300 - nq, off the 32-key tile grid.
    Q, K, V = qkv(2, 2, nq, 32, np.float64, Nk=300, seed=4)
    assert_matches(flash_attention_fwd(Q, K, V, 32, causal), naive_attention(Q, K, V, causal))


def test_tile_size_one():
    Q, K, V = qkv(1, 2, 20, 8, np.float64, Nk=27, seed=5)
    assert_matches(flash_attention_fwd(Q, K, V, 1), naive_attention(Q, K, V))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [True, False])
def test_key_start_padding(causal, dtype):
    # Row 1's first two 32-key tiles are wholly padding (the NaN-prone case); row 2 is all
    # padding, so every one of its queries sees no key and must come out finite (zeros).
    starts = np.array([0, 70, 200])
    Q, K, V = qkv(3, 2, 200, 32, dtype, seed=6)
    out = flash_attention_fwd(Q, K, V, 32, causal, key_start=starts)
    ref = naive_attention(Q, K, V, causal, key_start=starts)
    assert_matches(out, ref)
    assert (out[2] == 0).all()
    if causal:
        assert (out[1, :, :70] == 0).all()  # padding queries: no key at or before them


def test_key_start_with_fewer_queries():
    starts = np.array([10, 0])
    Q, K, V = qkv(2, 1, 40, 16, np.float64, Nk=150, seed=7)
    out = flash_attention_fwd(Q, K, V, 32, key_start=starts)
    assert_matches(out, naive_attention(Q, K, V, key_start=starts))


def test_padding_queries_are_finite_zeros_in_float32():
    Q, K, V = qkv(2, 1, 300, 16, np.float32, seed=8)
    out = flash_attention_fwd(Q, K, V, 128, key_start=np.array([299, 150]))
    assert np.isfinite(out).all()
    assert (out[0, :, :299] == 0).all() and (out[1, :, :150] == 0).all()
    assert_matches(out, naive_attention(Q, K, V, key_start=np.array([299, 150])))


# -- large scores, and the wrong rescaling factor -----------------------------------------------


def flash_with_inverted_factor(Q, K, V, tile):
    """A deliberately wrong flash attention: rescales by exp(m_new - m_old) (>= 1).

    Causal, one (batch, head) at a time, otherwise the same recurrence as the real one.
    """
    B, H, N, D = Q.shape
    out = np.zeros_like(Q)
    for b in range(B):
        for h in range(H):
            for q0 in range(0, N, tile):
                q = Q[b, h, q0:q0 + tile] / Q.dtype.type(np.sqrt(D))       # [tq, D]
                qpos = np.arange(q0, q0 + len(q))                         # [tq]
                m = np.full((len(q), 1), -np.inf, dtype=Q.dtype)
                l = np.zeros((len(q), 1), dtype=Q.dtype)
                acc = np.zeros((len(q), D), dtype=Q.dtype)
                for k0 in range(0, qpos[-1] + 1, tile):
                    s = q @ K[b, h, k0:k0 + tile].T                         # [tq, tk]
                    s[np.arange(k0, k0 + s.shape[1])[None, :] > qpos[:, None]] = -np.inf
                    m_new = np.maximum(m, s.max(axis=1, keepdims=True))
                    with np.errstate(all="ignore"):
                        alpha = np.exp(m_new - np.where(np.isinf(m), m_new, m))  # WRONG: >= 1
                        p = np.exp(s - m_new)
                        l = alpha * l + p.sum(axis=1, keepdims=True)
                        acc = alpha * acc + p @ V[b, h, k0:k0 + tile]
                    m = m_new
                with np.errstate(all="ignore"):
                    out[b, h, q0:q0 + tile] = acc / l
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_near_1e3_stay_finite_and_exact(dtype):
    # Q and K scaled by sqrt(1000): the scores q.k / sqrt(D) have standard deviation ~1e3.
    Q, K, V = qkv(1, 2, 256, 64, dtype, seed=9, scale=np.sqrt(1000))
    s = Q.astype(np.float64) @ K.astype(np.float64).transpose(0, 1, 3, 2) / 8
    assert np.abs(s).max() > 1e3
    tol = TOL_F32_SCORES_5000 if dtype == np.float32 else None
    assert_matches(flash_attention_fwd(Q, K, V, 32), naive_attention(Q, K, V), tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_first_tile_then_very_negative_scores(dtype):
    # Row 1's first key is padding; its visible scores are all -1000. A running max left at a
    # stand-in 0 after the masked tile would make them underflow to zero weight.
    Q = np.ones((2, 1, 3, 1), dtype=dtype)
    K = np.array([0.0, -1000.0, -1000.0], dtype=dtype).reshape(1, 1, 3, 1).repeat(2, axis=0)
    V = np.array([5.0, 7.0, 9.0], dtype=dtype).reshape(1, 1, 3, 1).repeat(2, axis=0)
    starts = np.array([0, 1])
    out = flash_attention_fwd(Q, K, V, tile_size=1, causal=True, key_start=starts, scale=1.0)
    np.testing.assert_allclose(out[1, 0, 1:, 0], [7.0, 8.0], rtol=1e-6)   # by hand
    ref = naive_attention(Q.astype(np.float64), K.astype(np.float64), V.astype(np.float64),
                          causal=True, key_start=starts)
    np.testing.assert_allclose(out[:, :, 1:], ref[:, :, 1:], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_batch_with_scores_near_1e3(dtype):
    Q, K, V = qkv(2, 2, 300, 16, dtype, scale=12.0)
    starts = np.array([0, 170])
    out = flash_attention_fwd(Q, K, V, tile_size=64, causal=True, key_start=starts)
    ref = naive_attention(Q, K, V, causal=True, key_start=starts)
    assert np.isfinite(out).all()
    tol = TOL_F32_SCORES_900 if dtype == np.float32 else None
    assert_matches(out[1, :, 170:], ref[1, :, 170:], tol)
    assert_matches(out[0], ref[0], tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_catches_inverted_rescaling_factor(dtype):
    Q, K, V = qkv(1, 2, 256, 64, dtype, seed=9, scale=np.sqrt(1000))
    wrong = flash_with_inverted_factor(Q, K, V, 32)
    assert not np.isfinite(wrong).all()  # exp(m_new - m_old) overflowed, then inf / inf
    with pytest.raises(AssertionError):
        assert_matches(wrong, naive_attention(Q, K, V))


def test_inverted_factor_passes_when_running_max_never_rises():
    # Why the large-score test is needed: if every row's largest score is at key 0, the
    # running max never moves, both factors are 1, and the wrong variant is right.
    Q, K, V = qkv(1, 1, 96, 8, np.float64, seed=10)
    Q = np.abs(Q)
    K = np.abs(K)
    K[:, :, 0] = 100.0
    ref = naive_attention(Q, K, V)
    assert_matches(flash_with_inverted_factor(Q, K, V, 32), ref)
    assert_matches(flash_attention_fwd(Q, K, V, 32), ref)


# -- memory ---------------------------------------------------------------------------------


def test_peak_memory_stays_below_a_third_of_one_score_matrix():
    B, H, N, D = 2, 8, 4096, 64
    Q, K, V = qkv(B, H, N, D, np.float32, seed=11)
    one_head_scores = N * N * 4                                     # 64 MiB of float32
    tracemalloc.start()
    try:
        out = flash_attention_fwd(Q, K, V, 128, causal=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32
    assert peak < 0.3 * one_head_scores, f"peak {peak / 2**20:.1f} MiB"
    # Spot-check the last 100 queries of one (batch, head) against the oracle.
    b, h = 1, 7
    ref = naive_attention(Q[b:b + 1, h:h + 1, -100:], K[b:b + 1, h:h + 1], V[b:b + 1, h:h + 1])
    assert_matches(out[b:b + 1, h:h + 1, -100:], ref)


# -- input validation -----------------------------------------------------------------------


def _ok(n=8):
    return qkv(1, 2, n, 4, np.float64)


@pytest.mark.parametrize("make, match", [
    (lambda: (_ok()[0][0], *_ok()[1:]), "4-D"),
    (lambda: (_ok()[0].astype(np.float16), *_ok()[1:]), "float32 or float64"),
    (lambda: (_ok()[0].astype(np.int64), *_ok()[1:]), "float32 or float64"),
    (lambda: (_ok()[0].astype(np.float32), *_ok()[1:]), "share one dtype"),
    (lambda: (_ok()[0], _ok()[1][:, :1], _ok()[2]), r"\(B, H\)"),
    (lambda: (_ok()[0], _ok()[1][..., :3], _ok()[2]), "head dim"),
    (lambda: (_ok()[0], _ok()[1], _ok()[2][:, :, :5]), "number of keys"),
    (lambda: (_ok(9)[0], *_ok(8)[1:]), "Nq <= Nk"),
])
def test_rejects_bad_arrays(make, match):
    with pytest.raises(ValueError, match=match):
        flash_attention_fwd(*make())


@pytest.mark.parametrize("tile", [0, -3, 2.5, True])
def test_rejects_bad_tile_size(tile):
    with pytest.raises(ValueError, match="tile_size"):
        flash_attention_fwd(*_ok(), tile)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=float("nan")), "scale must be finite"),
    (dict(scale=float("inf")), "scale must be finite"),
    (dict(scale="0.5"), "scale must be a real number"),
    (dict(causal="no"), "causal must be True or False"),
    (dict(causal=None), "causal must be True or False")])
def test_rejects_a_bad_scale_or_causal_flag(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_attention_fwd(*_ok(), **kwargs)


@pytest.mark.parametrize("starts", [np.array([0, 1]), np.array([0.0]), np.array([9]),
                                    np.array([-1])])
def test_rejects_bad_key_start(starts):
    with pytest.raises(ValueError, match="key_start"):
        flash_attention_fwd(*_ok(), key_start=starts)


# -- prefill through the KV cache -----------------------------------------------------------


@pytest.fixture
def flash_calls(monkeypatch):
    """Count the calls KVCache.attend makes to flash attention."""
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return flash_attention_fwd(*args, **kwargs)

    monkeypatch.setattr(npdecode.cache, "flash_attention_fwd", spy)
    return calls


def test_long_prefill_through_flash_matches_forward(flash_calls):
    model = TinyLM(vocab_size=300, d_model=32, seed=3)
    rng = np.random.default_rng(12)
    prompts = [rng.integers(0, 300, size=n).tolist() for n in (300, 200, 129, 7)]
    cache = model.new_cache(rows=4, slots=310)
    logits = model.prefill(prompts, cache)                          # [4, V]
    assert len(flash_calls) == 1 and flash_calls[0][2] == 300
    for i, p in enumerate(prompts):
        expected = model.forward(np.array([p]))[0]                  # [V]
        np.testing.assert_allclose(logits[i], expected, rtol=0, atol=1e-10)
    # A decode step after the flash prefill (dense path) still agrees with the definition.
    nxt = rng.integers(0, 300, size=(4, 1))
    step = model.extend(nxt, cache)[:, -1]                          # [4, V]
    assert len(flash_calls) == 1
    for i, p in enumerate(prompts):
        expected = model.forward(np.array([p + [int(nxt[i, 0])]]))[0]
        np.testing.assert_allclose(step[i], expected, rtol=0, atol=1e-10)


def test_flash_prefill_with_every_row_padded(flash_calls):
    # A block wider than the longest prompt: no row starts at slot 0, so the key range the
    # cache hands to flash attention begins after slot 0 and key_start must be shifted.
    model = TinyLM(vocab_size=300, d_model=32, seed=4)
    rng = np.random.default_rng(13)
    prompts = [rng.integers(0, 300, size=n).tolist() for n in (250, 140)]
    width = 270
    ids = np.zeros((2, width), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
    cache = model.new_cache(rows=2, slots=width)
    cache.begin(np.array([len(p) for p in prompts]), width)
    logits = model.extend(ids, cache)[:, -1]                        # [2, V]
    assert len(flash_calls) == 1
    for i, p in enumerate(prompts):
        np.testing.assert_allclose(logits[i], model.forward(np.array([p]))[0], rtol=0,
                                   atol=1e-10)


def test_short_prefill_keeps_the_dense_path(flash_calls):
    model = TinyLM(vocab_size=300, d_model=32, seed=3)
    prompts = [list(range(128)), list(range(5))]
    logits = model.prefill(prompts, model.new_cache(rows=2, slots=130))
    assert flash_calls == []
    for i, p in enumerate(prompts):
        np.testing.assert_allclose(logits[i], model.forward(np.array([p]))[0], rtol=0,
                                   atol=1e-10)


def test_rejects_an_empty_head_dim():
    z = np.zeros((1, 1, 2, 0))
    with pytest.raises(ValueError, match="head dims must be at least 1"):
        flash_attention_fwd(z, z, z)


# -- the dense path (decoding steps, every model's forward) against the same oracle ----------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nq, nk", [(1, 40), (3, 9), (50, 50), (1, 4)])  # D above and below Nk
def test_dense_attention_matches_naive(dtype, nq, nk):
    from npdecode.attention.dense import dense_attention
    Q, K, V = qkv(3, 2, nq, 16, dtype, Nk=nk, seed=nq + nk)
    starts = [0, 2, 3]  # left padding, as the cache masks it
    kpos, qpos = np.arange(nk), nk - nq + np.arange(nq)
    visible = ((kpos[None, :] <= qpos[:, None])[None, None]
               & (kpos >= np.array(starts)[:, None])[:, None, None, :])    # [3, 1, nq, nk]
    ref = naive_attention(Q, K, V, causal=True, key_start=starts)
    scale = np.float64(1 / np.sqrt(16))  # a NumPy float64 scale keeps float32 attention float32
    out = dense_attention(Q, K, V, visible, scale)
    assert out.dtype == dtype
    real = visible.any(axis=-1)[:, 0]  # [3, nq] queries with a visible key (padding ones differ
    #                                   by definition: a uniform average here, zeros there)
    assert_matches(out[np.broadcast_to(real[:, None], out.shape[:3])],
                   ref[np.broadcast_to(real[:, None], ref.shape[:3])],
                   tol=1e-5 if dtype == np.float32 else 1e-12)
    # the mask's negation, when a caller passes it, gives the same numbers
    np.testing.assert_array_equal(dense_attention(Q, K, V, visible, scale, ~visible), out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["moderate", "large", "far_below", "all_hidden"])
def test_dense_attention_on_many_rows_with_and_without_the_max_shift(dtype, case):
    """Decoding-step shapes (many rows, one query each): moderate scores take the weights
    without each row's max subtracted; a score large enough to overflow exp, a row whose
    scores all lie far below zero, or a row with every key hidden take the shifted way. Each
    row must equal the softmax written out in float64 (a hidden-only row: the uniform
    average the dense path defines)."""
    from npdecode.attention.dense import dense_attention
    rng = np.random.default_rng(7)
    B, H, W, D = 130, 2, 12, 8                                # 260 rows of scores
    Q = rng.standard_normal((B, H, 1, D))
    K = rng.standard_normal((B, H, W, D))
    V = rng.standard_normal((B, H, W, D))
    visible = np.ones((B, 1, 1, W), dtype=bool)
    visible[:, :, :, :3] = False                              # left padding, as in the cache
    if case == "large":
        Q[5] *= 300.0                                         # one item's scores reach ~1e3
    elif case == "far_below":  # one item's scores from -104 to -98.5, whose exp are
        #                          float32 subnormals: the shift must not be skipped there
        target = -104.0 + 0.5 * np.arange(W)                                  # [W]
        q = Q[9, :, 0]                                                        # [H, D]
        K[9] = q[:, None, :] * (target[None, :, None] * np.sqrt(D)
                                / (q * q).sum(axis=-1)[:, None, None])
    elif case == "all_hidden":
        visible[11] = False
    scale = 1 / np.sqrt(D)
    s = np.einsum("bhqd,bhkd->bhqk", Q, K) * scale
    s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    w = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    with np.errstate(invalid="ignore"):  # 0 / 0 on a row with every key hidden, set below
        ref = np.einsum("bhqk,bhkd->bhqd", w, V) / w.sum(axis=-1, keepdims=True)
    ref[11] = V[11].mean(axis=1, keepdims=True) if case == "all_hidden" else ref[11]
    out = dense_attention(Q.astype(dtype), K.astype(dtype), V.astype(dtype), visible, scale)
    assert out.dtype == dtype
    assert_matches(out, ref, tol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype, score, W, value", [
    (np.float32, 79.0, 64, 400.0),       # exp(79) * 64 keys is near the float32 limit
    (np.float32, 79.9, 8192, 1.0),       # exp(79.9) * 8192 keys: the weights' sum overflows
    (np.float32, 79.9, 8192, 1e-3),      # ... while the product of small values would not
    (np.float32, 78.5, 2, 1e5),          # exp(78.5) * 1e5: the unshifted product overflows
    (np.float64, 699.0, 64, 1e10)])
def test_dense_attention_on_many_rows_does_not_overflow_where_the_definition_does_not(
        dtype, score, W, value):
    """Scores just below the bound under which exp alone cannot overflow, with many keys or
    large values: softmax weights are at most 1, so the output (here every key scores the
    same: the mean of the values) is finite and must come out right."""
    from npdecode.attention.dense import dense_attention
    rng = np.random.default_rng(3)
    B = 256                                                   # 256 rows of scores
    Q = np.ones((B, 1, 1, 1), dtype=dtype)
    K = np.full((B, 1, W, 1), score, dtype=dtype)
    V = (value * (1.0 + 0.1 * rng.standard_normal((B, 1, W, 2)))).astype(dtype)
    visible = np.ones((B, 1, 1, W), dtype=bool)
    out = dense_attention(Q, K, V, visible, 1.0)
    ref = V.astype(np.float64).mean(axis=2, keepdims=True)
    assert_matches(out, ref, tol=1e-5 if dtype == np.float32 else 1e-12)
