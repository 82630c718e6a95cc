"""`ioffe2017_renorm`: the verdict on runs built by hand (held, not held, not measured, not applicable) and one
real `bnlab reproduce ioffe2017_renorm --quick`."""

from __future__ import annotations

import pytest
from synthetic_runs import make_run, outcomes

from bnlab.experiments.catalog import get
from bnlab.experiments.ioffe2017_renorm import paired_difference
from bnlab.experiments.reproduce import reproduce
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

EXPERIMENT = get("ioffe2017_renorm")


def runs(accuracies: dict[str, list[float]], batch_size: int, classes: int | None = None, steps: int = 1000):
    """One run per seed and norm: {'bnlab': [acc of seed 0, 1, 2], 'renorm': [...]}."""
    return [make_run({"norm.name": norm, "data.batch_size": batch_size, "data.classes_per_batch": classes,
                      "train.seed": seed, "train.steps": steps}, [1.0, 1.0], accuracy=accuracy, steps=steps)
            for norm, values in accuracies.items() for seed, accuracy in enumerate(values)]


def parts(small: dict, normal: dict, noniid: dict, steps: int = 1000) -> dict:
    return {"small": runs(small, 4, steps=4 * steps), "normal": runs(normal, 64, steps=steps),
            "noniid": runs(noniid, 64, 2, steps=steps), "torch": []}


def arm(mean: float, spread: float = 0.004) -> list[float]:
    """Three seeds' accuracies around `mean` (the same seed-to-seed differences in both arms)."""
    return [mean - spread, mean, mean + spread]


def test_held_when_renorm_is_clearly_better_on_small_and_non_iid_batches_and_matches_on_normal_ones():
    verdict = EXPERIMENT.verdict(parts(small={"bnlab": arm(0.60), "renorm": arm(0.66)},
                                       normal={"bnlab": arm(0.70), "renorm": arm(0.705)},
                                       noniid={"bnlab": arm(0.40), "renorm": arm(0.65)}))
    assert outcomes(verdict) == [HELD, HELD, HELD]
    assert "+0.060" in verdict.claims[0].checks[-1].measured  # the paired difference, small batches
    assert "batches of 64, 2 classes each" in verdict.claims[1].checks[0].what
    table = verdict.tables[0]
    assert [row[1] for row in table.rows[:3]] == ["bnlab", "renorm", "renorm − BN"]


def test_not_held_when_batchnorm_does_as_well_and_partly_when_the_gain_is_small():
    verdict = EXPERIMENT.verdict(parts(small={"bnlab": arm(0.66), "renorm": arm(0.60)},
                                       normal={"bnlab": arm(0.70), "renorm": arm(0.75)},
                                       noniid={"bnlab": arm(0.60, 0.001), "renorm": arm(0.61, 0.001)}))
    # small: renorm lower; non-i.i.d.: higher mean and separate intervals, but by less than 2 points;
    # normal: 5 points apart is no match
    assert outcomes(verdict) == [NOT_HELD, PARTLY, NOT_HELD]
    assert [check.passed for check in verdict.claims[1].checks] == [True, True, False]


def test_overlapping_intervals_are_not_clearly_better():
    noisy = {"bnlab": [0.50, 0.60, 0.70], "renorm": [0.56, 0.66, 0.76]}
    verdict = EXPERIMENT.verdict(parts(small=noisy, normal={"bnlab": arm(0.7), "renorm": arm(0.7)}, noniid=noisy))
    assert [check.passed for check in verdict.claims[0].checks] == [True, False, True]
    assert outcomes(verdict)[:2] == [PARTLY, PARTLY]


def test_missing_runs_are_not_measured_and_short_runs_not_applicable():
    verdict = EXPERIMENT.verdict({"small": runs({"bnlab": arm(0.6), "renorm": arm(0.7)}, 4), "normal": [],
                                  "noniid": [], "torch": []})
    assert outcomes(verdict) == [HELD, NOT_MEASURED, NOT_MEASURED]  # no normal batches, no non-i.i.d. part
    one_arm = EXPERIMENT.verdict(parts(small={"bnlab": arm(0.6)}, normal={"bnlab": arm(0.7)},
                                       noniid={"bnlab": arm(0.4), "renorm": arm(0.6)}))
    assert outcomes(one_arm)[0] == NOT_MEASURED and outcomes(one_arm)[1] == HELD
    short = EXPERIMENT.verdict(parts(small={"bnlab": arm(0.6), "renorm": arm(0.7)},
                                     normal={"bnlab": arm(0.7), "renorm": arm(0.7)},
                                     noniid={"bnlab": arm(0.4), "renorm": arm(0.6)}, steps=200))  # small: 800
    # the intervals are compared at any size; the 2-point thresholds are for 1000-step runs
    assert outcomes(short) == [HELD, HELD, NOT_APPLICABLE]
    assert short.claims[0].checks[-1].not_applicable is not None
    assert short.claims[2].checks[0].not_applicable == "needs train.steps ≥ 1000 (ran 200)"
    one_seed = EXPERIMENT.verdict(parts(small={"bnlab": [0.6], "renorm": [0.7]}, normal={}, noniid={}))
    assert outcomes(one_seed)[0] == INCOMPLETE  # no interval from one seed


def test_the_difference_is_paired_by_seed():
    both = runs({"bnlab": [0.5, 0.7], "renorm": [0.55, 0.78, 0.99]}, 4)  # renorm's seed 2 has no partner
    difference = paired_difference(both)
    assert difference.n == 2 and abs(difference.mean - 0.065) < 1e-12


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_quick_reproduction_runs_end_to_end(tmp_path):
    result = reproduce("ioffe2017_renorm", quick=True, out=tmp_path / "renorm")
    assert {name: len(group) for name, group in result.parts.items()} == {"small": 4, "normal": 4, "noniid": 4,
                                                                           "torch": 1}
    assert all(run.status == "completed" for run in result.runs)
    assert [claim.outcome for claim in result.verdict.claims][-1] == HELD  # bnlab and torch agree
    for claim in result.verdict.claims[:3]:  # the 2-point thresholds need 1000 steps; the rest was measured
        assert claim.outcome not in (NOT_MEASURED, INCOMPLETE), claim.claim
        assert all(check.passed is not None or check.not_applicable for check in claim.checks)
    noniid = result.parts["noniid"][0]
    assert noniid.config["data"]["classes_per_batch"] == 2 and noniid.last("acc/test") is not None
    text = result.markdown.read_text()
    assert "renorm − BN" in text and "2 classes each" in text
    assert "(test: > 0.02 [choice]; not applicable at quick size" in text
    assert set(result.figures) == {"accuracy"} and result.figures["accuracy"][0].stat().st_size > 1000
