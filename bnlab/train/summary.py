"""summary.json: a run's status, steps, seed and last metrics, readable by people and reports.

Written atomically (temporary file, then rename) so a reader never sees half a file.
A fresh run claims its directory by creating summary.json exclusively: two jobs
that were handed the same directory can never both train into it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from bnlab.errors import RunFileError

SUMMARY_NAME = "summary.json"
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


def claim(run_dir: Path, summary: dict) -> None:
    """Create run_dir/summary.json, failing if another run already owns the directory."""
    path = Path(run_dir) / SUMMARY_NAME
    try:
        with open(path, "x") as handle:
            json.dump(_jsonable(summary), handle, indent=2)
    except FileExistsError as error:
        raise RunFileError(
            f"run directory {run_dir} already holds a run ({path} exists); bnlab never trains two runs into "
            "one directory: choose another hydra.run.dir, or continue that run with resume=" + str(run_dir)
        ) from error


def write(run_dir: Path, summary: dict) -> None:
    path = Path(run_dir) / SUMMARY_NAME
    tmp = path.with_name(f".{SUMMARY_NAME}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(_jsonable(summary), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def read(run_dir: Path) -> dict:
    path = Path(run_dir) / SUMMARY_NAME
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise RunFileError(f"{path} does not exist: {run_dir} is not a bnlab run directory") from error
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFileError(f"{path} is not valid JSON ({error}); its event files may still be readable") from error
    if not isinstance(summary, dict) or summary.get("status") not in STATUSES:
        raise RunFileError(f"{path} has no valid 'status' (expected one of {', '.join(STATUSES)})")
    return summary


def _jsonable(value):
    """NaN and Inf as strings are not JSON; write them as null so any JSON reader can load the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
