"""The named experiments of `bnlab reproduce`, found where they are declared.

An experiment is a module of this package with a YAML file of the same name in configs/experiment/ (its
sweep); the module's `EXPERIMENT` (a bnlab.experiments.experiment.Experiment) says what it runs, how it is
judged and drawn. Adding an experiment is those two files: nothing here lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import bnlab.experiments
from bnlab.config.app import CONFIG_DIR
from bnlab.config.schema import close_match
from bnlab.errors import ConfigError
from bnlab.experiments.experiment import Experiment


def _discover() -> dict[str, Experiment]:
    configs = {path.stem for path in Path(CONFIG_DIR, "experiment").glob("*.yaml")}
    found = {}
    for module in sorted(pkgutil.iter_modules(bnlab.experiments.__path__), key=lambda m: m.name):
        if module.name not in configs:
            continue  # shared machinery (this module, the verdict model, reproduce, ...)
        experiment = importlib.import_module(f"bnlab.experiments.{module.name}").EXPERIMENT
        if experiment.name != module.name:
            raise RuntimeError(f"bnlab/experiments/{module.name}.py declares an experiment named "
                               f"{experiment.name!r}; an experiment is named after its module")
        found[experiment.name] = experiment
    return found


EXPERIMENTS: dict[str, Experiment] = _discover()


def get(name: str) -> Experiment:
    """The experiment called `name`; ConfigError naming the valid ones otherwise."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"no experiment named {name!r}{close_match(name, EXPERIMENTS)}; expected one of: "
                          f"{', '.join(EXPERIMENTS)} (bnlab reproduce --list describes them)")
    return EXPERIMENTS[name]
