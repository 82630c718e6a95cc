"""Exact resume with bnlab's own BatchNorm: a run stopped by Ctrl-C (a real SIGINT to a real `bnlab train`)
and resumed equals an uninterrupted run bit for bit on the CPU: every logged scalar series (update_ratio
included) and every histogram read back from the event files, and every tensor of the final checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import BNLAB, run_bnlab, scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Long enough to be interrupted after its first checkpoint, small enough to finish in seconds.
BASE = ["norm=bnlab", "model.depth=3", "model.width=16", "train.steps=1000", "train.eval_every=250",
        "train.checkpoint_every=50", "data.batch_size=32", "log.hist_every=100"]
LOGGING = {
    "sparse": ["log.every=20"],  # each measured step copies its weights before
    "every-step": ["log.every=1"],  # each measured beside the next, reusing the copy of the weights after
}


def _histograms(run_dir) -> dict:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.histogram_value) for e in accumulator.Histograms(tag)]
            for tag in accumulator.Tags()["histograms"]}


def _assert_identical(a, b, where: str) -> None:
    """Nested dicts, lists, tensors and arrays equal exactly (bit for bit, dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module", params=["sparse", pytest.param("every-step", marks=pytest.mark.slow)])
def uninterrupted(request, tmp_path_factory):
    """(logging, the run directory of an uninterrupted run with it)."""
    run_dir = tmp_path_factory.mktemp(f"uninterrupted-{request.param}") / "run"
    result = run_bnlab("train", *BASE, *LOGGING[request.param], f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return request.param, run_dir


def test_ctrl_c_then_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, uninterrupted):
    logging, reference = uninterrupted
    run_dir = tmp_path / "run"
    process = subprocess.Popen([BNLAB, "train", *BASE, *LOGGING[logging], f"hydra.run.dir={run_dir}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and 50 <= stopped["steps"] < 1000
    resumed = run_bnlab("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"

    expected, got = scalars(reference), scalars(run_dir)
    assert got.keys() == expected.keys()
    measured_steps = [step for step, _ in expected["update_ratio/layer00"]]
    assert any(step > stopped["steps"] for step in measured_steps)  # steps of the resumed process among them
    for tag in expected:
        assert got[tag] == expected[tag], tag  # the same steps, no duplicates, the same float32 values
    assert _histograms(run_dir) == _histograms(reference)
    final, final_reference = (torch.load(path / "checkpoint.pt", weights_only=False) for path in (run_dir, reference))
    assert final["step"] == 1000
    for part in ("model", "optimizer", "sampler", "telemetry", "rng"):
        _assert_identical(final[part], final_reference[part], part)
