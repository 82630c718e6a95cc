"""`bn_vs_l1l2`: its measures and verdict on synthetic runs (held, not held, not measured, not applicable) and
one reduced `bnlab reproduce bn_vs_l1l2 --quick` for real."""

from __future__ import annotations

import itertools
import math

import pytest
from synthetic_runs import make_run, outcomes

from bnlab.analysis.readback import RunData
from bnlab.experiments import bn_vs_l1l2
from bnlab.experiments.reproduce import reproduce
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

MEASURED = [*range(0, 2000, 50), 1999]
# (with BN, regularizer) -> (final / initial ||W||, final / initial ||ΔW||/||W||, final test accuracy)
HOLDS = {(True, "none"): (1.3, 0.7, 0.97), (True, "l2"): (0.6, 2.0, 0.97), (True, "l1"): (0.8, 1.5, 0.97),
         (False, "none"): (1.1, 0.5, 0.93), (False, "l2"): (0.8, 0.55, 0.96), (False, "l1"): (0.9, 0.5, 0.95)}


def run(with_bn: bool, reg: str, seed: int, norm_end: float, lr_end: float, accuracy: float,
        steps: int = 2000) -> RunData:
    """Three hidden layers and a classifier whose norms and update ratios change linearly over training; the
    classifier (not a hidden layer) moves the other way, so a measure that took it in would be off."""
    measured = [s for s in MEASURED if s < steps] + ([steps - 1] if steps < 2000 else [])
    extra = {}
    for index in range(4):
        hidden = index < 3
        end_norm, end_lr = (norm_end, lr_end) if hidden else (1 / norm_end ** 3, 1 / lr_end ** 3)
        scale = (1 + 0.1 * index) * (1 + 0.01 * seed)
        extra[f"weight_norm/layer{index:02d}"] = [(s, scale * (1 + (end_norm - 1) * s / (steps - 1)))
                                                  for s in measured]
        extra[f"update_ratio/layer{index:02d}"] = [(s, 1e-3 * scale * (1 + (end_lr - 1) * s / (steps - 1)))
                                                   for s in measured]
    settings = {"norm.name": "bnlab" if with_bn else "none", "train.seed": seed, "optim.lr": 0.1,
                "optim.weight_decay": 5e-3 if reg == "l2" else 0.0, "optim.l1": 6.25e-4 if reg == "l1" else 0.0}
    return make_run(settings, [1.0, 1.0, 1.0], accuracy=accuracy + 0.002 * seed, steps=steps, extra=extra)


def parts(arms: dict = HOLDS, steps: int = 2000) -> dict[str, list[RunData]]:
    found: dict[str, list[RunData]] = {reg: [] for reg in bn_vs_l1l2.REGULARIZERS}
    for ((with_bn, reg), values), seed in itertools.product(arms.items(), range(3)):
        found[reg].append(run(with_bn, reg, seed, *values, steps=steps))
    return found


def test_the_measures_take_the_hidden_layers_at_the_first_and_last_fifth():
    sample = run(True, "l2", 0, 0.5, 3.0, 0.9)
    assert bn_vs_l1l2.weight_norm("start")(sample) == pytest.approx((1 * 1.1 * 1.2) ** (1 / 3))
    assert bn_vs_l1l2.norm_growth(sample) == pytest.approx(0.5)  # the classifier's 8x is left out
    late = [1e-3 * (1 + 2 * s / 1999) for s in MEASURED if s >= 1600]
    assert bn_vs_l1l2.LATE_LR(sample) == pytest.approx((1 * 1.1 * 1.2) ** (1 / 3) * sum(late) / len(late))
    assert bn_vs_l1l2.EARLY_LR(sample) == pytest.approx(
        (1 * 1.1 * 1.2) ** (1 / 3) * 1e-3 * sum(1 + 2 * s / 1999 for s in range(0, 400, 50)) / 8)
    reference = [run(True, "none", seed, 1.0, 1.0, 0.9) for seed in range(3)]
    ratios = bn_vs_l1l2.paired([run(True, "l2", seed, 0.5, 1.0, 0.9) for seed in range(3)], reference,
                               bn_vs_l1l2.weight_norm("end"))
    assert ratios.mean == pytest.approx(0.5) and ratios.n == 3  # seed by seed: the seeds' scales cancel


