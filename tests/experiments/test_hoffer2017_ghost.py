"""`hoffer2017_ghost`: the verdict on runs built by hand (held, not held, not measured, not applicable), the
train − test gap from acc/train, and one real `bnlab reproduce hoffer2017_ghost --quick`."""

from __future__ import annotations

import pytest
from synthetic_runs import make_run, outcomes

from bnlab.experiments.catalog import get
from bnlab.experiments.hoffer2017_ghost import gap_closed, train_test_gap
from bnlab.experiments.reproduce import reproduce
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

EXPERIMENT = get("hoffer2017_ghost")


def runs(norm: str, batch_size: int, test: list[float], train: float = 1.0, steps: int = 300):
    """One run per seed, ending at test accuracy test[seed] and training accuracy `train`."""
    return [make_run({"norm.name": norm, "data.batch_size": batch_size, "data.name": "mnist1d", "train.seed": seed,
                      "train.steps": steps}, [1.0, 1.0], accuracy=accuracy, steps=steps,
                     extra={"acc/train": [(0, 0.1), (steps, train)]})
            for seed, accuracy in enumerate(test)]


def parts(small: list[float], large: list[float], ghost: list[float], steps: int = 300) -> dict:
    return {"small": runs("bnlab", 32, small, steps=steps * 32),
            "large": runs("bnlab", 1024, large, train=0.9, steps=steps) + runs("ghost", 1024, ghost, steps=steps),
            "torch": []}


def arm(mean: float, spread: float = 0.005) -> list[float]:
    return [mean - spread, mean, mean + spread]


def test_held_when_large_batches_lose_and_ghost_batches_win_back_part_of_it():
    verdict = EXPERIMENT.verdict(parts(small=arm(0.70), large=arm(0.60), ghost=arm(0.65)))
    assert outcomes(verdict) == [HELD, HELD]
    assert verdict.claims[1].checks[-1].measured.endswith(": 0.50")  # half the gap closed
    assert "paired by seed" in verdict.notes[1] and "+0.050" in verdict.notes[1]
    rows = {row[0]: row for row in verdict.tables[0].rows}
    train, gap = rows["large batch, BN"][-2:]
    assert train.startswith("0.900") and gap.startswith("0.300")  # train accuracy, train − test


def test_not_held_without_a_gap_and_partly_when_ghost_closes_too_little():
    no_gap = EXPERIMENT.verdict(parts(small=arm(0.60), large=arm(0.62), ghost=arm(0.70)))
    assert outcomes(no_gap)[0] == NOT_HELD
    assert no_gap.claims[1].checks[-1].passed is False and "no gap to close" in no_gap.claims[1].checks[-1].measured
    little = EXPERIMENT.verdict(parts(small=arm(0.70), large=arm(0.60, 0.001), ghost=arm(0.61, 0.001)))
    assert outcomes(little) == [HELD, PARTLY]  # higher, separate intervals, but a tenth of the gap
    worse = EXPERIMENT.verdict(parts(small=arm(0.70), large=arm(0.60), ghost=arm(0.55)))
    assert outcomes(worse) == [HELD, NOT_HELD]


def test_missing_arms_are_not_measured_and_short_runs_not_applicable():
    verdict = EXPERIMENT.verdict({"small": runs("bnlab", 32, arm(0.7)), "large": runs("bnlab", 1024, arm(0.6)),
                                  "torch": []})
    assert outcomes(verdict) == [HELD, NOT_MEASURED]  # no ghost runs
    short = EXPERIMENT.verdict(parts(small=arm(0.70), large=arm(0.60), ghost=arm(0.65), steps=12))
    assert outcomes(short) == [HELD, HELD]  # the intervals are compared; the fraction needs 300 steps
    assert short.claims[1].checks[-1].not_applicable == "needs train.steps ≥ 300 (ran 12)"
    one_seed = EXPERIMENT.verdict(parts(small=[0.7], large=[0.6], ghost=[0.65]))
    assert outcomes(one_seed) == [INCOMPLETE, INCOMPLETE]
    assert NOT_APPLICABLE not in outcomes(one_seed)


def test_the_fraction_of_the_gap_and_the_train_test_gap():
    from bnlab.analysis.aggregate import Stat

    def stat(mean):
        return Stat(mean, None, None, 1)

    assert abs(gap_closed(stat(0.8), stat(0.6), stat(0.65)) - 0.25) < 1e-12
    assert gap_closed(stat(0.6), stat(0.6), stat(0.7)) is None  # nothing to close
    assert gap_closed(None, stat(0.6), stat(0.7)) is None
    run = runs("bnlab", 32, [0.62], train=0.97)[0]
    assert abs(train_test_gap(run) - 0.35) < 1e-12
    assert train_test_gap(make_run({"norm.name": "bnlab"}, [1.0])) is None  # acc/train not logged


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_quick_reproduction_runs_end_to_end_and_logs_train_accuracy(tmp_path):
    result = reproduce("hoffer2017_ghost", quick=True, out=tmp_path / "ghost")
    assert {name: len(group) for name, group in result.parts.items()} == {"small": 2, "large": 4, "torch": 1}
    assert all(run.status == "completed" for run in result.runs)
    for run in result.runs:  # acc/train at every evaluation, beside acc/test
        assert [step for step, _ in run.series("acc/train")] == [step for step, _ in run.series("acc/test")]
        assert 0 <= run.last("acc/train") <= 1
    ghost = [run for run in result.parts["large"] if run.config["norm"]["name"] == "ghost"]
    assert {run.config["norm"]["ghost_batch_size"] for run in ghost} == {32}
    assert {run.config["data"]["batch_size"] for run in result.parts["large"]} == {1024}
    assert [claim.outcome for claim in result.verdict.claims][-1] == HELD  # bnlab and torch agree
    for claim in result.verdict.claims[:2]:
        assert claim.outcome not in (NOT_MEASURED, INCOMPLETE), claim.claim
    text = result.markdown.read_text()
    assert "train − test" in text and "large batch, ghost BN" in text
    assert result.figures["accuracy"][0].stat().st_size > 1000
