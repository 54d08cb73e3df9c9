"""CharGPT: the cached path against the plain forward, files, and the character tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from npdecode.models.chargpt import CharGPT, CharGPTConfig, count_params, param_shapes
from npdecode.models.chars import ALPHABET, VOCAB_SIZE, decode, encode
from npdecode.models.protocol import is_cached

CFG = CharGPTConfig(max_context=12, d_model=16, n_layers=2, n_heads=4, d_ff=24)
TOL = 1e-10


@pytest.fixture(scope="module")
def model() -> CharGPT:
    return CharGPT.init(CFG, seed=3)


def seq_logits(model: CharGPT, seq: list[int]) -> np.ndarray:
    """The oracle: logits (V,) after ``seq``, from the plain forward on that row alone."""
    return model.forward(np.array([seq]))[0]


def test_implements_cached_protocol(model):
    assert is_cached(model)
    assert model.vocab_size == 27 and model.max_context == 12


def test_logits_all_matches_forward_on_every_prefix(model):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 27, size=(3, 7))
    every = model.logits_all(ids)                                  # [3, 7, V]
    for t in range(1, 8):
        np.testing.assert_allclose(every[:, t - 1], model.forward(ids[:, :t]), atol=TOL, rtol=0)


def test_prefill_of_a_ragged_batch_matches_forward(model):
    prompts = [[0, 5, 13], [0], [0, 1, 2, 3, 4, 5, 6], [0, 26, 26, 1]]
    cache = model.new_cache(rows=4, slots=12)
    got = model.prefill(prompts, cache)
    for b, p in enumerate(prompts):
        np.testing.assert_allclose(got[b], seq_logits(model, p), atol=TOL, rtol=0)


def test_steps_reorder_and_truncated_multi_token_extend_match_forward(model):
    rng = np.random.default_rng(1)
    seqs = [[0, 5, 13], [0], [0, 1, 2, 3, 4, 5]]
    cache = model.new_cache(rows=4, slots=12)
    model.prefill(seqs, cache)
    # Two single-token steps.
    for _ in range(2):
        new = rng.integers(1, 27, size=len(seqs))
        got = model.extend(new[:, None], cache)[:, 0]
        seqs = [s + [int(t)] for s, t in zip(seqs, new)]
        for b, s in enumerate(seqs):
            np.testing.assert_allclose(got[b], seq_logits(model, s), atol=TOL, rtol=0)
    # Beam-style reorder: rows may be duplicated, dropped, and the row count may grow.
    parents = np.array([2, 0, 2, 1])
    cache.reorder(parents)
    seqs = [list(seqs[p]) for p in parents]
    new = rng.integers(1, 27, size=len(seqs))
    got = model.extend(new[:, None], cache)[:, 0]
    seqs = [s + [int(t)] for s, t in zip(seqs, new)]
    for b, s in enumerate(seqs):
        np.testing.assert_allclose(got[b], seq_logits(model, s), atol=TOL, rtol=0)
    # Roll every row back by different amounts, then extend three tokens at once.
    drop = np.array([2, 1, 3, 0])
    cache.truncate(cache.end[: cache.n] - drop)
    seqs = [s[: len(s) - k] for s, k in zip(seqs, drop)]
    new = rng.integers(0, 27, size=(len(seqs), 3))
    got = model.extend(new, cache)                                 # [4, 3, V]
    for b, s in enumerate(seqs):
        for i in range(3):
            want = seq_logits(model, s + new[b, : i + 1].tolist())
            np.testing.assert_allclose(got[b, i], want, atol=TOL, rtol=0)


def test_float32_cached_path_is_close_to_float64(model):
    m32 = CharGPT(CFG, model.params, dtype=np.float32)
    prompts = [[0, 5, 13], [0, 1]]
    c64, c32 = model.new_cache(2, 8), m32.new_cache(2, 8)
    got = m32.prefill(prompts, c32)
    assert got.dtype == np.float32
    # Logits up to 1.8, where a float32 ulp is 1.2e-7: measured 1.2e-6 (about ten ulps after
    # two layers), <= 8e-7 over 20 other seeds and prompts; 5e-6 is four times that.
    np.testing.assert_allclose(got, model.prefill(prompts, c64), atol=5e-6, rtol=0)


def test_context_limit_is_enforced(model):
    with pytest.raises(ValueError, match="context"):
        model.forward(np.zeros((1, 13), dtype=np.int64))
    cache = model.new_cache(rows=1, slots=20)
    model.prefill([[0] * 12], cache)
    with pytest.raises(ValueError, match="context"):
        model.extend(np.array([[1]]), cache)


def test_bad_config_and_params_are_refused():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        CharGPTConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="n_layers"):
        CharGPTConfig(n_layers=0)
    params = CharGPT.init(CFG, seed=0).params
    params = dict(params, wte=np.zeros((5, 16)))
    with pytest.raises(ValueError, match="wte"):
        CharGPT(CFG, params)


def test_num_params_is_the_sum_of_the_shapes(model):
    d, f, v, c, L = 16, 24, 27, 12, 2
    per_layer = d + 3 * d * d + d * d + d + d * f + f * d
    assert model.num_params == v * d + c * d + L * per_layer + d + d * v + v
    assert model.num_params == sum(int(np.prod(s)) for s in param_shapes(CFG).values())


@pytest.mark.parametrize("config", [
    dict(d_model=16, n_layers=2, n_heads=4, d_ff=24, max_context=12),
    dict(d_model=6, n_layers=5, n_heads=3, d_ff=7, max_context=1, vocab_size=2),
])
def test_count_params_counts_every_shape(config):
    cfg = CharGPTConfig(**config)
    assert count_params(cfg) == sum(int(np.prod(s)) for s in param_shapes(cfg).values())


def test_save_load_round_trip(model, tmp_path):
    exact = tmp_path / "exact.npz"
    model.save(exact, dtype=np.float64)
    back = CharGPT.load(exact)
    assert back.config == model.config
    for name, a in model.params.items():
        np.testing.assert_array_equal(back.params[name], a)
    # The default stores float32; loading gives float64 holding the float32 values.
    small = tmp_path / "small.npz"
    model.save(small)
    back = CharGPT.load(small)
    assert back.dtype == np.float64
    for name, a in model.params.items():
        assert back.params[name].dtype == np.float64
        np.testing.assert_array_equal(back.params[name], a.astype(np.float32))
    assert CharGPT.load(small, dtype=np.float32).params["wte"].dtype == np.float32


def test_load_refuses_a_file_without_config(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="config"):
        CharGPT.load(path)


def test_load_refuses_an_empty_file_naming_it(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npz is not an .npz archive"):
        CharGPT.load(path)


def _save_with_config(model: CharGPT, path, config_text: str):
    """``model``'s parameters saved as ``save`` would, with ``config_text`` as the config."""
    np.savez(path, config=np.array(config_text), **model.params)
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(dropout=0.1), r"missing \[\], unknown \['dropout'\]"),
    (lambda c: c.pop("d_ff"), r"missing \['d_ff'\], unknown \[\]"),
    (lambda c: c.update(n_layers="2"), r"n_layers must be an integer >= 1, got '2'"),
], ids=["unknown key", "missing key", "bad value"])
def test_load_checks_the_stored_config_key_by_key(model, tmp_path, edit, match):
    import json
    from dataclasses import asdict
    config = asdict(model.config)
    edit(config)
    path = _save_with_config(model, tmp_path / "edited.npz", json.dumps(config))
    with pytest.raises(ValueError, match=match) as err:
        CharGPT.load(path)
    assert str(path) in str(err.value)


