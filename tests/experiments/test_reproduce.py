"""`bnlab reproduce`: the registry, the planning of each experiment's sweeps, and real runs end to end.

Every `--quick` experiment runs as a real subprocess in the slow suite (CI runs it); the default suite runs
one reduced experiment in process and refuses an arm-dropping override through the real executable.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from conftest import run_bnlab
from rich.console import Console
from typer.testing import CliRunner

from bnlab.cli import app
from bnlab.config.app import CONFIG_DIR
from bnlab.console import print_reproduction
from bnlab.errors import ConfigError, DataError
from bnlab.experiments.catalog import EXPERIMENTS, get
from bnlab.experiments.experiment import Reproduction
from bnlab.experiments.reproduce import _plan_parts, judge_directory, merge, refuse_dropped_arms, reproduce
from bnlab.experiments.verdict import HELD, NOT_APPLICABLE, NOT_MEASURED, SOURCES

PACKAGE = Path(__file__).resolve().parents[2] / "bnlab" / "experiments"


def test_every_experiment_is_a_module_and_a_config_with_a_paper_a_time_and_thresholds_with_sources():
    assert list(EXPERIMENTS) == ["bn_clipping", "bn_vs_l1l2", "glorot2010", "hoffer2017_ghost", "ioffe2015_fig1",
                                 "ioffe2017_renorm", "lr_tolerance", "norm_batch_size", "santurkar2018",
                                 "santurkar2018_landscape", "vanishing", "vanishing_cnn", "yang2019"]
    for experiment in EXPERIMENTS.values():
        assert (PACKAGE / f"{experiment.name}.py").is_file()
        assert Path(CONFIG_DIR, "experiment", f"{experiment.name}.yaml").is_file()
        for part in experiment.parts:
            text = Path(CONFIG_DIR, "experiment", f"{part.config}.yaml").read_text()
            assert text.startswith("# @package _global_"), part.config
            assert "sweeper:" in text and "params:" in text, part.config
            assert part.arms or part.cross_check_of, f"{experiment.name}.{part.name} compares nothing"
        assert experiment.paper and experiment.claim and experiment.minutes > 0 and experiment.quick_seconds > 0
        assert callable(experiment.verdict) and callable(experiment.figures) and callable(experiment.deviations)
        assert experiment.thresholds, experiment.name
        for what, threshold in experiment.thresholds.items():
            assert threshold.source in SOURCES and len(threshold.basis) > 20, (experiment.name, what)
    for text in (experiment.paper for experiment in EXPERIMENTS.values()):
        assert "seed's" not in text and "issue" not in text


def test_every_experiment_judges_no_runs_as_not_measured_and_says_what_ran():
    for experiment in EXPERIMENTS.values():
        parts = {part.name: [] for part in experiment.parts}
        verdict = experiment.verdict(parts)
        assert {claim.outcome for claim in verdict.claims} == {NOT_MEASURED}, experiment.name
        assert experiment.deviations(parts)


def test_list_shows_each_experiment_with_its_paper_and_run_time():
    result = CliRunner().invoke(app, ["reproduce", "--list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for experiment in EXPERIMENTS.values():
        assert experiment.name in result.output
        assert f"~{experiment.minutes:g} min" in result.output
    assert "Yang et al. 2019" in result.output and "2-core" in result.output and "vanishing_cnn" in result.output


def test_an_unknown_experiment_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match="did you mean 'vanishing'.*glorot2010"):
        get("vanish")
    result = CliRunner().invoke(app, ["reproduce", "vanish"])
    assert result.exit_code == 2


def test_overrides_merge_per_key_the_last_source_winning():
    merged = merge(("train.steps=5000", "model.depth=20"), ("train.steps=600", "train.seed=0,1"),
                   ("train.seed=3", "+extra=1"), ("norm=torch", "train.seed=0"))
    assert merged == ["model.depth=20", "train.steps=600", "+extra=1", "norm=torch", "train.seed=0"]


def plan_of(name: str, overrides=(), quick=True, directory=None):
    # planning creates and locks each part's directory: a fresh one under the system's temporary folder
    directory = Path(tempfile.mkdtemp(prefix="bnlab-plan-")) if directory is None else Path(directory)
    result = Reproduction(get(name), directory, quick, list(overrides), {})
    return result, _plan_parts(result)


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_every_part_of_every_quick_experiment_composes_at_every_sweep_point():
    for name in EXPERIMENTS:
        result, launches = plan_of(name)
        assert len(launches) == len(get(name).parts)
        for part, launch in zip(get(name).parts, launches, strict=True):
            assert launch.multirun and launch.sweep_dir.name == part.name
            assert f"experiment={part.config}" in launch.args


def test_a_part_keeps_what_makes_it_itself_and_takes_the_users_overrides():
    result, _ = plan_of("lr_tolerance", ["train.steps=50", "norm=bnlab,none", "model.width=32"], quick=True)
    torch = result.commands["torch"]
    assert "norm=torch" in torch and "train.seed=0" in torch and "train.steps=50" in torch
    assert "optim.lr=0.1" in torch and "optim.lr=0.01" not in torch  # the part's quick grid
    assert "norm=bnlab,none" in result.commands["main"] and "train.steps=50" in result.commands["main"]


@pytest.mark.parametrize(("name", "override", "arm"), [
    ("vanishing", "norm=none", "norm=bnlab"),
    ("vanishing", "norm=torch", "norm=none"),  # renames the BatchNorm arm and drops the plain one
    ("vanishing", "norm.name=bnlab", "norm=none"),
    ("vanishing", "~norm", "norm=none"),
    ("vanishing", "hydra.sweeper.params.norm=none", "norm=bnlab"),
    ("vanishing_cnn", "norm=bnlab", "norm=none"),
    ("glorot2010", "model.init=xavier", "model.init=standard"),
    ("yang2019", "model.residual=false", "model.residual=true"),
    ("yang2019", "model.activation=relu", "model.activation=linear"),
])
def test_an_override_that_drops_an_arm_is_refused_naming_the_arm_and_the_override(name, override, arm):
    with pytest.raises(ConfigError) as error:
        refuse_dropped_arms(get(name), [override])
    assert override in str(error.value) and f"the {arm} arm that `{name}` compares" in str(error.value)


@pytest.mark.parametrize("override", ["norm=none,bnlab", "norm=bnlab,none,torch", "norm=choice(none,bnlab)",
                                      "model.activation=sigmoid", "model.depth=2", "train.seed=0"])
def test_overrides_that_keep_every_arm_are_accepted(override):
    assert refuse_dropped_arms(get("vanishing"), [override]) is None  # raises ConfigError for a dropped arm


def test_an_arm_dropping_override_exits_2_before_any_run(tmp_path):
    out = tmp_path / "vanishing"
    result = run_bnlab("reproduce", "vanishing", "--quick", "norm=none", "--out", str(out), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "norm=none removes the norm=bnlab arm that `vanishing` compares" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and not out.exists()


def test_a_bad_override_stops_before_any_run(tmp_path):
    out = tmp_path / "experiment"
    with pytest.raises(ConfigError, match="model.depth=0"):
        reproduce("vanishing", ["model.depth=0"], quick=True, out=out)
    assert not out.exists()
    with pytest.raises(ConfigError, match="--out"):
        reproduce("vanishing", ["hydra.sweep.dir=elsewhere"], quick=True, out=out)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "reproduce.md").write_text("an earlier experiment")
    with pytest.raises(ConfigError, match="not empty"):
        reproduce("vanishing", quick=True, out=tmp_path / "used")


def test_the_experiments_own_sweep_axes_are_validated():
    from bnlab.config.launch import check_overrides

    with pytest.raises(ConfigError, match="norm=bn is not a choice"):
        check_overrides(["experiment=vanishing", "hydra.sweeper.params.norm='none,bn'"])
    # the command line's norm replaces the experiment's norm axis, as in Hydra's sweeper: nothing to reject
    check_overrides(["experiment=vanishing", "norm=bnlab", "hydra.sweeper.params.norm='none,bn'"])


def test_without_mnist_files_ioffe_runs_on_digits_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/mnist here
    result, launches = plan_of("ioffe2015_fig1")
    assert all("data=digits" in launch.args for launch in launches)
    assert any("MNIST files were not found" in text for text in result.deviations)
    with pytest.raises(DataError, match="mnist"):  # the user asked for MNIST: no silent fallback
        plan_of("ioffe2015_fig1", ["data=mnist"])


def test_a_reduced_vanishing_runs_end_to_end_and_writes_its_verdict(tmp_path):
    out = tmp_path / "vanishing"
    result = reproduce("vanishing", ["model.activation=sigmoid", "model.depth=2", "train.steps=20",
                                     "model.width=16"], quick=True, out=out)
    assert {name: len(runs) for name, runs in result.parts.items()} == {"main": 2, "stall": 2, "torch": 1}
    outcomes = [claim.outcome for claim in result.verdict.claims]
    assert outcomes[-1] == HELD  # bnlab and torch agree
    assert outcomes[2] == outcomes[3] == NOT_APPLICABLE  # accuracy thresholds are for the full budgets
    text = result.markdown.read_text()
    for heading in ("## Verdict", "### Thresholds and their sources", "## Deviations from the paper", "## Settings",
                    "## Figures", "## Look deeper"):
        assert heading in text
    assert "| claim | the paper reports | this run measured | verdict |" in text
    assert "not applicable at quick size" in text and "· --quick**" in text
    assert "| < 0.001 | theory |" in text and "| > 0.8 | control run |" in text
    # the deviations describe what ran: sigmoid only, depth 2, one seed; not the full sweep
    deviations = text.split("## Deviations from the paper")[1].split("## Settings")[0]
    assert "sigmoid MLPs of depths 2 (1 seed)" in deviations and "tanh" not in deviations
    assert "model.depth=2,5" in deviations  # the quick overrides, as given
    assert f"bnlab tb {out}" in text and "bnlab train -m experiment=vanishing" in text
    assert set(result.figures) == {"vanishing_by_depth", "gradients_deepest", "stall"}
    assert all(path.is_file() and path.stat().st_size > 1000 for path, _ in result.figures.values())
    terminal = Console(width=200, record=True, file=io.StringIO())
    print_reproduction(terminal, terminal, result)
    printed = terminal.export_text()
    assert "--quick: a reduced sweep" in printed and "not applicable at quick size" in printed
    again = judge_directory(out)
    assert [c.outcome for c in again.verdict.claims] == outcomes
    assert again.commands == result.commands


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_each_quick_experiment_runs_from_the_command_line(tmp_path, name):
    out = tmp_path / name
    result = run_bnlab("reproduce", name, "--quick", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]  # whatever the verdict
    assert "Traceback" not in result.stdout + result.stderr
    assert "this run measured" in result.stdout and f"bnlab tb {out}" in result.stdout
    text = (out / "reproduce.md").read_text()
    assert "## Verdict" in text
    assert "not measured**" not in text and "incomplete**" not in text  # every claim that applies was measured
    assert "--quick" in result.stdout.split("this run measured")[1]  # the verdicts are marked quick
    assert list(out.glob("*.png"))
