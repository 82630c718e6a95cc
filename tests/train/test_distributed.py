"""`train.nproc=N`: real runs of `bnlab train` in two processes (torch.distributed.run, gloo, loopback)
against one process on the same global batch, and their interruption, resume and failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BNLAB, TINY, compose, run_bnlab, scalars, train_in_process

from bnlab.data.datasets import BatchSampler
from bnlab.errors import ConfigError
from bnlab.train import distributed
from bnlab.train.interrupt import StopRequest

TWO = ["train.nproc=2", "norm.sync=true"]
# Tags measured on the whole batch (gradients after the all-reduce, weights, losses); activation statistics
# and output gradients are process 0's share of it.
GLOBAL_TAGS = ("loss/", "acc/", "grad_norm/weight/", "weight_norm/", "update_ratio/")
LONG = ["model.depth=3", "model.width=16", "log.every=100", "train.eval_every=1000", "train.checkpoint_every=50",
        "data.batch_size=32", "log.hist_every=1000", "log.images=false"]


def _assert_same_training(run_dir: Path, reference: Path, tags_left_out: tuple[str, ...] = ()) -> None:
    """Same weights and buffers at the end and the same global-batch telemetry, to float32 tolerance."""
    final, expected = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (run_dir, reference))
    assert final["step"] == expected["step"]
    assert final["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():
        torch.testing.assert_close(final["model"][key], value, atol=1e-5, rtol=1e-4, msg=key)
    tags, expected_tags = scalars(run_dir), scalars(reference)
    compared = [tag for tag in expected_tags if tag.startswith(GLOBAL_TAGS) and not tag.startswith(tags_left_out)]
    assert len(compared) > 10
    for tag in compared:
        steps, values = zip(*tags[tag], strict=True)
        expected_steps, expected_values = zip(*expected_tags[tag], strict=True)
        assert steps == expected_steps, tag
        torch.testing.assert_close(torch.tensor(values), torch.tensor(expected_values), atol=1e-5, rtol=1e-4,
                                   msg=tag)


def test_two_processes_train_as_one_process_on_the_global_batch(tmp_path):
    reference = tmp_path / "one"
    assert train_in_process(reference, *TINY, "norm.sync=true").status == "completed"
    run_dir = tmp_path / "two"
    result = run_bnlab("train", *TINY, *TWO, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["config"]["train"]["nproc"] == 2
    _assert_same_training(run_dir, reference)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # process 0 alone writes the run directory
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events")) == [
        ".bnlab.lock", ".hydra", "checkpoint.pt", "summary.json", "train.log"]


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_two_processes_diverge_at_the_step_one_process_does(tmp_path):
    diverging = [*TINY, "model.activation=relu", "norm=none", "optim.lr=1e10"]
    expected = train_in_process(tmp_path / "one", *diverging)
    assert expected.status == "diverged"
    result = run_bnlab("train", *diverging, "train.nproc=2", f"hydra.run.dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["status"], summary["diverged_at"]) == ("diverged", expected.diverged_at)


def _start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([BNLAB, "train", *overrides, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_stops_every_process_at_one_step_and_resume_finishes_the_run(tmp_path):
    reference = tmp_path / "one"
    assert train_in_process(reference, *LONG, "train.steps=1000", "norm.sync=true").status == "completed"
    run_dir = tmp_path / "two"
    process = _start(run_dir, *LONG, "train.steps=1000", *TWO)
    _wait_for_checkpoint(run_dir, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 50 <= summary["steps"] < 1000, summary
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == summary["steps"]

    resumed = run_bnlab("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    _assert_same_training(run_dir, reference)  # update_ratio included: it is the step's own


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if parent == pid:
                children += [int(entry.name), *_descendants(int(entry.name))]
    return children


def _process_with_rank(root: int, rank: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in _descendants(root):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"bnlab.train.worker" in cmdline and f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no training process of rank {rank} under {root}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes through /proc")
def test_a_process_that_dies_ends_the_run_as_failed_without_a_hang(tmp_path):
    run_dir = tmp_path / "run"
    process = _start(run_dir, *LONG, *TWO, "train.steps=100000")
    _wait_for_checkpoint(run_dir, process)
    started = time.time()
    os.kill(_process_with_rank(process.pid, 1), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert time.time() - started < 60  # the peer notices at its next collective, far inside the timeout
    assert process.returncode == 1, stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed", summary
    assert summary["error"].startswith("process 1: ended without an outcome (killed or crashed"), summary
    assert not _descendants(process.pid)


@pytest.mark.parametrize("overrides, fragment", [
    (["data.batch_size=33", "train.nproc=2"], "data.batch_size=33 is not divisible by train.nproc=2"),
    (["train.nproc=0"], "train.nproc=0 is out of range"),
    (["norm=torch", "norm.sync=true"], "norm.sync=true synchronizes bnlab's BatchNorm"),
])
def test_bad_process_settings_are_refused_before_any_work(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        compose(*overrides)


def test_a_batch_not_divisible_by_nproc_is_one_line_exit_2(tmp_path):
    result = run_bnlab("train", "train.nproc=3", "data.batch_size=64", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.batch_size=64 is not divisible by train.nproc=3" in result.stderr
    assert "use a multiple of 3, e.g. data.batch_size=63" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_shards_make_up_the_global_batch_and_share_its_state():
    shards = [distributed.ShardedSampler(BatchSampler(100, 12, seed=3), rank, 3) for rank in range(3)]
    whole = BatchSampler(100, 12, seed=3)
    for _ in range(20):  # across epoch boundaries
        torch.testing.assert_close(torch.cat([shard.next_indices() for shard in shards]), whole.next_indices())
    assert all(shard.state_dict() == whole.state_dict() for shard in shards)


def test_in_one_process_the_hooks_change_nothing():
    cfg = compose("train.nproc=1", "norm.sync=true")
    model, sampler = torch.nn.Linear(2, 2), BatchSampler(10, 2, seed=0)
    assert distributed.prepare(cfg, model, sampler) == (model, sampler)
    loss, stop = torch.tensor(1.5), StopRequest()
    assert distributed.agree(loss, 1.5, True, stop) == (loss, 1.5, True) and not stop.requested
    assert not distributed.is_launcher(cfg) and distributed.is_launcher(compose("train.nproc=2"))
