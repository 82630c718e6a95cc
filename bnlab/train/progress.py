"""What the terminal shows while training: a bar for one run, one line for a whole sweep.

`RichProgress` is a single run's bar: steps, loss, test accuracy. `SweepProgress` is one line for
every job of a sweep (`bnlab train -m`, `bnlab reproduce`): job k of N, the job's step, the time
elapsed and an estimate of the time left, in place of a bar and a log line per job. Both take the
calls the training loop makes (`start`, `update`, `stop`); a sweep's jobs make them on `job(label)`.
Jobs that run in other processes (a parallel sweep) cannot call it: `watch` follows their summary.json
files instead ('4 of 12 jobs done · 2 running ...').
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from bnlab.errors import RunFileError
from bnlab.formatting import duration, number
from bnlab.train import summary


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
        fields = {"loss": number(self._loss), "acc": number(accuracy, ".3f")}
        self._progress.update(self._task, completed=step, **fields)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class SweepProgress:
    """One line for `jobs` jobs: 'job 3 of 12 <bar> step 120/300 · 1 min 05 s · ~4 min 10 s left <overrides>'.

    The estimate assumes the jobs left take as long as those so far (the current one counted by its
    share of steps done); a sweep whose jobs differ in size (depths 2 to 20) makes it a rough guide."""

    def __init__(self, jobs: int, console: Console | None = None):
        self.jobs = max(jobs, 1)
        self.console = console or Console()
        self.started = 0  # jobs begun; those before the current one count as done, whatever their outcome
        self.swept: set[str] = set()  # the keys the sweep varies: a job's label shows their values
        self._began: float | None = None
        self._progress: Progress | None = None
        self._task = None
        self._watching: threading.Event | None = None
        self._lock = threading.Lock()  # the watching thread's line against `stop`

    def watch(self, sweep_dir: Path, every: float = 1.0) -> None:
        """Follow jobs that run in other processes through their summary.json files in `sweep_dir` (a job
        writes it as it starts, at each checkpoint and at its end), until `stop`."""
        stopped = self._watching = threading.Event()

        def follow():
            while not stopped.wait(every):
                self._show_jobs(*_jobs_on_disk(sweep_dir))

        threading.Thread(target=follow, name="sweep progress", daemon=True).start()

    def job(self, overrides: list[str]) -> SweepProgress._Job:
        """What the next job, run with `overrides`, reports to."""
        self.started += 1
        varied = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in self.swept]
        return SweepProgress._Job(self, " ".join(varied or overrides), self.started)

    def stop(self) -> None:
        """End the line (after the last job, or when the sweep stops early)."""
        with self._lock:
            if self._watching is not None:
                self._watching.set()
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    def _show_jobs(self, done: int, running: int, share: float) -> None:
        """The line of a parallel sweep: jobs done, jobs running and their share of steps done."""
        with self._lock:
            if done + running == 0 or self._watching.is_set():
                return
            self._start_line()
            completed = min(done + share, self.jobs)
            elapsed = time.monotonic() - self._began
            left = elapsed / completed * (self.jobs - completed) if completed > 0 else None
            estimate = f" · ~{duration(left)} left" if left is not None else ""
            self._progress.update(self._task, completed=completed, job=f"{done} of {self.jobs} jobs done",
                                  step=f"{running} running", time=f"{duration(elapsed)}{estimate}", label="")

    def _start_line(self) -> None:
        if self._progress is None:
            self._began = self._began or time.monotonic()
            self._progress = Progress(
                TextColumn("[bold]{task.fields[job]}"), BarColumn(bar_width=16), TextColumn("{task.fields[step]}"),
                TextColumn("{task.fields[time]}"),
                TextColumn("[dim]{task.fields[label]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                console=self.console, transient=False)
            self._task = self._progress.add_task("sweep", total=self.jobs, job="", step="", time="", label="")
            self._progress.start()

    def _show(self, index: int, label: str, step: int, total: int) -> None:
        self._start_line()
        completed = min(index - 1 + (step / total if total else 0.0), self.jobs)
        elapsed = time.monotonic() - self._began
        left = elapsed / completed * (self.jobs - completed) if completed > 0 else None
        estimate = f" · ~{duration(left)} left" if left is not None else ""
        self._progress.update(self._task, completed=completed, job=f"job {index} of {self.jobs}",
                              step=f"step {step}/{total}", time=f"{duration(elapsed)}{estimate}", label=label)

    class _Job:
        """One job's view of the sweep's line: the calls a run's progress takes."""

        def __init__(self, sweep: SweepProgress, label: str, index: int):
            self.sweep, self.label, self.index, self.total = sweep, label, index, 0

        def start(self, total: int, done: int) -> None:
            self.total = total
            self.sweep._show(self.index, self.label, done, total)

        def update(self, step: int, loss: float | None, accuracy: float | None) -> None:
            self.sweep._show(self.index, self.label, step, self.total)

        def stop(self) -> None:
            """The job is over; the line stays for the next one (`SweepProgress.stop` ends it)."""


def _jobs_on_disk(sweep_dir: Path) -> tuple[int, int, float]:
    """(jobs finished, jobs running, the running jobs' fractions of steps done, summed) from the summary.json
    of each job directory in `sweep_dir`; one that cannot be read yet is not counted."""
    done = running = 0
    share = 0.0
    for path in Path(sweep_dir).glob(f"*/{summary.SUMMARY_NAME}"):
        try:
            record = summary.read(path.parent)
        except RunFileError:
            continue
        if record["status"] == "running":
            running += 1
            share += record["steps"] / max(record.get("total_steps") or 1, 1)
        else:
            done += 1
    return done, running, share
