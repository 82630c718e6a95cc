"""A full disk mid-run: one line naming the file and the space left, no temporary file left behind, status
`failed` with the reason, the previous checkpoint intact, exit 1; after space is freed the run goes on.

On a real 300 kB tmpfs where this machine allows mounting one (as root); elsewhere the file-size limit
RLIMIT_FSIZE makes the same writes fail with EFBIG ("File too large"), which bnlab treats as a full disk.
"""

from __future__ import annotations

import os
import resource
import subprocess

import pytest
from conftest import BNLAB
from run_checks import LONG, assert_one_line, checkpoint_step, read_summary


@pytest.fixture
def small_disk(tmp_path):
    """(a folder on a 300 kB file system, or None, and how to make it bigger: None where RLIMIT_FSIZE is used)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        yield folder, None
        return

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)

    yield folder, grow
    subprocess.run(["umount", str(folder)], check=True)


def _train(*args: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child: writes past `file_limit` bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([BNLAB, "train", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"}, preexec_fn=limit if file_limit else None)


def _no_temporary_files(run_dir) -> bool:
    return not [path for path in run_dir.iterdir() if path.name.endswith(".tmp")]


def test_a_checkpoint_that_does_not_fit_fails_the_run_cleanly_and_the_run_goes_on(small_disk):
    folder, grow = small_disk
    if grow is None:
        pytest.skip("cannot mount a tmpfs here; test_a_full_disk_while_logging covers the file-size limit")
    run_dir = folder / "run"
    # width 128: each checkpoint is ~200 kB, so the first fits and the second (beside it until the rename) cannot
    result = _train(*LONG, "model.width=128", f"hydra.run.dir={run_dir}")
    line = assert_one_line(result, 1, f"{run_dir / 'checkpoint.pt'}", "No space left on device", "free",
                           f"resume={run_dir}")
    assert "needs" in line
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert "checkpoint.pt" in summary["error"]
    assert _no_temporary_files(run_dir)
    assert checkpoint_step(run_dir) == 50  # the previous checkpoint, whole
    grow()
    resumed = _train(f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run_dir)["status"] == "completed" and checkpoint_step(run_dir) == 1000


@pytest.mark.parametrize("disk", [pytest.param("tmpfs", marks=pytest.mark.slow),
                                  pytest.param("file-size limit", marks=pytest.mark.slow)])
def test_a_full_disk_while_logging_fails_the_run_with_one_line(small_disk, tmp_path, disk):
    folder, grow = small_disk
    if disk == "tmpfs" and grow is None:
        pytest.skip("cannot mount a tmpfs here; the file-size limit case stands in for it")
    run_dir = (folder if disk == "tmpfs" else tmp_path) / "run"
    # histograms at every step fill 300 kB (or pass a 250 kB file-size limit) within a few hundred steps
    result = _train(*LONG, "log.every=1", "log.hist_every=1", f"hydra.run.dir={run_dir}",
                    file_limit=250_000 if disk != "tmpfs" else None)
    reason = "No space left on device" if disk == "tmpfs" else "File too large"
    line = assert_one_line(result, 1, str(run_dir), reason, f"resume={run_dir}")
    assert "free" in line
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and reason in summary["error"]
    assert _no_temporary_files(run_dir)
    if (run_dir / "checkpoint.pt").exists():
        assert checkpoint_step(run_dir) % 50 == 0  # whole, at a checkpoint step
    if disk == "tmpfs":
        grow()
    resumed = _train(f"resume={run_dir}")  # the file-size limit applied to the first process only
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run_dir)["status"] == "completed"
