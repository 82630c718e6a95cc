"""The verdict model: how checks make a claim's outcome, thresholds with their sources and sizes, and the
comparison of two arms across seeds (a higher mean alone must never make a claim held)."""

from __future__ import annotations

import pytest
from synthetic_runs import make_run

from bnlab.analysis.aggregate import Stat, mean_interval
from bnlab.experiments.measures import RATIO_INIT, across, largest
from bnlab.experiments.verdict import (
    HELD,
    INCOMPLETE,
    NOT_APPLICABLE,
    NOT_HELD,
    NOT_MEASURED,
    PARTLY,
    Check,
    Claim,
    Threshold,
    below,
    between,
    check,
    higher,
)


def checks(*states) -> list[Check]:
    """True/False: passed/failed; None: not measured; 'n/a': not applicable."""
    return [Check("x", "1", "t", None, not_applicable="needs model.depth ≥ 20 (ran 5)") if state == "n/a"
            else Check("x", "1", "t", state) for state in states]


@pytest.mark.parametrize(("states", "expected"), [
    ((True, True), HELD),
    ((True, False), PARTLY),
    ((False, False), NOT_HELD),
    ((True, None), INCOMPLETE),  # a check not measured keeps a claim from being held or partly
    ((False, None), INCOMPLETE),
    ((None,), NOT_MEASURED),
    ((), NOT_MEASURED),
    ((True, "n/a"), HELD),  # a check that does not apply at this size does not count
    ((False, "n/a"), NOT_HELD),
    ((None, "n/a"), NOT_MEASURED),
    (("n/a", "n/a"), NOT_APPLICABLE),
])
def test_a_claims_outcome_says_only_what_was_measured(states, expected):
    assert Claim("c", "p", checks(*states)).outcome == expected


def stat(mean: float, low: float | None, high: float | None, n: int = 3) -> Stat:
    return Stat(mean, low, high, n)


@pytest.mark.parametrize(("better", "other", "expected"), [
    (stat(0.95, 0.94, 0.96), stat(0.90, 0.89, 0.91), HELD),  # separate intervals
    (stat(0.95, 0.92, 0.98), stat(0.93, 0.91, 0.95), PARTLY),  # higher mean, intervals overlap
    # BN's lower end above the other's mean but below its upper end: still overlapping
    (stat(0.95, 0.935, 0.965), stat(0.93, 0.90, 0.94), PARTLY),
    # BN's mean above the other's upper end, BN's lower end below it: still overlapping
    (stat(0.95, 0.90, 1.00), stat(0.92, 0.91, 0.93), PARTLY),
    (stat(0.95, 0.93, 0.97), stat(0.91, 0.89, 0.93), PARTLY),  # touching at 0.93 is not apart
    (stat(0.90, 0.89, 0.91), stat(0.95, 0.94, 0.96), NOT_HELD),  # lower, and apart
    (stat(0.95, None, None, 1), stat(0.90, None, None, 1), INCOMPLETE),  # one seed: no interval to compare
])
def test_a_higher_mean_with_overlapping_intervals_is_never_held(better, other, expected):
    found = higher("final test accuracy", better, other, ".3f")
    assert Claim("BN ends higher", "p", found).outcome == expected
    assert found[0].passed is (better.mean > other.mean)


def test_the_comparison_on_intervals_computed_from_seeds():
    bn, plain = [0.96, 0.97, 0.95], [0.90, 0.99, 0.93]  # BN higher on average, plain's seeds spread widely
    better, other = mean_interval(bn), mean_interval(plain)
    assert better.mean > other.mean and better.low < other.high
    assert Claim("c", "p", higher("acc", better, other, ".3f")).outcome == PARTLY
    apart = mean_interval([0.80, 0.81, 0.79])
    assert Claim("c", "p", higher("acc", better, apart, ".3f")).outcome == HELD


def test_a_threshold_states_its_source_and_applies_from_the_size_it_needs():
    vanished = below(1e-3, "theory", "a reason", model__depth=20)
    assert vanished.label == "< 0.001 [theory]" and vanished.needs == (("model.depth", 20),)
    assert vanished.shortfall({"model.depth": 5}) == "needs model.depth ≥ 20 (ran 5)"
    assert vanished.shortfall({"model.depth": 50}) is None
    low = Stat(1e-5, None, None, 1, geometric=True)
    assert check("ratio", low, ".1e", vanished, {"model.depth": 20}).passed is True
    high = Stat(0.5, None, None, 1, geometric=True)
    assert check("ratio", high, ".1e", vanished, {"model.depth": 20}).passed is False
    skipped = check("ratio", high, ".1e", vanished, {"model.depth": 5})
    assert skipped.passed is None and "not applicable at this size: needs model.depth ≥ 20" in skipped.text
    missing = check("ratio", None, ".1e", vanished, {"model.depth": 20})
    assert missing.passed is None and missing.not_applicable is None and "not measured" in missing.text
    band = between(0.1, 10, "choice", "a reason")
    assert [band.passes(v) for v in (0.05, 0.1, 3, 10, 11)] == [False, True, True, True, False]
    with pytest.raises(ValueError, match="source 'folklore'"):
        Threshold("< 1", lambda v: v < 1, "folklore", "a reason")


def test_a_gradient_that_underflowed_to_zero_is_the_smallest_value_not_a_missing_one():
    runs = [make_run({"model.depth": 3, "train.seed": seed}, first) for seed, first in
            enumerate(([0.0, 1.0, 1.0], [1e-30, 1.0, 1.0]))]
    zero = across(runs, RATIO_INIT, geometric=True)
    assert zero.mean == 0.0 and zero.n == 2
    assert across(runs[1:], RATIO_INIT, geometric=True).mean == pytest.approx(1e-30)
    assert largest(runs, "model.depth", "seeds") == {"model.depth": 3, "seeds": 2}
