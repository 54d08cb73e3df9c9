"""The command line: tables for people, clear errors for bad input, --help everywhere."""

import math
import re

import pytest

from npdecode import TinyLM, batched_beam_search
from npdecode.cli import SUBCOMMANDS, main
from table_text import table_rows, unspaced


def test_beam_prints_each_prompts_hypotheses_as_the_library_computes_them(capsys):
    argv = ["beam", "--prompt", "3,14,159", "--prompt", "11,22,33", "--beam-width", "4",
            "--max-new-tokens", "6", "--alpha", "0.6", "--eos", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    want = batched_beam_search(TinyLM(1000, 64, seed=0), [[3, 14, 159], [11, 22, 33]],
                               beam_width=4, max_new_tokens=6, alpha=0.6, eos_token_id=0)
    assert "prompt 0: 3,14,159" in out and "prompt 1: 11,22,33" in out
    for hyps in want:
        for rank, h in enumerate(hyps, 1):
            line = re.search(rf"│\s+{rank} │ {' '.join(map(str, h.tokens))}\s+│\s+"
                             rf"{h.score:.4f} │\s+{h.logprob:.4f} │", out)
            assert line, (rank, h)


@pytest.mark.parametrize("columns", [50, 40, 30])
def test_beam_on_a_narrow_terminal_folds_its_cells_and_cuts_none(columns, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["beam", "--prompt", "3,14,159", "--beam-width", "2",
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    want = batched_beam_search(TinyLM(1000, 64, seed=0), [[3, 14, 159]], beam_width=2,
                               max_new_tokens=4, alpha=0.6)[0]  # the command's default
    # A folded cell loses the space at its fold, so the tokens are compared without spaces.
    assert [[r[0], unspaced(r[1]), *r[2:]] for r in table_rows(out, 5)] == [
        [str(rank), "".join(map(str, h.tokens)), f"{h.score:.4f}", f"{h.logprob:.4f}", "no"]
        for rank, h in enumerate(want, 1)]


def test_huge_scores_are_printed_in_scientific_notation_on_one_line(monkeypatch, capsys):
    """alpha -250 makes len ** alpha tiny, so scores near -1e75: a dozen characters, not 80
    digits folded over several lines; the value is the library's to 5 significant digits."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["beam", "--prompt", "3", "--vocab-size", "5", "--max-new-tokens", "2",
                 "--beam-width", "2", "--alpha", "-250"]) == 0
    rows = table_rows(capsys.readouterr().out, 5)
    want = batched_beam_search(TinyLM(5, 64, seed=0), [[3]], beam_width=2, max_new_tokens=2,
                               alpha=-250)[0]
    assert len(rows) == len(want) == 2
    for row, h in zip(rows, want):
        assert abs(h.score) > 1e70 and re.fullmatch(r"-\d\.\d{4}e\+\d\d", row[2])
        assert float(row[2]) == pytest.approx(h.score, rel=1e-4)
        assert row[3] == f"{h.logprob:.4f}"


def test_a_long_prompt_is_shown_shortened_with_its_length(capsys):
    prompt = list(range(300))
    assert main(["beam", "--prompt", ",".join(map(str, prompt)), "--beam-width", "1",
                 "--max-new-tokens", "1"]) == 0
    out = capsys.readouterr().out
    assert "prompt 0: 0,1,2,3,4,5,6,7,8,...,298,299 (300 tokens)" in out
    assert "150" not in out.split("┏")[0]   # the middle of the prompt is not echoed


def test_a_token_outside_the_vocabulary_is_one_clear_error_line(capsys):
    assert main(["beam", "--prompt", "3,1000"]) == 2
    err = capsys.readouterr().err
    assert "prompt 0, position 1: token 1000" in err and "Traceback" not in err


def test_a_malformed_prompt_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["beam", "--prompt", "3,x"])
    assert exit_.value.code == 2
    assert "not a comma-separated list of token ids" in capsys.readouterr().err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_explains_itself_and_each_of_its_options(command, capsys):
    import argparse

    from npdecode.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(f"usage: npdecode {command}") and parser.description
    assert " ".join(parser.description.split())[:60] in out
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"
            assert action.option_strings[-1] in out


def test_demo_runs_every_scenario_and_each_claim_holds(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "identical" in out and "same tokens: yes" in out
    assert re.search(r"│\s+1 │ 0\s+│\s+-3\.0000 │", out)          # [EOS] first
    assert "alpha 0.0: [0] (-2.000), then [1, 1, 0]" in out
    assert "alpha 2.0: [1, 1, 0] (-0.333), then [0]" in out


def test_demo_completes_name_prefixes_with_the_trained_model(capsys):
    from npdecode.models.chars import EOS, decode, encode
    from npdecode.models.pretrained import load_target

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    want = batched_beam_search(load_target(), [encode("em"), encode("chr")], beam_width=4,
                               max_new_tokens=10, alpha=0.6, eos_token_id=EOS)
    for prefix, hyps in zip(["em", "chr"], want):
        assert f"prefix '{prefix}'" in out
        for h in hyps:
            assert f" {prefix + decode(h.tokens)} " in out


@pytest.mark.parametrize("path", ["/nonexistent/model.npz", __file__])
def test_a_missing_or_foreign_model_file_is_one_clear_error_line(path, capsys):
    assert main(["compare", "--target", path, "--draft", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npdecode compare: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_without_rich_the_command_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rich" else real(name, *a))
    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert "pip install rich" in err and "python -m pip install '.[cli]'" in err
    assert "npdecode[" not in err  # npdecode is installed from a clone, not from an index


@pytest.mark.parametrize("argv, flag", [(["demo", "--seed", "-1"], "--seed"),
                                        (["beam", "--prompt", "1", "--vocab-size", "0"],
                                         "--vocab-size"),
                                        (["train", "--seed", "-1"], "--seed"),
                                        (["train", "--split-seed", "-2"], "--split-seed")])
def test_a_bad_option_value_is_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {flag}: must be >= " in capsys.readouterr().err


@pytest.mark.parametrize("prompt", ["3,,4", "3,", ","])
def test_a_prompt_with_an_empty_entry_is_refused(prompt, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["beam", "--prompt", prompt])
    assert exit_.value.code == 2
    assert "token id" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--eos", "1000"], "--eos 1000 is outside [0, 1000) (--vocab-size 1000)"),
    (["--max-new-tokens", "100000000"], "lower --max-new-tokens, --beam-width"),
    (["--d-model", "9999999999"], "GiB and this machine has"),
])
def test_beam_errors_name_the_options_and_come_before_any_work(argv, says, capsys):
    assert main(["beam", "--prompt", "3"] + argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_refuses_an_unwritable_output_before_training(tmp_path, capsys):
    (tmp_path / "d.npz").mkdir()
    assert main(["train", "--output", str(tmp_path / "d.npz"), "--overwrite", "--steps", "1",
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "is a directory" in captured.err and "training" not in captured.out


def test_a_damaged_model_file_is_one_clear_error_line(tmp_path, capsys):
    from importlib import resources

    src = str(resources.files("npdecode").joinpath("weights", "draft.npz"))
    data = open(src, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert main(["compare", "--target", str(tmp_path / "cut.npz"), "--draft", src]) == 2
    err = capsys.readouterr().err
    assert "cut.npz" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_interrupt_is_one_line_and_exit_130(monkeypatch, capsys):
    from npdecode.cli import beam

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(beam, "run", interrupted)
    assert main(["beam", "--prompt", "3"]) == 130
    assert capsys.readouterr().err.strip() == "npdecode beam: interrupted"


def test_version(capsys):
    import npdecode

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == (
        f"npdecode {npdecode.__version__}")


@pytest.mark.parametrize("argv, says", [
    (["--prompt", "-1,2"], "prompt 0, position 0: token -1 is not a valid id"),
    (["--prompt", "1", "--alpha", "-inf"], "argument --alpha: expected a finite number, got "
                                           "'-inf'"),
])
def test_a_negative_value_reaches_its_own_check(argv, says, capsys):
    # argparse alone would take '-1,2' for an option and say only 'expected one argument'
    try:
        code = main(["beam"] + argv)
    except SystemExit as exit_:  # refused by the option's type, in the parser
        code = exit_.code
    assert code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["beam", "--prompt", "1", "--alpha", "1e400"],
     "argument --alpha: expected a finite number, got '1e400' (beyond the float range)"),
    (["beam", "--prompt", "1", "--alpha", "nan"],
     "argument --alpha: expected a finite number, got 'nan'"),
    (["beam", "--prompt", "1", "--alpha", "0.6x"], "argument --alpha: expected a number, got "
                                                   "'0.6x'"),
    (["train", "--lr", "inf"], "argument --lr: expected a finite number, got 'inf'"),
    (["train", "--weight-decay", "-1e999"], "argument --weight-decay: expected a finite "
                                            "number, got '-1e999' (beyond the float range)"),
])
def test_a_number_option_names_the_text_it_could_not_use(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"npdecode {argv[0]}: error: {says}"


def test_an_alpha_that_overflows_the_length_penalty_is_refused_in_the_commands_words(capsys):
    assert main(["beam", "--prompt", "1,2", "--alpha", "400", "--max-new-tokens", "40"]) == 2
    limit = 700 / math.log(40)   # len ** alpha stays within exp(+-700) up to length 40
    assert capsys.readouterr().err.strip() == (
        f"npdecode beam: error: --alpha 400 makes the length penalty len ** alpha overflow or "
        f"vanish in float64 for lengths up to --max-new-tokens 40; use an --alpha between "
        f"{-limit:.4g} and {limit:.4g}")


def test_a_negative_alpha_is_a_value_not_an_option(capsys):
    assert main(["beam", "--prompt", "1", "--alpha", "-0.5", "--max-new-tokens", "2",
                 "--d-model", "4"]) == 0
    assert "alpha -0.5" in capsys.readouterr().out


@pytest.mark.parametrize("argv, usage, says", [
    (["beam", "--prompt", "1", "--bogus"], "usage: npdecode beam", "--bogus"),
    (["beam", "--prompt", "1", "--beam", "3"], "usage: npdecode beam", "--beam 3"),
    (["compare", "--prefixes", "em", "jo", "al"], "usage: npdecode compare", "al"),
])
def test_unknown_or_abbreviated_options_are_refused_with_the_commands_usage(argv, usage, says,
                                                                            capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and usage in err
    assert f"error: unrecognized arguments: {says}" in err


@pytest.mark.parametrize("prompt", ["３,２", "3_000", "0x10"])
def test_a_prompt_takes_ascii_decimal_ids_only(prompt, capsys):
    with pytest.raises(SystemExit):
        main(["beam", "--prompt", prompt])
    assert "decimal digits" in capsys.readouterr().err


def test_beam_settings_are_checked_before_their_memory(capsys):
    argv = ["beam", "--prompt", "3", "--prompt", "5000", "--beam-width", "100000000"]
    assert main(argv) == 2
    assert "token 5000 is not a valid id" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    # refused by the parser, before the memory these sizes would need is estimated
    (["--beam-width", "0", "--max-new-tokens", "100000000000"],
     "argument --beam-width: must be >= 1, got 0"),
    (["--no-repeat-ngram-size", "-1", "--max-new-tokens", "100000000000"],
     "argument --no-repeat-ngram-size: must be >= 0, got -1"),
    (["--max-new-tokens", "-1"], "argument --max-new-tokens: must be >= 0, got -1"),
])
def test_beam_sizes_below_their_minimum_are_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["beam", "--prompt", "3"] + argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_an_integer_option_too_long_for_python_is_refused_briefly(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["beam", "--prompt", "3", "--seed", "9" * 5000])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "argument --seed: integer too long (5000 characters)" in err and len(err) < 600


def test_a_one_token_vocabulary_with_huge_sizes_is_refused_at_once(capsys):
    assert main(["beam", "--prompt", "0", "--vocab-size", "1", "--beam-width", str(10**12),
                 "--max-new-tokens", str(10**12)]) == 2
    assert "GiB and this machine has" in capsys.readouterr().err


def test_hypotheses_that_run_out_of_tokens_are_printed_not_dropped(capsys):
    # ten tokens, none may repeat: every hypothesis stops after nine, long before the limit
    assert main(["beam", "--prompt", "1", "--vocab-size", "10", "--d-model", "8",
                 "--no-repeat-ngram-size", "1", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"│\s+\d+ │", line)]
    assert len(rows) == 4


def test_out_of_memory_names_the_commands_own_size_options(monkeypatch, capsys):
    from npdecode.cli import beam

    def exhausted(args):
        raise MemoryError
    monkeypatch.setattr(beam, "run", exhausted)
    assert main(["beam", "--prompt", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "npdecode beam: error: not enough memory for these settings; lower --max-new-tokens, "
        "--beam-width, --vocab-size or --d-model")


def test_train_counts_the_parameters_and_adam_state_in_its_memory_check(tmp_path, capsys):
    # One position, one sequence: the activations are small, but 3 layers of width 40,000 are
    # about 1.9e10 parameters, 4 float32 copies of them (weights, gradients, Adam's moments)
    # about 300 GB.
    assert main(["train", "--d-model", "40000", "--heads", "1", "--layers", "3",
                 "--d-ff", "256", "--context", "1", "--batch-size", "1", "--dtype", "float32",
                 "--steps", "1", "--no-progress", "--output", str(tmp_path / "m.npz")]) == 2
    captured = capsys.readouterr()
    assert "GiB and this machine has" in captured.err and "--d-model" in captured.err
    assert "training" not in captured.out


def test_train_sizes_its_memory_check_by_the_longest_name_not_the_context(tmp_path, capsys):
    """Minibatches are cut to their longest name (16 predictions), so a context of 1,000
    costs its position table and the padded examples, not 1,000-wide attention rows (which,
    at 4,096 names a batch, would claim hundreds of GiB)."""
    assert main(["train", "--model", "draft", "--context", "1000", "--batch-size", "4096",
                 "--steps", "1", "--no-progress", "--output", str(tmp_path / "m.npz")]) == 0
    assert (tmp_path / "m.npz").exists()


def test_train_refuses_a_huge_layer_count_without_listing_its_layers(tmp_path, capsys):
    # 10**20 layers: listing each layer's parameters would itself exhaust the memory.
    assert main(["train", "--model", "draft", "--layers", str(10**20), "--steps", "1",
                 "--no-progress", "--output", str(tmp_path / "m.npz")]) == 2
    captured = capsys.readouterr()
    assert "GiB and this machine has" in captured.err and "--layers" in captured.err
    assert "training" not in captured.out


def test_train_refuses_a_minibatch_that_cannot_fit_in_memory_before_training(tmp_path, capsys):
    assert main(["train", "--batch-size", str(10**9), "--steps", "1", "--no-progress",
                 "--output", str(tmp_path / "m.npz")]) == 2
    captured = capsys.readouterr()
    assert "GiB and this machine has" in captured.err and "--batch-size" in captured.err
    assert "training" not in captured.out and not (tmp_path / "m.npz").exists()


# --- installing the optional extras ---------------------------------------------------------

@pytest.mark.parametrize("module, loader, function, argument", [
    ("safetensors", "npdecode.models.gpt2", "load_safetensors", "model.safetensors"),
    ("tokenizers", "npdecode.models.tokenizer", "load_tokenizer", "."),
])
def test_a_missing_extra_says_how_to_install_it_without_a_package_index(
        module, loader, function, argument, monkeypatch):
    import importlib
    import sys

    load = getattr(importlib.import_module(loader), function)
    monkeypatch.setitem(sys.modules, module, None)  # now 'import module' fails
    with pytest.raises(ImportError) as err:
        load(argument)
    msg = str(err.value)
    assert f"pip install {module}" in msg and "python -m pip install '.[hf]'" in msg
    assert "npdecode[" not in msg


# --- train: divergence, progress, output paths ----------------------------------------------

def test_train_refuses_to_write_weights_when_the_loss_diverges(tmp_path, capsys):
    out = tmp_path / "z.npz"
    assert main(["train", "--lr", "1e20", "--weight-decay", "0", "--steps", "5", "--no-progress",
                 "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("npdecode train: error: training diverged")
    assert "lower --lr" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "Warning" not in captured.err and "wrote" not in captured.out
    assert "above" not in captured.out and not out.exists()


def test_train_refuses_to_write_weights_when_the_validation_loss_is_not_finite(
        tmp_path, monkeypatch, capsys):
    from npdecode.cli import train as train_cli
    from npdecode.models.chargpt import CharGPT
    from npdecode.train import TrainResult

    model = CharGPT.load(_save_chargpt(tmp_path / "m.npz"))
    monkeypatch.setattr(train_cli, "train",
                        lambda *args, **kwargs: TrainResult(model, float("nan"), [3.0]))
    assert main(["train", "--steps", "1", "--no-progress", "-o", str(tmp_path / "v.npz")]) == 2
    err = capsys.readouterr().err
    assert "training diverged (the validation loss is nan)" in err and "--lr" in err
    assert not (tmp_path / "v.npz").exists()


def test_train_notes_and_warnings_go_to_stderr_and_the_report_to_stdout(
        tmp_path, monkeypatch, capsys):
    from npdecode.cli import train as train_cli
    from npdecode.models.chargpt import CharGPT
    from npdecode.train import TrainResult

    model = CharGPT.load(_save_chargpt(tmp_path / "m.npz"))
    uniform = math.log(model.config.vocab_size)  # guessing every character alike
    monkeypatch.setattr(train_cli, "train",
                        lambda *args, **kwargs: TrainResult(model, uniform + 0.5, [3.0]))
    assert main(["train", "--context", "4", "--steps", "1", "--no-progress",
                 "-o", str(tmp_path / "w.npz")]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("note: --context 4 is shorter than the longest name")
    assert err[1].startswith(f"warning: the validation loss is above {uniform:.2f} nats/char")
    assert "note:" not in captured.out and "warning:" not in captured.out
    assert f"validation loss:  {uniform + 0.5:.4f} nats/char" in captured.out
    assert (tmp_path / "w.npz").exists()


@pytest.mark.parametrize("steps", [20, 19, 25])
def test_train_prints_a_progress_line_every_tenth_of_the_steps_when_not_on_a_terminal(
        tmp_path, capsys, steps):
    # capsys's stdout is not a terminal, as a pipe or a log file is not
    assert main(["train", "--model", "draft", "--steps", str(steps), "-o",
                 str(tmp_path / "p.npz")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    # one line at the step that completes each tenth of the steps
    want = [math.ceil(tenth * steps / 10) for tenth in range(1, 11)]
    assert [line.split(":")[0] for line in lines] == [f"step {s}/{steps}" for s in want]
    assert all(re.search(r": loss \d+\.\d{3}, \d+ s elapsed", line) for line in lines)
    assert lines[-1].endswith("computing the validation loss")


def test_train_no_progress_prints_no_progress_lines(tmp_path, capsys):
    assert main(["train", "--model", "draft", "--steps", "3", "--no-progress", "-o",
                 str(tmp_path / "q.npz")]) == 0
    assert "step " not in capsys.readouterr().out


@pytest.mark.parametrize("name, says", [
    ("model.txt", "--output must end in .npz, got 'model.txt'"),
    (".npz", "--output '.npz' has no name before .npz; give one, such as 'draft.npz'"),
])
def test_train_output_that_is_not_an_npz_name_is_refused_before_training(
        name, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "draft", "-o", name, "--steps", "1", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"npdecode train: error: {says}"
    assert "training" not in captured.out and not list(tmp_path.iterdir())


def test_train_output_that_is_a_directory_is_named_as_such_without_overwrite(tmp_path, capsys):
    (tmp_path / "d.npz").mkdir()
    assert main(["train", "-o", str(tmp_path / "d.npz"), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--output {tmp_path / 'd.npz'} is a directory" in err and "--overwrite" not in err


@pytest.mark.parametrize("argv, says", [
    (["train", "-o", "", "--steps", "1"],
     "argument --output/-o: the path is empty; give a file name ending in .npz"),
    (["compare", "--target", " "], "argument --target: the path is empty; give a CharGPT .npz"),
    (["compare", "--draft", ""], "argument --draft: the path is empty; give a CharGPT .npz"),
])
def test_an_empty_path_is_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


# --- one style of error for every integer option ---------------------------------------------

@pytest.mark.parametrize("argv", [
    ["beam", "--prompt", "1", "--beam-width"], ["beam", "--prompt", "1", "--max-new-tokens"],
    ["beam", "--prompt", "1", "--eos"], ["beam", "--prompt", "1", "--no-repeat-ngram-size"],
    ["beam", "--prompt", "1", "--vocab-size"], ["beam", "--prompt", "1", "--seed"],
    ["train", "--steps"], ["train", "--batch-size"], ["train", "--d-model"], ["train", "--heads"],
    ["train", "--layers"], ["train", "--d-ff"], ["train", "--context"], ["train", "--seed"],
    ["compare", "--repeats"], ["demo", "--seed"],
])
def test_every_integer_option_refuses_a_non_integer_in_the_same_words(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["2.5"])
    assert exit_.value.code == 2
    assert f"argument {argv[-1]}: expected an integer, got '2.5'" in capsys.readouterr().err


def test_a_token_outside_the_vocabulary_names_its_size_once(capsys):
    assert main(["beam", "--prompt", "3,1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("ids must be integers in [0, 1000) (--vocab-size 1000)")
    assert "(vocab size" not in err and "the vocabulary is set by" not in err


# --- beam: help and output ------------------------------------------------------------------

def _help(command, monkeypatch, capsys, columns=100):
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_beam_help_explains_the_prompt_dtype_alpha_and_the_output_columns(monkeypatch, capsys):
    text = " ".join(_help("beam", monkeypatch, capsys).split())
    assert "--prompt IDS required: comma-separated token ids, each in [0, --vocab-size)" in text
    assert "repeat the option for a batch" in text
    assert "--float32 run the model in float32 (default: float64)" in text
    assert "length penalty: score = logprob / len**alpha" in text
    assert "any number for which len**alpha stays within float64's range" in text
    assert "a larger alpha favours longer hypotheses" in text
    for column in ("rank", "tokens", "score", "logprob", "finished"):
        assert re.search(rf"\b{column} [a-z']", text), column
    assert "'no*' when it stopped before --max-new-tokens" in text


def test_beam_help_example_pastes_into_a_shell_and_runs(monkeypatch, capsys):
    import shlex

    out = _help("beam", monkeypatch, capsys, columns=60)
    example = out[out.index("example:"):].splitlines()[1:]
    argv = shlex.split("\n".join(example).replace("\\\n", ""))  # as a shell joins lines
    assert argv[:2] == ["npdecode", "beam"] and "--eos" in argv
    assert main(argv[1:]) == 0


def test_beam_marks_hypotheses_that_stopped_because_every_token_was_banned(capsys):
    # ten tokens, none may repeat: every hypothesis stops after nine, before the limit of 12
    want = batched_beam_search(TinyLM(10, 8, seed=0), [[1]], beam_width=2, max_new_tokens=12,
                               alpha=0.6, no_repeat_ngram_size=1)[0]
    assert all(not h.finished and len(h.tokens) < 12 for h in want)
    assert main(["beam", "--prompt", "1", "--vocab-size", "10", "--d-model", "8",
                 "--no-repeat-ngram-size", "1", "--max-new-tokens", "12",
                 "--beam-width", "2"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"│\s+no\* +│", out)) == 2
    assert ("no*: stopped before --max-new-tokens 12 without finishing, because every next "
            "token would have repeated an n-gram (--no-repeat-ngram-size 1)") in " ".join(
                out.split())


def test_beam_marks_nothing_when_every_hypothesis_ran_to_the_limit(capsys):
    assert main(["beam", "--prompt", "3,14", "--max-new-tokens", "4", "--d-model", "8"]) == 0
    out = capsys.readouterr().out
    assert "no*" not in out and len(re.findall(r"│\s+no +│", out)) == 4


# --- compare: models, help, output ----------------------------------------------------------

def _shipped(name):
    from importlib import resources

    return str(resources.files("npdecode").joinpath("weights", f"{name}.npz"))


def _save_chargpt(path, **config):
    import numpy as np

    from npdecode.models.chargpt import CharGPT, CharGPTConfig
    from npdecode.train import init_params

    c = CharGPTConfig(d_model=8, n_layers=1, n_heads=2, d_ff=8, **config)
    CharGPT(c, init_params(c, np.random.default_rng(0))).save(path)
    return str(path)


@pytest.mark.parametrize("option, other", [("--draft", "target"), ("--target", "draft")])
def test_compare_takes_one_model_file_and_the_shipped_model_for_the_other(option, other,
                                                                          capsys):
    assert main(["compare", option, _shipped("draft"), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{option[2:]}:".ljust(8) + _shipped("draft") in out
    assert f"{other}:".ljust(8) + f"the shipped {other} model" in out


def test_compare_refuses_a_model_with_another_vocabulary(tmp_path, capsys):
    path = _save_chargpt(tmp_path / "v30.npz", vocab_size=30)
    assert main(["compare", "--draft", path]) == 2
    err = capsys.readouterr().err
    assert f"--draft {path} has a vocabulary of 30 tokens" in err and "'.' and a-z" in err


def test_compare_speaks_of_one_token_in_the_singular(tmp_path, capsys):
    path = _save_chargpt(tmp_path / "c1.npz", max_context=1)
    assert main(["compare", "--target", path, "--draft", path]) == 2
    err = capsys.readouterr().err
    assert "context of 1 token leaves" in err and "1 tokens" not in err


def test_compare_help_says_target_and_draft_each_default_to_the_shipped_model(monkeypatch,
                                                                             capsys):
    text = " ".join(_help("compare", monkeypatch, capsys).split())
    assert "default: the shipped target (with or without --draft)" in text
    assert "default: the shipped draft (with or without --target)" in text
    assert "instead of the shipped one" not in text
    assert "top-k and top-p sample at temperature 1" in text and "same seed" in text


@pytest.mark.parametrize("command", ["compare", "train", "beam"])
def test_descriptions_wrap_to_the_terminal_keeping_their_paragraphs(command, monkeypatch,
                                                                    capsys):
    import argparse

    from npdecode.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    description = sub.choices[command].description
    out = _help(command, monkeypatch, capsys, columns=60)
    prose = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert max(len(line) for line in prose) <= 58  # argparse's width: COLUMNS - 2
    assert out.count("\n\n") >= description.count("\n\n") + 2  # + options, + epilog
    assert " ".join(description.split()) in " ".join(out.split())


def test_compare_output_reads_well_at_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["compare", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    words = [line.split() for line in lines if re.search("[a-z]", line)]
    assert all(len(w) > 1 for w in words), [w for w in words if len(w) == 1]


def test_compare_says_why_sampling_rows_can_be_identical(capsys):
    assert main(["compare", "--repeats", "1"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("The sampling rows give a prefix the same seed and one uniform draw per character, "
            "and top-k and top-p sample at temperature 1, so they often pick the same name."
            ) in text
