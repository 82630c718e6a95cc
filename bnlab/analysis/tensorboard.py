"""Starting and stopping TensorBoard on a runs folder, for `bnlab tb` and scripts/tb_snapshot.py.

`start_tensorboard` checks the port before starting, starts the `tensorboard`
executable next to the current Python (else the one on PATH), and returns once the
server answers HTTP, or raises a BnlabError that says what went wrong and what to do:
no executable, a taken port, a child that died at once. The child's output goes
to a log file rather than a pipe, so a long-lived server can never block on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bnlab.errors import BnlabError, ConfigError, RunFileError

DEFAULT_PORT = 6006
DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 90  # TensorBoard takes a few seconds to start; much longer on a loaded machine


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path  # the child's stdout and stderr

    def output(self, lines: int = 5) -> str:
        """The last lines TensorBoard wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def find_tensorboard() -> str:
    """The tensorboard executable next to this Python (the same environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "tensorboard"
    if beside.is_file():
        return str(beside)
    found = shutil.which("tensorboard")
    if found is None:
        raise BnlabError(f"the tensorboard executable was not found next to this Python ({beside.parent}) "
                         f"or on PATH; install it with `{sys.executable} -m pip install tensorboard`")
    return found


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (we cannot bind it); BnlabError for a bad host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise BnlabError(f"cannot serve on --host {host}: {error.strerror or error}; use an address of "
                             "this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
                             ) from error
    return False


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_tensorboard(root, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                      timeout: float = START_TIMEOUT_S) -> Server:
    """Start TensorBoard on `root` and wait until it answers; port 0 picks a free port."""
    root = Path(root)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; expected 1..65535 (0 picks a free one)")
    if not root.is_dir():
        raise RunFileError(f"{root} is not a directory; pass a runs folder, a run or a sweep directory "
                           "(default: runs)")
    if port_taken(host, port):  # port 0 only checks the host
        raise BnlabError(f"port {port} on {host} is already in use (another TensorBoard?); stop that one, "
                         "or choose another port with --port N (--port 0 picks a free one)")
    if port == 0:
        port = free_port(host)
    executable = find_tensorboard()
    command = [executable, "--logdir", str(root), "--port", str(port), "--host", host]
    with tempfile.NamedTemporaryFile(prefix="bnlab-tensorboard-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = Server(process, f"http://{host}:{port}/", Path(log.name))
    try:
        _wait_until_serving(server, timeout)
    except BaseException:
        stop(server)
        raise
    return server


@contextlib.contextmanager
def stop_on_termination():
    """SIGTERM and SIGHUP (a closed terminal) raise KeyboardInterrupt, as Ctrl-C does, so that the code waiting
    on TensorBoard stops it instead of leaving it serving, re-parented to PID 1."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGTERM when bnlab dies, a kill -9 included (Linux)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(server: Server, timeout: float = 10) -> int | None:
    """Terminate TensorBoard (kill it if it does not exit within `timeout`); its exit code."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    server.log_path.unlink(missing_ok=True)
    return process.returncode


def _wait_until_serving(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise BnlabError(f"TensorBoard exited at once (exit code {code}) instead of serving "
                             f"{server.url}; it said:\n{server.output() or '(nothing)'}")
        try:
            with urllib.request.urlopen(server.url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise BnlabError(f"TensorBoard did not answer at {server.url} within {timeout:.0f} s; it said:\n"
                     f"{server.output() or '(nothing)'}")