def test_load_names_the_file_of_a_parameter_of_the_wrong_shape(model, tmp_path):
    import json
    from dataclasses import asdict
    path = tmp_path / "reshaped.npz"
    params = dict(model.params, wte=model.params["wte"][:1])   # one row of the embedding
    np.savez(path, config=np.array(json.dumps(asdict(model.config))), **params)
    with pytest.raises(ValueError, match=r"reshaped.npz: .*wte.*shape") as err:
        CharGPT.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("value, match", [
    (lambda w: w.astype(np.int64), r"parameter wte holds int64 values"),
    (lambda w: w.astype(np.complex128), r"parameter wte holds complex128 values"),
    (lambda w: np.where(np.arange(w.size).reshape(w.shape) == 7, np.nan, w),
     r"parameter wte holds NaN or infinite values"),
    (lambda w: w.astype(object), r"not an .npz archive written by CharGPT.save: .*pickle"),
], ids=["integers", "complex", "nan", "objects"])
def test_load_refuses_parameters_that_are_not_finite_floats_naming_the_file(model, tmp_path,
                                                                             value, match):
    import json
    from dataclasses import asdict
    path = tmp_path / "bad.npz"
    params = dict(model.params, wte=value(model.params["wte"]))
    np.savez(path, config=np.array(json.dumps(asdict(model.config))), **params)
    with pytest.raises(ValueError, match=match) as err:
        CharGPT.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text, match", [("{nope", "not valid JSON"),
                                         ("[16, 2]", "not a JSON object")])
