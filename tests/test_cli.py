"""The command line: tables for people, clear errors for bad input, --help everywhere."""

import re

import pytest

from npdecode import TinyLM, batched_beam_search
from npdecode.cli import SUBCOMMANDS, main


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
    assert "pip install 'npdecode[cli]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [(["demo", "--seed", "-1"], "--seed"),
                                        (["beam", "--prompt", "1", "--vocab-size", "0"],
                                         "--vocab-size"),
                                        (["train", "--seed", "-1"], "--seed"),
                                        (["train", "--split-seed", "-2"], "--split-seed")])
def test_a_bad_option_value_is_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err


@pytest.mark.parametrize("prompt", ["3,,4", "3,", ","])
def test_a_prompt_with_an_empty_entry_is_refused(prompt, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["beam", "--prompt", prompt])
    assert exit_.value.code == 2
    assert "token id" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--beam-width", "0"], "--beam-width must be >= 1"),
    (["--eos", "1000"], "--eos 1000 is outside [0, 1000) (the vocabulary is set by --vocab-size)"),
    (["--max-new-tokens", "100000000"], "lower --max-new-tokens, --beam-width"),
    (["--d-model", "99999999999999999999"], "GiB and this machine has"),
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
    (["--prompt", "1", "--alpha", "-inf"], "--alpha must be a finite number, got -inf"),
])
def test_a_negative_value_reaches_its_own_check(argv, says, capsys):
    # argparse alone would take '-1,2' for an option and say only 'expected one argument'
    assert main(["beam"] + argv) == 2
    assert says in capsys.readouterr().err


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


@pytest.mark.parametrize("argv, says", [
    # each setting is checked before the memory these sizes would need is estimated
    (["--beam-width", "0", "--max-new-tokens", "100000000000"], "--beam-width must be >= 1"),
    (["--prompt", "5000", "--beam-width", "100000000"], "token 5000 is not a valid id"),
    (["--no-repeat-ngram-size", "-1", "--max-new-tokens", "100000000000"],
     "--no-repeat-ngram-size must be >= 0"),
])
def test_beam_settings_are_checked_before_their_memory(argv, says, capsys):
    assert main(["beam", "--prompt", "3"] + argv) == 2
    assert says in capsys.readouterr().err


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


def test_train_refuses_a_minibatch_that_cannot_fit_in_memory_before_training(tmp_path, capsys):
    assert main(["train", "--batch-size", str(10**9), "--steps", "1", "--no-progress",
                 "--output", str(tmp_path / "m.npz")]) == 2
    captured = capsys.readouterr()
    assert "GiB and this machine has" in captured.err and "--batch-size" in captured.err
    assert "training" not in captured.out and not (tmp_path / "m.npz").exists()
