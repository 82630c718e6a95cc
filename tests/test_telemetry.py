"""Telemetry in a real run: every logged step written once, a failing measurement fails the run."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, scalars, train_in_process


def test_a_failing_measurement_fails_the_run_with_its_error_and_keeps_what_was_written(tmp_path, monkeypatch):
    from bnlab import probes

    calls = {"n": 0}
    measure = probes.Capture.measure

    def measure_then_fail(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("measurement broke at the second logged step")
        return measure(self)

    monkeypatch.setattr(probes.Capture, "measure", measure_then_fail)
    result = train_in_process(tmp_path / "run", *TINY)
    assert result.status == "failed" and "measurement broke" in result.error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    tags = scalars(tmp_path / "run")
    assert [step for step, _ in tags["grad_norm/output/layer00"]] == [0]  # the first logged step is kept


def test_every_logged_step_is_written_once_and_in_the_summary(tmp_path):
    result = train_in_process(tmp_path / "run", *TINY)
    assert result.status == "completed"
    tags = scalars(tmp_path / "run")
    assert [step for step, _ in tags["grad_norm/output/layer00"]] == [0, 4, 8, 11]
    assert [step for step, _ in tags["acc/test"]] == [0, 5, 10, 12]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["grad_norm/output/layer00"] == pytest.approx(tags["grad_norm/output/layer00"][-1][1],
                                                                           rel=1e-6)  # TensorBoard keeps float32
