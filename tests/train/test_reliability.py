"""Bad input, divergence, failures, interruption and exact resume, with real subprocesses and signals."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import time

import pytest
import torch
from conftest import BNLAB, TINY, run_bnlab, scalars

# Long enough to be interrupted mid-way, small enough to finish in seconds. norm=torch keeps these tests
# about the loop; bnlab's layer has its own exactness tests.
LONG = ["model.depth=3", "model.width=16", "train.steps=1000", "log.every=20", "train.eval_every=500",
        "train.checkpoint_every=50", "data.batch_size=32", "log.hist_every=1000"]


@pytest.mark.parametrize("override,fragment", [
    ("norm=bnn", "norm=bnn is not a choice"),
    ("model.dept=3", "did you mean 'model.depth'"),
    ("model.depth=abc", "model.depth=abc has the wrong type"),
    ("model.depth=0", "model.depth=0 is out of range"),
    ("model.width=0", "model.width=0 is out of range"),
    ("data.batch_size=1", "data.batch_size=1 is too small for BatchNorm"),
    ("optim.lr=-0.1", "optim.lr=-0.1 is out of range"),
    ("log.every=0", "log.every=0 is out of range"),
    ("model=cnn data=mnist1d", "model=cnn needs images"),
    ("data=cifar10 data.root=/nonexistent/bnlab", "cifar10 files not found"),
])
def test_bad_input_exits_2_with_one_clear_line_and_no_traceback(tmp_path, override, fragment):
    result = run_bnlab("train", *override.split(), cwd=tmp_path)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (folded to the terminal width at most)
    assert not (tmp_path / "runs").exists()  # stopped before any work


def test_a_nan_run_is_a_result_not_a_crash(tmp_path):
    run_dir = tmp_path / "run"
    result = run_bnlab("train", *TINY, "model.activation=relu", "norm=none", "optim.lr=1e10",
                       f"hydra.run.dir={run_dir}")
    assert result.returncode == 0
    assert "diverged" in result.stdout and "warning" in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"] == summary["steps"]
    assert summary["diverged_at"] < 12
    tags = scalars(run_dir)  # the telemetry so far is kept and readable
    assert tags["grad_norm/output/layer00"][0][0] == 0


def test_on_divergence_continue_skips_the_bad_steps(tmp_path):
    from conftest import train_in_process

    result = train_in_process(tmp_path / "run", *TINY, "model.activation=relu", "norm=none", "optim.lr=1e10",
                              "train.on_divergence=continue")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert result.status == "completed" and summary["steps"] == 12
    assert summary["skipped_steps"] >= 1 and summary["diverged_at"] is not None
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _corrupt_mnist(root):
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / f"{name}.gz").write_bytes(gzip.compress(b"not an idx file"))


def test_a_failing_run_is_marked_failed_keeps_its_log_and_exits_1(tmp_path):
    _corrupt_mnist(tmp_path / "data")
    run_dir = tmp_path / "run"
    result = run_bnlab("train", *TINY, "data=mnist", f"data.root={tmp_path / 'data'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "run failed" in result.stderr and "train-images-idx3-ubyte.gz" in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "train-images-idx3-ubyte.gz" in summary["error"]
    assert "Traceback" in (run_dir / "train.log").read_text()  # the full traceback goes to the log


def test_one_failing_job_never_stops_the_sweep(tmp_path):
    _corrupt_mnist(tmp_path / "data")
    sweep = tmp_path / "sweep"
    result = run_bnlab("train", "-m", "data=mnist,digits", *TINY, f"data.root={tmp_path / 'data'}",
                       f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1  # the sweep reports the failure ...
    statuses = {p.name.split("_")[0]: json.loads((p / "summary.json").read_text())["status"]
                for p in sweep.iterdir() if p.is_dir()}
    assert statuses == {"0": "failed", "1": "completed"}  # ... after running every job
    assert "failed" in result.stdout and "completed" in result.stdout


def _start(run_dir, *extra):
    return subprocess.Popen([BNLAB, "train", *LONG, *extra, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir, process, timeout=120):
    deadline = time.time() + timeout
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


def _same_run(a, b):
    """Bit-for-bit: parameters, buffers and optimizer state at the end, and every logged loss."""
    final_a = torch.load(a / "checkpoint.pt", weights_only=False)
    final_b = torch.load(b / "checkpoint.pt", weights_only=False)
    assert final_a["step"] == final_b["step"] == 1000
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    tags_a, tags_b = scalars(a), scalars(b)
    assert tags_a["loss/train"] == tags_b["loss/train"]  # same steps, no duplicates, identical values
    assert tags_a["grad_norm/output/layer00"] == tags_b["grad_norm/output/layer00"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_bnlab("train", *LONG, "norm=torch", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, signum):
    run_dir = tmp_path / "run"
    process = _start(run_dir, "norm=torch")
    _wait_for_checkpoint(run_dir, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 50 <= summary["steps"] < 1000
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == summary["steps"]

    resumed = run_bnlab("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    _same_run(uninterrupted, run_dir)


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = _start(run_dir, "norm=torch", "train.checkpoint_every=200")
    _wait_for_checkpoint(run_dir, process)
    time.sleep(0.3)  # let it get past the checkpoint, so some records must be discarded on resume
    process.kill()
    process.communicate()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] % 200 == 0
    resumed = run_bnlab("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    _same_run(uninterrupted, run_dir)


def test_a_damaged_checkpoint_gives_a_clear_error_naming_the_file(tmp_path):
    from bnlab.errors import RunFileError
    from bnlab.train import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": 3, "weights": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:500])  # truncated
    with pytest.raises(RunFileError, match=str(path)):
        checkpoint.load(path)


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_resuming_from_a_damaged_checkpoint_fails_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    assert run_bnlab("train", *TINY, "norm=torch", f"hydra.run.dir={run_dir}").returncode == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["status"] = "interrupted"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    result = run_bnlab("train", f"resume={run_dir}")
    assert result.returncode == 1
    assert "checkpoint.pt is damaged or truncated" in result.stderr and "Traceback" not in result.stderr


def test_a_sweep_resumes_skipping_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_bnlab("train", "-m", "train.seed=0,1", *TINY, "norm=torch", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    done_mtime = (jobs[0] / "summary.json").stat().st_mtime_ns
    summary = json.loads((jobs[1] / "summary.json").read_text())
    summary["status"] = "interrupted"  # as if the sweep had been stopped during job 1
    (jobs[1] / "summary.json").write_text(json.dumps(summary))
    resumed = run_bnlab("train", f"resume={sweep}")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == jobs  # same directories, none added
    assert (jobs[0] / "summary.json").stat().st_mtime_ns == done_mtime  # finished job skipped
    assert json.loads((jobs[1] / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    processes = [subprocess.Popen([BNLAB, "train", *TINY], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]
    for process in processes:
        process.communicate(timeout=120)
        assert process.returncode == 0
    runs = sorted((tmp_path / "runs" / "train").iterdir())
    assert len(runs) == 2
    assert all(json.loads((r / "summary.json").read_text())["status"] == "completed" for r in runs)


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_directory_is_never_shared_by_two_runs(tmp_path):
    run_dir = tmp_path / "run"
    assert run_bnlab("train", *TINY, f"hydra.run.dir={run_dir}").returncode == 0
    second = run_bnlab("train", *TINY, f"hydra.run.dir={run_dir}")
    assert second.returncode == 2  # refused as bad input, before anything was written
    assert "already holds a run" in second.stderr and "resume=" in second.stderr
    assert "Traceback" not in second.stderr
