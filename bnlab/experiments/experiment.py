"""How an experiment of `bnlab reproduce` is declared (each in a module of its own, next to this one), and
the record of one reproduction.

An experiment is one or more *parts*, each a Hydra multirun of an experiment config
(`configs/experiment/<config>.yaml`, which holds the sweep axes) into its own subdirectory. A part's
overrides are applied in this order, later ones winning: `overrides` (the part's own defaults), `quick`
(with --quick: a smaller sweep that measures the same quantities), the user's command-line overrides, then
`fixed` (what makes the part what it is, e.g. the cross-check's norm=torch). A part with `cross_check_of`
reruns another part's BatchNorm runs with torch's layer; the two are compared run for run
(bnlab.experiments.crosscheck). A part's `arms` are the values of a config key that its claims compare
(e.g. norm: none and bnlab); a command-line override that would drop one is refused before any run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bnlab.analysis.readback import RunData
from bnlab.experiments.measures import Parts
from bnlab.experiments.verdict import Threshold, Verdict

Figures = list[tuple[str, str, object]]  # (file name, caption, matplotlib Figure)


@dataclass(frozen=True, kw_only=True)
class Part:
    name: str  # its subdirectory of the experiment directory
    config: str  # configs/experiment/<config>.yaml
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    cross_check_of: str | None = None
    arms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # config key -> the values compared


@dataclass(frozen=True, kw_only=True)
class Fallback:
    """What to run when the experiment's data files are missing, and the deviation to state."""

    overrides: tuple[str, ...]
    deviation: str


@dataclass(frozen=True, kw_only=True)
class Experiment:
    name: str  # also its module's name, bnlab/experiments/<name>.py
    paper: str
    claim: str
    minutes: float  # expected wall time at full size on a 2-core CPU, OMP_NUM_THREADS=1
    quick_seconds: float
    parts: tuple[Part, ...]
    verdict: Callable[[Parts], Verdict]
    figures: Callable[[Parts], Figures]
    deviations: Callable[[Parts], list[str]]  # from the paper, describing the settings that actually ran
    thresholds: dict[str, Threshold]  # what each threshold tests -> the threshold, for the write-up
    fallback: Fallback | None = None


@dataclass
class Reproduction:
    """One `bnlab reproduce` of an experiment: where it ran, with what, and what came out."""

    experiment: Experiment
    directory: Path
    quick: bool
    overrides: list[str]
    commands: dict[str, str]  # part -> the equivalent `bnlab train -m ...`
    verdict: Verdict | None = None
    parts: Parts = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)  # found while planning (e.g. a data fallback)
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
