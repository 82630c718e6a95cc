"""Runs as bnlab.analysis.readback gives them back, built by hand: the verdicts' test inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

from bnlab.analysis.readback import RunData

COUNTER = itertools.count()


def nested(settings: dict) -> dict:
    """{'model.depth': 5} -> {'model': {'depth': 5}}"""
    config: dict = {}
    for key, value in settings.items():
        section, name = key.split(".")
        config.setdefault(section, {})[name] = value
    return config


def make_run(settings: dict, init: list[float], end: list[float] | None = None, accuracy: list | float = 0.9,
             steps: int = 100, status: str = "completed", extra: dict | None = None,
             weight: list[float] | None = None) -> RunData:
    """A run read back: hidden layers found by their preact/mean tags, grad_norm/output at step 0 (`init`) and
    at the last step (`end`), acc/test over steps; `train.steps` is `steps` unless `settings` says otherwise."""
    settings = {"norm.name": "bnlab", "train.seed": 0, "train.steps": steps, **settings}
    end = end or init
    scalars: dict[str, list[tuple[int, float]]] = {}
    for index, (first, last) in enumerate(zip(init, end, strict=True)):
        layer = f"layer{index:02d}"
        scalars[f"preact/mean/{layer}"] = [(0, 0.0), (steps - 1, 0.0)]
        scalars[f"grad_norm/output/{layer}"] = [(0, first), (steps - 1, last)]
        if weight is not None:
            scalars[f"grad_norm/weight/{layer}"] = [(0, weight[index])]
    if isinstance(accuracy, float):
        accuracy = [(0, 0.1), (steps - 1, accuracy)]  # the final evaluation is logged at the last step
    scalars["acc/test"] = list(accuracy)
    scalars.update(extra or {})
    summary = {"status": status, "config": nested(settings), "seed": settings["train.seed"], "steps": steps,
               "total_steps": steps, "overrides": [f"{k}={v}" for k, v in settings.items()]}
    return RunData(Path(f"/synthetic/run{next(COUNTER)}"), summary, scalars)


def geometric(depth: int, factor: float, jitter: float = 1.0) -> list[float]:
    """A profile, input side first, that grows by `factor` per layer toward the input."""
    return [jitter * factor ** (depth - 1 - i) for i in range(depth)]


def outcomes(verdict) -> list[str]:
    return [claim.outcome for claim in verdict.claims]
