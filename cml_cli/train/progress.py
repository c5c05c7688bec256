"""Training progress on stderr: a rich bar over epochs and batches on a terminal, one plain
line per epoch elsewhere (a log, a pipe, CI), or nothing."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar


class NullProgress:
    """Reports nothing (``--quiet``, tests, the Python API's default)."""

    def start(self, epochs: int, done: int) -> None: ...

    def start_epoch(self, epoch: int, batches: int) -> None: ...

    def advance(self, loss: float) -> None: ...

    def end_epoch(self, row: dict) -> None: ...

    def stop(self) -> None: ...


Progress = NullProgress


class RichProgress(NullProgress):
    """Epoch and batch bars with the live loss and the last validation HR@10 / NDCG@10."""

    def __init__(self, console: Console | None = None):
        self.bar = RichBar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                           console=console or Console(stderr=True), transient=False)
        self.epochs = self.batches = None
        self.last = ""

    def start(self, epochs: int, done: int) -> None:
        self.bar.start()
        self.epochs = self.bar.add_task("epochs", total=epochs, completed=done, info="")

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self.batches is not None:
            self.bar.remove_task(self.batches)
        self.batches = self.bar.add_task(f"epoch {epoch}", total=batches, info="")

    def advance(self, loss: float) -> None:
        self.bar.update(self.batches, advance=1, info=f"loss {loss:.4f}")

    def end_epoch(self, row: dict) -> None:
        split = "valid" if "valid" in row else ("test" if "test" in row else None)
        if split:
            m = row[split]
            self.last = f"{split} HR@10 {m['hr@10']:.4f} NDCG@10 {m['ndcg@10']:.4f}"
        self.bar.update(self.epochs, advance=1, info=f"{self.last} ({row['seconds']:.1f}s)")

    def stop(self) -> None:
        if self.batches is not None:
            self.bar.remove_task(self.batches)
            self.batches = None
        self.bar.stop()


def _valid_text(row: dict) -> str:
    split = "valid" if row.get("valid") else ("test" if row.get("test") else None)
    if split is None:
        return ""
    m = row[split]
    return f"  {split} HR@10 {m['hr@10']:.4f} NDCG@10 {m['ndcg@10']:.4f}"


class LineProgress(NullProgress):
    """One plain line per epoch (loss, last validation HR@10 / NDCG@10, seconds), and within an
    epoch that runs longer than ``every`` seconds one line per ``every`` seconds of batches."""

    def __init__(self, stream: TextIO | None = None, every: float = 10.0):
        self.stream, self.every = stream, every
        self.epochs = 0
        self.epoch = self.batches = self.done = 0
        self.last_line = 0.0

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()
        self.last_line = time.monotonic()

    def start(self, epochs: int, done: int) -> None:
        self.epochs = epochs
        self._write(f"training epochs {done + 1}..{epochs}")

    def start_epoch(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches, self.done = epoch, batches, 0

    def advance(self, loss: float) -> None:
        self.done += 1
        if time.monotonic() - self.last_line >= self.every:
            self._write(f"epoch {self.epoch}/{self.epochs}: batch {self.done}/{self.batches}  loss {loss:.4f}")

    def end_epoch(self, row: dict) -> None:
        self._write(f"epoch {row['epoch']}/{self.epochs}  loss {row.get('loss', 0.0):.4f}{_valid_text(row)}  "
                    f"{row.get('seconds', 0.0):.1f} s")
