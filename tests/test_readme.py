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
