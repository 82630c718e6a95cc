"""`santurkar2018_landscape` (Figure 4): its measures against direct computations, its verdict on synthetic
runs (held, not held, partly, not measured, not applicable), and one real `--quick` reproduction."""

from __future__ import annotations

import itertools
import math

import pytest
from synthetic_runs import make_run, outcomes

from bnlab.experiments import santurkar2018_landscape as landscape
from bnlab.experiments.reproduce import reproduce
from bnlab.experiments.verdict import HELD, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY
from bnlab.telemetry.landscape import TAGS

STEPS = list(range(0, 500, 50))


def landscape_tags(scale: float, jitter: float, crossing: bool = False) -> dict:
    """Every landscape tag at every measured step, `scale` times a base that falls over training; `crossing`:
    200 times that over the second half of training."""
    extra = {}
    for tag in TAGS:
        base = 2.0 if tag == "landscape/loss_max" else 1.0
        extra[tag] = [(s, jitter * scale * base * (200.0 if crossing and s >= 250 else 1.0) / (1 + s / 100))
                      for s in STEPS]
    extra["landscape/loss_min"] = [(s, 0.5 / (1 + s / 100)) for s in STEPS]
    return extra


def runs(bn_scale: float, steps: int = 500, probe: bool = True, bn_crossing: bool = False, lr: float = 0.1) -> list:
    result = []
    for norm, seed in itertools.product(("none", "bnlab"), range(3)):
        scale = bn_scale if norm == "bnlab" else 1.0
        extra = landscape_tags(scale, 1 + 0.03 * seed, bn_crossing and norm == "bnlab") if probe else {}
        result.append(make_run({"norm.name": norm, "train.seed": seed, "optim.lr": lr}, [1.0] * 4, steps=steps,
                               extra=extra))
    return result


def test_held_when_every_quantity_is_lower_with_bn_throughout_training():
    verdict = landscape.verdict({"main": runs(bn_scale=0.3)})
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert verdict.claims[0].checks[0].measured.endswith("ratio 0.3")
    assert verdict.claims[0].checks[2].measured == "100%"


def test_not_held_when_bn_is_rougher():
    assert outcomes(landscape.verdict({"main": runs(bn_scale=3.0)})) == [NOT_HELD, NOT_HELD, NOT_HELD]


def test_smoother_at_one_learning_rate_and_rougher_at_the_other_is_partly_held():
    verdict = landscape.verdict({"main": runs(bn_scale=0.3, lr=0.1) + runs(bn_scale=3.0, lr=0.2)})
    assert outcomes(verdict) == [PARTLY, PARTLY, PARTLY]
    assert [check.passed for check in verdict.claims[2].checks] == [True, True, True, False, False, False]
    assert verdict.claims[2].checks[3].what.startswith("lr 0.2, effective β-smoothness")
    assert [row[:2] for row in verdict.tables[0].rows] == [["0.1", "no BN (norm=none)"], ["0.1", "BN (norm=bnlab)"],
                                                           ["0.2", "no BN (norm=none)"], ["0.2", "BN (norm=bnlab)"]]
    phases = verdict.tables[1]  # per rate, per half, per arm
    assert [row[:3] for row in phases.rows[:4]] == [["0.1", "steps 0–249", "no BN (norm=none)"],
                                                    ["0.1", "steps 0–249", "BN (norm=bnlab)"],
                                                    ["0.1", "steps 250–500", "no BN (norm=none)"],
                                                    ["0.1", "steps 250–500", "BN (norm=bnlab)"]]
    bn_first_half = 0.3 * math.exp(sum(-math.log(1 + s / 100) for s in STEPS if s <= 249) / 5)
    assert phases.rows[1][4].startswith(f"{bn_first_half * (1.03 * 1.06) ** (1 / 3):.3g} ×/÷")


