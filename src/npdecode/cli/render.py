"""Terminal output shared by the subcommands (rich tables)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from npdecode.search.beam import Hypothesis


def console() -> Console:
    return Console(highlight=False)


def hypotheses_table(title: str | None, hyps: Sequence[Hypothesis],
                     decode: Callable[[list[int]], str] | None = None, *,
                     max_new_tokens: int | None = None) -> Table:
    """One batch item's hypotheses, best first: rank, tokens, score, logprob, finished.

    Given ``max_new_tokens``, a hypothesis that stopped before it without finishing (the
    search does so when every next token is banned) is marked 'no*' (see ``stopped_early``).
    """
    # On a narrow terminal every cell folds onto more lines rather than being cut short (a
    # number only where the table could not fit otherwise: it is a single word).
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right", overflow="fold")
    table.add_column("tokens", overflow="fold")
    if decode is not None:
        table.add_column("text", overflow="fold")
    table.add_column("score", justify="right", overflow="fold")
    table.add_column("logprob", justify="right", overflow="fold")
    table.add_column("finished", justify="center", overflow="fold")
    for rank, h in enumerate(hyps, 1):
        row = [str(rank), " ".join(map(str, h.tokens)) or "(none)"]
        if decode is not None:
            row.append(decode(h.tokens))
        early = max_new_tokens is not None and stopped_early([h], max_new_tokens)
        row += [number(h.score), number(h.logprob),
                "yes" if h.finished else "no*" if early else "no"]
        table.add_row(*row)
    return table


def stopped_early(hyps: Sequence[Hypothesis], max_new_tokens: int) -> bool:
    """Whether any hypothesis is unfinished with fewer than ``max_new_tokens`` tokens."""
    return any(not h.finished and len(h.tokens) < max_new_tokens for h in hyps)


def number(x: float) -> str:
    """x with 4 decimals, or in scientific notation where those would take more than a dozen
    characters or keep fewer than two significant digits (a length penalty can make scores
    huge)."""
    if x != 0 and math.isfinite(x) and not 1e-3 <= abs(x) < 1e7:
        return f"{x:.4e}"
    return f"{x:.4f}"


def ids_text(ids: Sequence[int], *, most: int = 12) -> str:
    """Comma-separated ids; a longer list shows its first and last few and its length."""
    if len(ids) <= most:
        return ",".join(map(str, ids))
    head, tail = ids[:most - 3], ids[-2:]
    return (f"{','.join(map(str, head))},...,{','.join(map(str, tail))} "
            f"({len(ids)} tokens)")
