"""From `bnlab train` arguments to Hydra jobs: check first, then hand over to `@hydra.main`.

Before any work, every point of a sweep is composed with Hydra's Compose API and
validated, so a bad override stops with one clear ConfigError (exit code 2) rather
than a traceback halfway through a sweep. `resume=DIR` is expanded into the
overrides recorded in DIR, so the resumed run recomposes exactly the same config.
"""

from __future__ import annotations

import re
import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from bnlab.config.parallel import BASIC_LAUNCHER, default_launcher
from bnlab.errors import BnlabError, ConfigError
from bnlab.train import lock

MULTIRUN_FLAGS = ("-m", "--multirun")
# Flags that make Hydra print something instead of running: pass them straight through.
INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--help", "-h", "--shell-completion", "-sc",
                 "--resolve", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd",
                 "--config-path", "-cp", "--experimental-rerun")


@dataclass
class Launch:
    args: list[str]  # what Hydra gets
    multirun: bool
    sweep_dir: Path | None
    inspect_only: bool
    jobs: int = 1  # how many runs it starts (a sweep: the product of its axes' lengths)
    run_dir: Path | None = None  # a single run's directory, fixed in advance as a sweep's is
    axes: tuple[str, ...] = ()  # the keys a sweep varies
    resuming: bool = False
    locked: list[Path] = field(default_factory=list)  # directories this launch holds until run_hydra ends
    errors: list[BnlabError] = field(default_factory=list)  # sweep jobs that could not run at all
    note: str | None = None  # what the user should know before it starts (a model that fills the memory)
    in_process: bool = True  # a sweep's jobs run in this process (Hydra's basic launcher), not in workers


def plan(args: list[str]) -> Launch:
    """Expand resume, validate every sweep point, then fix the run or sweep directory and check it is free
    (`run_hydra` creates and locks it before Hydra writes anything there)."""
    args = list(args)
    overrides = [a for a in args if not a.startswith("-")]
    flags = [a for a in args if a.startswith("-")]
    resume = [o for o in overrides if o.startswith("resume=")]
    if resume:
        args, overrides, flags = _resume_args(resume[-1].split("=", 1)[1], overrides, flags)
    multirun = any(flag in MULTIRUN_FLAGS for flag in flags)
    inspect_only = any(flag.split("=")[0] in INSPECT_FLAGS for flag in flags)
    if inspect_only:
        return Launch(args, multirun, None, inspect_only)
    jobs, axes, cfg = _check(overrides, thorough=True)
    from bnlab.config.resources import check_fits
    from bnlab.train.loop import resolve_device

    launch = Launch(args, multirun, None, inspect_only, jobs if multirun else 1, None, axes, resuming=bool(resume))
    launch.note = check_fits(cfg, resolve_device(cfg.train.device))
    if multirun:
        given = [o for o in overrides if o.startswith("hydra.sweep.dir=")]
        if given and "${" not in given[-1]:
            launch.sweep_dir = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir")))  # as Hydra reads it
        else:
            launch.sweep_dir = Path("runs/sweep") / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"
            args.append(f"hydra.sweep.dir={launch.sweep_dir}")
        chosen = default_launcher(overrides)  # every core, unless a launcher was chosen
        args += chosen
        launch.in_process = not chosen and OmegaConf.select(cfg, "hydra.launcher._target_") == BASIC_LAUNCHER
        if not launch.resuming:
            _refuse_if_taken(launch.sweep_dir, "sweep")
        return launch
    # Resolve the directory now and hand Hydra the result, so the directory checked is the one used.
    try:
        launch.run_dir = Path(_run_dir(cfg))
    except Exception:  # a pattern that needs Hydra's runtime: Hydra makes it, and train() still claims it
        return launch
    given = [o for o in overrides if o.startswith("hydra.run.dir=")]
    if not given or "${" in given[-1]:
        args.append(f"hydra.run.dir={quoted(launch.run_dir)}")
    if not launch.resuming:
        _refuse_if_taken(launch.run_dir, "run")
    return launch


def _take(launch: Launch) -> None:
    """Create and lock the launch's directory (checked free again: another process may have started there)."""
    directory, what = (launch.sweep_dir, "sweep") if launch.multirun else (launch.run_dir, "run")
    if directory is None:
        return
    if not launch.resuming:
        _refuse_if_taken(directory, what)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if lock.hold(directory):
            launch.locked.append(directory)
    except OSError as error:
        reason = error.strerror or str(error)
        where = f" ({error.filename})" if error.filename and Path(error.filename) != directory else ""
        raise ConfigError(f"cannot write the {what} directory {directory}: {reason}{where}; choose a writable "
                          f"place with hydra.{what}.dir=DIR") from error
    if not launch.resuming:
        _refuse_if_taken(directory, what)


