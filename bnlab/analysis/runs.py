"""Finding runs on disk: every directory with a summary.json under a root, newest first.

A damaged run (summary.json that is not JSON, a missing status) is reported with its
error instead of stopping the listing: one broken run never hides the others.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bnlab.errors import BnlabError, RunFileError
from bnlab.train import summary


@dataclass
class RunInfo:
    path: Path
    summary: dict = field(default_factory=dict)
    error: str | None = None  # why the run could not be read

    @property
    def status(self) -> str:
        return self.summary.get("status", "damaged") if self.error is None else "damaged"

    @property
    def overrides(self) -> list[str]:
        return list(self.summary.get("overrides", []))

    @property
    def started(self) -> datetime:
        """When the run started (summary.json), else when its directory last changed; local time."""
        try:
            return datetime.fromisoformat(self.summary["started"]).astimezone()
        except (KeyError, TypeError, ValueError):
            return datetime.fromtimestamp(self.path.stat().st_mtime).astimezone()

    @property
    def label(self) -> str:
        """The overrides that say what this run varied, seed excluded (seeds of a configuration share it)."""
        kept = [o for o in self.overrides if not o.startswith(("train.seed=", "hydra", "resume="))]
        return " ".join(sorted(kept)) or "(defaults)"


def find_runs(*roots: Path) -> list[RunInfo]:
    """All runs at or under `roots`, newest first. Raises if none of them holds any run."""
    found: dict[Path, RunInfo] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise RunFileError(f"{root} does not exist; pass a run or sweep directory (see `bnlab runs`)")
        candidates = [root / summary.SUMMARY_NAME] if (root / summary.SUMMARY_NAME).is_file() else []
        candidates += sorted(root.rglob(summary.SUMMARY_NAME))
        for path in candidates:
            run_dir = path.parent.resolve()
            if run_dir not in found:
                found[run_dir] = _read(path.parent)
    if not found:
        raise RunFileError(f"no bnlab runs (no summary.json) under {', '.join(str(r) for r in roots)}")
    return sorted(found.values(), key=lambda run: run.path.stat().st_mtime, reverse=True)


def list_runs(root: Path) -> list[RunInfo]:
    """The runs at or under `root`, newest start first (damaged ones by their directory's time)."""
    return sorted(find_runs(root), key=lambda run: run.started, reverse=True)


def runs_table(runs: list[RunInfo], root: Path):
    """A rich Table of `runs`: when, what (overrides), status, steps and final metrics."""
    from rich.markup import escape
    from rich.table import Table

    styles = {"completed": "green", "diverged": "yellow", "interrupted": "yellow", "failed": "red",
              "running": "cyan", "damaged": "red"}
    table = Table(title=f"{len(runs)} runs under {root}, newest first", title_justify="left")
    table.add_column("started", no_wrap=True)
    table.add_column("run: overrides\n(directory)", overflow="fold", min_width=16)
    table.add_column("status\n(steps)", overflow="fold", min_width=9)
    for column in ("loss", "acc", "grad ratio first/last: init → end"):
        table.add_column(column, justify="right")
    for run in runs:
        metrics, figures = run.summary.get("metrics") or {}, run.summary.get("figures") or {}
        status = run.status if run.error is None else f"damaged: {escape(run.error)}"
        # A running run's summary.json says how far it got at its last checkpoint (also after a kill -9).
        done = run.summary.get("steps", "-")
        steps = f"\n{done}/{run.summary.get('total_steps', '-')}" if run.summary else ""
        overrides = " ".join(o for o in run.overrides if not o.startswith("hydra")) or "(defaults)"
        ratio = (f"{_number(figures.get('grad_ratio_first_last/init'), '.1e')} → "
                 f"{_number(figures.get('grad_ratio_first_last/final'), '.1e')}") if figures else "-"
        what = f"{overrides if run.summary else '-'}\n[dim]{_short_path(run.path, root)}[/]"
        table.add_row(f"{run.started:%m-%d %H:%M}", what,
                      f"[{styles.get(run.status, 'white')}]{status}[/]{steps}",
                      _number(metrics.get("loss/train"), ".3g"), _number(metrics.get("acc/test"), ".3f"),
                      ratio)
    return table


def _short_path(path: Path, root: Path) -> str:
    """The run's path under `root`; a sweep job's directory by its number (its name repeats the overrides)."""
    try:
        text = str(path.relative_to(Path(root).resolve())) if path != Path(root).resolve() else path.name
    except ValueError:
        text = str(path)
    job = re.match(r"^(\d+)_.", path.name)
    return text[: len(text) - len(path.name)] + f"{job[1]}_…" if job else text


def _number(value, spec: str) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _read(run_dir: Path) -> RunInfo:
    try:
        return RunInfo(run_dir, summary.read(run_dir))
    except BnlabError as error:
        return RunInfo(run_dir, {}, str(error))
