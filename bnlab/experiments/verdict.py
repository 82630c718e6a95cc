"""What a verdict is made of: thresholds with their sources, checks, claims and their outcomes.

A `Claim` is one statement of a paper, what the paper reports, and the `Check`s that test it. A check
names a measured quantity, its value in this reproduction, and a test fixed in advance: a `Threshold`,
which carries where its value comes from (the paper, theory, a control run, or a stated choice) and the
smallest setting it makes sense at (e.g. depth 20). A check is passed, failed, not measured (its runs are
missing) or not applicable (what ran is smaller than its threshold needs, e.g. under `--quick`).

A claim's outcome says only what was measured:

- *not applicable at this size* when every check is;
- otherwise, over the applicable checks: *not measured* when none was measured, *incomplete* when some
  were not, *held* when every one passed, *not held* when none did, *partly* otherwise.

A `Verdict` is the claims plus the measurement tables and notes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bnlab import formatting
from bnlab.analysis.aggregate import Stat

HELD, PARTLY, NOT_HELD = "held", "partly", "not held"
NOT_MEASURED, INCOMPLETE, NOT_APPLICABLE = "not measured", "incomplete", "not applicable at this size"
MARKS = {True: "✓", False: "✗", None: "?"}
NOT_APPLICABLE_MARK = "–"
SOURCES = ("paper", "theory", "control run", "choice")


@dataclass(frozen=True)
class Threshold:
    """A test fixed before the full-size runs, where its value comes from, and the size it needs.

    `needs` holds (config key, smallest value): a threshold written for depth-20 networks says nothing
    about depth-5 ones, so a check on runs below it is not applicable rather than failed.
    """

    test: str  # as printed, e.g. "< 0.001"
    passes: Callable[[float], bool]
    source: str  # one of SOURCES
    basis: str  # why this value, in a sentence
    needs: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"threshold source {self.source!r}: expected one of {', '.join(SOURCES)}")

    @property
    def label(self) -> str:
        return f"{self.test} [{self.source}]"

    def shortfall(self, ran: dict[str, float | None]) -> str | None:
        """What this threshold needs that `ran` (config key -> largest value that ran) lacks; None if nothing."""
        missing = [f"{key} ≥ {formatting.number(minimum, 'g')} (ran {formatting.number(ran.get(key), 'g')})"
                   for key, minimum in self.needs if ran.get(key) is not None and ran[key] < minimum]
        return "needs " + ", ".join(missing) if missing else None


def _needs(needs: dict) -> tuple[tuple[str, float], ...]:
    return tuple((key.replace("__", "."), value) for key, value in needs.items())


def below(limit: float, source: str, basis: str, **needs) -> Threshold:
    """Passes when the mean is below `limit`; `needs` as model__depth=20."""
    return Threshold(f"< {limit:g}", lambda value: value < limit, source, basis, _needs(needs))


def above(limit: float, source: str, basis: str, **needs) -> Threshold:
    return Threshold(f"> {limit:g}", lambda value: value > limit, source, basis, _needs(needs))


def between(low: float, high: float, source: str, basis: str, **needs) -> Threshold:
    return Threshold(f"within [{low:g}, {high:g}]", lambda value: low <= value <= high, source, basis,
                     _needs(needs))


@dataclass
class Check:
    """One measured quantity against a test stated in advance.

    `passed` is None when it was not measured; `not_applicable` says what the test needs that did not run.
    """

    what: str
    measured: str
    test: str
    passed: bool | None
    not_applicable: str | None = None

    @property
    def text(self) -> str:
        if self.not_applicable is not None:
            return (f"{NOT_APPLICABLE_MARK} {self.what}: {self.measured} (test: {self.test}; not applicable at "
                    f"this size: {self.not_applicable})")
        return f"{MARKS[self.passed]} {self.what}: {self.measured} (test: {self.test})"


@dataclass
class Claim:
    claim: str
    paper: str
    checks: list[Check]

    @property
    def applicable(self) -> list[Check]:
        return [check for check in self.checks if check.not_applicable is None]

    @property
    def outcome(self) -> str:
        if self.checks and not self.applicable:
            return NOT_APPLICABLE
        results = [check.passed for check in self.applicable]
        if all(result is None for result in results):  # also: no checks at all
            return NOT_MEASURED
        if any(result is None for result in results):
            return INCOMPLETE
        if all(results):
            return HELD
        return PARTLY if any(results) else NOT_HELD


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


def judged(what: str, value: float | None, measured: str, threshold: Threshold,
           ran: dict[str, float | None] | None = None) -> Check:
    """A Check of one measured number against `threshold` (`measured`: how it reads in the report); not
    applicable where `ran` (config key -> largest value among the measured runs) falls short of the threshold's
    needs, unmeasured (passed None) without a value."""
    short = threshold.shortfall(ran or {})
    passed = None if value is None or short is not None else bool(threshold.passes(value))
    return Check(what, measured, threshold.label, passed, not_applicable=short)


def check(what: str, stat: Stat | None, spec: str, threshold: Threshold,
          ran: dict[str, float | None] | None = None) -> Check:
    """`judged` for a Stat: its mean against `threshold`, the Stat as the report shows it."""
    measured = formatting.stat(stat, spec) if stat is not None else "not measured"
    return judged(what, None if stat is None else stat.mean, measured, threshold, ran)


def higher(what: str, better: Stat | None, other: Stat | None, spec: str) -> list[Check]:
    """Two checks: `better`'s mean is higher; and its 95% interval lies entirely above `other`'s.

    Overlapping intervals fail the second check, so a higher mean alone never makes a claim held; with one
    seed there is no interval, and the second check is not measured.
    """
    measured = f"{formatting.stat(better, spec)} vs {formatting.stat(other, spec)}"
    if better is None or other is None:
        return [Check(what, measured, "higher mean", None)]
    if better.low is None or other.high is None:
        separate = None
        measured += " (one seed: no interval)"
    else:
        separate = better.low > other.high
    return [Check(what, measured, "higher mean", better.mean > other.mean),
            Check(f"{what}, 95% intervals", measured, "do not overlap", separate)]
