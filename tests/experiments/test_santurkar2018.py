"""`santurkar2018` (noisy BatchNorm and internal covariate shift): its measures against direct computations, its
verdict on synthetic runs (held, not held, not measured, not applicable), and one real `--quick` reproduction."""

from __future__ import annotations

import itertools
import math

import pytest
from synthetic_runs import make_run, outcomes

from bnlab.experiments import santurkar2018
from bnlab.experiments.reproduce import reproduce
from bnlab.experiments.santurkar2018 import (
    halves,
    mean_accuracy,
    relative_shift,
    shift_cosine,
    shift_l2,
    training_loss,
)
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

STEPS = (0, 100, 200, 300, 400)
LAYERS = ("layer01", "layer02", "layer03")


def shift_tags(l2: float, cosine: float, grad: float = 1.0, jitter: float = 1.0) -> dict:
    """The probe's tags of three layers at every measured step: ||G - G'|| grows by 2 per layer."""
    extra = {}
    for index, layer in enumerate(LAYERS):
        extra[f"covariate_shift/l2/{layer}"] = [(s, jitter * l2 * 2 ** index) for s in STEPS]
        extra[f"covariate_shift/cosine/{layer}"] = [(s, cosine) for s in STEPS]
        extra[f"grad_norm/weight/{layer}"] = [(s, grad * 2 ** index) for s in STEPS]
    return extra


def runs(accuracy: dict, l2: dict, cosine: dict, steps: int = 500, norms=("none", "bnlab", "noisy"),
         probe: bool = True, lr: float = 0.1) -> list:
    """Three seeds of each arm at learning rate `lr`: test accuracy `accuracy[norm]` from step 100 on, and the
    covariate shift `l2[norm]`, `cosine[norm]`."""
    result = []
    for norm, seed in itertools.product(norms, range(3)):
        final = accuracy[norm] + 0.005 * seed
        curve = [(0, 0.1), (100, final), (steps, final)]
        extra = shift_tags(l2[norm], cosine[norm], jitter=1 + 0.02 * seed) if probe else {}
        result.append(make_run({"norm.name": norm, "train.seed": seed, "optim.lr": lr}, [1.0] * 4, accuracy=curve,
                               steps=steps, extra=extra))
    return result


HOLDS = dict(accuracy={"none": 0.30, "bnlab": 0.95, "noisy": 0.94}, l2={"none": 1.0, "bnlab": 1.3, "noisy": 3.0},
             cosine={"none": 0.90, "bnlab": 0.80, "noisy": 0.5})
FAILS = dict(accuracy={"none": 0.30, "bnlab": 0.95, "noisy": 0.31}, l2={"none": 1.0, "bnlab": 0.3, "noisy": 3.0},
             cosine={"none": 0.80, "bnlab": 0.99, "noisy": 0.5})


def test_the_claims_hold_when_noisy_bn_trains_like_bn_far_above_no_bn_and_bn_has_as_much_shift():
    verdict = santurkar2018.verdict({"main": runs(**HOLDS)})
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert "ratio" not in verdict.claims[2].checks[0].measured and verdict.claims[2].checks[0].measured == "1.3"
    assert [row[1] for row in verdict.tables[0].rows] == ["no BN (norm=none)", "BN (norm=bnlab)",
                                                          "noisy BN (norm=noisy)"]
    assert [row[1] for row in verdict.tables[2].rows] == list(LAYERS)
    assert not verdict.notes[1:]  # no run diverged


def test_a_diverged_run_is_named_in_the_notes():
    diverged = runs(**HOLDS)
    diverged[2].summary.update(diverged_at=228, skipped_steps=272)  # no BN, seed 2
    notes = santurkar2018.verdict({"main": diverged}).notes
    assert notes[1:] == ["lr 0.1, no BN (norm=none), seed 2: not finite from step 228, 272 of 500 steps skipped; "
                         "its test accuracy afterwards is the broken network's"]


