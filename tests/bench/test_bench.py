"""The benchmarks run end to end at tiny sizes and report what they measured (not how fast: that is
`bnlab bench`'s job on a quiet machine, never a test's)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_bnlab

from bnlab.bench.batchnorm import bench_bn
from bnlab.bench.targets import bench_loop, bench_telemetry, machine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_telemetry_and_loop_benches_measure_each_target_side_by_side():
    rows = bench_telemetry(steps=12, repeats=1) + bench_loop(steps=12, repeats=1)
    assert [(row.group, row.target) for row in rows] == [("telemetry", "<= 5%"), ("telemetry", "<= 50%"),
                                                         ("loop", ">= 1.0"), ("loop", ">= 1.0")]
    for row in rows:
        assert math.isfinite(row.figure) and row.detail
    assert all(row.figure > -100 for row in rows[:2])  # a % more: a run cannot take less than no time
    assert all(row.figure > 0 for row in rows[2:])  # a ratio of two times
    assert "torch" in machine()


def test_runs_count_the_steps_they_measured_and_the_time_their_telemetry_took(tmp_path):
    from bnlab.bench.targets import _trainer, side_cost_seconds

    tiny = ["train.steps=12", "log.every=5", "model.depth=3", "model.width=8"]
    on, on_cpu = _trainer(tiny + ["log.images=false"], tmp_path / "on")()
    off, _ = _trainer(tiny + ["log.enabled=false"], tmp_path / "off")()
    assert on.measured_steps == 4 and off.measured_steps == 0  # steps 0, 5, 10 and the last, 11
    assert on.telemetry_seconds > 0 and off.telemetry_seconds > 0  # the off run still writes the loss
    assert 0 < on.telemetry_cpu_seconds < on_cpu
    side = side_cost_seconds(tiny, repeats=4)
    assert math.isfinite(side) and side >= 0


def test_the_bn_bench_times_and_weighs_both_layers_at_each_shape():
    report = bench_bn(shapes=[(8, 4), (4, 3, 2, 2)], repeats=1, min_repeat_s=0.001, threads=1)
    assert [row.shape for row in report.rows] == [(8, 4), (4, 3, 2, 2)]
    for row in report.rows:
        assert row.torch_ms > 0 and row.bnlab_ms > 0 and row.peak_ratio > 0
    assert report.geomean_ratio == pytest.approx(math.prod(row.ratio for row in report.rows) ** (1 / 2))


def test_bench_cli_rejects_an_unknown_benchmark_by_name():
    result = run_bnlab("bench", "speed")
    assert result.returncode == 2 and "speed" in result.stderr and "telemetry" in result.stderr


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_the_measurement_scripts_run(tmp_path):
    for script, args in (("telemetry_costs.py", ["train.steps=12", "model.depth=3"]),
                         ("bench_channels_last.py", ["--repeats", "1", "--steps", "1"])):
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "Telemetry.finish" in result.stdout or "channels-last" in result.stdout
