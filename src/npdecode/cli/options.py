"""Option parsing shared by the subcommands: integer types with one style of error, and the
help formatter. (No rich here: the parser is built before rich is looked for.)"""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from pathlib import Path
from typing import Callable

from npdecode.models.protocol import INT64_END


def integer(text: str) -> int:
    """An argparse type: an integer (argparse names the flag in its error)."""
    shown = _shown(text)
    if not _INTEGER.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected an integer, got {shown}")
    try:
        return int(text)
    except ValueError:  # beyond Python's limit on the digits of a decimal string
        raise argparse.ArgumentTypeError(f"integer too long ({len(text)} characters): "
                                         f"{shown}") from None


_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take '3_000' and '３'


def finite(text: str) -> float:
    """An argparse type: a finite number (argparse names the flag in its error)."""
    shown = _shown(text)
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {shown}") from None
    if not math.isfinite(value):
        beyond = "" if _NON_FINITE.fullmatch(text.strip()) else " (beyond the float range)"
        raise argparse.ArgumentTypeError(f"expected a finite number, got {shown}{beyond}")
    return value


_NON_FINITE = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)


def _shown(text: str) -> str:
    """An option's text as an error quotes it: in quotes, a long one cut short."""
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        value = integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value >= INT64_END:  # as the library's own checks require
            raise argparse.ArgumentTypeError(f"must be below 2**63, got {_shown(text)}")
        return value
    parse.__name__ = "integer"  # argparse names the type in some of its messages
    return parse


class ParagraphFormatter(argparse.HelpFormatter):
    """Help whose description and epilog wrap to the terminal, paragraph by paragraph.

    Paragraphs are separated by blank lines; an indented line (an example command, a table
    row) is kept as written, so that a command in the help can be pasted. Option names such
    as --vocab-size are never broken at their hyphens.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for paragraph in text.strip("\n").split("\n\n"):
            if out:
                out.append("")
            words: list[str] = []  # the running text not yet wrapped
            for line in paragraph.splitlines():
                if line.startswith(" "):
                    out += self._wrap(words, width, indent) + [indent + line]
                    words = []
                else:
                    words.append(line.strip())
            out += self._wrap(words, width, indent)
        return "\n".join(out)

    def _split_lines(self, text: str, width: int) -> list[str]:  # an option's help
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False,
                             break_long_words=False)

    @staticmethod
    def _wrap(words: list[str], width: int, indent: str) -> list[str]:
        return textwrap.wrap(" ".join(words), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False,
                             break_long_words=False)


def file_path(hint: str) -> Callable[[str], Path]:
    """An argparse type: a non-empty path (Path('') would be the current directory); ``hint``
    says what to give instead."""
    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"the path is empty; give {hint}")
        return Path(text)
    return parse
