"""`vanishing` and `vanishing_cnn` on synthetic runs: held where the claim holds, not held where it does not,
partly where only part of it does, and never held or partly on what did not run or does not apply."""

from __future__ import annotations

import itertools

from synthetic_runs import geometric, make_run, outcomes

from bnlab.experiments import vanishing, vanishing_cnn
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

DEPTHS = (2, 5, 10, 20)


def main_runs(no_bn: float = 0.14, bn: float = 1.02, bn_accuracy: float = 0.95, depths=DEPTHS, seeds=range(3),
              activations=("sigmoid", "tanh"), norms=("none", "bnlab"), steps: int = 300, first_with_bn=None):
    """Runs whose gradient grows by `no_bn` / `bn` per layer toward the input; `first_with_bn` replaces the
    first layer's value in the BatchNorm arm (a ratio chosen outright)."""
    runs = []
    for activation, depth, norm, seed in itertools.product(activations, depths, norms, seeds):
        profile = geometric(depth, no_bn if norm == "none" else bn)
        profile[0] *= 1 + 0.05 * seed  # the seeds' spread of the first/last ratio
        if norm != "none" and first_with_bn is not None:
            profile[0] = first_with_bn * profile[-1]
        accuracy = (0.1 + 0.01 * seed) if norm == "none" else bn_accuracy - 0.01 * seed
        runs.append(make_run({"model.activation": activation, "model.depth": depth, "norm.name": norm,
                              "train.seed": seed}, profile, accuracy=accuracy, steps=steps))
    return runs


def stall_runs(shallow_trains: bool = True, deep_bn_trains: bool = True, depths=(2, 20), steps: int = 1000,
               activations=("sigmoid",), seeds=range(3)):
    runs = []
    for activation, depth, norm, seed in itertools.product(activations, depths, ("none", "bnlab"), seeds):
        if norm == "none":
            accuracy = 0.9 if depth == min(depths) and shallow_trains else 0.1
        else:
            accuracy = 0.95 if deep_bn_trains else 0.15
        runs.append(make_run({"model.activation": activation, "model.depth": depth, "norm.name": norm,
                              "train.seed": seed}, geometric(depth, 1.0), accuracy=accuracy - 0.01 * seed,
                             steps=steps))
    return runs


def test_vanishing_holds_when_gradients_vanish_without_bn_the_shallow_control_trains_and_bn_trains():
    verdict = vanishing.verdict({"main": main_runs(), "stall": stall_runs()})
    assert outcomes(verdict) == [HELD, HELD, HELD, HELD]
    assert verdict.claims[0].checks[0].measured.startswith("6.")  # 0.14^19 = 6.0e-17, times the seeds' jitter
    assert [table.title.split(":")[0] for table in verdict.tables] == ["sigmoid", "tanh", "sigmoid"]
    assert len(verdict.tables[0].rows) == 8  # 2 norms x 4 depths


def test_vanishing_does_not_hold_when_the_gradient_is_flat_and_bn_does_not_train():
    verdict = vanishing.verdict({"main": main_runs(no_bn=1.0, bn=1.5, bn_accuracy=0.12),
                                 "stall": stall_runs(shallow_trains=False, deep_bn_trains=False)})
    assert outcomes(verdict) == [NOT_HELD, PARTLY, PARTLY, NOT_HELD]
    assert [check.passed for check in verdict.claims[1].checks] == [False, True, False, True]  # only the control
    assert [check.passed for check in verdict.claims[2].checks] == [False, True, False]  # only the stall itself


def test_the_band_alone_does_not_make_bn_comparable_the_no_bn_control_must_fall_below_it():
    # without BatchNorm the ratio is inside [0.1, 10] at every depth, and at depth 2 inside the BatchNorm arm's
    # interval: the band alone does not tell the arms apart there
    runs = main_runs(no_bn=0.95, bn=1.0)
    claim = vanishing.verdict({"main": runs})
    comparable = claim.claims[1]
    assert [check.passed for check in comparable.checks] == [True, False, True, False]
    assert comparable.outcome == PARTLY
    assert "below at every depth [control run]" in comparable.checks[1].text


def test_bn_outside_the_band_at_the_deep_end_is_reported_as_partly():
    # BatchNorm's gradient grows 1.10x per layer toward the input: 1.1^49 = 107 at depth 50
    runs = main_runs(bn=1.10, depths=(2, 5, 10, 20, 30, 50), activations=("tanh",))
    comparable = vanishing.verdict({"main": runs}).claims[1]
    assert comparable.outcome == PARTLY
    band = comparable.checks[0]
    assert band.passed is False and "(50)" in band.measured and "1.1e+02 (50)" in band.measured


