"""The rich progress bar a single run shows in the terminal: steps, loss, test accuracy."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    def __init__(self, description: str, console: Console | None = None):
        self.description = description
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task = None
        self._loss: float | None = None

    def start(self, total: int, done: int) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("test acc {task.fields[acc]}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self._task = self._progress.add_task(self.description, total=total, completed=done, loss="-", acc="-")
        self._progress.start()

    def update(self, step: int, loss: float | None, accuracy: float | None) -> None:
        if self._progress is None:
            return
        if loss is not None:
            self._loss = loss
        fields = {"loss": f"{self._loss:.4g}" if self._loss is not None else "-",
                  "acc": f"{accuracy:.3f}" if accuracy is not None else "-"}
        self._progress.update(self._task, completed=step, **fields)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
