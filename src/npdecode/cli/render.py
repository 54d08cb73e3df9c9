"""Terminal output shared by the subcommands (rich tables)."""

from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from npdecode.search.beam import Hypothesis


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def check_fits(need: int, lower: str) -> None:
    """Refuse, before building anything, settings that need more than the machine's memory:
    ``need`` bytes estimated, ``lower`` the options that would bring it down."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: no estimate
        return
    if need > total:
        raise ValueError(f"these settings need about {need / 2**30:,.0f} GiB and this machine "
                         f"has {total / 2**30:,.0f} GiB: lower {lower}")


def console() -> Console:
    return Console(highlight=False)


def hypotheses_table(title: str, hyps: Sequence[Hypothesis],
                     decode: Callable[[list[int]], str] | None = None) -> Table:
    """One batch item's hypotheses, best first: rank, tokens, score, logprob, finished."""
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("tokens")
    if decode is not None:
        table.add_column("text")
    table.add_column("score", justify="right")
    table.add_column("logprob", justify="right")
    table.add_column("finished", justify="center")
    for rank, h in enumerate(hyps, 1):
        row = [str(rank), " ".join(map(str, h.tokens)) or "(none)"]
        if decode is not None:
            row.append(decode(h.tokens))
        row += [f"{h.score:.4f}", f"{h.logprob:.4f}", "yes" if h.finished else "no"]
        table.add_row(*row)
    return table
