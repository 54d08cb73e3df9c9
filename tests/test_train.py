"""Training: the hand-written backward pass, the data, the optimiser, and the shipped models."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from npdecode.models.chargpt import CharGPT, CharGPTConfig, init_params
from npdecode.models.pretrained import load_draft, load_target
from npdecode.train import (IGNORE, RECIPES, Adam, bigram_loss, evaluate, load_names,
                            loss_and_grads, make_examples, split_names, train)

SMALL = CharGPTConfig(max_context=6, d_model=8, n_layers=2, n_heads=2, d_ff=12)


def small_batch(seed: int):
    rng = np.random.default_rng(seed)
    params = init_params(SMALL, rng)
    # Perturb norms and bias away from their 1/0 init so their gradients are generic.
    for name in params:
        if params[name].ndim == 1:
            params[name] = params[name] + 0.3 * rng.standard_normal(params[name].shape)
    x = rng.integers(0, 27, size=(3, 6))
    y = rng.integers(0, 27, size=(3, 6))
    y[0, 4:] = IGNORE
    y[2, 1] = IGNORE
    return params, x, y


def oracle_loss(params, x, y) -> float:
    """Mean cross-entropy from the model's plain forward and an explicit log-softmax."""
    logits = CharGPT(SMALL, params).logits_all(x)                  # [B, T, V]
    total, count = 0.0, 0
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if y[b, t] != IGNORE:
                row = logits[b, t]
                total += math.log(np.exp(row - row.max()).sum()) + row.max() - row[y[b, t]]
                count += 1
    return total / count


def test_training_loss_is_the_models_cross_entropy():
    params, x, y = small_batch(0)
    loss, _ = loss_and_grads(params, SMALL, x, y, need_grads=False)
    assert loss == pytest.approx(oracle_loss(params, x, y), rel=1e-12)


def test_backward_matches_central_finite_differences_for_every_parameter():
    params, x, y = small_batch(1)
    _, grads = loss_and_grads(params, SMALL, x, y)
    assert set(grads) == set(params)
    h = 1e-5
    for name, a in params.items():
        numeric = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            up, _ = loss_and_grads(params, SMALL, x, y, need_grads=False)
            a[i] = old - h
            down, _ = loss_and_grads(params, SMALL, x, y, need_grads=False)
            a[i] = old
            numeric[i] = (up - down) / (2 * h)
        assert grads[name].shape == a.shape
        rel = np.linalg.norm(grads[name] - numeric) / (
            np.linalg.norm(grads[name]) + np.linalg.norm(numeric))
        assert rel < 1e-6, f"{name}: relative error {rel:.2e}"


def test_float32_training_stays_float32():
    params, x, y = small_batch(2)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    loss32, g32 = loss_and_grads(p32, SMALL, x, y)
    loss64, g64 = loss_and_grads(params, SMALL, x, y)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(g32["h0.Wqkv"], g64["h0.Wqkv"], atol=1e-5)


# -- data -----------------------------------------------------------------------------------

def test_examples_are_dot_name_dot_with_ignored_padding():
    x, y = make_examples(["em"], context=5)
    e, m = ord("e") - 96, ord("m") - 96
    np.testing.assert_array_equal(x, [[0, e, m, 0, 0]])
    np.testing.assert_array_equal(y, [[e, m, 0, IGNORE, IGNORE]])


def test_a_name_longer_than_the_context_is_cut_into_windows():
    # "abcde" gives 6 predictions: a|., b|a, c|b, d|c, e|d, .|e -> windows of 4 and 2.
    x, y = make_examples(["abcde"], context=4)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [4, 5, 0, 0]])
    np.testing.assert_array_equal(y, [[1, 2, 3, 4], [5, 0, IGNORE, IGNORE]])


def test_corpus_and_split():
    names = load_names()
    assert len(names) == 32033
    assert all(n.isascii() and n.isalpha() and n.islower() for n in names)
    train_names, val_names = split_names(names, seed=0)
    assert len(val_names) == round(len(names) / 10)
    assert sorted(train_names + val_names) == sorted(names)
    assert split_names(names, seed=0) == (train_names, val_names)
    assert split_names(names, seed=1)[1] != val_names


def test_evaluate_is_the_mean_over_every_next_character():
    model = CharGPT.init(SMALL, seed=4)
    names = ["ab", "zoe", "q"]
    total, count = 0.0, 0
    for name in names:
        seq = [0] + [ord(c) - 96 for c in name] + [0]
        for t in range(1, len(seq)):
            logits = model.forward(np.array([seq[:t]]))[0]
            total += math.log(np.exp(logits - logits.max()).sum()) + logits.max() \
                - logits[seq[t]]
            count += 1
    assert evaluate(model, names) == pytest.approx(total / count, rel=1e-12)


