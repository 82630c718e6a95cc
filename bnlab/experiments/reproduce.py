"""`bnlab reproduce NAME`: run a named experiment's sweeps, read them back, judge the claims, write it up.

Every part of the experiment (bnlab.experiments.catalog) is planned first, so a bad override
stops before any work; then each part runs as one Hydra multirun into
`<directory>/<part>/`, exactly as `bnlab train -m experiment=<config> ...` would. The
runs are read back with the same reader as `bnlab report`, the experiment's verdict
function measures each claim, and `reproduce.md` (verdict table, measurements,
deviations, settings) and the figures are written into the experiment directory.
A claim that does not hold is a finding, not an error.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bnlab.analysis.readback import RunData, load_runs
from bnlab.config.launch import Launch, plan, run_hydra
from bnlab.errors import ConfigError, DataError, RunFileError
from bnlab.experiments.catalog import Experiment, Part, get
from bnlab.experiments.verdict import Verdict, cross_check
from bnlab.telemetry import plots
from bnlab.train.progress import SweepProgress

ROOT = Path("runs/reproduce")
RECORD = "reproduce.json"  # what was asked for, so that `judge_directory` can judge the runs again


@dataclass
class Reproduction:
    experiment: Experiment
    directory: Path
    quick: bool
    overrides: list[str]
    commands: dict[str, str]  # part -> the equivalent `bnlab train -m ...`
    verdict: Verdict | None = None
    parts: dict[str, list[RunData]] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)
    figures: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (PNG, caption)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def markdown(self) -> Path:
        return self.directory / "reproduce.md"

    @property
    def runs(self) -> list[RunData]:
        return [run for runs in self.parts.values() for run in runs]

    @property
    def not_completed(self) -> list[str]:
        return [f"`{run.path}` ({run.label}, seed {run.seed}): {run.status} at step "
                f"{run.summary.get('steps', '?')}/{run.summary.get('total_steps', '?')}"
                + (f"; {run.summary.get('error')}" if run.status == "failed" else "")
                for run in self.runs if run.status != "completed"]


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


def _plan_parts(result: Reproduction) -> list[Launch]:
    """Each part's Hydra command line, validated; with the experiment's fallback if its data files are missing
    and the user chose no data set."""
    experiment = result.experiment
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


def markdown(result: Reproduction) -> str:
    experiment, verdict = result.experiment, result.verdict
    mode = " (--quick: a reduced sweep for CI; the thresholds are meant for the full size)" if result.quick else ""
    command = " ".join(["bnlab reproduce", experiment.name, *(["--quick"] if result.quick else []),
                        *result.overrides])
    lines = [f"# bnlab reproduce {experiment.name}", "",
             f"{experiment.paper[:1].upper()}{experiment.paper[1:]}: {experiment.claim}.", "",
             f"Command: `{command}`{mode}. {len(result.runs)} runs, {result.seconds:.0f} s to plan and run them "
             f"(expected at full size on a 2-core CPU: about {experiment.minutes:g} min), "
             f"written {datetime.now():%Y-%m-%d %H:%M}.", "",
             "## Verdict", "", "| claim | the paper reports | this run measured | verdict |", "|---|---|---|---|"]
    for claim in verdict.claims:
        measured = "<br>".join(_cell(check.text) for check in claim.checks)
        lines.append(f"| {_cell(claim.claim)} | {_cell(claim.paper)} | {measured} | **{claim.outcome}** |")
    lines += ["", "Each check: ✓ passed, ✗ failed, ? not measured; numbers are means across seeds ± 95% interval "
              "(ratios and growth factors: geometric mean ×/÷ factor). A claim is held when every check passes, "
              "not held when none does, partly otherwise. The tests were fixed in `bnlab/experiments/verdicts.py` and "
              "`bnlab/experiments/verdicts_training.py` before the full-size runs and are not tuned to the results."]
    for table in verdict.tables:
        lines += ["", f"### {table.title}", "", "| " + " | ".join(table.headers) + " |",
                  "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in table.rows]
    lines += ["", "## Deviations from the paper", "", *(f"- {text}" for text in
                                                        [*result.deviations, *experiment.deviations])]
    if result.quick:
        lines.append("- `--quick`: a reduced sweep (fewer layers, units, steps or seeds) that measures the same "
                     "quantities; its verdict is not the experiment's.")
    if result.overrides:
        lines.append(f"- Overrides given on the command line: `{' '.join(result.overrides)}`.")
    lines += [*(f"- {note}" for note in verdict.notes), "", "## Settings", ""]
    for part in result.experiment.parts:
        shared, varied = settings(result.parts.get(part.name, []))
        lines += [f"**{part.name}**" + (f" (norm=torch cross-check of {part.cross_check_of})"
                                         if part.cross_check_of else "") + f": `{result.commands.get(part.name)}`",
                  "", f"- varied: {', '.join(f'`{k}`: {v}' for k, v in varied.items()) or 'nothing'}",
                  f"- shared: {', '.join(f'`{k}={v}`' for k, v in shared.items())}", ""]
    problems = [*result.not_completed, *result.warnings]
    if problems:
        lines += ["## Runs that did not complete, and warnings", "", *(f"- {text}" for text in problems), ""]
    lines += ["## Figures", ""]
    for name, (path, caption) in result.figures.items():
        lines += [f"### {caption}", "", f"![{name}]({os.path.relpath(path, result.directory)})", ""]
    lines += ["## Look deeper", "", f"- `bnlab tb {result.directory}` (TensorBoard on every run: scalars, "
              "profiles, Figure-1 images, HParams)",
              *(f"- `bnlab report {result.directory / part.name}`" for part in experiment.parts)]
    return "\n".join(lines) + "\n"


def settings(runs: list[RunData]) -> tuple[dict, dict]:
    """(config keys with one value across `runs`, keys that vary -> their sorted values), seed included."""
    flat = [_flatten(run.config) for run in runs]
    keys = sorted(set().union(*flat)) if flat else []
    shared, varied = {}, {}
    for key in keys:
        values = {repr(f.get(key)) for f in flat}
        if len(values) == 1:
            shared[key] = flat[0].get(key)
        else:
            varied[key] = ", ".join(sorted(values, key=lambda v: (len(v), v)))
    return shared, varied


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif key != "resume":
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
