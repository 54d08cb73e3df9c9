"""The README's Python examples run as written, each on its own."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_has_its_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_each_readme_example_runs_alone(index, capsys):
    exec(compile(EXAMPLES[index], f"README example {index}", "exec"), {})
    out = capsys.readouterr().out
    # Where an example's print line says in a comment what it prints, it prints that: the
    # names the README promises are read off the README itself.
    promised = re.findall(r"^print\(.*\)\s*#\s*(.+)$", EXAMPLES[index], re.M)
    if "load_target" in EXAMPLES[index]:
        assert promised, "the name example says which names it prints"
    for names in promised:
        assert str([n.strip() for n in names.split(",")]) in out


def test_the_readme_installs_the_extras_from_a_clone():
    # npdecode is installed from a clone; 'pip install "npdecode[hf]"' would ask a package index
    assert "npdecode[" not in README and 'python -m pip install ".[hf]"' in README


def test_the_readmes_compare_output_is_the_commands_own(monkeypatch, capsys):
    from npdecode.cli import main

    shown = re.search(r"Its output\n\(`npdecode compare`.*?\n```\n(.*?)```", README, re.S)
    assert shown, "the README shows the output of npdecode compare"
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["compare"]) == 0
    real = "\n".join(line.rstrip() for line in capsys.readouterr().out.splitlines()) + "\n"
    timing = re.compile(r"(wall time.*?│|wall-time ratio.*?│)\s+[\d.]+( ms)? │")

    def content(text: str) -> str:
        """The text without its times (they vary by run) and without the padding and rules
        whose width follows them (a wider time widens its column)."""
        text = timing.sub(r"\1", text)
        return re.sub(r"([─━])\1+", r"\1", re.sub(r" +", " ", text))

    assert content(shown.group(1)) == content(real)
