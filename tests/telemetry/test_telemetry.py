"""Telemetry in a real run: every logged step written once, a failing measurement fails the run."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, scalars, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.parametrize("background", ["true", "false"])
def test_a_failing_measurement_fails_the_run_with_its_error_and_keeps_what_was_written(tmp_path, monkeypatch,
                                                                                      background):
    from bnlab.telemetry import probes

    calls = {"n": 0}
    result_of = probes.PendingMeasurement.result

    def fail_the_second(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("measurement broke at the second logged step")
        return result_of(self)

    monkeypatch.setattr(probes.PendingMeasurement, "result", fail_the_second)
    # every step measured: with log.background each measurement runs beside the next step
    result = train_in_process(tmp_path / "run", *TINY, "log.every=1", f"log.background={background}")
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
    assert [step for step, _ in tags["acc/test"]] == [0, 5, 10, 11]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["grad_norm/output/layer00"] == tags["grad_norm/output/layer00"][-1][1]  # float32 both


def test_measuring_beside_the_next_step_writes_what_measuring_inline_writes(tmp_path, path):
    """log.background (every step measured beside the next, the records written a step later) against
    inline measuring: the same records, every tag and step, to the last bit TensorBoard keeps; on the
    compiled path (its own thread) and the PyTorch path (kernels the device runs asynchronously)."""
    runs = {}
    for background in ("true", "false"):
        result = train_in_process(tmp_path / background, *TINY, "log.every=1", "log.hist_every=2",
                                  f"log.background={background}")
        assert result.status == "completed"
        runs[background] = scalars(tmp_path / background)
    assert runs["true"] == runs["false"]
    assert len(runs["true"]["preact/p50/layer00"]) == 12
    histograms = {}
    for background in ("true", "false"):
        accumulator = EventAccumulator(str(tmp_path / background), size_guidance={"histograms": 0})
        accumulator.Reload()
        histograms[background] = {tag: [(e.step, e.histogram_value) for e in accumulator.Histograms(tag)]
                                  for tag in accumulator.Tags()["histograms"]}
    assert histograms["true"] == histograms["false"] and len(histograms["true"]["grad/weight/layer00"]) == 6