def test_bigram_baseline_by_hand():
    # Train on "ab": counts (add-one) in row '.' are 1 everywhere plus 1 for 'a' (sum 28);
    # row 'a' is 1 everywhere plus 1 for 'b' (sum 28). Validation "a" predicts a|. and .|a.
    want = -(math.log(2 / 28) + math.log(1 / 28)) / 2
    assert bigram_loss(["ab"], ["a"]) == pytest.approx(want, rel=1e-12)


# -- optimiser --------------------------------------------------------------------------------

def test_learning_rate_warms_up_then_decays_linearly():
    opt = Adam(lr=1.0, steps=110, warmup=10, final_lr_frac=0.1)
    assert opt.rate(5) == pytest.approx(0.5)
    assert opt.rate(10) == pytest.approx(1.0)
    assert opt.rate(60) == pytest.approx(1.0 - 0.9 * 0.5)
    assert opt.rate(110) == pytest.approx(0.1)


def test_adam_first_step_moves_each_weight_by_the_learning_rate():
    # After bias correction m/sqrt(v) = g/|g| on the first step: a step of lr per coordinate.
    opt = Adam(lr=0.01, steps=10, warmup=0, final_lr_frac=1.0, eps=0.0)  # constant rate
    params = {"w": np.array([1.0, -2.0, 3.0])}
    opt.step(params, {"w": np.array([0.5, -4.0, 1e-3])})
    np.testing.assert_allclose(params["w"], [0.99, -1.99, 2.99], rtol=1e-12)


def test_adam_follows_its_recurrence_over_several_steps():
    """AdamW written out for one coordinate at a time, in plain Python: moments with their
    own betas, bias correction, the warm-up rate, decay of matrices only."""
    b1, b2, eps, lr, wd, warmup = 0.5, 0.9, 1e-8, 0.05, 0.3, 2
    opt = Adam(lr=lr, steps=10, warmup=warmup, final_lr_frac=1.0, beta1=b1, beta2=b2, eps=eps,
               weight_decay=wd)
    params = {"W": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    grads = [{"W": np.array([[0.3, -1.0]]), "b": np.array([2.0])},
             {"W": np.array([[-0.7, 0.2]]), "b": np.array([-1.0])},
             {"W": np.array([[0.1, 0.1]]), "b": np.array([0.4])}]
    want = {"W": [1.0, -2.0], "b": [0.5]}
    m = {"W": [0.0, 0.0], "b": [0.0]}
    v = {"W": [0.0, 0.0], "b": [0.0]}
    for t, g in enumerate(grads, start=1):
        rate = lr * min(t / warmup, 1.0)
        for name in want:
            for i, gi in enumerate(g[name].ravel().tolist()):
                m[name][i] = b1 * m[name][i] + (1 - b1) * gi
                v[name][i] = b2 * v[name][i] + (1 - b2) * gi * gi
                if name == "W":
                    want[name][i] *= 1 - rate * wd
                m_hat, v_hat = m[name][i] / (1 - b1 ** t), v[name][i] / (1 - b2 ** t)
                want[name][i] -= rate * m_hat / (math.sqrt(v_hat) + eps)
        opt.step(params, g)
    for name in want:
        np.testing.assert_allclose(params[name].ravel(), want[name], rtol=1e-12)


def _validates_emma() -> list[str]:
    """20 names whose validation split (split seed 0) is 'Emma' and one good name."""
    names = ["a" + "b" * i for i in range(20)]
    _, val = split_names(names, seed=0)
    names[names.index(val[0])] = "Emma"
    return names


VALIDATES_EMMA = _validates_emma()


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(weight_decay=-5.0), "weight_decay"),
    (dict(dtype=np.float16), "dtype"), (dict(dtype=np.int64), "dtype"),
    (dict(lr=0.1, weight_decay=10.0), "would scale the weights by 0 every step"),
    # round(5 / 10) = 0 names would validate; 6 are the fewest that train (below)
    (dict(names=["anna", "bob", "carl", "dan", "eve"]),
     "empty training or validation split .* give at least 6 names"),
    (dict(names=VALIDATES_EMMA), "'E'"),   # a bad name in the validation split alone
    (dict(seed=-1), "seed must be >= 0"), (dict(seed=1.5), "seed must be an integer"),
    (dict(split_seed=-2), "split_seed must be >= 0"),
    (dict(names="abcdefghijklmnopqrstuvwxyz"), "not one string"),
])
def test_train_refuses_bad_settings_before_any_step(kwargs, message):
    steps_seen = []
    args = dict(steps=3, names=["anna", "bob"] * 10, on_step=lambda s, loss: steps_seen.append(s))
    with pytest.raises(ValueError, match=message):
        train(CharGPTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16), **(args | kwargs))
    assert steps_seen == []


