"""``npdecode compare``: runs end to end, its numbers agree with direct calls, and bad input
is refused. (How long it takes is measured by hand, not asserted here.)"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from npdecode.cli import compare, main
from npdecode.models import chargpt
from npdecode.models.chars import EOS, decode, encode
from npdecode.models.pretrained import load_draft, load_target
from npdecode.search.beam import batched_beam_search
from npdecode.search.sampling import greedy
from npdecode.search.speculative import speculative_sample
from table_text import table_rows, unspaced


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="npdecode")
    compare.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["compare", *argv])


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """A random target and a smaller random draft, saved as the shipped models would be."""
    d = tmp_path_factory.mktemp("models")
    cfg = chargpt.CharGPTConfig
    chargpt.CharGPT.init(cfg(d_model=32, n_layers=2, n_heads=4, d_ff=64), seed=1).save(d / "t.npz")
    chargpt.CharGPT.init(cfg(d_model=16, n_layers=1, n_heads=2, d_ff=32), seed=2).save(d / "d.npz")
    return d / "t.npz", d / "d.npz"


def row_value(text: str, label: str) -> str:
    """The value cell of the table row whose first cell starts with ``label``."""
    m = re.search(re.escape(label) + r"[^│]*│\s*([^│]+?)\s*│", text)
    assert m, f"row {label!r} not found"
    return m.group(1)


def test_diversity_counts_distinct_continuations():
    outs = [compare.Output([1, 0], -1.0), compare.Output([1, 0], -2.0),
            compare.Output([2, 3, 0], -4.5)]
    assert compare.diversity(outs) == (2, (2 + 2 + 3) / 3, (-1.0 - 2.0 - 4.5) / 3)


def test_compare_prints_every_strategy_and_consistent_counts(small_models, capsys):
    target, draft = small_models
    args = parse(["--target", str(target), "--draft", str(draft), "--seed", "4",
                  "--repeats", "1"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    for name in compare.strategies():  # two prefixes in table 1, once in table 2
        assert [unspaced(row[1]) for row in table_rows(text, 5)].count(unspaced(name)) == 2
        assert [unspaced(row[0]) for row in table_rows(text, 4)].count(unspaced(name)) == 1
    assert "Diversity over 20 prefixes" in text and "Speculative against plain sampling" in text
    # Greedy makes one call per token (a prefill, then one extend per further token).
    greedy_rows = re.findall(r"│ greedy\s*│[^│]*│\s*(-?[\d.]+)\s*│\s*([\d.]+)\s*│",
                             text)
    assert [r[1] for r in greedy_rows] == ["1.00", "1.00"]
    # Table 3's counts equal those of direct speculative calls with the same seeds.
    t, d = chargpt.CharGPT.load(target), chargpt.CharGPT.load(draft)
    proposed = accepted = 0
    for i, prefix in enumerate(compare.DIVERSITY_PREFIXES):
        ids = encode(prefix)
        res = speculative_sample(t, d, [ids], num_draft_tokens=compare.NUM_DRAFTS,
                                 max_new_tokens=t.max_context - len(ids), eos_token_id=EOS,
                                 seed=4 + i)
        proposed, accepted = proposed + res.proposed, accepted + res.accepted
    assert int(row_value(text, "draft tokens proposed")) == proposed
    assert int(row_value(text, "draft tokens accepted")) == accepted
    assert row_value(text, "acceptance rate") == f"{accepted / proposed:.1%}"


@pytest.mark.parametrize("argv, match", [
    (["--prefixes", "Em", "jo"], "not in the vocabulary"),
    (["--prefixes", "abcdefghijklmnop", "jo"],
     r"prefix 'abcdefghijklmnop' \(17 tokens with the start token\) fills the target's "
     r"context of 16 tokens; give one of at most 14 letters"),
])
def test_bad_input_is_refused(small_models, argv, match):
    target, draft = small_models
    args = parse(["--target", str(target), "--draft", str(draft), *argv])
    with pytest.raises(ValueError, match=match):
        args.func(args)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--seed", "-1"]])
def test_bad_numbers_are_refused_by_the_parser_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert f"argument {argv[0]}: must be >= " in capsys.readouterr().err


def test_a_draft_with_a_shorter_context_than_the_target_is_refused(small_models, tmp_path):
    target, _ = small_models
    short = chargpt.CharGPTConfig(max_context=4, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    chargpt.CharGPT.init(short, seed=3).save(tmp_path / "short.npz")
    args = parse(["--target", str(target), "--draft", str(tmp_path / "short.npz")])
    with pytest.raises(ValueError, match=r"the draft's context \(4 tokens\) is shorter"):
        args.func(args)


def test_compare_runs_on_the_shipped_models(capsys):
    assert main(["compare"]) == 0
    text = capsys.readouterr().out
    assert {row[0] for row in table_rows(text, 5)} == {"em", "jo"}   # the default prefixes
    assert "wall-time ratio" in text


@pytest.mark.parametrize("context, prefixes", [(3, ["a", "b"]), (1, ["jo", "al"]), (2, [])])
def test_a_target_too_short_for_the_diversity_prefixes_is_refused(tmp_path, context, prefixes):
    """A context of 3 holds '.' + 'al' and nothing more: the diversity table could generate
    nothing. That is said first, before any advice on the user's own prefixes (which, at
    these contexts, would be to give at most a negative number of letters)."""
    cfg = chargpt.CharGPTConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                max_context=context)
    chargpt.CharGPT.init(cfg, seed=1).save(tmp_path / "t.npz")
    chargpt.CharGPT.init(cfg, seed=2).save(tmp_path / "d.npz")
    args = parse(["--target", str(tmp_path / "t.npz"), "--draft", str(tmp_path / "d.npz"),
                  *(["--prefixes", *prefixes] if prefixes else [])])
    with pytest.raises(ValueError, match=rf"context of {context} tokens? leaves no room .* "
                                         r"prefix 'al' .* a context of at least 4"):
        args.func(args)


def test_compare_says_which_models_it_ran(small_models, capsys):
    target, draft = small_models
    args = parse(["--target", str(target), "--draft", str(draft), "--repeats", "1",
                  "--prefixes", "", "jo"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    words = " ".join(text.split())  # however the lines wrap
    t, d = chargpt.CharGPT.load(target), chargpt.CharGPT.load(draft)
    assert f"target: {target} ({t.num_params:,} parameters, context {t.max_context})" in words
    assert f"draft: {draft} ({d.num_params:,} parameters, context {d.max_context})" in words
    assert "(empty)" in text  # an empty prefix is shown as such, not as a blank cell


def test_table_one_shows_each_strategys_own_name_and_logprob_uncut(monkeypatch, capsys):
    """On an 80-column terminal, against direct calls of the library on the shipped models
    (greedy, beam search and speculative sampling; the sampling rows share their code)."""
    monkeypatch.setenv("COLUMNS", "80")
    prefixes = ["christophe", "jo"]
    assert main(["compare", "--repeats", "1", "--seed", "0", "--prefixes", *prefixes]) == 0
    text = capsys.readouterr().out
    target, draft = load_target(), load_draft()
    for i, prefix in enumerate(prefixes):
        ids = encode(prefix)
        n = target.max_context - len(ids)
        kw = dict(max_new_tokens=n, eos_token_id=EOS)
        g = greedy(target, [ids], **kw)[0]
        b = batched_beam_search(target, [ids], beam_width=compare.BEAM_WIDTH, alpha=0.6,
                                **kw)[0][0]
        s = speculative_sample(target, draft, [ids], num_draft_tokens=compare.NUM_DRAFTS,
                               seed=i, **kw).generations[0]
        for label, tokens, logprob in (("greedy", g.tokens, g.logprob),
                                       ("beam", b.tokens, b.logprob),
                                       ("speculative", s.tokens, s.logprob)):
            # the log-prob of the generated characters under the target, from forward
            seq = list(ids)
            want_lp = 0.0
            for t in tokens:
                x = target.forward(np.array([seq]))[0]
                want_lp += x[t] - x.max() - np.log(np.exp(x - x.max()).sum())
                seq.append(t)
            assert abs(want_lp - logprob) < 1e-9
            name = prefix + decode([EOS] + tokens) + ("." if EOS in tokens else "…")
            assert [prefix, name, f"{logprob:.2f}"] in [
                [row[0], row[2], row[3]] for row in table_rows(text, 5)
                if unspaced(row[1]).startswith(label)], (label, name)


def test_a_narrow_terminal_folds_the_tables_and_cuts_no_cell(small_models, monkeypatch,
                                                              capsys):
    target, draft = small_models
    tables = {}
    for columns in (80, 40):
        monkeypatch.setenv("COLUMNS", str(columns))
        args = parse(["--target", str(target), "--draft", str(draft), "--repeats", "1"])
        assert args.func(args) == 0
        text = capsys.readouterr().out
        tables[columns] = [[[unspaced(cell) for cell in row] for row in table_rows(text, n)]
                           for n in (5, 4)]   # tables 1 and 2 (table 3 holds wall times)
    assert len(tables[80][0]) == 2 * len(compare.strategies()) and tables[80][1]
    assert tables[40] == tables[80]


def test_model_paths_with_brackets_are_printed_as_they_are(small_models, tmp_path, capsys):
    target, draft = small_models
    odd = tmp_path / "d[v2].npz"
    odd.write_bytes(draft.read_bytes())
    args = parse(["--target", str(target), "--draft", str(odd), "--repeats", "1"])
    assert args.func(args) == 0
    words = " ".join(capsys.readouterr().out.split())  # however the lines wrap
    assert f"draft: {odd} (" in words
