"""summary.json: a run's status, steps, seed and last metrics, readable by people and reports.

Written atomically (temporary file, then rename) so a reader never sees half a file; on a full
disk, rewritten in place where it fits, so a run can still record why it failed. While a run
trains, it says how far the run got at its last checkpoint (what a kill -9 leaves). A fresh run
claims its directory by creating summary.json exclusively: two jobs that were handed the same
directory can never both train into it. `read` checks the fields readers rely on, so one odd
file is reported as damaged instead of breaking a listing or a report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from bnlab.errors import RunFileError
from bnlab.train.files import SPACE_ERRORS, overwrite_in_place, write_atomically, write_error

SUMMARY_NAME = "summary.json"
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
# What readers (bnlab runs, report, reproduce) rely on: a summary.json whose fields have other types is damaged.
FIELDS = {"steps": (int,), "total_steps": (int,), "seed": (int,), "overrides": (list,), "config": (dict,),
          "metrics": (dict,), "figures": (dict,), "diverged_at": (int, type(None)), "skipped_steps": (int,),
          "error": (str, type(None)), "started": (str, type(None)), "finished": (str, type(None))}
KIND_NAMES = {int: "an integer", dict: "an object", list: "a list", str: "a string"}


def claim(run_dir: Path, summary: dict) -> None:
    """Create run_dir/summary.json, failing if another run already owns the directory. The file appears whole
    (written aside, then hard-linked into place, which fails if it exists): a reader polling the directory, such
    as a parallel sweep's progress line, never sees it empty."""
    path = Path(run_dir) / SUMMARY_NAME
    aside = path.with_name(f".{SUMMARY_NAME}.{os.getpid()}.claim")
    try:
        aside.write_text(json.dumps(_jsonable(summary), indent=2))
        os.link(aside, path)
    except FileExistsError as error:
        raise RunFileError(
            f"run directory {run_dir} already holds a run ({path} exists); bnlab never trains two runs into "
            "one directory: choose another hydra.run.dir, or continue that run with resume=" + str(run_dir)
        ) from error
    except OSError as error:  # a full disk or a read-only directory
        raise write_error(path, error, "run summary") from error
    finally:
        aside.unlink(missing_ok=True)


def write(run_dir: Path, summary: dict) -> None:
    path = Path(run_dir) / SUMMARY_NAME
    try:
        write_atomically(path, (json.dumps(_jsonable(summary), indent=2) + "\n").encode(), "run summary")
    except RunFileError as error:
        # a full disk: without a byte to spare, a compact copy may still fit the blocks the file has
        if not isinstance(error.__cause__, OSError) or error.__cause__.errno not in SPACE_ERRORS or \
                not overwrite_in_place(path, json.dumps(_jsonable(summary), separators=(",", ":")).encode()):
            raise


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
    for key, kinds in FIELDS.items():
        if key in summary and not isinstance(summary[key], kinds):
            expected = " or ".join("null" if kind is type(None) else KIND_NAMES[kind] for kind in kinds)
            raise RunFileError(f"{path}: {key!r} is {json.dumps(summary[key])[:40]}, expected {expected}")
    if not all(isinstance(override, str) for override in summary.get("overrides", [])):
        raise RunFileError(f"{path}: 'overrides' holds something other than strings")
    for key in ("metrics", "figures"):
        odd = [name for name, value in summary.get(key, {}).items() if not isinstance(value, (int, float, type(None)))]
        if odd:
            raise RunFileError(f"{path}: {key}[{odd[0]!r}] is not a number")
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
