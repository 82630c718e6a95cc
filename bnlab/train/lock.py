"""An exclusive lock on a run or sweep directory, held for the life of the process.

`fcntl.flock` on `<dir>/.bnlab.lock`: the kernel releases it whenever the process
ends, a kill -9 included, so a lock is never left behind by a crash. The file holds
the holder's PID, so a refused command can say which process to wait for.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bnlab.errors import RunInUseError

LOCK_NAME = ".bnlab.lock"
_held: dict[Path, int] = {}  # resolved directory -> the open descriptor that holds its lock


def hold(directory: Path) -> bool:
    """Lock `directory` for this process; False if this process holds it already.

    Raises RunInUseError naming the holder when another process has it, and OSError when the
    lock file cannot be created (a read-only or missing directory).
    """
    key = Path(directory).resolve()
    if key in _held:
        return False
    descriptor = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(os.read(descriptor, 64).decode(errors="replace").strip())
        os.close(descriptor)
        raise RunInUseError(
            f"{directory} is in use by {holder}, which is training there now; wait for it to finish, or stop it "
            "(Ctrl-C in its terminal, or kill PID: it checkpoints and stops), then resume=" + str(directory)
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held[key] = descriptor
    return True


def release(directory: Path) -> None:
    """Give up this process's lock on `directory` (a sweep job's run directory when the job ends)."""
    descriptor = _held.pop(Path(directory).resolve(), None)
    if descriptor is not None:
        os.close(descriptor)  # closing the last descriptor of the open file releases the flock


def _describe(pid: str) -> str:
    """'process 1234 (bnlab train ...)' from the PID the holder wrote, as far as this system tells."""
    if not pid.isdigit():
        return "another process"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = ""
    return f"process {pid}" + (f" ({command[:120]})" if command else "")
