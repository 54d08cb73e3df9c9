"""GPT2 against HuggingFace transformers (the oracle), on random checkpoints built locally."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from npdecode.models.gpt2 import (SCALED_ACTIVATIONS, GPT2, fold_layer_norm,  # noqa: E402
                                  layer_norm, standardize)
from npdecode.models.protocol import is_cached  # noqa: E402
from random_gpt2 import random_gpt2  # noqa: E402

V, POSITIONS = 97, 40
# float32 logits (|logit| up to 7.5) against transformers in float32: measured up to 3.1e-6 on
# these checkpoints (4.7e-6 over 12 seeds); each side alone is up to ~4e-6 off the float64
# logits (a few float32 roundings of values ~5), so two independent float32 computations can
# differ by ~8e-6. 2e-5 is a few times that.
ATOL_F32 = 2e-5


def build_checkpoint(path, *, seed=0, tied=True, activation="gelu_new", n_layer=2,
                     scale_by_layer=False):
    """Save a random GPT-2 (weights drawn wider than HF's init, so logits are not flat)."""
    return random_gpt2(path, vocab=V, positions=POSITIONS, seed=seed, n_layer=n_layer,
                       tied=tied, activation=activation, scale_by_layer=scale_by_layer)


def hf_last_logits(model, prompts, dtype):
    """Logits of each prompt's last token, left-padded with mask and mask-derived positions."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model.to(dtype)(input_ids=ids, attention_mask=mask, position_ids=pos)
    return out.logits[:, -1].numpy()


def test_layer_norm_and_its_fold_into_the_next_layer_match_torch_layer_norm():
    # Width 24: 1/24 is not a binary fraction, so the averaging vector is rounded.
    rng = np.random.default_rng(5)
    d, e, eps = 24, 10, 1e-5
    x = rng.normal(3.0, 2.0, (6, 3, d))                                   # mean far from 0
    g, b = 1 + 0.2 * rng.standard_normal(d), rng.standard_normal(d)
    w, c = rng.standard_normal((d, e)), rng.standard_normal(e)
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (d,), torch.tensor(g), torch.tensor(b),
                                         eps=eps).numpy()                 # [6, 3, d]
    np.testing.assert_allclose(layer_norm(x, g, b, eps), ref, atol=1e-12, rtol=0)
    w_folded, c_folded = fold_layer_norm(g, b, w, c, np.float64)
    np.testing.assert_allclose(standardize(x, eps) @ w_folded + c_folded, ref @ w + c,
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(SCALED_ACTIVATIONS))
def test_scaled_activation_equals_torch_tanh_gelu(name):
    # The model computes the activation as r * f(s * x) with s and r folded into its weights.
    f, s, r = SCALED_ACTIVATIONS[name]
    x = np.linspace(-12.0, 12.0, 4001)
    ref = torch.nn.functional.gelu(torch.tensor(x), approximate="tanh").numpy()
    np.testing.assert_allclose(r * f(s * x), ref, atol=1e-14, rtol=1e-13)
    x32 = x.astype(np.float32)   # float32: within a few roundings of the float64 values
    got = np.float32(r) * f(np.float32(s) * x32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=2e-6)


RAGGED = [[5, 17, 3, 88, 41, 2, 9], [60], [1, 2, 3, 4], [96, 0, 50, 50, 7, 12, 13, 14, 15, 30]]


@pytest.mark.parametrize("tied", [True, False])
def test_ragged_prefill_logits_match_transformers_float32(tmp_path, tied):
    hf = build_checkpoint(tmp_path, tied=tied)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float32)
    cache = model.new_cache(len(RAGGED), 12)
    ours = model.prefill(RAGGED, cache)                                  # [N, V]
    ref = hf_last_logits(hf, RAGGED, torch.float32)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=ATOL_F32, rtol=0)


@pytest.mark.parametrize("activation,scale_by_layer", [("gelu_new", True), ("gelu", False),
                                                       ("relu", False)])
def test_config_variants_match_transformers_float64(tmp_path, activation, scale_by_layer):
    hf = build_checkpoint(tmp_path, activation=activation, scale_by_layer=scale_by_layer,
                          n_layer=3, seed=1)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float64)
    ours = model.prefill(RAGGED, model.new_cache(len(RAGGED), 12))
    ref = hf_last_logits(hf, RAGGED, torch.float64)
    np.testing.assert_allclose(ours, ref, atol=1e-9, rtol=0)


def test_forward_equals_transformers_on_equal_length_rows(tmp_path):
    hf = build_checkpoint(tmp_path, seed=2)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float64)
    ids = np.random.default_rng(0).integers(0, V, (3, 9))
    with torch.no_grad():
        ref = hf.double()(torch.tensor(ids)).logits[:, -1].numpy()
    np.testing.assert_allclose(model.forward(ids), ref, atol=1e-9, rtol=0)


def test_cached_decoding_equals_uncached_forward(tmp_path):
    build_checkpoint(tmp_path, seed=3)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float64)
    assert is_cached(model)
    rng = np.random.default_rng(1)
    prompts = [[int(t) for t in rng.integers(0, V, n)] for n in (3, 7, 1, 5)]
    seqs = [list(p) for p in prompts]
    cache = model.new_cache(len(prompts), 7 + 6)
    logits = model.prefill(prompts, cache)                               # [N, V]
    for step in range(6):
        for i, s in enumerate(seqs):
            np.testing.assert_allclose(logits[i], model.forward(np.array([s]))[0],
                                       atol=1e-10, rtol=0)
        nxt = rng.integers(0, V, len(seqs))                              # [N]
        for s, t in zip(seqs, nxt):
            s.append(int(t))
        logits = model.extend(nxt[:, None], cache)[:, 0]                 # [N, V]


def test_extend_several_tokens_at_once_equals_one_at_a_time(tmp_path):
    build_checkpoint(tmp_path, seed=4)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float64)
    prompts = [[3, 4, 5], [9]]
    block = np.array([[1, 2, 3], [4, 5, 6]])
    a = model.new_cache(2, 8)
    model.prefill(prompts, a)
    together = model.extend(block, a)                                    # [2, 3, V]
    b = model.new_cache(2, 8)
    model.prefill(prompts, b)
    apart = np.stack([model.extend(block[:, j:j + 1], b)[:, 0] for j in range(3)], axis=1)
    np.testing.assert_allclose(together, apart, atol=1e-10, rtol=0)


def test_context_limit_is_the_number_of_positions(tmp_path):
    build_checkpoint(tmp_path)
    model = GPT2.from_pretrained(tmp_path)
    assert model.max_context == POSITIONS and model.vocab_size == V
    model.forward(np.zeros((1, POSITIONS), dtype=np.int64))              # exactly full: fine
    with pytest.raises(ValueError, match="context"):
        model.forward(np.zeros((1, POSITIONS + 1), dtype=np.int64))
    cache = model.new_cache(1, POSITIONS + 2)
    model.prefill([[1] * POSITIONS], cache)
    with pytest.raises(ValueError, match="context"):
        model.extend(np.array([[1]]), cache)                             # position 40: none


def test_search_refuses_prompt_that_would_outgrow_the_context(tmp_path):
    from npdecode.search.validate import check_context
    build_checkpoint(tmp_path)
    model = GPT2.from_pretrained(tmp_path)
    check_context(model, [[1] * 30], POSITIONS - 30)
    with pytest.raises(ValueError, match="context"):
        check_context(model, [[1] * 30], POSITIONS - 29)


def _no_unknown_tokenizer(tmp_path, kind="bpe"):
    """A tokenizer.json whose model knows h, e, l, o (and, for "bpe", the merges of "hello")
    and has no unknown token: any other character has no token at all."""
    import tokenizers
    vocab = {"h": 0, "e": 1, "l": 2, "o": 3}
    if kind == "bpe":
        model = tokenizers.models.BPE({**vocab, "he": 4, "ll": 5, "hell": 6, "hello": 7},
                                      merges=[("h", "e"), ("l", "l"), ("he", "ll"),
                                              ("hell", "o")])
    else:
        model = tokenizers.models.WordLevel({"hello": 0, "ole": 1})
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / f"{kind}.json"))
    return tmp_path / f"{kind}.json"


@pytest.mark.parametrize("kind, text, says", [
    ("bpe", "hello world", r"'w' at position 6 has no token"),
    ("bpe", "ole\th!", r"'!' at position 5 has no token"),
    ("wordlevel", "hello ole you", r"cannot encode 'hello ole you': .*UNK"),
])
def test_tokenizer_refuses_text_it_cannot_represent_instead_of_dropping_it(tmp_path, kind,
                                                                           text, says):
    pytest.importorskip("tokenizers")
    from npdecode.models.tokenizer import load_tokenizer
    tok = load_tokenizer(_no_unknown_tokenizer(tmp_path, kind))
    known = "hello ole" if kind == "wordlevel" else "hello  ole\thole"
    # Every character is kept (whitespace aside: these tokenizers decode with spaces between)
    assert "".join(tok.decode(tok.encode(known)).split()) == "".join(known.split())
    with pytest.raises(ValueError, match=says):
        tok.encode(text)


def _hello_tokenizer(tmp_path, normalizer=None, vocab=None):
    """A BPE tokenizer without an unknown token, with the given normalizer and vocabulary
    (default: h, e, l, o, "he") and the special token <|endoftext|>."""
    import tokenizers
    vocab = vocab or {"h": 0, "e": 1, "l": 2, "o": 3, "he": 4}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab, merges=[("h", "e")] if "he" in vocab else []))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.normalizer = normalizer
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(tmp_path / "tokenizer.json"))
    return backend


@pytest.mark.parametrize("text, normalizer", [
    ("hello<|endoftext|>hole", None),          # a special token of characters without tokens
    ("he\u0301llo", "nfd accents"),             # an accent the normalizer strips on purpose
    ("h\u00e9llo", "nfd accents"),              # the same, composed
])
def test_tokenizer_keeps_what_its_normalizer_and_special_tokens_account_for(
        tmp_path, text, normalizer):
    """Characters outside the vocabulary that the tokenizer still accounts for are not
    dropped ones: the ids are the tokenizers library's own."""
    tokenizers = pytest.importorskip("tokenizers")
    from npdecode.models.tokenizer import load_tokenizer
    norm = tokenizers.normalizers
    backend = _hello_tokenizer(tmp_path, normalizer and norm.Sequence(
        [norm.NFD(), norm.StripAccents()]))
    want = backend.encode(text, add_special_tokens=False).ids
    assert load_tokenizer(tmp_path).encode(text) == want


def test_tokenizer_refuses_a_character_its_normalizer_makes_unspellable(tmp_path):
    """NFC composes e + combining acute into one character the vocabulary lacks (it has both
    parts): the tokenizers library would drop it silently; the position is the original's."""
    tokenizers = pytest.importorskip("tokenizers")
    from npdecode.models.tokenizer import load_tokenizer
    backend = _hello_tokenizer(tmp_path, tokenizers.normalizers.NFC(),
                               vocab={"e": 0, "\u0301": 1, "x": 2})
    assert backend.decode(backend.encode("xe\u0301x").ids) == "x x"   # what it would do
    with pytest.raises(ValueError, match="'e\u0301' at position 1 has no token"):
        load_tokenizer(tmp_path).encode("xe\u0301x")


def test_tokenizer_round_trip(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from npdecode.models.tokenizer import load_tokenizer
    words = ["<|endoftext|>", "hello", "world", "beam", "search"]
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.decoder = tokenizers.decoders.WordPiece()  # joins word-level tokens with spaces
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert tok.encode("hello beam search") == [1, 3, 4]
    assert tok.decode([2, 3]) == "world beam"
    assert tok.token_id("<|endoftext|>") == 0 and tok.vocab_size == len(words)
    for bad, says in (([0, 5], "token id 5 at position 1 is outside"),
                      ([0, -1], "token id -1 at position 1 is outside"),
                      ([0, 1.9], "1.9 at position 1 is not an integer"),
                      ([True], "True at position 0 is not an integer")):
        with pytest.raises(ValueError, match=says):
            tok.decode(bad)
    with pytest.raises(ValueError, match="'b' at position 0 has no token"):
        load_tokenizer(_no_unknown_tokenizer(tmp_path)).encode("bye")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "broken.json")


def test_a_bfloat16_checkpoint_loads_as_its_exact_float32_values(tmp_path):
    hf = build_checkpoint(tmp_path / "f32")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf = hf.float()  # the bfloat16 weights, widened exactly
    model = GPT2.from_pretrained(tmp_path / "bf16", dtype=np.float32)
    np.testing.assert_array_equal(model.wte, hf.transformer.wte.weight.detach().numpy())
    ours = model.prefill(RAGGED, model.new_cache(len(RAGGED), 12))
    np.testing.assert_allclose(ours, hf_last_logits(hf, RAGGED, torch.float32), atol=ATOL_F32,
                               rtol=0)


def _edited_checkpoint(tmp_path, edit_weights=None, edit_config=None, tied=True):
    """A saved random checkpoint with its tensors and/or config.json edited."""
    import json

    from safetensors.numpy import load_file, save_file

    build_checkpoint(tmp_path, tied=tied)
    weights = load_file(str(tmp_path / "model.safetensors"))
    if edit_weights:
        edit_weights(weights)
        save_file(weights, str(tmp_path / "model.safetensors"))
    if edit_config:
        config = json.loads((tmp_path / "config.json").read_text())
        edit_config(config)
        (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def _key(weights, suffix):
    return next(k for k in weights if k.endswith(suffix))


@pytest.mark.parametrize("case, match", [
    ("extra block", r"n_layer=2 needs blocks h.0 to h.1; the checkpoint has blocks h.0, h.1, "
                    r"h.2"),
    ("missing block", r"n_layer=3 needs blocks h.0 to h.2; the checkpoint has blocks h.0, h.1:"),
    ("short ln_f bias", r"'ln_f.bias' has shape \(1,\); the config implies \(32,\)"),
    ("wide positions", r"'wpe.weight' has shape \(40, 33\); the config implies \(40, 32\)"),
    ("long head", r"'lm_head.weight' has shape \(98, 32\); the config implies \(97, 32\)"),
    ("long positions", r"'wpe.weight' has shape \(41, 32\); the config implies \(40, 32\)"),
    ("tied but distinct head", r"ties the head to the embeddings \(tie_word_embeddings\) but "
                               r"the checkpoint's lm_head.weight differs from wte.weight"),
    ("a name twice", r"holds both 'transformer.wte.weight' and 'wte.weight', which name the "
                     r"same weight"),
    ("integer bias", r"'ln_f.bias' holds int64 values; model weights must be floating-point"),
    ("nan embedding", r"'wte.weight' holds NaN or infinite values"),
    ("not gpt2", r"config.json is for a 'gptj' model"),
])
def test_a_checkpoint_that_disagrees_with_its_config_is_refused_at_load(tmp_path, case, match):
    def edit(w):
        if case == "extra block":
            for k in [k for k in w if ".h.1." in k]:
                w[k.replace(".h.1.", ".h.2.")] = w[k]
        elif case == "integer bias":
            w[_key(w, "ln_f.bias")] = w[_key(w, "ln_f.bias")].astype(np.int64)
        elif case == "nan embedding":
            w[_key(w, "wte.weight")][3, 5] = np.nan
        elif case == "short ln_f bias":
            w[_key(w, "ln_f.bias")] = w[_key(w, "ln_f.bias")][:1]
        elif case == "wide positions":
            wpe = w[_key(w, "wpe.weight")]
            w[_key(w, "wpe.weight")] = np.concatenate([wpe, wpe[:, :1]], axis=1)
        elif case == "long head":
            head = w[_key(w, "lm_head.weight")]
            w[_key(w, "lm_head.weight")] = np.concatenate([head, head[:1]])
        elif case == "long positions":
            wpe = w[_key(w, "wpe.weight")]
            w[_key(w, "wpe.weight")] = np.concatenate([wpe, wpe[:1]])
        elif case == "tied but distinct head":
            w["lm_head.weight"] = w[_key(w, "wte.weight")] * 2
        elif case == "a name twice":
            w["wte.weight"] = w["transformer.wte.weight"] * 2

    config_edits = {"not gpt2": dict(model_type="gptj"), "missing block": dict(n_layer=3)}
    path = _edited_checkpoint(tmp_path, edit, tied=case != "long head",
                              edit_config=(lambda c: c.update(config_edits[case]))
                              if case in config_edits else None)
    with pytest.raises(ValueError, match=match) as err:
        GPT2.from_pretrained(path)
    # The message names the file that disagrees.
    assert str(path / ("config.json" if case == "not gpt2" else "model.safetensors")) in str(
        err.value)


def test_a_tied_checkpoint_that_also_stores_the_same_head_loads(tmp_path):
    """lm_head.weight equal to wte.weight agrees with tie_word_embeddings: nothing to refuse,
    and the logits are those of the checkpoint without it."""
    build_checkpoint(tmp_path / "plain")
    path = _edited_checkpoint(tmp_path / "both", lambda w: w.update(
        {"lm_head.weight": w[_key(w, "wte.weight")].copy()}))
    ids = np.array([[5, 9, 2], [7, 1, 3]])
    want = GPT2.from_pretrained(tmp_path / "plain", dtype=np.float64).forward(ids)
    got = GPT2.from_pretrained(path, dtype=np.float64).forward(ids)
    np.testing.assert_array_equal(got, want)


def test_a_tensor_in_a_dtype_numpy_cannot_hold_is_refused_naming_it(tmp_path):
    """An 8-bit float tensor (safetensors F8_E4M3): a ValueError naming the file, the tensor
    and its dtype, not a failure inside the reader."""
    import json
    header = json.dumps({"wte.weight": {"dtype": "F8_E4M3", "shape": [2, 2],
                                        "data_offsets": [0, 4]}}).encode()
    build_checkpoint(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(ValueError, match=r"tensor 'wte.weight' is stored as F8_E4M3") as err:
        GPT2.from_pretrained(tmp_path)
    assert str(file) in str(err.value)


@pytest.mark.parametrize("rows", [0, 2, 3])
def test_extend_with_another_row_count_than_the_cache_is_refused(tmp_path, rows):
    build_checkpoint(tmp_path)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float64)
    cache = model.new_cache(3, 12)
    model.prefill([[5]], cache)                                           # one sequence
    with pytest.raises(ValueError, match=f"{rows} rows of tokens for a cache holding 1"):
        model.extend(np.full((rows, 1), 7), cache)


def test_gpt2_computes_in_float32_or_float64_only(tmp_path):
    build_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        GPT2.from_pretrained(tmp_path, dtype=np.float16)


def test_an_unsupported_activation_is_refused_naming_every_supported_one():
    from npdecode.models.gpt2 import GPT2Config
    config = GPT2Config(vocab_size=10, n_positions=8, n_embd=4, n_layer=1, n_head=1,
                        activation_function="mish")
    with pytest.raises(ValueError, match="'mish' is not supported") as err:
        GPT2(config, {})
    for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu"):
        assert repr(name) in str(err.value)


def _damage(data: bytes, case: str) -> bytes:
    """A safetensors file's bytes damaged the way ``case`` says."""
    header_end = 8 + int.from_bytes(data[:8], "little")
    return {"empty": b"",
            "shorter than the length field": data[:5],
            "header cut short": data[:header_end // 2],
            "header not JSON": data[:8] + b"\xff" * (header_end - 8) + data[header_end:],
            "tensor data cut short": data[:-100]}[case]


@pytest.mark.parametrize("case", ["empty", "shorter than the length field", "header cut short",
                                  "header not JSON", "tensor data cut short"])
def test_a_damaged_safetensors_file_is_refused_naming_it(tmp_path, case):
    build_checkpoint(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(_damage(file.read_bytes(), case))
    with pytest.raises(ValueError, match="is not a valid safetensors file") as err:
        GPT2.from_pretrained(tmp_path)
    assert str(file) in str(err.value)


@pytest.mark.parametrize("layout, found", [
    ("sharded", "model.safetensors.index.json"),
    ("pytorch", "pytorch_model.bin"),
])
def test_a_checkpoint_without_a_single_safetensors_file_is_refused_saying_how_to_convert(
        tmp_path, layout, found):
    hf = build_checkpoint(tmp_path / "source")
    ckpt = tmp_path / "ckpt"
    if layout == "sharded":
        hf.save_pretrained(ckpt, max_shard_size="20KB")
    else:  # what save_pretrained(safe_serialization=False) wrote before transformers 5
        ckpt.mkdir()
        (ckpt / "config.json").write_text((tmp_path / "source" / "config.json").read_text())
        torch.save(hf.state_dict(), ckpt / "pytorch_model.bin")
    assert (ckpt / found).is_file() and not (ckpt / "model.safetensors").exists()
    with pytest.raises(ValueError, match=f"has no model.safetensors: it holds {found}") as err:
        GPT2.from_pretrained(ckpt)
    assert "save_pretrained(out, max_shard_size='100GB')" in str(err.value)


@pytest.mark.parametrize("key, value, match", [
    ("n_head", 0, r"n_head must be an integer >= 1, got 0"),
    ("n_layer", "2", r"n_layer must be an integer >= 1, got '2'"),
    ("vocab_size", 97.0, r"vocab_size must be an integer >= 1, got 97.0"),
    ("n_embd", True, r"n_embd must be an integer >= 1, got True"),
    ("n_inner", -1, r"n_inner must be an integer >= 1, got -1"),
    ("n_head", 5, r"n_embd 32 is not divisible by n_head 5"),
    ("layer_norm_epsilon", "x", r"layer_norm_epsilon must be a finite number > 0, got 'x'"),
    ("layer_norm_epsilon", 0.0, r"layer_norm_epsilon must be a finite number > 0, got 0.0"),
    ("activation_function", ["relu"], r"activation_function must be a string"),
    ("tie_word_embeddings", "yes", r"tie_word_embeddings must be true or false, got 'yes'"),
])
def test_a_config_value_of_the_wrong_type_or_range_is_refused_naming_key_value_and_file(
        tmp_path, key, value, match):
    path = _edited_checkpoint(tmp_path, edit_config=lambda c: c.update({key: value}))
    with pytest.raises(ValueError, match=match) as err:
        GPT2.from_pretrained(path)
    assert str(path / "config.json") in str(err.value)


@pytest.mark.parametrize("text, match", [
    ("", "is not valid JSON"),
    ('{"n_embd": 32,', "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object of GPT-2 settings, got a list"),
])
def test_a_config_json_that_is_not_a_json_object_is_refused_naming_it(tmp_path, text, match):
    build_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        GPT2.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value)


@pytest.mark.parametrize("tokens", [np.zeros((1, 3)), np.zeros(3, dtype=np.int64),
                                    np.zeros((1, 3, 1), dtype=np.int64),
                                    np.zeros((1, 3), dtype=bool), np.array([["a", "b"]])],
                         ids=["float", "1-D", "3-D", "bool", "str"])
def test_forward_and_extend_refuse_tokens_that_are_not_a_2d_integer_array(tmp_path, tokens):
    build_checkpoint(tmp_path)
    model = GPT2.from_pretrained(tmp_path, dtype=np.float64)
    with pytest.raises(ValueError, match=r"token_ids must be an integer array \(N, T\)"):
        model.forward(tokens)
    cache = model.new_cache(1, 8)
    model.prefill([[5]], cache)
    with pytest.raises(ValueError, match=r"tokens must be an integer array \(N, T\)"):
        model.extend(tokens, cache)


def test_forward_refuses_rows_without_tokens(tmp_path):
    build_checkpoint(tmp_path)
    model = GPT2.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="at least one token per row"):
        model.forward(np.zeros((2, 0), dtype=np.int64))