def test_the_claims_hold_where_the_runs_behave_as_van_laarhoven_predicts():
    verdict = bn_vs_l1l2.verdict(parts())
    assert outcomes(verdict) == [HELD, HELD, HELD, HELD]
    assert verdict.claims[0].checks[1].measured.startswith("0.462")  # 0.6 / 1.3
    assert len(verdict.tables[0].rows) == 6 and len(verdict.tables[1].rows) == 4
    assert verdict.claims[0].checks[0].measured.startswith("1.3 ×/÷")  # BN without a penalty: ||W|| grows
    assert len(verdict.notes) == 1 and "ηλ = 0.0005 of its norm" in verdict.notes[0]
    bn_l2 = verdict.tables[1].rows[3]
    assert bn_l2[:2] == ["BN", "L2"] and float(bn_l2[5]) == pytest.approx(1 / (0.6 / 1.3) ** 2, rel=1e-2)


def test_the_claims_do_not_hold_where_regularization_leaves_batchnorms_scale_alone():
    arms = {**HOLDS, (True, "l2"): HOLDS[(True, "none")], (True, "l1"): (1.4, 0.6, 0.97),
            (True, "none"): (1.3, 0.7, 0.90)}
    verdict = bn_vs_l1l2.verdict(parts(arms))
    assert outcomes(verdict) == [PARTLY, PARTLY, NOT_HELD, NOT_HELD]
    assert [check.passed for check in verdict.claims[0].checks] == [True, False, False]  # ||W|| grows without L2
    assert [check.passed for check in verdict.claims[1].checks] == [True, False]  # no BN: L2 shrinks ||W||


def test_a_missing_part_is_not_measured_and_a_short_run_not_applicable():
    missing = parts()
    del missing["l1"]
    verdict = bn_vs_l1l2.verdict(missing)
    assert outcomes(verdict) == [HELD, HELD, NOT_MEASURED, INCOMPLETE]  # BN against no BN with L2 alone
    assert verdict.claims[2].checks[0].measured == "not measured"
    assert outcomes(bn_vs_l1l2.verdict(parts(steps=100))) == [NOT_APPLICABLE] * 4
    assert outcomes(bn_vs_l1l2.verdict({})) == [NOT_MEASURED] * 4
    assert bn_vs_l1l2.verdict({"none": parts()["none"]}).notes == []  # nothing decayed: no decay share to state


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_quick_reproduction_measures_norms_and_update_ratios_of_every_arm(tmp_path):
    out = tmp_path / "bn_vs_l1l2"
    result = reproduce("bn_vs_l1l2", ["train.steps=20", "model.width=16", "log.images=false"], quick=True, out=out)
    assert {name: len(runs) for name, runs in result.parts.items()} == {"none": 2, "l1": 2, "l2": 2, "torch": 1}
    regularization = {name: {(run.config["optim"]["l1"], run.config["optim"]["weight_decay"]) for run in runs}
                      for name, runs in result.parts.items()}
    assert regularization == {"none": {(0.0, 0.0)}, "l1": {(bn_vs_l1l2.L1, 0.0)},
                              "l2": {(0.0, bn_vs_l1l2.WEIGHT_DECAY)}, "torch": {(0.0, bn_vs_l1l2.WEIGHT_DECAY)}}
    assert outcomes(result.verdict) == [NOT_APPLICABLE] * 4 + [HELD]
    rows = result.verdict.tables[0].rows
    assert len(rows) == 6
    for row in rows:  # every arm's norms and update ratios were read back from its event files
        assert all(cell != "-" and math.isfinite(float(cell)) for cell in row[3:])
    assert set(result.figures) == {"norms_and_effective_lr"}
    assert "| < 1 | theory |" in result.markdown.read_text()
