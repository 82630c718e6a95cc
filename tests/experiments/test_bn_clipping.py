"""`bn_clipping`: its verdict on synthetic runs (held, not held, not measured, not applicable) and one reduced
`bnlab reproduce bn_clipping --quick` for real."""

from __future__ import annotations

import itertools

import pytest
from synthetic_runs import make_run, outcomes

from bnlab.analysis.readback import RunData
from bnlab.experiments import bn_clipping
from bnlab.experiments.reproduce import reproduce
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

RATES = (0.1, 0.316, 1.0, 3.16, 10.0)
LAMBDA = {"optim.adaptive_clip": 0.01}


def arm(norm: str, trains_to: float | None, diverges_from: float | None = None, accuracy: float = 0.95,
        steps: int = 500, **settings) -> list[RunData]:
    """Runs of two seeds at every rate: trained (test accuracy `accuracy`) up to `trains_to`, diverged from
    `diverges_from` on, at chance elsewhere."""
    runs = []
    for lr, seed in itertools.product(RATES, range(2)):
        diverged = diverges_from is not None and lr >= diverges_from
        good = trains_to is not None and lr <= trains_to and not diverged
        runs.append(make_run({"optim.lr": lr, "norm.name": norm, "train.seed": seed, **settings}, [1.0, 1.0],
                             accuracy=accuracy + 0.001 * seed if good else 0.08,
                             status="diverged" if diverged else "completed", steps=steps))
    return runs


def parts(clip_plain=(1.0, None), adaptive_plain=(3.16, None), clip_bn=(1.0, None, 0.95),
          adaptive_bn=(1.0, None, 0.95), steps=500) -> dict[str, list[RunData]]:
    """The unclipped arms as measured at full size (no BN trains to 0.1 and diverges from 0.316, BN trains to
    1.0); the clipped arms as given: (largest training rate, first diverging rate[, BN's accuracy])."""
    return {
        "no_clip": arm("none", 0.1, 0.316, steps=steps) + arm("bnlab", 1.0, steps=steps),
        "clip": arm("none", *clip_plain, steps=steps) + arm("bnlab", clip_bn[0], clip_bn[1], clip_bn[2], steps=steps),
        "adaptive": (arm("none", *adaptive_plain, steps=steps, **LAMBDA)
                     + arm("bnlab", adaptive_bn[0], adaptive_bn[1], adaptive_bn[2], steps=steps, **LAMBDA)),
    }


def test_clipping_that_gives_what_batchnorm_gives_and_changes_nothing_with_it_is_held():
    verdict = bn_clipping.verdict(parts())
    assert outcomes(verdict) == [HELD, HELD, HELD]
    divergence = verdict.claims[0].checks[0]
    assert divergence.measured == "0 of 8 clipped runs diverged at rates 0.316, 1, 3.16, 10 (unclipped: 8 of 8)"
    assert verdict.claims[1].checks[1].measured == "no BN with adaptive clipping 3.16, BN unclipped 1"
    assert len(verdict.tables[0].rows) == len(RATES)
    assert verdict.tables[0].rows[1][1] == "0.080 ± 0 (2/2 diverged)"  # no BN, no clipping, lr 0.316
    assert verdict.tables[0].rows[1][4].endswith("✓")  # BN trains at 0.316
    assert verdict.notes == ["Adaptive clipping bounds the step at every rate: each unit moves by at most lr × λ of "
                             "its norm a step, 0.001 at lr 0.1."]


def test_clipping_that_does_not_stop_the_divergence_is_not_held():
    verdict = bn_clipping.verdict(parts(clip_plain=(0.1, 0.316)))
    assert outcomes(verdict) == [NOT_HELD, HELD, HELD]
    assert [check.passed for check in verdict.claims[0].checks] == [False, False, False]


def test_clipping_that_stops_divergence_but_trains_at_lower_rates_is_partly_held():
    verdict = bn_clipping.verdict(parts(adaptive_plain=(0.316, None)))
    assert outcomes(verdict)[1] == PARTLY
    assert [check.passed for check in verdict.claims[1].checks] == [True, False, False]


def test_clipping_that_changes_batchnorms_accuracy_or_range_is_found():
    verdict = bn_clipping.verdict(parts(adaptive_bn=(3.16, None, 0.90)))
    assert outcomes(verdict)[2] == PARTLY  # gradient clipping changes nothing; adaptive clipping does
    assert [check.passed for check in verdict.claims[2].checks] == [True, True, False, False]
    assert verdict.claims[2].checks[2].measured.count("(lr ") == 3  # the rates where unclipped BN trains
    assert verdict.claims[2].checks[3].measured == "3.16 vs 1 unclipped"
    assert verdict.notes[0] == ("With BatchNorm, adaptive clipping trains at 3.16, beyond unclipped BatchNorm's "
                                "largest training rate (1).")


def test_a_missing_part_is_not_measured_and_a_short_budget_not_applicable():
    missing = parts()
    del missing["clip"]
    verdict = bn_clipping.verdict(missing)
    assert outcomes(verdict) == [NOT_MEASURED, HELD, INCOMPLETE]
    assert "not measured" in verdict.claims[0].checks[0].measured
    assert outcomes(bn_clipping.verdict(parts(steps=100))) == [NOT_APPLICABLE] * 3
    assert outcomes(bn_clipping.verdict({})) == [NOT_MEASURED] * 3


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_quick_reproduction_runs_every_part_and_judges_what_applies(tmp_path):
    out = tmp_path / "bn_clipping"
    result = reproduce("bn_clipping", ["train.steps=30", "model.width=16", "optim.lr=1.0", "log.images=false"],
                       quick=True, out=out)
    assert {name: len(runs) for name, runs in result.parts.items()} == {"no_clip": 2, "clip": 2, "adaptive": 2,
                                                                       "torch": 1}
    assert all(run.status in ("completed", "diverged") for run in result.runs)
    configs = {name: {(run.config["optim"]["grad_clip"], run.config["optim"]["adaptive_clip"]) for run in runs}
               for name, runs in result.parts.items()}
    assert configs == {"no_clip": {(None, None)}, "clip": {(bn_clipping.GRAD_CLIP, None)},
                       "adaptive": {(None, bn_clipping.ADAPTIVE_CLIP)}, "torch": {(None, bn_clipping.ADAPTIVE_CLIP)}}
    assert outcomes(result.verdict)[:3] == [NOT_APPLICABLE] * 3 and outcomes(result.verdict)[3] == HELD
    text = result.markdown.read_text()
    assert "| > -0.02 | choice |" in text and "Pascanu et al. (2013, §3.2)" in text
    assert "not applicable at quick size" in text and "| lr | no BN, no clipping |" in text
    assert set(result.figures) == {"clipping_lr_sweep"} and result.figures["clipping_lr_sweep"][0].stat().st_size > 1000


@pytest.mark.parametrize("override", ["norm=none", "norm=bnlab"])
def test_an_override_that_drops_the_batchnorm_comparison_is_refused(override):
    from bnlab.errors import ConfigError
    from bnlab.experiments.reproduce import refuse_dropped_arms

    with pytest.raises(ConfigError, match="arm that `bn_clipping` compares"):
        refuse_dropped_arms(bn_clipping.EXPERIMENT, [override])
