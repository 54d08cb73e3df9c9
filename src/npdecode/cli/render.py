"""Terminal output shared by the subcommands (rich tables)."""

from __future__ import annotations

from typing import Callable, Sequence

from rich.console import Console
from rich.table import Table

from npdecode.search.beam import Hypothesis


def console() -> Console:
    return Console(highlight=False)


def hypotheses_table(title: str, hyps: Sequence[Hypothesis],
                     decode: Callable[[list[int]], str] | None = None, *,
                     max_new_tokens: int | None = None) -> Table:
    """One batch item's hypotheses, best first: rank, tokens, score, logprob, finished.

    Given ``max_new_tokens``, a hypothesis that stopped before it without finishing (the
    search does so when every next token is banned) is marked 'no*' (see ``stopped_early``).
    """
    # On a narrow terminal every cell folds onto more lines rather than being cut short.
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
        row += [f"{h.score:.4f}", f"{h.logprob:.4f}",
                "yes" if h.finished else "no*" if early else "no"]
        table.add_row(*row)
    return table


def stopped_early(hyps: Sequence[Hypothesis], max_new_tokens: int) -> bool:
    """Whether any hypothesis is unfinished with fewer than ``max_new_tokens`` tokens."""
    return any(not h.finished and len(h.tokens) < max_new_tokens for h in hyps)
