"""The paper experiments' verdicts on synthetic runs: each must come out "held" where the claim holds and
"not held" where it does not (a verdict that cannot fail is a defect); `vanishing` and `vanishing_cnn` are in
test_vanishing_verdicts.py, the outcome rule in test_verdict_model.py."""

from __future__ import annotations

import itertools

import pytest
from synthetic_runs import geometric, make_run, outcomes

from bnlab.analysis.readback import RunData
from bnlab.experiments import glorot2010, ioffe2015_fig1, lr_tolerance, yang2019
from bnlab.experiments.crosscheck import cross_check
from bnlab.experiments.ioffe2015_fig1 import drift, early_accuracy
from bnlab.experiments.verdict import HELD, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

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
    verdict = ioffe2015_fig1.verdict({"main": ioffe_runs(bn_better=True)})
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert len(verdict.claims[2].checks) == 4  # one fixed unit and the whole layer, median and spread each
    assert "unit 0" in verdict.notes[0]


def test_ioffe_stability_is_partly_held_when_only_the_fixed_unit_drifts_with_bn():
    verdict = ioffe2015_fig1.verdict({"main": ioffe_runs(bn_better=True, unit_drifts_with_bn=True)})
    stability = verdict.claims[2]
    assert stability.outcome == PARTLY
    assert [check.passed for check in stability.checks] == [False, True, True, True]


def test_ioffe_does_not_hold_when_the_arms_are_swapped():
    assert outcomes(ioffe2015_fig1.verdict({"main": ioffe_runs(bn_better=False)})) == [NOT_HELD, NOT_HELD, NOT_HELD]


def test_ioffe_a_higher_mean_whose_interval_overlaps_the_other_arms_is_not_held():
    runs = ioffe_runs(bn_better=True)
    spread = {"bnlab": (0.97, 0.99, 0.95), "none": (0.96, 0.90, 0.99)}  # BN's mean higher, no BN's seeds wide
    for run in runs:
        final = spread[run.config["norm"]["name"]][run.seed]
        run.scalars["acc/test"] = [(step, final) for step, _ in run.scalars["acc/test"]]
    faster, higher = ioffe2015_fig1.verdict({"main": runs}).claims[:2]
    assert faster.outcome == higher.outcome == PARTLY
    assert [check.passed for check in higher.checks] == [True, False]


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
    assert outcomes(glorot2010.verdict(glorot_runs(holds=True))) == [HELD, HELD, HELD, HELD]


def test_glorot_saturation_after_a_short_budget_is_not_applicable():
    runs = glorot_runs(holds=True)
    for run in runs["saturation"]:
        run.summary["config"]["train"]["steps"] = 200
    assert outcomes(glorot2010.verdict(runs)) == [NOT_APPLICABLE, HELD, HELD, HELD]


def test_glorot_does_not_hold():
    verdict = glorot2010.verdict(glorot_runs(holds=False))
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
                              accuracy=accuracy + 0.01 * seed, steps=300))
    return {"init": init, "depth": depth}


def test_yang_holds():
    verdict = yang2019.verdict(yang_runs(holds=True))
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert verdict.claims[0].checks[0].measured.startswith("1.21")


def test_yang_does_not_hold():
    verdict = yang2019.verdict(yang_runs(holds=False))
    assert outcomes(verdict) == [PARTLY, PARTLY, NOT_HELD]
    assert [check.passed for check in verdict.claims[0].checks] == [False, True, False]
    assert [check.passed for check in verdict.claims[1].checks] == [True, False]


def test_yang_at_quick_size_judges_no_trainable_depth_on_thresholds_for_depth_50():
    runs = yang_runs(holds=True)
    quick = [run for run in runs["depth"] if run.config["model"]["depth"] <= 25]
    verdict = yang2019.verdict({"init": runs["init"], "depth": quick})
    assert outcomes(verdict) == [HELD, HELD, HELD]  # judged on what applies: depth 5 and depth 25 train
    for claim, skipped in ((verdict.claims[1], 1), (verdict.claims[2], 0)):  # the collapse, the ratio at 50
        assert claim.checks[skipped].not_applicable == "needs model.depth ≥ 50 (ran 25)"
        assert len(claim.applicable) == 1 and claim.applicable[0].passed is True


def test_yang_without_the_depth_part_is_not_measured():
    verdict = yang2019.verdict({"init": yang_runs(holds=True)["init"]})
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
                             accuracy=0.95 if good else 0.1, status=status, steps=500))
    return runs


@pytest.mark.parametrize(("largest_plain", "largest_bn", "expected"), [
    (0.1, 3.16, HELD),  # BN trains at 31.6x the rate: held
    (0.1, 0.316, PARTLY),  # larger, but less than 5x
    (0.316, 0.316, NOT_HELD),  # the same
    (0.1, None, NOT_HELD),  # BN trains at no rate of the grid
])
def test_lr_tolerance(largest_plain, largest_bn, expected):
    verdict = lr_tolerance.verdict({"main": lr_runs(largest_plain, largest_bn)})
    assert outcomes(verdict) == [expected]
    assert len(verdict.tables[0].rows) == len(RATES)


def test_lr_tolerance_at_a_budget_too_short_for_the_threshold_is_not_applicable():
    runs = lr_runs(0.1, 3.16)
    for run in runs:
        run.summary["config"]["train"]["steps"] = 100
    assert outcomes(lr_tolerance.verdict({"main": runs})) == [NOT_APPLICABLE]
    assert outcomes(lr_tolerance.verdict({"main": [run for run in runs if run.config["norm"]["name"] == "none"]})) \
        == [NOT_APPLICABLE]
    runs = lr_runs(0.1, 3.16)
    assert outcomes(lr_tolerance.verdict({"main": [run for run in runs if run.config["norm"]["name"] == "none"]})) \
        == [NOT_MEASURED]


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


def test_a_shorter_cross_check_run_is_compared_after_as_many_steps():
    """A torch run of 100 steps (its final evaluation logged at step 99) against a bnlab run of 300 steps: the
    bnlab run's evaluation before step 100 (after 100 updates) is the one to compare, not its final one."""
    ours = [make_run({"norm.name": "bnlab", "model.depth": 4}, geometric(4, 1.1), steps=300,
                     accuracy=[(0, 0.1), (100, 0.8), (200, 0.9), (299, 0.95)])]
    theirs = [make_run({"norm.name": "torch", "model.depth": 4}, geometric(4, 1.1), steps=100, accuracy=0.805)]
    check = cross_check(ours, theirs).checks[1]
    assert check.passed and check.measured == "0.005"
    theirs = [make_run({"norm.name": "torch", "model.depth": 4}, geometric(4, 1.1), steps=100, accuracy=0.95)]
    assert not cross_check(ours, theirs).checks[1].passed  # 0.15 from the evaluation after 100 steps


def test_cross_check_without_matching_runs_is_not_measured():
    ours, theirs = crosscheck_runs(gap=0, accuracy_gap=0)
    theirs[0].summary["config"]["model"]["depth"] = 5
    assert cross_check(ours, theirs).outcome == NOT_MEASURED
