"""Sweeps on every core: the launcher a multirun gets by default, and a parallel sweep that trains exactly the
runs a sequential one does."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from conftest import TINY
from rich.console import Console

from bnlab.config import parallel
from bnlab.config.launch import plan, run_hydra
from bnlab.train.progress import SweepProgress

SWEEP = ["norm=none,bnlab", "train.seed=0,1"]  # four jobs


def test_spare_cores_are_the_cores_less_the_load(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    monkeypatch.setattr(parallel.os, "getloadavg", lambda: (2.7, 0.0, 0.0))
    assert parallel.spare_cores() == 6
    monkeypatch.setattr(parallel.os, "getloadavg", lambda: (15.2, 0.0, 0.0))
    assert parallel.spare_cores() == 0


@pytest.mark.parametrize("overrides, spare, expected", [
    (SWEEP, 2, 2),
    (SWEEP, 8, 4),  # no more workers than jobs
    (SWEEP, 1, None),  # one idle core
    (SWEEP, 0, None),  # every core busy already
    ([*SWEEP, "train.threads=2"], 4, 2),  # jobs x threads <= cores
    ([*SWEEP, "train.threads=2"], 3, None),
    ([*SWEEP, "train.threads=0"], 8, None),  # torch's default: every core for one job
    ([*SWEEP, "train.nproc=2"], 4, 2),  # ... x processes per job
    ([*SWEEP, "train.nproc=2"], 3, None),
    (["norm=none", "train.seed=0"], 8, None),  # one job
    (["experiment=vanishing"], 8, 8),  # the axes the experiment config defines (48 jobs)
    (["experiment=vanishing", "model.depth=2", "train.seed=0", "model.activation=sigmoid"], 8, 2),
    ([*SWEEP, "hydra/launcher=basic"], 8, None),  # an explicit choice wins
    ([*SWEEP, "hydra/launcher=joblib"], 8, None),  # ... with its own settings
    ([*SWEEP, "train.device=cuda"], 8, None),  # the jobs would share one GPU
])
def test_default_launcher_fits_the_jobs_to_the_idle_cores(overrides, spare, expected, monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    added = parallel.default_launcher(overrides, spare=spare)
    assert added == ([] if expected is None else ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={expected}"])


def test_bnlab_train_m_and_reproduce_plan_a_parallel_sweep_by_default(monkeypatch, tmp_path):
    monkeypatch.setattr(parallel, "spare_cores", lambda: 2)
    assert plan(["-m", *SWEEP]).args[-2:] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert not plan(["-m", *SWEEP]).in_process  # its jobs run in workers: the sweep's line follows their files
    assert plan(["-m", *SWEEP, "hydra/launcher=basic"]).in_process
    assert not plan(["-m", *SWEEP, "hydra/launcher=joblib"]).in_process  # the user's choice, as composed
    assert not any("launcher" in arg for arg in plan(["norm=none"]).args)  # one run: no launcher to choose
    assert plan(["-m", *SWEEP, "hydra/launcher=basic"]).args.count("hydra/launcher=basic") == 1

    from bnlab.experiments import reproduce

    monkeypatch.setattr(parallel, "spare_cores", lambda: 1)  # a busy machine: one job at a time
    assert not any("launcher" in arg for arg in plan(["-m", *SWEEP]).args)

    monkeypatch.setattr(parallel, "spare_cores", lambda: 2)
    launches = reproduce._plan_parts(reproduce.Reproduction(reproduce.get("vanishing"), tmp_path, True, [], {}))
    assert all("hydra/launcher=joblib" in launch.args for launch in launches)


def _summaries(sweep) -> dict:
    summaries = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        summary = json.loads((job / "summary.json").read_text())
        summaries[job.name] = {key: summary[key] for key in ("status", "steps", "metrics", "figures", "config")}
    return summaries


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_parallel_sweep_trains_the_same_runs_as_a_sequential_one(monkeypatch, tmp_path):
    monkeypatch.setattr(parallel, "spare_cores", lambda: 2)  # parallel however busy the machine is
    sequential, default = tmp_path / "sequential", tmp_path / "default"
    in_process = run_hydra(plan(["-m", *SWEEP, *TINY, "hydra/launcher=basic", f"hydra.sweep.dir={sequential}"]))
    # with the one-line progress the CLI passes (it holds a console and its lock, which workers never get)
    progress = SweepProgress(4, Console(file=io.StringIO()))
    in_workers = run_hydra(plan(["-m", *SWEEP, *TINY, f"hydra.sweep.dir={default}"]), progress)
    progress.stop()
    launcher = yaml.safe_load((default / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    runs, expected = _summaries(default), _summaries(sequential)
    assert len(runs) == 4 and all(run["status"] == "completed" for run in runs.values())
    assert runs == expected  # metrics and figures to the last bit
    # what run_hydra returns, whichever process ran the jobs: every job, in the sweep's order
    assert len(in_workers) == 4 and [r.run_dir.name for r in in_workers] == [r.run_dir.name for r in in_process]
    assert [(r.status, r.steps, r.metrics) for r in in_workers] == [(r.status, r.steps, r.metrics) for r in in_process]
