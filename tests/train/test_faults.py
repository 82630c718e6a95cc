"""Honest reporting of what went wrong: odd summaries skipped with a warning, skipped steps counted, a failed
sweep job's reason in the sweep's table, TensorBoard stopped by SIGTERM/SIGHUP/kill -9 of `bnlab tb`, and a
damaged compiled-code cache rebuilt instead of a SIGBUS. Real subprocesses, signals and files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BNLAB, TINY, run_bnlab, train_in_process
from run_checks import read_summary, wait_for


@pytest.fixture(scope="module")
def one_good_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("good") / "runs" / "good"
    assert train_in_process(run_dir, *TINY).status == "completed"
    return run_dir


ODD = {"metrics_is_a_number": {"metrics": 5}, "config_is_null": {"config": None},
       "overrides_are_not_strings": {"overrides": [1, 2]}, "steps_is_text": {"steps": "many"},
       "a_metric_is_a_list": {"metrics": {"loss/train": [1, 2]}}}


@pytest.fixture
def folder_with_odd_runs(one_good_run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(one_good_run, root / "good")
    for name, change in ODD.items():
        shutil.copytree(one_good_run, root / name)
        record = read_summary(root / name)
        record.update(change)
        (root / name / "summary.json").write_text(json.dumps(record))
    return root


def test_odd_summaries_are_listed_as_damaged_and_the_good_run_still_shows(folder_with_odd_runs):
    result = run_bnlab("runs", str(folder_with_odd_runs), env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{len(ODD) + 1} runs under" in result.stdout
    assert result.stdout.count("damaged:") == len(ODD) and "completed" in result.stdout  # one reason a run
    assert "'metrics' is 5, expected an object" in result.stdout
    assert "'config' is null, expected an object" in result.stdout


def test_report_skips_odd_summaries_with_a_warning(folder_with_odd_runs, tmp_path):
    result = run_bnlab("report", str(folder_with_odd_runs), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == len(ODD)
    assert (tmp_path / "report" / "report.md").is_file()


def test_continue_on_divergence_says_how_many_steps_were_skipped(tmp_path):
    run_dir = tmp_path / "run"
    result = run_bnlab("train", *TINY, "model.activation=relu", "norm=none", "optim.lr=1e10",
                       "train.on_divergence=continue", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    skipped = summary["skipped_steps"]
    assert summary["status"] == "completed" and 1 <= skipped <= 12
    assert f"{skipped} steps skipped (loss or gradient not finite)" in result.stdout
    assert f"warning: {skipped} of 12 steps were skipped" in result.stderr
    assert f"first at step {summary['diverged_at']}" in result.stderr


def test_a_failed_sweep_job_shows_its_reason_and_log_in_the_table(tmp_path):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / f"{name}.gz").write_bytes(gzip.compress(b"not an idx file"))
    sweep = tmp_path / "sweep"
    result = run_bnlab("train", "-m", "data=mnist,digits", *TINY, f"data.root={tmp_path / 'data'}",
                       f"hydra.sweep.dir={sweep}", env={"COLUMNS": "1000"})
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    (failed,) = [path for path in sweep.iterdir() if path.is_dir() and read_summary(path)["status"] == "failed"]
    error = read_summary(failed)["error"]
    assert "\n" not in error and "train-images-idx3-ubyte.gz" in error
    why = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("why:")]
    assert why == [f"why: {error} ({failed / 'train.log'})"]  # under the failed job's lines
    assert "failed" in result.stdout


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_stopping_bnlab_tb_stops_tensorboard(one_good_run, signum):
    process = subprocess.Popen([BNLAB, "tb", str(one_good_run), "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        assert "TensorBoard on" in process.stdout.readline()  # printed once it answers HTTP
        (tensorboard,) = _children(process.pid)
        assert _alive(tensorboard)
        process.send_signal(signum)
        process.wait(timeout=60)
        wait_for(lambda: not _alive(tensorboard), timeout=30, what="TensorBoard to stop")
        if signum != signal.SIGKILL:
            assert process.returncode == 0
            assert "TensorBoard stopped" in process.stdout.read()
            assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_damaged_compiled_library_is_rebuilt_instead_of_crashing(tmp_path):
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the compiled loops are not used here")
    cache = tmp_path / "cache"
    env = {"BNLAB_CACHE_DIR": str(cache), "BNLAB_NATIVE": "1"}
    first = run_bnlab("train", *TINY, f"hydra.run.dir={tmp_path / 'first'}", env=env)
    assert first.returncode == 0, first.stderr
    libraries = sorted(cache.glob("*.so"))
    assert libraries and all(Path(f"{library}.sha256").is_file() for library in libraries)
    sizes = {library: library.stat().st_size for library in libraries}
    for library in libraries:  # a truncated copy: mapping it would kill the process with SIGBUS
        library.write_bytes(library.read_bytes()[: sizes[library] // 2])
    started = time.monotonic()
    second = run_bnlab("train", *TINY, f"hydra.run.dir={tmp_path / 'second'}", env=env)
    assert second.returncode == 0, (second.returncode, second.stderr)  # -7 would be SIGBUS
    assert read_summary(tmp_path / "second")["status"] == "completed"
    assert all(library.stat().st_size == size for library, size in sizes.items())  # rebuilt whole
    assert "is damaged" in (tmp_path / "second" / "train.log").read_text()
    assert time.monotonic() - started < 300
