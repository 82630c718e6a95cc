"""Shared test helpers: the real configs, shrunk to seconds, and the real `bnlab` executable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BNLAB = str(Path(sys.executable).parent / "bnlab")
# A tiny network and a short run: every code path of a real run, in about a second.
TINY = ["model.depth=3", "model.width=16", "train.steps=12", "log.every=4", "train.eval_every=5",
        "data.batch_size=32", "log.hist_every=4"]


def run_bnlab(*args: str, cwd: Path | None = None, timeout: float = 180, env: dict | None = None):
    """Run the installed `bnlab` console script; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([BNLAB, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def compose(*overrides: str):
    from bnlab.config.launch import compose_config

    return compose_config(list(overrides))


def train_in_process(run_dir: Path, *overrides: str):
    """Compose the real config and train in this process (faster than a subprocess)."""
    from bnlab.train.loop import train

    cfg = compose(*overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(cfg, run_dir, list(overrides))


def interrupt_after(steps: int):
    """A training progress that sends this process SIGINT once `steps` steps are done, as Ctrl-C would between
    two steps."""
    import signal

    from bnlab.train.loop import NullProgress

    class InterruptAfter(NullProgress):
        def update(self, step, loss, accuracy) -> None:
            if step == steps:
                signal.raise_signal(signal.SIGINT)

    return InterruptAfter()


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's event files, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.fixture
def tiny():
    return list(TINY)


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    """Run a test on bnlab's compiled loops ("native": fails if they cannot be built, as this project's
    machines have a C++ compiler) and on the pure-Python path ("torch", BNLAB_NATIVE=0)."""
    from bnlab.telemetry import native

    if request.param == "torch":
        monkeypatch.setenv("BNLAB_NATIVE", "0")
    else:
        monkeypatch.delenv("BNLAB_NATIVE", raising=False)
        assert native.library() is not None, "the compiled loops did not build (see the log's warning)"
    return request.param