def test_the_claims_do_not_hold_when_noise_hurts_and_bn_reduces_the_shift():
    verdict = santurkar2018.verdict({"main": runs(**FAILS)})
    assert outcomes(verdict) == [NOT_HELD, PARTLY, NOT_HELD]
    # noisy BN only 0.01 above no BN, intervals overlapping: fails both; BN is far better, its interval apart
    assert [check.passed for check in verdict.claims[1].checks] == [False, False, True, True]


def test_each_learning_rate_is_judged_on_its_own_runs():
    verdict = santurkar2018.verdict({"main": runs(**HOLDS, lr=0.1) + runs(**FAILS, lr=0.2)})
    assert outcomes(verdict) == [PARTLY, PARTLY, PARTLY]
    assert [check.passed for check in verdict.claims[2].checks] == [True, True, False, False]
    assert verdict.claims[2].checks[0].what.startswith("lr 0.1: ") and verdict.claims[2].checks[2].what.startswith(
        "lr 0.2: ")
    assert [row[:2] for row in verdict.tables[0].rows[2:4]] == [["0.1", "noisy BN (norm=noisy)"],
                                                                ["0.2", "no BN (norm=none)"]]


def test_a_small_shift_reduction_and_a_slightly_higher_cosine_still_count_as_not_reduced():
    verdict = santurkar2018.verdict({"main": runs(
        accuracy=HOLDS["accuracy"], l2={"none": 1.0, "bnlab": 0.85, "noisy": 3.0},
        cosine={"none": 0.90, "bnlab": 0.94, "noisy": 0.5})})
    assert outcomes(verdict)[2] == HELD
    verdict = santurkar2018.verdict({"main": runs(
        accuracy=HOLDS["accuracy"], l2={"none": 1.0, "bnlab": 0.75, "noisy": 3.0},
        cosine={"none": 0.90, "bnlab": 0.96, "noisy": 0.5})})
    assert outcomes(verdict)[2] == NOT_HELD


def test_without_the_probe_or_the_noisy_arm_those_claims_are_not_measured():
    verdict = santurkar2018.verdict({"main": runs(**HOLDS, norms=("none", "bnlab"), probe=False)})
    assert outcomes(verdict) == [NOT_MEASURED, INCOMPLETE, NOT_MEASURED]  # BN vs no BN measured, noisy BN not
    assert [check.passed for check in verdict.claims[1].checks] == [None, None, True, True]


def test_accuracy_thresholds_do_not_apply_to_a_short_budget():
    verdict = santurkar2018.verdict({"main": runs(**HOLDS, steps=60)})
    assert outcomes(verdict) == [NOT_APPLICABLE, NOT_APPLICABLE, HELD]
    assert "needs train.steps ≥ 500 (ran 60)" in verdict.claims[0].checks[0].text


def test_measures_against_direct_computations():
    run = runs(**HOLDS)[0]  # no BN, seed 0: l2 1, 2, 4 per layer at 5 steps; ||G|| 1, 2, 4
    assert shift_l2(run) == pytest.approx(math.exp((math.log(1) + math.log(2) + math.log(4)) / 3))  # = 2
    assert shift_cosine(run) == pytest.approx(0.90)
    assert relative_shift(run) == pytest.approx(1.0)
    assert mean_accuracy(run) == pytest.approx(0.30)  # the evaluations after step 0 only
    run.scalars["covariate_shift/l2/layer02"][0] = (0, 0.0)
    assert shift_l2(run) == 0.0  # a layer whose gradient did not change at all: no shift, not a missing value
    del run.scalars["grad_norm/weight/layer03"]
    assert relative_shift(run) == pytest.approx(1.0)  # layer03 has no ||G||: left out, the others still 1


