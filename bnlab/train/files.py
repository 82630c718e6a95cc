"""Writing a run's files so that none is ever half-written, and saying clearly when the disk is full.

Every file is written to `.<name>.<pid>.tmp` beside its target, synced, then renamed over it: a kill
at any moment leaves the previous complete file or the new one. A write that fails removes its
temporary file and names the file, the size it needed and the space left.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from bnlab.errors import BnlabError, RunFileError
from bnlab.formatting import byte_size

TEMPORARY_GLOB = ".*.tmp"
SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, full quota, file-size limit


def write_atomically(path: Path, data: bytes | memoryview, what: str) -> None:
    """Write `data` to `path` through a temporary file; RunFileError (file, reason, space) on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error, what, len(data)) from error


def overwrite_in_place(path: Path, data: bytes) -> bool:
    """Rewrite `path` inside the blocks it already owns, so no new block has to be found on a full disk;
    False (nothing written) where `data` does not fit them. Not atomic: for a small file whose previous
    content is worth less than recording the new one (a failed run's status), never for a checkpoint."""
    try:
        allocated = path.stat().st_blocks * 512
        if len(data) > allocated:
            return False
        with open(path, "r+b") as handle:
            handle.write(data)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        return True
    except OSError:
        return False


def write_error(path: Path, error: OSError, what: str, size: int | None = None) -> RunFileError:
    """One line for a failed write: the file, why, and for a full disk the space needed and left."""
    reason = error.strerror or str(error)
    if error.errno not in SPACE_ERRORS:
        return RunFileError(f"cannot write the {what} {path}: {reason}")
    try:
        free = f"{byte_size(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = "free space unknown"
    needed = f"needs {byte_size(size)}, " if size is not None else ""
    return RunFileError(f"cannot write the {what} {path}: {reason} ({needed}{free} on its file system); "
                        f"free some space, then continue with resume={path.parent}")


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed process left in `run_dir`; call it holding the run's lock,
    so that no live process is writing them."""
    leftovers = sorted(Path(run_dir).glob(TEMPORARY_GLOB))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def failure_reason(error: Exception, run_dir: Path) -> str:
    """One line for summary.json and the terminal: a BnlabError's message, a full disk's file and space left,
    else the exception's type and first line (its traceback goes to train.log)."""
    if isinstance(error, BnlabError):
        return str(error).splitlines()[0]
    if isinstance(error, OSError) and error.errno in SPACE_ERRORS:
        if error.filename:
            return str(write_error(Path(error.filename), error, "file"))
        # TensorBoard's writer thread hands its error over without a file name: its newest event file
        events = sorted(Path(run_dir).glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
        return str(write_error(events[-1] if events else Path(run_dir) / "events", error, "event file"))
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
