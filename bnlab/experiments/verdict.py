"""What a verdict is made of, and the measuring helpers the five verdict functions share.

A `Claim` is one statement of a paper, what the paper reports, and the `Check`s that
test it: each check names a measured quantity, its value in this reproduction, and a
test fixed in advance. A claim is *held* when every check passes, *not held* when none
does, *partly* otherwise; a check that could not be measured (its runs are missing)
keeps a claim from being held. A `Verdict` is the claims plus the measurement tables.

Numbers across seeds are `bnlab.analysis.aggregate.Stat`s: mean and 95% interval, geometric for
ratios and growth factors, written as `bnlab report` writes them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from bnlab import formatting
from bnlab.analysis.aggregate import Stat, mean_interval
from bnlab.analysis.readback import RunData
from bnlab.telemetry import figures

HELD, PARTLY, NOT_HELD, NOT_MEASURED = "held", "partly", "not held", "not measured"
MARKS = {True: "✓", False: "✗", None: "?"}


@dataclass
class Check:
    """One measured quantity against a test stated in advance; `passed` is None when it was not measured."""

    what: str
    measured: str
    test: str
    passed: bool | None

    @property
    def text(self) -> str:
        return f"{MARKS[self.passed]} {self.what}: {self.measured} (test: {self.test})"


@dataclass
class Claim:
    claim: str
    paper: str
    checks: list[Check]

    @property
    def outcome(self) -> str:
        results = [check.passed for check in self.checks]
        if not results or all(r is None for r in results):
            return NOT_MEASURED
        if all(r is True for r in results):
            return HELD
        return NOT_HELD if not any(r is True for r in results) else PARTLY


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Verdict:
    claims: list[Claim]
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be measured, and why


# --- selecting runs by their resolved config


def setting(run: RunData, key: str):
    """The run's resolved config value at a dotted key, e.g. setting(run, 'model.depth')."""
    value = run.config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def select(runs: list[RunData], **criteria) -> list[RunData]:
    """The runs whose config matches every criterion; keys use '__' for '.', e.g. model__depth=20."""
    wanted = {key.replace("__", "."): value for key, value in criteria.items()}
    return [run for run in runs if all(setting(run, key) == value for key, value in wanted.items())]


def values_of(runs: list[RunData], key: str) -> list:
    """The distinct values of `key` among `runs`, sorted."""
    return sorted({setting(run, key) for run in runs if setting(run, key) is not None},
                  key=lambda v: (str(type(v)), v))


# --- numbers across seeds


def across(runs: list[RunData], measure, geometric: bool = False) -> Stat | None:
    """`measure(run)` of each run, as a mean and 95% interval across them (None when no run has it)."""
    return mean_interval([_number(measure(run)) for run in runs], geometric=geometric)


def fmt(stat: Stat | None, spec: str = ".3g") -> str:
    return formatting.stat(stat, spec)


def mean(stat: Stat | None) -> float | None:
    return None if stat is None else stat.mean


def final_accuracy(run: RunData) -> float | None:
    return run.last("acc/test")


def init_figure(name: str):
    """A measure: the vanishing-gradient figure `name` (e.g. 'grad_ratio_first_last/init') of a run."""
    return lambda run: run.figures.get(name)


def saturated_fraction(run: RunData) -> float | None:
    """The final saturated fraction, averaged over the hidden layers."""
    values = [v for v in run.profile("act/saturated") if math.isfinite(v)]
    return sum(values) / len(values) if values else None


def growth(run: RunData, family: str, step: int = 0, skip_first: int = 0) -> float | None:
    """The per-layer growth factor toward the input of `family` across the hidden layers at `step`."""
    values = run.profile(family, step)[skip_first:]
    value = figures.growth_factor(values) if len(values) >= 2 else math.nan
    return value if math.isfinite(value) else None