def test_the_halves_of_training_are_measured_apart():
    every_run = runs(**HOLDS)
    run = every_run[0]  # no BN, seed 0: ||G - G'|| 1, 2, 4 per layer, from step 250 on 100 times smaller
    for layer in LAYERS:
        tag = f"covariate_shift/l2/{layer}"
        run.scalars[tag] = [(step, value / 100 if step >= 250 else value) for step, value in run.scalars[tag]]
    run.scalars["loss/train"] = [(step, 1.0 if step < 250 else 0.01) for step in STEPS]
    assert halves([run]) == [("steps 0–249", (0, 249)), ("steps 250–500", (250, 500))]
    assert shift_l2(run, (0, 249)) == pytest.approx(2.0)
    assert shift_l2(run, (250, 500)) == pytest.approx(0.02)
    assert shift_l2(run) == pytest.approx(2.0 * 0.01 ** (2 / 5))  # steps 300 and 400 of the five are in the second
    assert relative_shift(run, (250, 500)) == pytest.approx(0.01)
    assert training_loss(run, (0, 249)) == 1.0 and training_loss(run, (250, 500)) == pytest.approx(0.01)
    assert shift_cosine(run, (250, 500)) == pytest.approx(0.90)
    phases = santurkar2018.verdict({"main": every_run}).tables[1]
    assert [row[1:3] for row in phases.rows[:4]] == [["steps 0–249", "no BN (norm=none)"],
                                                     ["steps 0–249", "BN (norm=bnlab)"],
                                                     ["steps 0–249", "noisy BN (norm=noisy)"],
                                                     ["steps 250–500", "no BN (norm=none)"]]
    assert phases.rows[0][3] == "1" and phases.rows[3][3] == "0.01"  # only seed 0 has a training loss
    # no BN's ||G - G'||: seeds x 1, 1.02, 1.04 in the first half; seed 0 x 0.01 in the second
    first, second = 2 * (1.02 * 1.04) ** (1 / 3), (0.02 * 2 * 1.02 * 2 * 1.04) ** (1 / 3)
    assert phases.rows[0][4].startswith(f"{first:.3g} ×/÷") and phases.rows[3][4].startswith(f"{second:.3g} ×/÷")


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_quick_reproduction_runs_the_three_arms_with_the_probe_and_judges_them(tmp_path):
    result = reproduce("santurkar2018", ["model.depth=3", "model.width=16", "train.steps=20", "log.every=10"],
                       quick=True, out=tmp_path / "santurkar2018")
    assert {name: len(group) for name, group in result.parts.items()} == {"main": 6, "torch": 1}
    assert {run.config["norm"]["name"] for run in result.parts["main"]} == {"none", "bnlab", "noisy"}
    for run in result.parts["main"]:  # the probe's tags, read back from the real event files
        measured = [step for step, _ in run.series("covariate_shift/l2/layer01")]
        assert measured == [0, 10, 19]  # every 10 steps and the last
        assert -1 <= run.last("covariate_shift/cosine/layer03") <= 1
        assert shift_l2(run) > 0
    assert outcomes(result.verdict)[:2] == [NOT_APPLICABLE, NOT_APPLICABLE]  # accuracy needs 500 steps
    assert outcomes(result.verdict)[2] in (HELD, NOT_HELD, PARTLY)  # measured, whatever it says at this size
    assert outcomes(result.verdict)[3] == HELD  # bnlab's BatchNorm and torch's agree
    assert set(result.figures) == {"training", "covariate_shift"}
    text = result.markdown.read_text()
    assert "| BN / no BN ≥ 0.8 | choice |" in text and "noisy BN (norm=noisy)" in text


def test_the_covariate_shift_figure_averages_over_layers_and_seeds():
    figures = dict((name, figure) for name, _, figure in santurkar2018.figures({"main": runs(**HOLDS)}))
    assert set(figures) == {"training", "covariate_shift"}
    l2_panel, cosine_panel = figures["covariate_shift"].axes[:2]
    assert [line.get_label() for line in l2_panel.lines] == ["no BN (norm=none)", "BN (norm=bnlab)",
                                                             "noisy BN (norm=noisy)"]
    steps, values = l2_panel.lines[0].get_data()  # no BN: 1, 2, 4 over the layers, seeds x 1, 1.02, 1.04
    assert list(steps) == list(STEPS)
    assert list(values) == pytest.approx([2 * (1.02 * 1.04) ** (1 / 3)] * len(STEPS))
    assert list(cosine_panel.lines[1].get_data()[1]) == pytest.approx([0.80] * len(STEPS))
