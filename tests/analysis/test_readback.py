"""Tests for bnlab.analysis.readback: real event files from a real run and from the real writer, read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnlab.analysis.readback import event_files, load_run, load_runs
from bnlab.config.launch import plan, run_hydra
from bnlab.errors import RunFileError
from bnlab.telemetry import figures
from bnlab.telemetry.writer import RunWriter
from bnlab.train import summary

TINY = ["train.steps=30", "model.depth=4", "model.width=16", "train.eval_every=10", "log.image_every=1000",
        "log.every=10"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real 30-step training run (in-process, as `bnlab train` runs it)."""
    path = tmp_path_factory.mktemp("readback") / "run"
    (result,) = run_hydra(plan([*TINY, f"hydra.run.dir={path}"]))
    assert result.status == "completed"
    return path


def _copy(run_dir: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def _raw_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar straight from TensorBoard's accumulator, the last write of each step."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def _summary_only(path: Path, status: str = "completed") -> None:
    path.mkdir(parents=True, exist_ok=True)
    summary.write(path, {"status": status, "steps": 13, "total_steps": 13, "seed": 0, "overrides": []})


# ---------------------------------------------------------------- what a run wrote


def test_scalars_read_back_equal_what_the_run_wrote(run_dir):
    run = load_run(run_dir)
    record = json.loads((run_dir / "summary.json").read_text())
    raw = _raw_scalars(run_dir)
    assert set(run.scalars) == set(raw)
    for tag, points in run.scalars.items():
        assert points == sorted(raw[tag].items()), tag
        assert [step for step, _ in points] == sorted({step for step, _ in points}), f"{tag}: a step twice"
    # summary.json's metrics are the last value of each tag the loop wrote; an event file holds float32.
    for tag, value in record["metrics"].items():
        assert run.last(tag) == value, tag
    assert run.figures == record["figures"]  # a finished run's own (float64) figures
    # ... and the same recomputed from the event files with bnlab.telemetry.figures, up to float32 rounding
    assert figures.gradient_figures(run.initial, run.final) == pytest.approx(record["figures"], rel=1e-6)
    assert run.hidden_layers == ["layer00", "layer01", "layer02", "layer03"]
    assert [step for step, _ in run.series("loss/train")] == [0, 10, 20, 29]
    assert run.first("acc/test") == run.at_step("acc/test", 0)
    assert run.at_step("acc/test", 29) == run.last("acc/test")  # the final evaluation, at the last step
    expected = [run.at_step(f"grad_norm/output/layer0{i}", 0) for i in range(4)]
    assert run.profile("grad_norm/output", 0) == expected
    running = load_run(run_dir)
    running.summary = {**record, "status": "running", "figures": {}}  # as a run still going has it
    assert running.figures == figures.gradient_figures(run.initial, run.final)
    assert run.status == "completed"
    assert run.label == ("log.every=10 log.image_every=1000 model.depth=4 model.width=16 train.eval_every=10 "
                         "train.steps=30")
    assert run.series("no/such/tag") == [] and run.last("no/such/tag") is None


def test_values_written_by_the_writer_come_back_as_float32(tmp_path):
    _summary_only(tmp_path)
    writer = RunWriter(tmp_path)
    values = {0: {"a": 0.1, "b/layer00": 3.0}, 5: {"a": -2.5, "b/layer00": 1e-30}}
    for step, scalars in values.items():
        writer.scalars(step, scalars)
    writer.close()
    run = load_run(tmp_path)
    assert run.series("a") == [(0, float(np.float32(0.1))), (5, -2.5)]
    assert run.series("b/layer00") == [(0, 3.0), (5, float(np.float32(1e-30)))]


def test_resume_purge_leaves_one_value_per_step_the_last_written(tmp_path):
    """A resumed run reopens its directory with purge_step: the steps the crashed process wrote after its
    last checkpoint are written again, and read-back must give each step once, with the new value."""
    _summary_only(tmp_path)
    first = RunWriter(tmp_path)
    for step in range(10):
        first.scalars(step, {"loss/train": float(step)})
    first.close()
    resumed = RunWriter(tmp_path, purge_step=5)
    for step in range(5, 13):
        resumed.scalars(step, {"loss/train": 100.0 + step})
    resumed.close()
    assert len(event_files(tmp_path)) == 2
    points = load_run(tmp_path).series("loss/train")
    assert [step for step, _ in points] == list(range(13))
    assert [value for _, value in points] == [*map(float, range(5)), *(100.0 + s for s in range(5, 13))]


def test_a_step_written_twice_reads_back_once_with_its_last_record(tmp_path):
    """Without any step going backwards (so TensorBoard's purge never acts), a step recorded twice in one
    file keeps its last record: bnlab's read-back dedups by itself, it does not lean on the purge."""
    _summary_only(tmp_path)
    writer = RunWriter(tmp_path)
    for step, value in ((3, 1.0), (4, 2.0), (4, 3.0), (5, 4.0), (5, 5.0), (5, 6.0), (6, 7.0)):
        writer.scalars(step, {"loss/train": value})
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = EventAccumulator(str(tmp_path), purge_orphaned_data=False)
    raw.Reload()
    assert [e.step for e in raw.Scalars("loss/train")] == [3, 4, 4, 5, 5, 5, 6]  # all in the file
    assert load_run(tmp_path).series("loss/train") == [(3, 1.0), (4, 3.0), (5, 6.0), (6, 7.0)]


# ---------------------------------------------------------------- damaged files


def test_truncated_event_file_raises_an_error_naming_the_file(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path, "cut")
    (events,) = event_files(copy)
    events.write_bytes(events.read_bytes()[:-100])
    with pytest.raises(RunFileError, match=r"event file .*events\.out\.tfevents.* is damaged \(truncated"):
        load_run(copy)


def test_corrupt_record_raises_an_error_naming_the_file(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path, "flipped")
    (events,) = event_files(copy)
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0xFF
    events.write_bytes(bytes(data))
    with pytest.raises(RunFileError, match=r"events\.out\.tfevents.* is damaged \(failed .*crc32"):
        load_run(copy)


def test_a_running_run_with_a_half_written_last_record_is_read_with_a_warning(run_dir, tmp_path):
    copy = _copy(run_dir, tmp_path, "live")
    record = json.loads((copy / "summary.json").read_text())
    summary.write(copy, {**record, "status": "running"})
    (events,) = event_files(copy)
    events.write_bytes(events.read_bytes()[:-10])
    run = load_run(copy)
    assert run.status == "running" and run.series("loss/train")
    assert any("still writing" in warning for warning in run.warnings)


def test_non_json_summary_raises_and_load_runs_skips_it_with_a_warning(run_dir, tmp_path):
    bad = _copy(run_dir, tmp_path / "many", "bad")
    good = _copy(run_dir, tmp_path / "many", "good")
    (bad / "summary.json").write_text('{"status": "completed", ')
    with pytest.raises(RunFileError, match=r"summary\.json is not valid JSON"):
        load_run(bad)
    cut = _copy(run_dir, tmp_path / "many", "cut")
    (events,) = event_files(cut)
    events.write_bytes(events.read_bytes()[:-7])
    runs, warnings = load_runs([tmp_path / "many"])
    assert [run.path for run in runs] == [good.resolve()]
    assert len(warnings) == 2
    assert any(str(bad.resolve()) in w and "not valid JSON" in w for w in warnings)
    assert any(str(cut.resolve()) in w and "damaged" in w for w in warnings)


def test_load_runs_takes_run_and_sweep_directories_in_any_mix(run_dir, tmp_path):
    sweep = tmp_path / "sweep"
    _copy(run_dir, sweep, "0_a")
    _copy(run_dir, sweep, "1_b")
    runs, warnings = load_runs([sweep, run_dir, sweep / "0_a"])
    assert warnings == [] and len(runs) == 3
    with pytest.raises(RunFileError, match="no bnlab runs"):
        load_runs([tmp_path / "sweep" / "0_a" / ".hydra"])
    with pytest.raises(RunFileError, match="does not exist"):
        load_runs([tmp_path / "missing"])
