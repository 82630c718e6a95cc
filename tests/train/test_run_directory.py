"""A run directory is never damaged: refused commands write nothing, one process at a time trains in it,
summary.json always says how far the run got, and a directory that cannot be written is one clear line.

Real subprocesses and real signals throughout; each test works on its own copy of one interrupted run.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from conftest import TINY, run_bnlab
from run_checks import LONG, assert_one_line, checkpoint_step, interrupt, read_summary, snapshot, start, wait_for


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A LONG run stopped by Ctrl-C after its first checkpoint (status interrupted, steps >= 50)."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    process = start(*LONG, f"hydra.run.dir={run_dir}")
    wait_for(lambda: (run_dir / "checkpoint.pt").exists(), process, what="the first checkpoint")
    assert interrupt(process).returncode == 130
    assert read_summary(run_dir)["status"] == "interrupted"
    return run_dir


@pytest.fixture
def run_copy(interrupted_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(interrupted_run, copy)
    return copy


def test_a_refused_new_run_writes_nothing_into_an_existing_run(run_copy):
    before = snapshot(run_copy)
    result = run_bnlab("train", "model.depth=5", "optim.lr=0.5", f"hydra.run.dir={run_copy}")
    assert_one_line(result, 2, "already holds a run", f"resume={run_copy}")
    assert snapshot(run_copy) == before  # .hydra/overrides.yaml and config.yaml included
    resumed = run_bnlab("train", f"resume={run_copy}")
    assert resumed.returncode == 0, resumed.stderr
    summary = read_summary(run_copy)
    assert summary["status"] == "completed" and summary["steps"] == 1000
    assert summary["config"]["optim"]["lr"] == 0.1 and summary["config"]["model"]["depth"] == 3


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_refused_sweep_writes_nothing_into_an_existing_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_bnlab("train", "-m", "train.seed=0,1", *TINY, f"hydra.sweep.dir={sweep}").returncode == 0
    before = snapshot(sweep)
    result = run_bnlab("train", "-m", "train.seed=0,1", *TINY, "optim.lr=0.5", f"hydra.sweep.dir={sweep}")
    assert_one_line(result, 2, "already holds a sweep", f"resume={sweep}")
    assert snapshot(sweep) == before


def test_a_resume_that_cannot_load_the_checkpoint_leaves_the_summary_as_it_was(run_copy):
    (run_copy / "checkpoint.pt").write_bytes(b"damaged")
    before = (run_copy / "summary.json").read_bytes()
    result = run_bnlab("train", f"resume={run_copy}")
    assert_one_line(result, 1, "could not resume", "checkpoint.pt is damaged or truncated", "left as it was")
    assert (run_copy / "summary.json").read_bytes() == before


def test_a_resume_with_another_architecture_leaves_the_summary_as_it_was(run_copy):
    # what a refused command used to cause: recorded overrides that no longer match the checkpoint
    overrides = run_copy / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump([o.replace("model.depth=3", "model.depth=5")
                                         for o in yaml.safe_load(overrides.read_text())]))
    before = (run_copy / "summary.json").read_bytes()
    result = run_bnlab("train", f"resume={run_copy}")
    assert_one_line(result, 1, "could not resume", "RuntimeError", "status interrupted at step")
    assert (run_copy / "summary.json").read_bytes() == before
    assert checkpoint_step(run_copy) == read_summary(run_copy)["steps"]


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_second_resume_is_refused_while_the_first_trains_and_names_it(run_copy):
    first = start(f"resume={run_copy}")
    lock = run_copy / ".bnlab.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first, what="the lock")
    before = sorted(p.name for p in run_copy.glob("events.out.tfevents.*"))
    second = run_bnlab("train", f"resume={run_copy}")
    assert_one_line(second, 2, f"in use by process {first.pid}", "bnlab train")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    events = sorted(p.name for p in run_copy.glob("events.out.tfevents.*"))
    # one new event file, the first resume's: the refused one never opened a writer
    assert len(events) == len(before) + 1 and events[-1].split(".")[-2] == str(first.pid)
    assert read_summary(run_copy)["status"] == "completed"


def test_resuming_a_run_that_is_still_training_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    training = start(*LONG, "train.steps=100000", f"hydra.run.dir={run_dir}")  # still training when refused
    wait_for(lambda: (run_dir / "checkpoint.pt").exists(), training, what="the first checkpoint")
    refused = run_bnlab("train", f"resume={run_dir}")
    assert_one_line(refused, 2, f"in use by process {training.pid}")
    assert interrupt(training).returncode == 130


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_two_sweeps_never_share_a_directory(tmp_path):
    sweep = tmp_path / "sweep"
    first = start("-m", "train.seed=0,1", *LONG, "train.steps=100000", "hydra/launcher=basic",
                  f"hydra.sweep.dir={sweep}")
    wait_for(lambda: any(sweep.glob("*/checkpoint.pt")), first, what="the first job's checkpoint")
    second = run_bnlab("train", f"resume={sweep}")
    assert_one_line(second, 2, f"in use by process {first.pid}")
    assert interrupt(first).returncode == 130


def test_kill_9_leaves_the_steps_of_the_last_checkpoint_and_a_lock_the_next_process_takes(tmp_path):
    run_dir = tmp_path / "run"
    process = start(*LONG, "train.checkpoint_every=100", f"hydra.run.dir={run_dir}")
    wait_for(lambda: read_summary(run_dir)["steps"] >= 200 if (run_dir / "summary.json").exists() else False,
             process, what="two checkpoints")
    process.kill()
    process.communicate()
    summary, step = read_summary(run_dir), checkpoint_step(run_dir)
    assert summary["status"] == "running" and summary["steps"] == step and step % 100 == 0 and step >= 200
    assert summary["metrics"]["loss/train"] > 0  # the metrics as of that checkpoint
    # what a kill in the middle of a write leaves behind, with the killed process's PID in the name
    leftovers = [run_dir / f".checkpoint.pt.{process.pid}.tmp", run_dir / f".summary.json.{process.pid}.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    resumed = run_bnlab("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert not any(leftover.exists() for leftover in leftovers)
    assert not list(run_dir.glob(".*.tmp"))
    assert read_summary(run_dir)["status"] == "completed"


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
@pytest.mark.parametrize("moment", ["set-up", "start"])
def test_an_early_ctrl_c_ends_interrupted_and_the_run_can_go_on(tmp_path, moment):
    """Ctrl-C while the data are generated (summary.json exists, no step yet), or as soon as the directory is
    locked (Hydra starting up): exit 130 without a traceback, and never a summary left `running`."""
    run_dir = tmp_path / "run"
    # 200k synthetic samples take a second or more to generate: the Ctrl-C lands in the set-up
    args = [*LONG, "data=synthetic", "data.samples=200000", "data.dim=64", f"hydra.run.dir={run_dir}"]
    process = start(*args)
    marker = run_dir / ("summary.json" if moment == "set-up" else ".bnlab.lock")
    wait_for(marker.exists, process, what=str(marker))
    result = interrupt(process)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "interrupted" in result.stderr
    if (run_dir / "summary.json").exists():
        summary = read_summary(run_dir)
        assert summary["status"] == "interrupted"
        if moment == "set-up":
            assert summary["steps"] == (checkpoint_step(run_dir) if (run_dir / "checkpoint.pt").exists() else 0)
    if (run_dir / ".hydra" / "overrides.yaml").exists():
        again = run_bnlab("train", f"resume={run_dir}")
    else:  # stopped before Hydra recorded anything: the directory takes the run anew
        again = run_bnlab("train", *args)
    assert again.returncode == 0, again.stderr
    assert read_summary(run_dir)["status"] == "completed"


def test_a_run_directory_under_a_file_is_one_line_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = run_bnlab("train", *TINY, f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    assert_one_line(result, 2, f"{tmp_path / 'file' / 'run'}", "Not a directory")


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs where this test runs as root (permissions do not stop root),
    else a folder without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder as root here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_runs_folder_is_one_line_naming_the_path(read_only):
    result = run_bnlab("train", *TINY, cwd=read_only)
    line = assert_one_line(result, 2, "cannot write the run directory runs/train/")
    assert "Read-only file system" in line or "Permission denied" in line


def test_a_sweep_into_a_read_only_folder_is_one_line_naming_the_path(read_only):
    result = run_bnlab("train", "-m", "train.seed=0,1", *TINY, f"hydra.sweep.dir={read_only / 'sweep'}")
    assert_one_line(result, 2, f"cannot write the sweep directory {read_only / 'sweep'}")
