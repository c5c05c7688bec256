"""Result tables for people and for pipes: a :class:`Listing` prints as a rich table when its
stream is a terminal and as aligned plain text otherwise (one line per row, no box drawing,
so ``grep``, ``head`` and ``awk -F'  +'`` work on it). Nothing in a listing is read as markup."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Listing:
    """A title, named columns, rows of text cells and notes printed under the table.
    ``right``: indices of the columns aligned right; ``wrap``: of the columns a terminal may
    fold (the others keep their width); ``strong``: rows in bold on a terminal."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int] = frozenset()
    notes: tuple[str, ...] = ()
    strong: frozenset[int] = frozenset()
    wrap: frozenset[int] = frozenset()

    def plain(self) -> str:
        """The title, the header and one line per row, columns padded to a common width and
        separated by two spaces; then ``note: ...`` lines."""
        widths = [max([len(name), *(len(row[i]) for row in self.rows)]) for i, name in enumerate(self.columns)]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(w) if i in self.right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [self.title, line(self.columns), *(line(row) for row in self.rows)]
        return "\n".join([*lines, *(f"note: {n}" for n in self.notes)]) + "\n"

    def rich(self):
        """The same table as a ``rich.table.Table`` (cells as ``Text``: never markup)."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(self.title), title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True,
                      pad_edge=False)
        for i, name in enumerate(self.columns):
            table.add_column(Text(name), justify="right" if i in self.right else "left",
                             overflow="fold", no_wrap=i not in self.wrap)
        for n, row in enumerate(self.rows):
            table.add_row(*(Text(c) for c in row), style="bold" if n in self.strong else None)
        return table


def render(listing: Listing, stream: TextIO | None = None) -> None:
    """Print ``listing`` on ``stream`` (default stdout): rich on a terminal that is wide enough
    to show every cell whole, plain text otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        from rich.console import Console
        from rich.text import Text

        console = Console(file=stream, highlight=False, emoji=False)
        table = listing.rich()
        if console.measure(table, options=console.options.update_width(10**6)).maximum <= console.width:
            console.print(table)
            for note in listing.notes:
                console.print(Text(f"note: {note}"))
            return
    stream.write(listing.plain())
    stream.flush()
