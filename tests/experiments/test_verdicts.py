"""The verdict functions on synthetic runs: each must come out "held" where the claim holds and
"not held" where it does not (a verdict that cannot fail is a defect)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bnlab.analysis.readback import RunData
from bnlab.experiments.verdict import HELD, NOT_HELD, NOT_MEASURED, PARTLY, Check, Claim, cross_check
from bnlab.experiments.verdicts import glorot2010, vanishing, yang2019
from bnlab.experiments.verdicts_training import drift, early_accuracy, ioffe2015_fig1, lr_tolerance

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
    """A run read back, as bnlab.analysis.readback would give it: hidden layers found by their preact/mean tags,
    grad_norm/output at step 0 (`init`) and at the last step (`end`), acc/test over steps."""
    settings = {"norm.name": "bnlab", "train.seed": 0, **settings}
    end = end or init
    scalars: dict[str, list[tuple[int, float]]] = {}
    for index, (first, last) in enumerate(zip(init, end, strict=True)):
        layer = f"layer{index:02d}"
        scalars[f"preact/mean/{layer}"] = [(0, 0.0), (steps - 1, 0.0)]
        scalars[f"grad_norm/output/{layer}"] = [(0, first), (steps - 1, last)]
        if weight is not None:
            scalars[f"grad_norm/weight/{layer}"] = [(0, weight[index])]
    if isinstance(accuracy, float):
        accuracy = [(0, 0.1), (steps, accuracy)]
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


# --- the outcome rule


def test_a_claim_is_held_partly_not_held_or_not_measured():
    yes, no, unknown = (Check("x", "1", "t", passed) for passed in (True, False, None))
    assert Claim("c", "p", [yes, yes]).outcome == HELD
    assert Claim("c", "p", [yes, no]).outcome == PARTLY
    assert Claim("c", "p", [yes, unknown]).outcome == PARTLY  # an unmeasured check keeps it from being held
    assert Claim("c", "p", [no, no]).outcome == NOT_HELD
    assert Claim("c", "p", [no, unknown]).outcome == NOT_HELD
    assert Claim("c", "p", [unknown]).outcome == NOT_MEASURED
    assert Claim("c", "p", []).outcome == NOT_MEASURED


# --- vanishing


def vanishing_runs(vanishes: bool) -> list[RunData]:
    runs = []
    for activation, depth, norm, seed in itertools.product(("sigmoid", "tanh"), (2, 5, 10, 20), ("none", "bnlab"),
                                                           range(3)):
        jitter = 1 + 0.05 * seed
        if norm == "none":
            profile = geometric(depth, 0.14 if vanishes else 1.0, jitter)
            accuracy = 0.1 + 0.01 * seed if vanishes else 0.95
        else:
            profile = geometric(depth, 1.02 if vanishes else 1.5, jitter)
            accuracy = 0.95 - 0.01 * seed if vanishes else 0.12
        runs.append(make_run({"model.activation": activation, "model.depth": depth, "norm.name": norm,
                              "train.seed": seed}, profile, accuracy=accuracy))
    return runs


def test_vanishing_holds_when_gradients_vanish_without_bn_and_bn_trains():
    verdict = vanishing({"main": vanishing_runs(vanishes=True)})
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert "6.4e-17" in verdict.claims[0].checks[0].measured or verdict.claims[0].checks[0].passed
    assert [table.title.split(":")[0] for table in verdict.tables] == ["sigmoid", "tanh"]
    assert len(verdict.tables[0].rows) == 8  # 2 norms x 4 depths


def test_vanishing_does_not_hold_when_the_gradient_is_flat_and_bn_explodes():
    verdict = vanishing({"main": vanishing_runs(vanishes=False)})
    assert outcomes(verdict) == [NOT_HELD, NOT_HELD, NOT_HELD]


def test_vanishing_needs_the_monotone_fall_with_depth():
    runs = vanishing_runs(vanishes=True)
    for run in runs:  # depth 10 without BN vanishes less than depth 5: not geometric in depth
        if run.config["norm"]["name"] == "none" and run.config["model"]["depth"] == 10:
            for tag, points in run.scalars.items():
                if tag.startswith("grad_norm/output/"):
                    run.scalars[tag] = [(step, 1.0) for step, _ in points]
    claim = vanishing({"main": runs}).claims[0]
    assert claim.outcome == PARTLY
    assert [check.passed for check in claim.checks] == [True, False, True, False]


def test_vanishing_without_runs_is_not_measured():
    assert set(outcomes(vanishing({"main": []}))) == {NOT_MEASURED}


# --- ioffe2015_fig1


def ioffe_runs(bn_better: bool, unit_drifts_with_bn: bool = False) -> list[RunData]:
    runs = []
    steps = list(range(0, 10001, 500))
    for norm, seed in itertools.product(("none", "bnlab"), range(3)):
        good = (norm == "bnlab") == bn_better
        noise = 0.001 * seed
        accuracy = [(s, (0.1 if s == 0 else (0.98 if good else min(0.95, 0.3 + s / 5000))) + noise) for s in steps]
        stable = good
        p50 = [(s, 0.01 * seed if stable else 2.0 * s / 10000) for s in steps]
        spread = [(s, 2.0 if stable else 1.0 + 2 * s / 10000) for s in steps]
        unit_p50 = [(s, 2.0 * s / 10000) for s in steps] if unit_drifts_with_bn else p50
        extra = {}
        for family, median in (("preact", p50), ("preact/unit0", unit_p50)):
            extra[f"{family}/p50/layer02"] = median
            extra[f"{family}/p15/layer02"] = [(s, m - w / 2) for (s, m), (_, w) in zip(median, spread, strict=True)]
            extra[f"{family}/p85/layer02"] = [(s, m + w / 2) for (s, m), (_, w) in zip(median, spread, strict=True)]
        runs.append(make_run({"norm.name": norm, "train.seed": seed, "model.depth": 3}, [1.0, 1.0, 1.0],
                             accuracy=accuracy, steps=10000, extra=extra))
    return runs


def test_ioffe_holds_when_bn_is_faster_higher_and_stable():
    verdict = ioffe2015_fig1({"main": ioffe_runs(bn_better=True)})
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert len(verdict.claims[2].checks) == 4  # one fixed unit and the whole layer, median and spread each
    assert "unit 0" in verdict.notes[0]


def test_ioffe_stability_is_partly_held_when_only_the_fixed_unit_drifts_with_bn():
    verdict = ioffe2015_fig1({"main": ioffe_runs(bn_better=True, unit_drifts_with_bn=True)})
    stability = verdict.claims[2]
    assert stability.outcome == PARTLY
    assert [check.passed for check in stability.checks] == [False, True, True, True]


def test_ioffe_does_not_hold_when_the_arms_are_swapped():
    assert outcomes(ioffe2015_fig1({"main": ioffe_runs(bn_better=False)})) == [NOT_HELD, NOT_HELD, NOT_HELD]


def test_ioffe_measures():
    run = ioffe_runs(bn_better=True)[0]  # no BN, drifting: median 0 -> 2, spread 1 -> 3
    for family in ("preact", "preact/unit0"):
        shift, spread = drift(run, family)
        assert shift == pytest.approx(2.0) and spread == pytest.approx(3.0)
    bn_run = ioffe_runs(bn_better=True, unit_drifts_with_bn=True)[3]
    assert bn_run.config["norm"]["name"] == "bnlab"
    assert drift(bn_run, "preact/unit0")[0] == pytest.approx(2.0) and drift(bn_run)[0] == pytest.approx(0.0)
    assert early_accuracy(run) == pytest.approx((0.4 + 0.5) / 2)  # the evaluations in (0, 1000]: 500 and 1000


# --- glorot2010


def glorot_runs(holds: bool) -> dict[str, list[RunData]]:
    saturation = []
    steps = list(range(0, 2001, 10))
    for seed in range(3):
        top = [(s, 0.5 if s == 0 else (0.02 if holds and s < 600 else 0.45)) for s in steps]
        extra = {"act/mean/layer03": top}
        for layer in range(3):
            extra[f"act/mean/layer{layer:02d}"] = [(s, (0.6 if holds else 0.4) + 0.05 * layer) for s in steps]
        saturation.append(make_run({"norm.name": "none", "train.seed": seed, "model.depth": 4}, [1.0] * 4,
                                   steps=2000, extra=extra))
    gradients = []
    for init, norm, seed in itertools.product(("standard", "xavier"), ("none", "bnlab"), range(3)):
        shrinking = (init == "standard") == holds and norm == "none"
        profile = geometric(5, 0.55 if shrinking else 1.0, 1 + 0.02 * seed)
        weight = [3.0] + geometric(4, 1.0 if holds else 0.5)  # layer00 (fan-in 64) is left out
        gradients.append(make_run({"model.init": init, "norm.name": norm, "train.seed": seed}, profile,
                                  weight=weight, steps=1))
    return {"saturation": saturation, "gradients": gradients}


def test_glorot_holds():
    assert outcomes(glorot2010(glorot_runs(holds=True))) == [HELD, HELD, HELD, HELD]


def test_glorot_does_not_hold():
    verdict = glorot2010(glorot_runs(holds=False))
    assert outcomes(verdict)[:3] == [NOT_HELD, NOT_HELD, NOT_HELD]


# --- yang2019


def yang_runs(holds: bool) -> dict[str, list[RunData]]:
    init = []
    for activation, norm, seed in itertools.product(("relu", "linear"), ("none", "bnlab"), range(3)):
        factor = 1.21 if holds and activation == "relu" and norm == "bnlab" else 1.0
        if not holds and activation == "linear" and norm == "bnlab":
            factor = 1.21
        init.append(make_run({"model.activation": activation, "norm.name": norm, "train.seed": seed},
                             geometric(30, factor, 1 + 0.03 * seed), steps=1))
    depth = []
    for layers, residual, seed in itertools.product((5, 10, 25, 50), (False, True), range(3)):
        if residual:
            profile = [(1 + 0.2 * (layers - 1 - i)) for i in range(layers)] if holds else geometric(layers, 1.21)
            accuracy = 0.95 if holds else 0.1
        else:
            profile = geometric(layers, 1.21)
            accuracy = 0.95 if (layers < 25 or not holds) else 0.1
        depth.append(make_run({"model.depth": layers, "model.residual": residual, "train.seed": seed}, profile,
                              accuracy=accuracy + 0.01 * seed))
    return {"init": init, "depth": depth}


def test_yang_holds():
    verdict = yang2019(yang_runs(holds=True))
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert verdict.claims[0].checks[0].measured.startswith("1.21")


def test_yang_does_not_hold():
    verdict = yang2019(yang_runs(holds=False))
    assert outcomes(verdict) == [PARTLY, PARTLY, NOT_HELD]
    assert [check.passed for check in verdict.claims[0].checks] == [False, True, False]
    assert [check.passed for check in verdict.claims[1].checks] == [True, False]


def test_yang_without_the_depth_part_is_not_measured():
    verdict = yang2019({"init": yang_runs(holds=True)["init"]})
    assert outcomes(verdict) == [HELD, NOT_MEASURED, NOT_MEASURED]


# --- lr_tolerance

RATES = (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0)


def lr_runs(largest_plain: float, largest_bn: float | None) -> list[RunData]:
    runs = []
    for lr, norm, seed in itertools.product(RATES, ("none", "bnlab"), range(2)):
        largest = largest_plain if norm == "none" else largest_bn
        good = largest is not None and lr <= largest
        status = "completed" if good or lr < 0.1 else "diverged"
        runs.append(make_run({"optim.lr": lr, "norm.name": norm, "train.seed": seed}, [1.0, 1.0],
                             accuracy=0.95 if good else 0.1, status=status))
    return runs


@pytest.mark.parametrize(("largest_plain", "largest_bn", "expected"), [
    (0.1, 3.16, HELD),  # BN trains at 31.6x the rate: held
    (0.1, 0.316, PARTLY),  # larger, but less than 5x
    (0.316, 0.316, NOT_HELD),  # the same
    (0.1, None, NOT_HELD),  # BN trains at no rate of the grid
])
def test_lr_tolerance(largest_plain, largest_bn, expected):
    verdict = lr_tolerance({"main": lr_runs(largest_plain, largest_bn)})
    assert outcomes(verdict) == [expected]
    assert len(verdict.tables[0].rows) == len(RATES)


# --- the norm=torch cross-check


def crosscheck_runs(gap: float, accuracy_gap: float) -> tuple[list[RunData], list[RunData]]:
    ours = [make_run({"norm.name": norm, "model.depth": 4}, geometric(4, 1.1), accuracy=0.9)
            for norm in ("none", "bnlab")]
    theirs = [make_run({"norm.name": "torch", "model.depth": 4}, geometric(4, 1.1, 1 + gap),
                       accuracy=0.9 + accuracy_gap)]
    return ours, theirs


def test_cross_check_holds_when_the_layers_agree():
    claim = cross_check(*crosscheck_runs(gap=1e-7, accuracy_gap=0.005))
    assert claim.outcome == HELD
    assert "1 matched run " in claim.checks[0].what  # the norm=none run is not a match


def test_cross_check_fails_when_the_layers_disagree():
    assert cross_check(*crosscheck_runs(gap=0.05, accuracy_gap=0.1)).outcome == NOT_HELD


def test_cross_check_without_matching_runs_is_not_measured():
    ours, theirs = crosscheck_runs(gap=0, accuracy_gap=0)
    theirs[0].summary["config"]["model"]["depth"] = 5
    assert cross_check(ours, theirs).outcome == NOT_MEASURED