def test_load_refuses_a_stored_config_that_is_not_a_json_object(model, tmp_path, text, match):
    path = _save_with_config(model, tmp_path / "bad.npz", text)
    with pytest.raises(ValueError, match=match) as err:
        CharGPT.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("tokens", [np.zeros((1, 1)), np.zeros(1, dtype=np.int64),
                                    np.zeros((1, 1), dtype=bool)], ids=["float", "1-D", "bool"])
def test_extend_refuses_tokens_that_are_not_a_2d_integer_array(model, tokens):
    cache = model.new_cache(rows=1, slots=4)
    model.prefill([[1]], cache)
    with pytest.raises(ValueError, match=r"tokens must be an integer array \(N, T\)"):
        model.extend(tokens, cache)


def test_forward_refuses_rows_without_tokens(model):
    with pytest.raises(ValueError, match="at least one token per row"):
        model.forward(np.zeros((1, 0), dtype=np.int64))


# -- tokenizer --------------------------------------------------------------------------------

def test_vocabulary_is_dot_then_a_to_z():
    assert VOCAB_SIZE == 27
    assert ALPHABET[0] == "." and ALPHABET[1] == "a" and ALPHABET[26] == "z"


def test_encode_starts_with_the_start_token():
    assert encode("em") == [0, ord("e") - 96, ord("m") - 96]
    assert encode("") == [0]


def test_decode_skips_the_start_token_and_stops_at_end_of_name():
    assert decode([0, 5, 13, 13, 1, 0, 7, 7]) == "emma"
    assert decode([5, 13]) == "em"
    assert decode([0]) == ""


def test_encode_decode_round_trip_every_letter():
    word = "abcdefghijklmnopqrstuvwxyz"
    assert decode(encode(word) + [0]) == word


@pytest.mark.parametrize("bad", ["Emma", "em ma", "é", "a1"])
def test_encode_refuses_characters_outside_a_to_z(bad):
    with pytest.raises(ValueError, match="a-z"):
        encode(bad)


def test_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="outside"):
        decode([0, 27])


@pytest.mark.parametrize("ids, says", [
    ([0, 1.7, 2], "1.7 at position 1 is not an integer"),
    ([0, "3"], "'3' at position 1 is not an integer"),
    ([0, -1], "-1 at position 1 is outside"),
    ([0, 5, 0, 999], "999 at position 3 is outside"),   # checked past the end of the name
    ([0, np.True_], "True_? at position 1 is not an integer"),
])
def test_decode_refuses_every_id_that_is_not_a_token(ids, says):
    with pytest.raises(ValueError, match=says):
        decode(ids)
    assert decode([0, np.int64(5), 0]) == "e"   # NumPy integers are ids
