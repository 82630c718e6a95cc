"""The terminal: tables that fit 80 columns with whole words, run directories named by what they vary, Ctrl-C
that prints the resume command, one progress line per sweep, train.log, --version and --help from the schema.
Real subprocesses, real runs, real Hydra composition."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import typing

import pytest
from conftest import BNLAB, TINY, run_bnlab
from rich.console import Console

from bnlab.config.launch import plan
from bnlab.console import print_table
from bnlab.train.progress import SweepProgress

RUN_NAME = re.compile(r"^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_(?P<varied>.+)_[0-9a-f]{6}$")


def assert_fits(text: str, cells, width: int = 80) -> None:
    """Every line at most `width` columns, and every word of `cells` printed whole on some line."""
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width, "\n".join(lines)
    for cell in cells:
        for word in re.sub(r"\[/?[a-z ]*\]", "", str(cell)).split():
            assert any(word in line for line in lines), f"{word!r} was broken:\n{text}"


def _render(draw, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    draw(console)
    return console.export_text()


# ---------------------------------------------------------------- tables


def test_a_table_wraps_between_words_and_numbers_its_keys_when_the_words_alone_are_too_wide():
    headers = ["configuration", "n", "status", "loss/train", "acc/test"]
    short = [["norm=none", "2", "2 completed", "2.29 ± 0.11", "0.088 ± 0.23"],
             ["norm=bnlab", "2", "1 completed, 1 diverged", "0.271 ± 0.12", "0.915 ± 0.41"]]
    text = _render(lambda console: print_table(console, headers, short, key="configuration"))
    assert_fits(text, [cell for row in short for cell in row] + headers)
    assert "norm=none" in text and "  1  " not in text  # the labels fit: no legend
    long = [[f"model.activation=sigmoid model.depth={depth} model.init=standard_normal_with_a_very_long_name "
             f"norm=none optim.learning_rate_schedule=cosine_with_warm_restarts_{depth}", "3", "3 completed",
             "2.29 ± 0.11", "0.088 ± 0.23"] for depth in (2, 20)]
    text = _render(lambda console: print_table(console, headers, long, key="configuration"))
    assert_fits(text, [cell for row in long for cell in row])
    assert re.search(r"^\s+2\s+model\.activation=sigmoid model\.depth=20", text, re.M), text  # the legend


def test_bnlab_reproduce_list_fits_80_columns_with_whole_words():
    from bnlab.experiments.catalog import EXPERIMENTS

    done = run_bnlab("reproduce", "--list", env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    words = [text for e in EXPERIMENTS.values() for text in (e.name, e.paper, e.claim)]
    assert_fits(done.stdout, words)


def test_a_sweep_prints_one_progress_line_whole_paths_and_a_table_that_fits(tmp_path):
    sweep = tmp_path / "sweep"
    # one job at a time (the line follows the job in this process), however idle the machine is
    done = run_bnlab("train", "-m", "norm=none,bnlab", *TINY, "hydra/launcher=basic", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path, env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "job 2 of 2" in out and "Launching" not in out and "#1 :" not in out  # not Hydra's line per job
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    for job in jobs:  # whole, copyable: relative to the working directory, on one line
        assert f"\n    {job.relative_to(tmp_path)}\n" in out
        log = (job / "train.log").read_text()
        assert re.search(r"starting .* at step 0 of 12 on cpu; overrides: norm=(none|bnlab)", log)
        assert "step 10: loss/test" in log and "completed after 12/12 steps" in log
    table = "\n".join(line for line in out.splitlines() if "sweep" not in line)  # but the paths
    assert_fits(table, ["completed", "12/12", "norm=none", "norm=bnlab"])


def test_sweep_progress_counts_jobs_and_estimates_the_time_left():
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    progress = SweepProgress(4, console)
    progress.swept = {"norm"}
    first = progress.job(["model.depth=3", "norm=none"])
    first.start(10, 0)
    time.sleep(0.05)
    first.update(10, 0.5, None)
    first.stop()
    second = progress.job(["model.depth=3", "norm=bnlab"])
    second.start(10, 0)
    second.update(5, 0.4, None)
    progress.stop()
    line = console.export_text().strip().splitlines()[-1]
    assert line.startswith("job 2 of 4") and "step 5/10" in line and "left" in line and "norm=bnlab" in line
    assert "model.depth" not in line  # only what the sweep varies
    assert len(line) <= 80


def _shows(progress: SweepProgress, text: str) -> bool:
    line = progress._progress  # the rich Progress behind the line, once it has been drawn
    return line is not None and text in line.tasks[0].fields.get("job", "")


def test_a_parallel_sweep_s_line_follows_the_jobs_summary_files(tmp_path):
    """Jobs in other processes cannot report to the line: it reads their summary.json files."""
    for name, status, steps in (("0_a", "completed", 100), ("1_b", "running", 25), ("2_c", "failed", 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": status, "steps": steps,
                                                                  "total_steps": 100}))
    (tmp_path / "3_d").mkdir()  # a job not started yet: no summary.json
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    progress = SweepProgress(4, console)
    progress.watch(tmp_path, every=0.02)
    deadline = time.monotonic() + 10
    while not _shows(progress, "2 of 4 jobs done") and time.monotonic() < deadline:
        time.sleep(0.02)
    progress.stop()
    stopped = console.export_text(clear=False)
    line = stopped.strip().splitlines()[-1]
    assert line.startswith("2 of 4 jobs done") and "1 running" in line and "left" in line
    assert len(line) <= 80
    time.sleep(0.1)
    assert console.export_text(clear=False) == stopped  # nothing drawn after stop


# ---------------------------------------------------------------- run directories and Ctrl-C


def test_single_runs_are_named_by_what_they_vary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default, varied = plan([]).run_dir, plan(["norm=none", "model.depth=3"]).run_dir
    assert default.parent == varied.parent == tmp_path.joinpath("runs", "train").relative_to(tmp_path)
    assert RUN_NAME.match(default.name)["varied"] == "default"
    assert RUN_NAME.match(varied.name)["varied"] == "model.depth=3,norm=none"


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_ctrl_c_prints_the_run_directory_and_the_command_that_resumes_it(tmp_path):
    process = subprocess.Popen([BNLAB, "train", "norm=torch", "model.depth=3", "model.width=16", "train.steps=1000",
                                "log.every=20", "train.eval_every=500", "train.checkpoint_every=50",
                                "data.batch_size=32"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"})
    runs = tmp_path / "runs" / "train"
    deadline = time.time() + 120
    while not list(runs.glob("*/checkpoint.pt")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    (run_dir,) = runs.iterdir()
    assert RUN_NAME.match(run_dir.name)["varied"].startswith("data.batch_size=32,")
    assert "interrupted after" in err
    command = re.search(r"^continue it: (bnlab train resume=.+)$", out, re.M)
    assert command, out
    assert command[1] == f"bnlab train resume={run_dir.relative_to(tmp_path)}"  # whole, on one line
    args = shlex.split(command[1])[1:]  # what a user pastes into a shell
    resumed = subprocess.run([BNLAB, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert list(runs.iterdir()) == [run_dir]  # continued in place


# ---------------------------------------------------------------- --version, --help, show-config


def test_version():
    from bnlab import __version__

    done = run_bnlab("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"bnlab {__version__}"


def test_train_help_lists_every_key_of_the_schema():
    from bnlab.config.schema import Config

    done = run_bnlab("train", "--help", env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"\b(?:model|norm|data|optim|train|log)\.\w+", done.stdout))
    keys = set()
    for name, kind in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(kind):
            keys |= {f"{name}.{field.name}" for field in dataclasses.fields(kind)}
    assert keys and keys <= listed, f"missing from --help: {sorted(keys - listed)}"
    for extra in listed - keys:  # any other dotted word is an example override, not a stale key
        assert f"{extra}=" in done.stdout, extra
    assert "resume" in done.stdout
    from bnlab.nn.names import NORM_NAMES

    choices = re.search(r"norm: ([\w,\s]+?) ·", done.stdout).group(1)
    assert set(re.split(r",\s*", choices.strip())) == set(NORM_NAMES)


def test_show_config_validates_without_importing_torch():
    # `bnlab train --cfg job` never imports torch; show-config, which also validates, must not either
    code = ("import sys; from typer.testing import CliRunner; from bnlab.cli import app; "
            "result = CliRunner().invoke(app, ['show-config', 'model.depth=7']); "
            "assert result.exit_code == 0 and 'depth: 7' in result.output, result.output; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("override", ["model.depth=0", "data=cifar10 data.root=/nonexistent/bnlab"])
def test_show_config_still_refuses_bad_values(override):
    done = run_bnlab("show-config", *override.split())
    assert done.returncode == 2 and "error:" in done.stderr


def test_the_bench_table_fits_80_columns_with_whole_words():
    from bnlab.bench.targets import TargetRow
    from bnlab.console import print_bench

    rows = [TargetRow("bn", "BatchNorm1d 256x512: bnlab / torch time", 1.07, "x", "<= 1.5", True,
                      "torch 0.123 ms, bnlab 0.131 ms, peak memory ratio 1.00 (noisy)"),
            TargetRow("telemetry", "default run, telemetry on vs off", 3.4, "% more", "<= 5%", True,
                      "direct account, median of 5; end to end +2.9 % (interleaved runs); telemetry off "
                      "3.01-3.20 ms/step across repeats; side cost 0.41 ms a measured step"),
            TargetRow("experience", "bnlab reproduce vanishing (full size)", 131.0, "s", "< 120 s", False)]
    text = _render(lambda console: print_bench(console, rows, "Intel Xeon | 2 cores | torch 2.13.0 | 1 threads"))
    assert_fits(text, [cell for row in rows for cell in (row.name, row.target, row.detail)] + ["falls short"])
