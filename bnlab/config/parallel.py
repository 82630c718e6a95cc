"""Sweeps on every core: the launcher that a multirun gets when its command line names none.

Hydra's basic launcher runs a sweep's jobs one after another, each on `train.threads` cores (one by
default). Where the joblib launcher plugin is installed (`bnlab[sweep]`, part of the default install)
and the machine has cores to spare, a sweep instead runs as many jobs at a time as fit the idle cores:
jobs x threads x processes per job <= cores not kept busy by other work. Cores that are busy already
give parallel jobs only turns: on a machine loaded well past its core count, a parallel sweep measured
slower than one job at a time. Each job seeds itself and draws its batches by index, so
the runs are the same as in a sequential sweep. A launcher chosen on the command line
(`hydra/launcher=basic` for one job at a time, `joblib`, `submitit_slurm`, ...) or in a config file
always wins, and sweeps on a GPU stay sequential (their jobs would share the one device).
"""

from __future__ import annotations

import importlib.util
import math
import os

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def spare_cores() -> int:
    """The cores this process may run on less the busy ones: the 1-minute load average, rounded down."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(available_cores() - int(load), 0)


def default_launcher(overrides: list[str], spare: int | None = None) -> list[str]:
    """The overrides that run the multirun `overrides` (already validated) on the `spare` idle cores (by
    default those of this machine now); [] to leave it to Hydra's basic launcher."""
    keys = [text.split("=", 1)[0].lstrip("+~") for text in overrides]
    if any(key.startswith(("hydra/launcher", "hydra.launcher")) for key in keys):
        return []  # the user's launcher, or settings of one
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        return []
    cfg, jobs = _sweep(overrides)
    if cfg.hydra.launcher.get("_target_") != BASIC_LAUNCHER or _on_gpu(cfg.train.device):
        return []
    spare = spare_cores() if spare is None else spare
    per_job = (cfg.train.threads or available_cores()) * cfg.train.nproc  # threads=0: torch takes every core
    n_jobs = min(jobs, spare // per_job)
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs >= 2 else []


def _sweep(overrides: list[str]):
    """(the config at the first point of the sweep with its `hydra` node, the number of jobs in the sweep).

    The axes are the command line's and those of `hydra.sweeper.params` that it does not replace, as in
    Hydra's basic sweeper.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    base, sizes = [], {}
    for text, override in zip(overrides, parser.parse_overrides(overrides), strict=True):
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            base.append(f"{key}={values[0]}")
            sizes[key] = len(values)
        else:
            base.append(text)
            sizes[key] = 1
    cfg = _compose(base)
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    texts = [f"{key}={value}" for key, value in params.items()]
    for override in parser.parse_overrides(texts):
        if override.get_key_element() not in sizes and override.is_sweep_override():
            sizes[override.get_key_element()] = len(list(override.sweep_string_iterator()))
    return cfg, math.prod(sizes.values())


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bnlab.config.app import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _on_gpu(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())
