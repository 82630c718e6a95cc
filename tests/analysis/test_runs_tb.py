"""Tests for `bnlab runs` and `bnlab tb` (bnlab.analysis.runs, .tensorboard): real runs, subprocesses, sockets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bnlab.analysis.tensorboard import find_tensorboard, start_tensorboard, stop
from bnlab.config.launch import plan, run_hydra
from bnlab.errors import BnlabError
from bnlab.train import summary

BNLAB = str(Path(sys.executable).parent / "bnlab")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A runs folder: a fresh run, an older copy that diverged, and a run whose summary.json is not JSON."""
    root = tmp_path_factory.mktemp("runs")
    args = ["train.steps=5", "model.depth=2", "model.width=8", "log.image_every=1000",
            f"hydra.run.dir={root / 'new'}"]
    (result,) = run_hydra(plan(args))
    assert result.status == "completed"
    old = root / "sweep" / "0_norm=none"
    shutil.copytree(root / "new", old)
    record = json.loads((old / "summary.json").read_text())
    summary.write(old, {**record, "status": "diverged", "overrides": ["norm=none", "train.seed=3"],
                        "started": "2020-01-02T03:04:05+00:00"})
    shutil.copytree(root / "new", root / "broken")
    (root / "broken" / "summary.json").write_text("{not json")
    return root


def _bnlab(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([BNLAB, *args], capture_output=True, text=True, env=env, timeout=60, **kwargs)


def test_bnlab_runs_lists_when_what_status_steps_and_metrics_newest_first(root):
    done = _bnlab("runs", str(root))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "3 runs under" in out
    assert out.index("train.steps=5") < out.index("norm=none train.seed=3"), "newest first: 2020 is last"
    assert "completed" in out and "5/5" in out and "diverged" in out
    assert "01-02 03:04" in out or "01-0" in out  # the old run's start, in local time
    assert re.search(r"damaged: .*summary\.json is not valid JSON", out), out
    record = json.loads((root / "new" / "summary.json").read_text())
    assert f"{record['metrics']['acc/test']:.3f}" in out and f"{record['metrics']['loss/train']:.3g}" in out


def test_bnlab_runs_fits_80_columns_and_prints_whole_paths(root):
    done = subprocess.run([BNLAB, "runs", str(root)], capture_output=True, text=True, timeout=60, cwd=root,
                          env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for run in ("new", "sweep/0_norm=none", "broken"):  # sweep jobs too, relative to the working directory
        assert f"    {run}" in lines, done.stdout
    numbers = [line for line in lines if not line.startswith("    ")]
    assert max(len(line) for line in numbers) <= 80
    assert "norm=none train.seed=3" in done.stdout and "grad ratio init → end" in done.stdout


def test_bnlab_runs_on_a_missing_folder_says_so(tmp_path):
    done = _bnlab("runs", str(tmp_path / "nowhere"))
    assert done.returncode == 1 and "does not exist" in done.stderr


def test_bnlab_tb_serves_on_a_free_port_and_stops_on_ctrl_c(root):
    process = subprocess.Popen([BNLAB, "tb", str(root), "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "250"})
    try:
        line = process.stdout.readline()  # printed once TensorBoard answers
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url, f"no URL in {line!r}"
        with urllib.request.urlopen(url[0], timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
        with pytest.raises(OSError):  # TensorBoard went with it: nothing listens on the port any more
            socket.create_connection(("127.0.0.1", int(url[1])), timeout=2).close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_taken_port_is_a_clear_error_before_anything_starts(root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BnlabError, match=rf"port {port} on 127\.0\.0\.1 is already in use.*--port 0"):
            start_tensorboard(root, port=port)
        started = time.monotonic()
        done = _bnlab("tb", str(root), "--port", str(port))
        assert done.returncode == 1 and "already in use" in done.stderr
        assert time.monotonic() - started < 30


def test_library_start_and_stop(root):
    assert Path(find_tensorboard()).parent == Path(sys.executable).parent
    server = start_tensorboard(root / "new", port=0)
    try:
        with urllib.request.urlopen(server.url + "data/runs", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) == ["."]
    finally:
        stop(server)
    assert server.process.returncode is not None
    with pytest.raises(BnlabError, match="is not a directory"):
        start_tensorboard(root / "missing", port=0)