def test_vanishing_needs_the_monotone_fall_with_depth():
    runs = main_runs()
    for run in runs:  # depth 10 without BN vanishes less than depth 5: not geometric in depth
        if run.config["norm"]["name"] == "none" and run.config["model"]["depth"] == 10:
            for tag, series in run.scalars.items():
                if tag.startswith("grad_norm/output/"):
                    run.scalars[tag] = [(step, 1.0) for step, _ in series]
    claim = vanishing.verdict({"main": runs}).claims[0]
    assert claim.outcome == PARTLY
    assert [check.passed for check in claim.checks] == [True, False, True, False]


def test_an_underflowed_gradient_counts_as_vanished():
    runs = main_runs(depths=(2, 5, 20, 50))
    for run in runs:
        if run.config["norm"]["name"] == "none" and run.config["model"]["depth"] == 50:
            run.scalars["grad_norm/output/layer00"] = [(0, 0.0), (299, 0.0)]  # flushed to zero
    verdict = vanishing.verdict({"main": runs})
    assert verdict.claims[0].outcome == HELD
    assert verdict.claims[0].checks[0].measured.startswith("0.0e+00")
    assert any("underflowed float32" in note for note in verdict.notes)


def test_at_quick_size_the_full_size_thresholds_do_not_apply_and_nothing_is_judged_on_them():
    runs = {"main": main_runs(depths=(2, 5), seeds=(0,), steps=60), "stall": stall_runs(depths=(2, 5), steps=100)}
    verdict = vanishing.verdict(runs)
    assert outcomes(verdict) == [HELD, HELD, NOT_APPLICABLE, NOT_APPLICABLE]
    deepest, falls = verdict.claims[0].checks[:2]
    assert deepest.not_applicable == "needs model.depth ≥ 20 (ran 5)" and falls.passed is True
    control = verdict.claims[1].checks[1]
    assert control.not_applicable is not None and "seeds" in control.not_applicable


def test_without_the_batchnorm_arm_no_claim_about_it_is_held_or_partly():
    verdict = vanishing.verdict({"main": main_runs(norms=("none",)), "stall": stall_runs()})
    assert outcomes(verdict)[1:] == [NOT_MEASURED, HELD, NOT_MEASURED]
    only_plain = vanishing.verdict({"main": main_runs(), "stall": [run for run in stall_runs()
                                                                   if run.config["norm"]["name"] == "none"]})
    assert outcomes(only_plain)[2] == INCOMPLETE  # the deep BN network's check did not run


def test_vanishing_without_runs_is_not_measured():
    assert set(outcomes(vanishing.verdict({"main": [], "stall": []}))) == {NOT_MEASURED}


# --- vanishing_cnn


def cnn_runs(bn_sigmoid: float, sigmoid_shallow_trains: bool):
    gradients = []
    for activation, depth, norm, seed in itertools.product(("sigmoid", "relu"), (4, 8, 12, 16), ("none", "bnlab"),
                                                           range(3)):
        factor = {("sigmoid", "none"): 0.115, ("relu", "none"): 0.34, ("sigmoid", "bnlab"): bn_sigmoid,
                  ("relu", "bnlab"): 1.1}[activation, norm]
        gradients.append(make_run({"model.name": "cnn", "model.activation": activation, "model.depth": depth,
                                   "norm.name": norm, "train.seed": seed},
                                  geometric(depth, factor, 1 + 0.05 * seed), steps=1))
    training = []
    for activation in ("sigmoid", "relu"):
        for run in stall_runs(depths=(4, 16), steps=500, activations=(activation,),
                              shallow_trains=activation == "relu" or sigmoid_shallow_trains):
            training.append(run)
    return {"gradients": gradients, "training": training}


def test_vanishing_cnn_holds_where_bn_keeps_the_gradient_within_the_band():
    verdict = vanishing_cnn.verdict(cnn_runs(bn_sigmoid=0.95, sigmoid_shallow_trains=True))
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert verdict.tables[0].title.startswith("gradient at initialization")


def test_vanishing_cnn_reports_where_the_claim_only_partly_holds():
    # as measured on sigmoid CNNs: with BatchNorm x0.71 per block (0.023 at depth 12), and even the shallow
    # sigmoid CNN without BatchNorm does not train in the budget
    verdict = vanishing_cnn.verdict(cnn_runs(bn_sigmoid=0.71, sigmoid_shallow_trains=False))
    assert outcomes(verdict) == [HELD, PARTLY, PARTLY]
    band = verdict.claims[1].checks[0]
    assert band.what.startswith("relu") and band.passed is True
    assert [check.passed for check in verdict.claims[1].checks] == [True, True, False, True]
    shallow_sigmoid = verdict.claims[2].checks[3]
    assert shallow_sigmoid.what.startswith("sigmoid, no BN, depth 4 (control)") and shallow_sigmoid.passed is False
