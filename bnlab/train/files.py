"""Writing a run's files so that none is ever half-written, and saying clearly when the disk is full.

Every file is written to `.<name>.<pid>.tmp` beside its target, synced, then renamed over it: a kill
at any moment leaves the previous complete file or the new one. A write that fails removes its
temporary file and names the file, the size it needed and the space left.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from bnlab.errors import BnlabError, RunFileError
from bnlab.formatting import byte_size

TEMPORARY_GLOB = ".*.tmp"
SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, full quota, file-size limit


def write_atomically(path: Path, content: bytes | Callable[[BinaryIO], None], what: str,
                     size: int | None = None) -> None:
    """Write `content` (bytes, or a function that writes to a file) to `path` through a temporary file;
    RunFileError naming the file, the reason and, for a full disk, the space needed (`size`) and left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    target = None
    try:
        with open(tmp, "wb") as handle:
            target = _KeepsWriteErrors(handle)
            if callable(content):
                content(target)
            else:
                target.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as error:
        tmp.unlink(missing_ok=True)
        cause = target.error if target is not None and target.error is not None else error
        if not isinstance(cause, OSError):
            raise
        raise write_error(path, cause, what, len(content) if isinstance(content, bytes) else size) from error


class _KeepsWriteErrors:
    """A file that remembers why a write failed: torch's zip writer turns a full disk into an
    'unexpected pos' RuntimeError, and the errno is what tells the user what to do."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


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
    needed = f"needs about {byte_size(size)}, " if size is not None else ""
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