def test_six_names_are_enough_to_train_as_the_refusal_says():
    names = ["anna", "bob", "carl", "dan", "eve", "fay"]
    result = train(CharGPTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16), steps=2,
                   names=names)
    assert math.isfinite(result.val_loss)


def test_weight_decay_shrinks_matrices_but_not_vectors():
    # With a zero gradient the adaptive update is 0, so only the decoupled decay acts.
    opt = Adam(lr=0.1, steps=10, warmup=0, final_lr_frac=1.0, weight_decay=0.5)
    params = {"W": np.full((2, 2), 2.0), "g": np.full(2, 2.0)}
    opt.step(params, {"W": np.zeros((2, 2)), "g": np.zeros(2)})
    np.testing.assert_allclose(params["W"], 2.0 * (1 - 0.1 * 0.5), rtol=1e-12)
    np.testing.assert_array_equal(params["g"], 2.0)


def test_a_few_dozen_steps_lower_the_validation_loss():
    names = load_names()[:3000]
    cfg = CharGPTConfig(max_context=16, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    _, val_names = split_names(names, seed=0)
    before = evaluate(CharGPT(cfg, init_params(cfg, np.random.default_rng(0))), val_names)
    result = train(cfg, steps=40, batch_size=32, lr=1e-2, seed=0, names=names)
    assert result.val_loss == pytest.approx(evaluate(result.model, val_names), rel=1e-12)
    assert result.val_loss < before - 0.3


# -- the shipped models -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def split():
    return split_names(load_names(), seed=0)


def test_shipped_target_beats_2_05_and_the_bigram_baseline(split):
    train_names, val_names = split
    target = load_target()
    assert target.dtype == np.float64
    loss = evaluate(target, val_names)
    assert loss <= 2.05
    assert loss < bigram_loss(train_names, val_names)


def test_shipped_draft_is_a_quarter_of_the_target_and_beats_the_bigram_baseline(split):
    train_names, val_names = split
    target, draft = load_target(), load_draft()
    assert 4 * draft.num_params <= target.num_params
    assert draft.vocab_size == target.vocab_size == 27
    assert evaluate(draft, val_names) < bigram_loss(train_names, val_names)


def test_shipped_models_match_their_recipes():
    assert load_target().config == RECIPES["target"].config
    assert load_draft().config == RECIPES["draft"].config


# -- the command ------------------------------------------------------------------------------

def run_cli(*argv: str) -> int:
    from npdecode.cli import train as cli_train
    parser = argparse.ArgumentParser(prog="npdecode")
    cli_train.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--lr", "0.01", "--weight-decay", "1000"],
     r"--lr 0.01 with --weight-decay 1000 would scale the weights by -9 every step"),
    # The decay the user did not give is the recipe's, and the message says so.
    (["--lr", "1000"], r"--lr 1000 with --weight-decay 0.3 \(the target recipe's\) would "
                       r"scale the weights by -299 every step .* pass --weight-decay 0"),
    (["--d-model", "30", "--heads", "4"], "--heads"),
    (["--output", "weights.txt"], ".npz"),
])
def test_cli_refuses_bad_options(argv, message, tmp_path):
    if "--output" not in argv:
        argv = [*argv, "--output", str(tmp_path / "m.npz")]
    with pytest.raises(ValueError, match=message):
        run_cli(*argv)


@pytest.mark.parametrize("option", ["--steps", "--batch-size"])
def test_cli_parser_refuses_counts_below_one(option, capsys):
    with pytest.raises(SystemExit):
        run_cli(option, "0")
    assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--steps", "--batch-size", "--seed"])
def test_cli_parser_refuses_counts_beyond_int64(option, capsys):
    with pytest.raises(SystemExit):
        run_cli(option, str(2 ** 63))
    assert f"argument {option}: must be below 2**63, got '{2 ** 63}'" in capsys.readouterr().err


def test_cli_shows_a_progress_bar_on_a_terminal_through_training_and_validation(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich then treats the output as a terminal
    assert run_cli("--steps", "3", "--d-model", "8", "--layers", "1", "--heads", "2",
                   "--d-ff", "8", "--output", str(tmp_path / "bar.npz")) == 0
    out = capsys.readouterr().out
    assert "training" in out and "validating" in out and "3/3" in out
    assert "step 1/3" not in out   # the bar, not the progress lines


def test_cli_trains_and_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "tiny.npz"
    args = ["--steps", "3", "--d-model", "8", "--layers", "1", "--heads", "2", "--d-ff", "8",
            "--output", str(out)]  # progress lines (pytest's output is not a terminal)
    assert run_cli(*args) == 0
    model = CharGPT.load(out)
    assert model.config.d_model == 8 and model.config.n_layers == 1
    assert "validation loss" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--overwrite"):
        run_cli(*args)