def test_lower_on_average_but_not_over_most_of_training_is_partly_held():
    # BN 100 times lower in the first half, twice as high in the second: lower on average, at half the steps only
    verdict = landscape.verdict({"main": runs(bn_scale=0.01, bn_crossing=True)})
    assert outcomes(verdict) == [PARTLY, PARTLY, PARTLY]
    assert [check.passed for check in verdict.claims[1].checks] == [True, True, False]
    assert verdict.claims[1].checks[2].measured == "50%"


def test_without_the_probe_nothing_is_measured_and_a_short_budget_does_not_apply():
    assert outcomes(landscape.verdict({"main": runs(bn_scale=0.3, probe=False)})) == [NOT_MEASURED] * 3
    verdict = landscape.verdict({"main": runs(bn_scale=0.3, steps=60)})
    assert outcomes(verdict) == [NOT_APPLICABLE] * 3


def test_measures_against_direct_computations():
    run = runs(bn_scale=0.3)[0]  # no BN, seed 0: 1 / (1 + s/100) at s = 0, 50, ..., 450
    expected = math.exp(sum(-math.log(1 + s / 100) for s in STEPS) / len(STEPS))
    assert landscape.over_training("landscape/beta_smoothness")(run) == pytest.approx(expected)
    bn, plain = runs(bn_scale=0.3)[3:], runs(bn_scale=0.3)[:3]
    assert landscape.fraction_lower(bn, plain, "landscape/loss_range") == 1.0
    assert landscape.fraction_lower(plain, bn, "landscape/loss_range") == 0.0
    first_half = math.exp(sum(-math.log(1 + s / 100) for s in STEPS if s <= 249) / 5)
    assert landscape.over_training("landscape/beta_smoothness", (0, 249))(run) == pytest.approx(first_half)
    run.scalars["landscape/loss_range"][0] = (0, 0.0)
    assert landscape.over_training("landscape/loss_range")(run) == 0.0
    assert landscape.over_training("landscape/loss_range", (250, 500))(run) > 0  # step 0 is in the first half


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_quick_reproduction_runs_both_arms_with_the_probe_and_judges_them(tmp_path):
    result = reproduce("santurkar2018_landscape", ["model.depth=3", "model.width=16", "train.steps=20",
                                                   "log.every=10"], quick=True, out=tmp_path / "landscape")
    assert {name: len(group) for name, group in result.parts.items()} == {"main": 4, "torch": 1}
    for run in result.parts["main"]:  # the probe's tags, read back from the real event files
        assert [step for step, _ in run.series("landscape/beta_smoothness")] == [0, 10, 19]
        low, high, spread = (run.last(f"landscape/{name}") for name in ("loss_min", "loss_max", "loss_range"))
        assert high - low == pytest.approx(spread, rel=1e-5) and spread >= 0
    assert outcomes(result.verdict) == [NOT_APPLICABLE] * 3 + [HELD]  # the comparison needs 500 steps
    assert set(result.figures) == {"landscape"}
    text = result.markdown.read_text()
    assert "| BN / no BN < 1 | paper |" in text and "same learning rate" in text


def test_the_figure_draws_each_arms_loss_band_and_the_two_quantities_over_training():
    ((name, _, figure),) = landscape.figures({"main": runs(bn_scale=0.3)})
    assert name == "landscape"
    band, predictiveness, beta = figure.axes[:3]
    assert [c.get_label() for c in band.collections] == ["no BN (norm=none)", "BN (norm=bnlab)"]
    for ax in (predictiveness, beta):
        assert [line.get_label() for line in ax.lines] == ["no BN (norm=none)", "BN (norm=bnlab)"]
        assert ax.get_yscale() == "log"
        steps, values = ax.lines[1].get_data()  # BN: the geometric mean of the three seeds at each step
        assert list(steps) == STEPS
        jitters = [1 + 0.03 * seed for seed in range(3)]
        expected = [math.prod(jitters) ** (1 / 3) * 0.3 / (1 + s / 100) for s in STEPS]
        assert list(values) == pytest.approx(expected)