def _refuse_if_taken(directory: Path, what: str) -> None:
    if what == "sweep":
        found = [directory / "multirun.yaml"] + sorted(directory.glob("*/summary.json"))[:1]
    else:
        found = [directory / "summary.json", directory / ".hydra"]
    taken = next((path for path in found if path.exists()), None)
    if taken is not None:
        raise ConfigError(
            f"{what} directory {directory} already holds a {what} ({taken} exists); bnlab never writes a new "
            f"{what} over another: choose another hydra.{what}.dir, or continue that {what} with "
            f"resume={directory}")



def run_hydra(launch: Launch, progress=None) -> list:
    """Run the Hydra app with `launch.args` as its command line; return this process's RunResults.

    `progress`: a `bnlab.train.progress.SweepProgress` that a sweep's jobs report to (one line for all).
    The run or sweep directory is created and locked first, and held until the app returns."""
    from bnlab.config import app as train_app

    train_app.RESULTS.clear()
    saved = sys.argv
    sys.argv = ["bnlab train", *launch.args]
    train_app.SWEEP_PROGRESS = progress
    if progress is not None:
        progress.swept = set(launch.axes)
        if launch.multirun and not launch.in_process:
            progress.watch(launch.sweep_dir)  # its jobs cannot report to it: follow their summary.json files
    try:
        _take(launch)
        train_app.main()
    finally:
        sys.argv = saved
        train_app.SWEEP_PROGRESS = None
        for directory in launch.locked:
            lock.release(directory)
        launch.locked.clear()
    outcomes = list(train_app.RESULTS)
    if launch.multirun and len(outcomes) < launch.jobs and launch.sweep_dir is not None:
        outcomes = _outcomes_on_disk(launch.sweep_dir)  # the jobs ran in other processes (joblib's workers)
    errors = [r for r in outcomes if isinstance(r, BnlabError)]
    if errors and not launch.multirun:
        raise errors[0]
    launch.errors = errors
    return [r for r in outcomes if not isinstance(r, BnlabError)]


def _outcomes_on_disk(sweep_dir: Path) -> list:
    """The RunResult of each job of the sweep in `sweep_dir`, in job order, read from its summary.json; a
    BnlabError for a job that left none (it could not start: its train.log says why)."""
    from bnlab.train import summary
    from bnlab.train.loop import RunResult

    jobs = []
    for config in sweep_dir.glob("*/.hydra/hydra.yaml"):
        run_dir = config.parent.parent
        number = OmegaConf.load(config).hydra.job.num
        try:
            record = summary.read(run_dir)
        except BnlabError as error:
            jobs.append((number, BnlabError(f"job {number} did not run: {error} (see {run_dir / 'train.log'})")))
            continue
        jobs.append((number, RunResult(run_dir, record["status"], record["steps"], record["metrics"],
                                       record["error"], record["diverged_at"])))
    return [outcome for _, outcome in sorted(jobs, key=lambda job: job[0])]


def check_overrides(overrides: list[str]) -> int:
    """Compose and validate the config at every value of every sweep axis; return the number of jobs."""
    return _check(overrides)[0]


def _check(overrides: list[str], thorough: bool = False):
    """(the number of jobs, the keys swept, the first job's config with its `hydra` node), after checking every
    sweep point.

    The axes are the command line's and those an experiment config defines in `hydra.sweeper.params`
    (e.g. `experiment=vanishing`), except where the command line gives the same key: it takes precedence,
    as in Hydra's basic sweeper.
    """
    parsed = _parse(overrides)
    base = []
    axes = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            base.append(f"{override.get_key_element()}={values[0]}")
            axes.append((len(base) - 1, override.get_key_element(), values[1:]))
        else:
            base.append(text)
    cfg = compose_config(base, return_hydra_config=True, thorough=thorough)
    given = {override.get_key_element() for override in parsed}
    for key, override in _sweeper_params(cfg).items():
        if key not in given:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
                override.get_value_element_as_str()]
            axes.append((len(base), key, values))
    jobs = 1
    for index, key, values in axes:
        for value in values:
            compose_config(base[:index] + [f"{key}={value}"] + base[index + 1:], thorough=thorough)
        jobs *= len(values) + (index < len(base))  # a command-line axis's first value is in `base`
    return jobs, tuple(key for _, key, _ in axes), cfg


def _run_dir(cfg) -> str:
    """The directory Hydra would make for this single run (configs/train.yaml: hydra.run.dir), resolved now."""
    return str(OmegaConf.select(cfg, "hydra.run.dir"))


