"""`bnlab reproduce NAME`: run a named experiment's sweeps, read them back, judge the claims, write it up.

Every part of the experiment (bnlab/experiments/<name>.py) is planned first, so a bad override, or one
that would drop an arm the experiment compares, stops before any work; then each part runs as one Hydra
multirun into `<directory>/<part>/`, exactly as `bnlab train -m experiment=<config> ...` would. The runs
are read back with the same reader as `bnlab report`, the experiment's verdict function measures each
claim, and `reproduce.md` and the figures are written into the experiment directory
(bnlab.experiments.writeup). A claim that does not hold is a finding, not an error.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime
from pathlib import Path

from bnlab.analysis.readback import load_runs
from bnlab.config.launch import Launch, plan, run_hydra
from bnlab.errors import ConfigError, DataError, RunFileError
from bnlab.experiments.catalog import get
from bnlab.experiments.crosscheck import cross_check
from bnlab.experiments.experiment import Experiment, Part, Reproduction
from bnlab.experiments.writeup import markdown
from bnlab.telemetry import plots
from bnlab.train.progress import SweepProgress

ROOT = Path("runs/reproduce")
RECORD = "reproduce.json"  # what was asked for, so that `judge_directory` can judge the runs again
SWEEP_PARAMS = "hydra.sweeper.params."


def reproduce(name: str, overrides: list[str] | tuple[str, ...] = (), quick: bool = False,
              out: Path | None = None) -> Reproduction:
    """Run experiment `name` (with the user's Hydra `overrides`), judge it, write reproduce.md and figures."""
    experiment = get(name)
    overrides = _user_overrides(overrides)
    suffix = "_quick" if quick else ""
    directory = Path(out) if out is not None else (
        ROOT / f"{name}{suffix}_{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}")
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError(f"--out {directory} is not empty; choose a new directory (runs are never overwritten), "
                          "or leave --out out for a fresh one under runs/reproduce/")
    result = Reproduction(experiment, directory, quick, overrides, {})
    started = time.monotonic()
    launches = _plan_parts(result)  # everything is checked before the first run starts
    progress = SweepProgress(sum(launch.jobs for launch in launches))  # one line for every run of every part
    try:
        for launch in launches:
            run_hydra(launch, progress)
    finally:
        progress.stop()
    result.seconds = time.monotonic() - started
    result.directory.mkdir(parents=True, exist_ok=True)
    (result.directory / RECORD).write_text(json.dumps(
        {"name": name, "quick": quick, "overrides": overrides, "commands": result.commands,
         "deviations": result.deviations, "seconds": result.seconds}, indent=1))
    return judge(result)


def judge_directory(directory: Path) -> Reproduction:
    """Judge an experiment directory again (e.g. after a change to a figure), from its reproduce.json."""
    path = Path(directory) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFileError(f"cannot read {path}: {error}; is {directory} a `bnlab reproduce` directory?") from error
    result = Reproduction(get(record["name"]), Path(directory), record["quick"], record["overrides"],
                          record["commands"], deviations=record["deviations"], seconds=record["seconds"])
    return judge(result)


def judge(result: Reproduction) -> Reproduction:
    """Read the parts back from `result.directory`, measure the claims, write reproduce.md and figures."""
    experiment = result.experiment
    for part in experiment.parts:
        try:
            runs, warnings = load_runs([result.directory / part.name])
        except RunFileError as error:
            runs, warnings = [], [f"part {part.name}: {error}"]
        result.parts[part.name] = runs
        result.warnings += warnings
    verdict = experiment.verdict(result.parts)
    for part in experiment.parts:
        if part.cross_check_of is not None:
            verdict.claims.append(cross_check(result.parts[part.cross_check_of], result.parts[part.name]))
    result.verdict = verdict
    result.directory.mkdir(parents=True, exist_ok=True)
    if all(result.parts.values()):
        for name, caption, figure in experiment.figures(result.parts):
            path = result.directory / f"{name}.png"
            plots.save(figure, path)
            result.figures[name] = (path, caption)
    else:
        result.warnings.append("no figures: a part has no readable runs")
    result.markdown.write_text(markdown(result))
    return result


def _user_overrides(overrides) -> list[str]:
    kept = []
    for text in overrides:
        if text in ("-m", "--multirun"):
            continue  # every part is a multirun anyway
        if text.startswith("-"):
            raise ConfigError(f"bnlab reproduce takes Hydra overrides (key=value), not the flag {text}; to "
                              "inspect an experiment's config use `bnlab show-config experiment=NAME`")
        if _key(text) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise ConfigError(f"{text}: each part of an experiment has its own sweep directory; choose where "
                              "the experiment goes with --out DIR")
        kept.append(text)
    return kept


def refuse_dropped_arms(experiment: Experiment, overrides: list[str]) -> None:
    """ConfigError when an override removes or renames a value an experiment's claims compare (e.g. norm=none
    on `vanishing` leaves no BatchNorm arm): the verdict would judge a comparison that never ran."""
    for part in experiment.parts:
        if part.cross_check_of is not None:
            continue  # what makes a cross-check is fixed after the user's overrides
        for key, compared in part.arms.items():
            names = {key, f"{key}.name", f"{SWEEP_PARAMS}{key}", f"{SWEEP_PARAMS}{key}.name"}
            for text in overrides:
                if _key(text) not in names:
                    continue
                given = _values(text)
                dropped = [value for value in compared if value.lower() not in given]
                if dropped:
                    raise ConfigError(
                        f"{text} removes the {key}={dropped[0]} arm that `{experiment.name}` compares (its part "
                        f"{part.name} runs {key}={','.join(compared)}); leave {key} out of the overrides, or keep "
                        f"every arm, e.g. {key}={','.join(compared)}")


def _values(text: str) -> set[str]:
    """The values an override sets: 'norm=none,bnlab' -> {'none', 'bnlab'}; choice(...) too; '~norm' -> {}."""
    value = text.split("=", 1)[1].strip() if "=" in text and not text.startswith("~") else ""
    if value.startswith("choice(") and value.endswith(")"):
        value = value[len("choice("):-1]
    return {item.strip().strip("'\"").lower() for item in value.split(",") if item.strip()}


def _plan_parts(result: Reproduction) -> list[Launch]:
    """Each part's Hydra command line, validated; with the experiment's fallback if its data files are missing
    and the user chose no data set."""
    experiment = result.experiment
    refuse_dropped_arms(experiment, result.overrides)
    try:
        return [_plan(result, part, ()) for part in experiment.parts]
    except DataError:
        if experiment.fallback is None or any(_key(o).split(".")[0] == "data" for o in result.overrides):
            raise
    result.deviations.append(experiment.fallback.deviation)
    return [_plan(result, part, experiment.fallback.overrides) for part in experiment.parts]


def _plan(result: Reproduction, part: Part, fallback: tuple[str, ...]) -> Launch:
    overrides = merge(fallback, part.overrides, part.quick if result.quick else (), result.overrides, part.fixed)
    sweep_dir = result.directory / part.name
    args = ["-m", f"experiment={part.config}", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    result.commands[part.name] = "bnlab train " + " ".join(args)
    return plan(args)


def merge(*groups) -> list[str]:
    """Overrides from several sources, one per key, the last source winning (as Hydra's sweeper does)."""
    merged: dict[str, str] = {}
    for group in groups:
        for text in group:
            merged.pop(_key(text), None)
            merged[_key(text)] = text
    return list(merged.values())


def _key(text: str) -> str:
    return text.split("=", 1)[0].lstrip("+~")
