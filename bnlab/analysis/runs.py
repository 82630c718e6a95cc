"""Finding runs on disk: every directory with a summary.json under a root, newest first.

A damaged run (summary.json that is not JSON, a missing status) is reported with its
error instead of stopping the listing: one broken run never hides the others.
"""

from __future__ import annotations

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


def _read(run_dir: Path) -> RunInfo:
    try:
        return RunInfo(run_dir, summary.read(run_dir))
    except BnlabError as error:
        return RunInfo(run_dir, {}, str(error))
