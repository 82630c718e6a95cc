"""What every fault test checks: one clear line, the right exit code, no traceback, and untouched files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import BNLAB

# Long enough to be stopped mid-way, small enough to finish in seconds (as in test_reliability.py).
LONG = ["model.depth=3", "model.width=16", "train.steps=1000", "log.every=20", "train.eval_every=500",
        "train.checkpoint_every=50", "data.batch_size=32", "log.hist_every=1000", "norm=torch"]


def assert_one_line(result, code: int, *fragments: str) -> str:
    """`result` exited with `code`, wrote exactly one `error:` line holding every fragment, and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output and "Logging error" not in output and "Exception in thread" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `directory`: (size, modification time in ns, SHA-256); changes if anything is written."""
    return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns,
                                               hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(directory.rglob("*")) if path.is_file()}


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([BNLAB, "train", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "200"})


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {process.communicate()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checkpoint_step(run_dir: Path) -> int:
    import torch

    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]


def interrupt(process: subprocess.Popen, signum: int = signal.SIGINT) -> subprocess.CompletedProcess:
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
