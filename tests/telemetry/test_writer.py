"""The writer's records, read back with TensorBoard's own reader and checked against direct computations, on
both statistics paths (`path`: bnlab's compiled loops, and PyTorch ops)."""

from __future__ import annotations

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnlab.telemetry.statistics import HISTOGRAM_BINS, histogram_rows
from bnlab.telemetry.writer import RunWriter


def _read(run_dir):
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_histograms_equal_numpy_for_tensors_of_several_shapes(tmp_path, path):
    torch.manual_seed(0)
    tensors = {"a": torch.randn(40, 7), "b": torch.randn(40, 7) * 3 + 1, "c": torch.rand(5, 3, 2)}
    writer = RunWriter(tmp_path)
    writer.histogram_rows(7, list(tensors), histogram_rows(list(tensors.values())))  # as the probes bin them
    writer.close()
    accumulator = _read(tmp_path)
    for tag, tensor in tensors.items():
        histogram = accumulator.Histograms(tag)[0].histogram_value
        values = tensor.numpy().ravel().astype(np.float64)
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
        assert accumulator.Histograms(tag)[0].step == 7
        assert list(histogram.bucket) == counts.tolist()
        assert list(histogram.bucket_limit) == edges[1:].tolist()
        assert histogram.min == np.float32(values.min()) and histogram.max == np.float32(values.max())
        assert histogram.num == values.size
        assert np.isclose(histogram.sum, values.sum(), rtol=1e-5)
        assert np.isclose(histogram.sum_squares, (values ** 2).sum(), rtol=1e-5)


def test_scalars_of_one_step_are_one_event_and_read_back_exactly(tmp_path, path):
    writer = RunWriter(tmp_path)
    writer.scalars(0, {"x/layer00": 1.5, "x/layer01": 2.25, "loss/train": 0.125})
    writer.scalars(10, {"x/layer00": 3.0})
    writer.close()
    accumulator = _read(tmp_path)
    assert [(e.step, e.value) for e in accumulator.Scalars("x/layer00")] == [(0, 1.5), (10, 3.0)]
    assert [(e.step, e.value) for e in accumulator.Scalars("loss/train")] == [(0, 0.125)]


def test_a_resumed_run_s_event_file_sorts_after_the_stopped_run_s(tmp_path):
    """TensorBoard reads event files in name order; a file made in the same second as the last one, whose counter
    crosses a digit ("10" sorts before "9"), must still come second, or the stopped run's records are dropped."""
    from conftest import scalars
    from tensorboard.summary.writer import event_file_writer

    from bnlab.telemetry.writer import RunWriter

    while event_file_writer._global_uid.get() % 10 != 8:  # the next writer's counter ends in 9, the one after in 0
        pass
    first = RunWriter(str(tmp_path))
    for step in range(6):
        first.scalars(step, {"loss/train": float(step)})
    first.close()
    second = RunWriter(str(tmp_path), purge_step=6)
    for step in range(6, 10):
        second.scalars(step, {"loss/train": float(step)})
    second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert [step for step, _ in scalars(tmp_path)["loss/train"]] == list(range(10))


def test_a_step_s_scalars_and_histograms_are_one_event_without_the_rows_that_binned_nothing(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    rows = histogram_rows([torch.tensor([1.0, 2.0, 4.0]), torch.tensor([3.0, 5.0])]).numpy()
    rows = np.concatenate([rows[:1], np.zeros_like(rows[:1]), rows[1:]])  # the middle one binned nothing
    writer = RunWriter(tmp_path)
    writer.records(3, {"loss/train": 0.5}, ["h/a", "h/empty", "h/b"], rows)
    writer.close()
    accumulator = _read(tmp_path)
    assert accumulator.Tags()["histograms"] == ["h/a", "h/b"]
    assert [h.histogram_value.num for tag in ("h/a", "h/b") for h in accumulator.Histograms(tag)] == [3, 2]
    assert [(e.step, e.value) for e in accumulator.Scalars("loss/train")] == [(3, 0.5)]
    events = [event for path in tmp_path.glob("events.out.tfevents.*")
              for event in EventFileLoader(str(path)).Load() if event.summary.value]
    assert [(event.step, [value.tag for value in event.summary.value]) for event in events] == \
        [(3, ["loss/train", "h/a", "h/b"])]
