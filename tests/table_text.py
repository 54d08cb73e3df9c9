"""Reading the rich tables the commands print back into cells, for tests that compare them
with the library's values."""

from __future__ import annotations


def table_rows(text: str, columns: int) -> list[list[str]]:
    """The cells of every row of the printed tables with ``columns`` columns, a cell folded
    onto more lines joined again (its row's continuation lines have an empty last cell: the
    tables' last cells are short enough never to fold). A folded cell's parts are joined
    with no space: where the fold fell at a space, that space is lost."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if not line.startswith("│") or len(cells) != columns:
            continue
        if cells[-1] or not rows:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells)]
    return rows


def unspaced(text: str) -> str:
    """Text without its spaces, to compare with a cell that may have folded at one."""
    return text.replace(" ", "")
