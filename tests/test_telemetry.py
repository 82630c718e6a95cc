"""Telemetry's background thread: order, draining, errors reaching the training thread, settings."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import TINY, scalars, train_in_process

from bnlab.telemetry import QUEUE_DEPTH, _Worker


def test_the_worker_runs_calls_in_order_on_another_thread_and_drain_waits_for_them():
    worker, seen = _Worker(threads=1, flush_denormal=False), []
    for i in range(20):
        worker.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    worker.drain()
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"bnlab-telemetry"}
    worker.close()


def test_the_queue_is_bounded_so_a_slow_measurement_makes_training_wait():
    worker, release = _Worker(threads=1, flush_denormal=False), threading.Event()
    worker.submit(release.wait)  # the thread is busy with this one
    for _ in range(QUEUE_DEPTH):
        worker.submit(lambda: None)
    blocked = threading.Thread(target=worker.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive()  # the submission waits for room
    release.set()
    blocked.join(timeout=10)
    assert not blocked.is_alive()
    worker.close()


def test_an_error_on_the_thread_is_raised_to_the_caller_once_and_later_calls_are_skipped():
    worker, seen = _Worker(threads=1, flush_denormal=False), []
    worker.submit(lambda: 1 / 0)
    worker.submit(lambda: seen.append("after"))
    with pytest.raises(ZeroDivisionError):
        worker.drain()
    worker.close()  # raised once: closing after the failure is quiet
    assert seen == []


def test_the_thread_takes_the_runs_thread_count_and_denormal_flushing():
    worker, seen = _Worker(threads=1, flush_denormal=True), {}

    def look():
        seen["threads"] = torch.get_num_threads()
        tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 subnormal, flushed to 0 when set
        seen["flushed"] = (tiny * 1.0).item() == 0.0

    worker.submit(look)
    worker.close()
    torch.set_flush_denormal(False)
    assert seen == {"threads": 1, "flushed": True}


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
    assert not any(t.name == "bnlab-telemetry" for t in threading.enumerate())  # the thread has ended
