"""Tables for the terminal that never cut what a reader copies into the next command."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from rich import box
from rich.table import Table

from imageforge.cli.output import console

#: Between two columns of a table: the (blank) divider and one space of padding.
_COLUMN_GAP = 2


def print_rows(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, whole: Sequence[str]
) -> None:
    """A table, with the `whole` columns (ids, model names: what other commands take as
    arguments) never cut or wrapped and the others wrapped between words; when even that
    does not fit the terminal, one block per row instead, so nothing is ever cut short."""
    columns = list(zip(headers, *rows, strict=True))
    widest = [max(len(cell) for cell in column) for column in columns]
    # What each column needs at least: whole values, or else its longest word.
    least = [
        width
        if column[0] in whole
        else max(len(word) for cell in column for word in cell.split() or [""])
        for column, width in zip(columns, widest, strict=True)
    ]
    room = console.width - _COLUMN_GAP * (len(headers) - 1)
    if sum(least) > room:
        label = max(len(header) for header in headers[1:])
        indent = " " * (label + 4)
        for row in rows:
            # Plain prints: rich would cut a whole value longer than the terminal.
            print(row[0])
            for header, value in zip(headers[1:], row[1:], strict=True):
                lines = textwrap.wrap(
                    value,
                    width=max(console.width, len(indent) + 20),
                    initial_indent=f"  {header:<{label}}  ",
                    subsequent_indent=indent,
                    # Ids and model names are single words: never broken.
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                print("\n".join(lines) or f"  {header}")
        return
    # Widths fixed here, so rich never squeezes a column below what it needs: what is
    # left after every column's least goes to the columns that can use it, in order.
    widths = list(least)
    spare = room - sum(widths)
    for index, width in enumerate(widest):
        grow = min(spare, width - widths[index])
        widths[index] += grow
        spare -= grow
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, width=width, no_wrap=header in whole, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
