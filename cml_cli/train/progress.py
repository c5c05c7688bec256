"""Training progress: a rich bar over epochs and batches on stderr, or nothing."""

from __future__ import annotations

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