def _parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # Hydra's grammar errors
        raise ConfigError(f"cannot parse the overrides {' '.join(overrides)}: {_first_line(error)}") from error


def _sweeper_params(cfg) -> dict:
    """{key: parsed override} of the sweep axes the composed config defines in hydra.sweeper.params."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if not params:
        return {}
    texts = [f"{key}={value}" for key, value in OmegaConf.to_container(params, resolve=False).items()]
    return {override.get_key_element(): override for override in _parse(texts)}


def compose_config(overrides: list[str], return_hydra_config: bool = False, thorough: bool = False):
    """The validated config for `overrides` (ConfigError with a clear message if anything is off).

    With `return_hydra_config`, the config keeps its `hydra` node (sweeper, launcher, directories).
    `thorough` (before training) adds the checks that need torch: the device, the batch against the data set,
    the model against the memory. Without it (`bnlab show-config`) torch is never imported.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bnlab.config.app import CONFIG_DIR
    from bnlab.config.overrides import explain_compose_error
    from bnlab.config.schema import validate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=return_hydra_config)
    except ConfigError:
        raise
    except Exception as error:
        raise explain_compose_error(error, overrides, CONFIG_DIR) from error
    finally:
        GlobalHydra.instance().clear()
    _check_interpolations(cfg)
    validate(cfg)
    from bnlab.data.downloads import check_available

    check_available(cfg.data.name, root=cfg.data.root, download=cfg.data.download)
    if cfg.train.device == "cuda" and not thorough:  # the one device to check without torch's import otherwise
        from bnlab.train.loop import resolve_device

        resolve_device(cfg.train.device)
    if thorough:  # the checks that import torch (1-2 s)
        from bnlab.config.resources import check_fits
        from bnlab.data.datasets import check_batch_size
        from bnlab.train.loop import resolve_device

        check_batch_size(cfg.data.name, cfg.data.batch_size, synthetic_samples=cfg.data.samples,
                         classes_per_batch=cfg.data.classes_per_batch)
        check_fits(cfg, resolve_device(cfg.train.device))
    return cfg


def _check_interpolations(cfg) -> None:
    """Resolve every `${...}` of the run's config now: a bad one is a ConfigError naming its key."""
    from omegaconf.errors import OmegaConfBaseException

    for section in cfg:
        if section == "hydra":  # Hydra's own node resolves at run time (${hydra:...}, ${now:...})
            continue
        try:
            node = cfg[section]  # a leaf (resume) resolves on access
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or section
            raw = OmegaConf.to_container(cfg, resolve=False)
            for part in str(key).split("."):
                raw = raw.get(part, "?") if isinstance(raw, dict) else "?"
            # OmegaConf's "While dereferencing interpolation '${...}': " repeats the value named below
            message = re.sub(r"^While dereferencing interpolation '.*?': ", "", _first_line(error))
            raise ConfigError(f"{key}={raw} cannot be resolved: {message}; write a plain value, or an "
                              "interpolation of an existing key (e.g. ${model.width})") from None



def _resume_args(target: str, overrides: list[str], flags: list[str]):
    """The recorded command line of a run or sweep directory, set to continue in that directory."""
    path = Path(target)
    extra = [o for o in overrides if not o.startswith("resume=")]
    if extra:
        raise ConfigError(f"resume={target} continues a run with its recorded config; drop the other overrides "
                          f"({' '.join(extra)}) or start a new run")
    if (path / "multirun.yaml").is_file():
        recorded = _read_yaml(path / "multirun.yaml")
        task = [o for o in recorded["hydra"]["overrides"]["task"] if not o.startswith(("resume=", "hydra.sweep.dir="))]
        task += [f"hydra.sweep.dir={quoted(path)}", f"resume={quoted(path)}"]
        return ["-m", *task], task, ["-m"]
    if (path / ".hydra" / "overrides.yaml").is_file():
        recorded = _read_yaml(path / ".hydra" / "overrides.yaml")
        task = [o for o in recorded if not o.startswith(("resume=", "hydra.run.dir="))]
        task += [f"hydra.run.dir={quoted(path)}", f"resume={quoted(path)}"]
        return task, task, []
    raise ConfigError(f"resume={target}: not a bnlab run or sweep directory (no .hydra/overrides.yaml or "
                      "multirun.yaml there); pass a directory under runs/ (see `bnlab runs`)")


def quoted(path: Path) -> str:
    """`path` as a Hydra override value: quoted, since run directories hold '=' and ',' (norm=none,...)."""
    return "'" + str(path).replace("'", "\\'") + "'"


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {path}: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