def check(what: str, stat: Stat | None, spec: str, test: str, passes) -> Check:
    """A Check of a Stat's mean: `passes(mean)` decides; unmeasured (None) when there is no stat."""
    if stat is None:
        return Check(what, "not measured", test, None)
    return Check(what, fmt(stat, spec), test, bool(passes(stat.mean)))


def higher(what: str, better: Stat | None, other: Stat | None, spec: str) -> list[Check]:
    """Two checks: `better`'s mean is higher; and their 95% intervals do not overlap."""
    measured = f"{fmt(better, spec)} vs {fmt(other, spec)}"
    if better is None or other is None:
        return [Check(what, measured, "higher mean", None)]
    # one seed: no interval to compare
    separate = None if better.low is None or other.high is None else better.low > other.high
    return [Check(what, measured, "higher mean", better.mean > other.mean),
            Check(f"{what}, 95% intervals", measured, "do not overlap", separate)]


# --- the norm=torch cross-check

CROSS_CHECK_PROFILE = 1e-3  # largest relative difference of the step-0 gradient profiles
CROSS_CHECK_ACCURACY = 0.02  # largest difference of test accuracy at the last step both runs have


def cross_check(reference: list[RunData], torch_runs: list[RunData]) -> Claim:
    """bnlab's BatchNorm against torch.nn.BatchNorm1d, run for run: same config, same seed.

    At step 0 the two networks hold the same weights and see the same batch, so their gradient profiles
    must agree to rounding; after training, chaotic growth of rounding differences is allowed, up to
    CROSS_CHECK_ACCURACY in test accuracy.
    """
    by_key = {_pair_key(run): run for run in reference if setting(run, "norm.name") == "bnlab"}
    pairs = [(by_key[_pair_key(run)], run) for run in torch_runs if _pair_key(run) in by_key]
    profile_gaps, accuracy_gaps = [], []
    for ours, theirs in pairs:
        for a, b in zip(ours.profile("grad_norm/output", 0), theirs.profile("grad_norm/output", 0), strict=False):
            if a > 0 and b > 0:
                profile_gaps.append(abs(a / b - 1))
        accuracy = theirs.series("acc/test")
        if accuracy:
            step, value = accuracy[-1]
            mine = ours.at_step("acc/test", step)
            if mine is not None:
                accuracy_gaps.append(abs(mine - value))
    checks = [
        _gap_check(f"step-0 gradient profile, {len(pairs)} matched run{'' if len(pairs) == 1 else 's'} "
                   "(largest relative difference)",
                   profile_gaps, ".1e", f"<= {CROSS_CHECK_PROFILE:g}", CROSS_CHECK_PROFILE),
        _gap_check("test accuracy at the torch run's last step (largest difference)", accuracy_gaps, ".3f",
                   f"<= {CROSS_CHECK_ACCURACY:g}", CROSS_CHECK_ACCURACY),
    ]
    return Claim("bnlab's BatchNorm and torch.nn.BatchNorm1d agree (norm=torch cross-check)",
                 "(bnlab's own check, not a claim of the paper)", checks)


def _gap_check(what: str, gaps: list[float], spec: str, test: str, limit: float) -> Check:
    if not gaps:
        return Check(what, "not measured (no matching bnlab run)", test, None)
    worst = max(gaps)
    return Check(what, format(worst, spec), test, worst <= limit)


def _pair_key(run: RunData) -> str:
    """The config without what the cross-check changes (norm name, length of training)."""
    config = json.loads(json.dumps(run.config))
    config.get("norm", {}).pop("name", None)
    config.get("train", {}).pop("steps", None)
    config.get("train", {}).pop("checkpoint_every", None)
    return json.dumps(config, sort_keys=True)


def grouped(runs: list[RunData], *keys: str) -> dict[tuple, list[RunData]]:
    """Runs grouped by their values of `keys`, in sorted key order."""
    groups: dict[tuple, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[tuple(setting(run, key) for key in keys)].append(run)
    return {key: groups[key] for key in sorted(groups, key=lambda k: [(str(type(v)), v) for v in k])}


def _number(value) -> float:
    return math.nan if value is None else float(value)
