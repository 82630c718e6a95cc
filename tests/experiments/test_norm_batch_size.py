"""`norm_batch_size`: its verdict on synthetic runs (held, not held, not measured, not applicable), the budgets
and ghost sizes each batch size runs with, the GroupNorm/LayerNorm cross-check, and a real --quick run."""

from __future__ import annotations

import itertools

import pytest
from synthetic_runs import geometric, make_run, outcomes

from bnlab.data.datasets import data_shape, load_dataset
from bnlab.errors import ConfigError
from bnlab.experiments import norm_batch_size as nbs
from bnlab.experiments.crosscheck import cross_check
from bnlab.experiments.experiment import Reproduction
from bnlab.experiments.reproduce import _plan_parts, refuse_dropped_arms, reproduce
from bnlab.experiments.verdict import HELD, INCOMPLETE, NOT_APPLICABLE, NOT_HELD, NOT_MEASURED, PARTLY

DEPTH = 30  # the depth the gradient thresholds are written for
# BatchNorm's growth per layer at init by batch size, as Yang et al. predict it (and batch 2: vanished)
BN_GROWTH = {2: 1e-4, 4: 1.45, 8: 1.34, 16: 1.28, 32: 1.25, 64: 1.23, 128: 1.22, 256: 1.21}


def training_runs(bn_at_2: float = 0.55, group_at_2: float = 0.95, epochs: int = nbs.EPOCHS, seeds=range(2),
                  norms=nbs.NORMS, batches=nbs.BATCH_SIZES) -> list:
    """Trained runs: every norm at 0.95 except BatchNorm (and renorm, ghost) at batch 2 and GroupNorm/LayerNorm
    at batch 2, each seed 0.01 apart; train.steps as the experiment's budget for `epochs` epochs."""
    runs = []
    for norm, batch, seed in itertools.product(norms, batches, seeds):
        accuracy = 0.95
        if batch == 2:
            accuracy = group_at_2 if norm in ("group", "layer") else bn_at_2
        steps = epochs * (data_shape("digits")[0] // batch)
        runs.append(make_run({"norm.name": norm, "data.batch_size": batch, "data.name": "digits", "train.seed": seed,
                              "norm.ghost_batch_size": min(nbs.GHOST_SIZE, batch), "optim.lr": nbs.budget(batch)[1]},
                             geometric(4, 1.1),
                             accuracy=accuracy - 0.01 * seed, steps=steps))
    return runs


def gradient_runs(bn_growth: dict | None = None, flat: float = 1.02, seeds=range(3), depth: int = DEPTH) -> list:
    """Step-0 runs of every norm at every batch size (ghost from 16 on, as the experiment runs it): BatchNorm and
    renorm grow by `bn_growth`, ghost by BatchNorm's at 16, GroupNorm and LayerNorm by `flat`."""
    bn_growth = bn_growth or BN_GROWTH
    runs = []
    for norm, batch, seed in itertools.product(nbs.NORMS, nbs.BATCH_SIZES, seeds):
        if norm == "ghost" and batch < nbs.GHOST_SIZE:
            continue
        factor = {"group": flat, "layer": flat, "ghost": bn_growth[min(nbs.GHOST_SIZE, batch)]}.get(
            norm, bn_growth[batch])
        runs.append(make_run({"norm.name": norm, "data.batch_size": batch, "train.seed": seed, "model.depth": depth,
                              "norm.ghost_batch_size": min(nbs.GHOST_SIZE, batch)},
                             geometric(depth, factor * (1 + 0.002 * seed)), steps=1))
    return runs


def parts(training, gradients) -> dict:
    split = {f"batch_{batch}": [run for run in training if run.config["data"]["batch_size"] == batch]
             for batch in nbs.BATCH_SIZES}
    ghost = [run for run in gradients if run.config["norm"]["name"] == "ghost"]
    return {"gradients": [run for run in gradients if run not in ghost], "ghost": ghost, **split}


def test_held_where_groupnorm_is_flat_batchnorm_degrades_and_explodes_more_at_small_batches():
    verdict = nbs.verdict(parts(training_runs(), gradient_runs()))
    assert outcomes(verdict) == [HELD, HELD, HELD, HELD]
    grows = verdict.claims[2].checks
    assert grows[0].measured.startswith("1.21") and grows[1].measured.startswith("1.34")
    assert grows[-1].measured == "1.45 (4) > 1.34 (8) > 1.25 (32) > 1.21 (256)"
    degrade = verdict.claims[1].checks[0]
    assert degrade.measured.startswith("0.400 (0.945")  # 0.945 - 0.545, the seeds' means
    titles = [table.title for table in verdict.tables]
    assert titles[0].startswith("final test accuracy against the batch size") and len(verdict.tables[0].rows) == 5
    budget = {row[0]: row[1:] for row in verdict.tables[1].rows}
    assert budget["2"] == ["3595", "5", "0.00625", "2"] and budget["256"] == ["25", "5", "0.8", "16"]
    assert verdict.notes == [  # renorm's warm-up and a single ghost batch are BatchNorm
        "Batch Renorm is BatchNorm at step 0 (its warm-up): its growth per layer at init differs from BatchNorm's on "
        "the same batch and seed by at most 0.0e+00 (24 runs).",
        "Ghost BN is BatchNorm at batch 16: its growth per layer at init differs from BatchNorm's on the same batch "
        "and seed by at most 0.0e+00 (3 runs)."]
    where = {row[0]: row[1:] for row in verdict.tables[-1].rows}
    assert where["BatchNorm"] == ["2", "2, 4, 8, 16"] and where["GroupNorm"] == ["nowhere", "nowhere"]


def test_not_held_where_groupnorm_degrades_as_batchnorm_and_the_growth_ignores_the_batch():
    flat_bn = {batch: 1.2 for batch in nbs.BATCH_SIZES}
    verdict = nbs.verdict(parts(training_runs(bn_at_2=0.55, group_at_2=0.55), gradient_runs(flat_bn)))
    assert outcomes(verdict) == [NOT_HELD, PARTLY, PARTLY, HELD]
    assert [check.passed for check in verdict.claims[1].checks] == [True, False, False, False, False, True]
    assert [check.passed for check in verdict.claims[2].checks] == [True, False, False, False, False]


def test_groupnorm_whose_gradient_depends_on_the_batch_is_not_held():
    runs = gradient_runs()
    for run in runs:
        if run.config["norm"]["name"] == "layer" and run.config["data"]["batch_size"] == 2:
            run.scalars.update({tag: [(0, value * 3.0 ** int(tag[-2:]))]
                                for tag, ((_, value), *_) in run.scalars.items() if tag.startswith("grad_norm")})
    claim = nbs.verdict(parts(training_runs(), runs)).claims[3]
    assert claim.outcome == PARTLY and [check.passed for check in claim.checks] == [True, False, True]
    assert "(2)" in claim.checks[1].measured


def test_a_missing_batch_size_is_not_measured_never_held():
    training = [run for run in training_runs() if run.config["data"]["batch_size"] != 2]
    gradients = [run for run in gradient_runs() if run.config["data"]["batch_size"] != 8]
    verdict = nbs.verdict(parts(training, gradients))
    # the claims that name batch 2 or 8 miss a measurement; "every batch size" is every one that ran
    assert outcomes(verdict) == [NOT_MEASURED, INCOMPLETE, INCOMPLETE, HELD]
    assert nbs.verdict({}).claims and {c.outcome for c in nbs.verdict({}).claims} == {NOT_MEASURED}


def test_accuracy_after_too_few_epochs_or_one_seed_and_gradients_of_a_shallow_network_are_not_applicable():
    for training in (training_runs(epochs=1), training_runs(seeds=range(1))):
        verdict = nbs.verdict(parts(training, gradient_runs()))
        assert outcomes(verdict)[:2] == [NOT_APPLICABLE, NOT_APPLICABLE]
        assert "needs" in verdict.claims[0].checks[0].not_applicable
    shallow = nbs.verdict(parts(training_runs(), gradient_runs(depth=6)))
    assert outcomes(shallow)[2:] == [NOT_APPLICABLE, NOT_APPLICABLE]  # Yang et al.'s limit is for deep networks
    assert shallow.claims[3].checks[0].not_applicable == "needs model.depth ≥ 30 (ran 6)"
    one_seed = nbs.verdict(parts(training_runs(), gradient_runs(seeds=range(1))))
    assert outcomes(one_seed)[2] == HELD  # the other checks passed; the intervals' one needs two seeds
    assert "needs seeds ≥ 2" in one_seed.claims[2].checks[3].not_applicable


def test_each_batch_size_trains_for_equal_epochs_at_a_linearly_scaled_rate_with_a_valid_ghost_batch():
    samples = len(load_dataset("digits").x_train)  # the experiment's count against the loader's
    assert data_shape("digits")[0] == samples == 1438
    for batch in nbs.BATCH_SIZES:
        part = next(part for part in nbs.EXPERIMENT.parts if part.name == f"batch_{batch}")
        steps, lr = nbs.budget(batch)
        assert steps == nbs.EPOCHS * (samples // batch) and lr == pytest.approx(0.1 * batch / 32)
        assert f"train.steps={steps}" in part.overrides and f"data.batch_size={batch}" in part.overrides
        ghost = int(next(o for o in part.overrides if o.startswith("norm.ghost_batch_size=")).split("=")[1])
        assert ghost == min(16, batch) and batch % ghost == 0
        run = make_run({"data.batch_size": batch, "data.name": "digits"}, [1.0, 1.0], steps=steps)
        assert nbs.epochs(run) == nbs.EPOCHS


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_the_full_size_sweeps_compose_at_every_point(tmp_path):
    # every ghost batch divides its batch and the groups divide the width at full size, checked by Hydra
    result = Reproduction(nbs.EXPERIMENT, tmp_path / "full", False, [], {})
    launches = _plan_parts(result)
    jobs = {part.name: launch.jobs for part, launch in zip(nbs.EXPERIMENT.parts, launches, strict=True)}
    assert jobs["gradients"] == 8 * 4 * 3 and jobs["ghost"] == 5 * 3 and jobs["torch"] == 2
    assert all(jobs[f"batch_{batch}"] == 5 * 3 for batch in nbs.BATCH_SIZES)
    assert "norm.ghost_batch_size=2" in result.commands["batch_2"] and "norm=ghost" in result.commands["ghost"]


def test_an_override_that_drops_a_norm_is_refused():
    with pytest.raises(ConfigError, match="removes the norm=renorm arm that `norm_batch_size` compares"):
        refuse_dropped_arms(nbs.EXPERIMENT, ["norm=bnlab,group"])


def test_groupnorm_and_layernorm_are_cross_checked_each_against_its_own_torch_layer():
    ours = [make_run({"norm.name": norm, "data.batch_size": 8}, geometric(4, 1.1), accuracy=0.9)
            for norm in ("bnlab", "group", "layer")]
    theirs = [make_run({"norm.name": name, "data.batch_size": 8}, geometric(4, 1.1, 1 + 1e-7), accuracy=0.905)
              for name in ("torch_group", "torch_layer")]
    claim = cross_check(ours, theirs)
    assert claim.outcome == HELD and "2 matched runs" in claim.checks[0].what
    assert claim.claim.startswith("bnlab's GroupNorm and LayerNorm and torch's GroupNorm and LayerNorm agree")
    # a LayerNorm run that differs from torch's is found: torch_layer is compared with layer, not with group
    ours[2].scalars["grad_norm/output/layer00"] = [(0, 2.0)]
    assert cross_check(ours, theirs).outcome == PARTLY
    assert cross_check(ours[:1], theirs).outcome == NOT_MEASURED  # no bnlab GroupNorm or LayerNorm run


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_a_quick_reproduction_runs_end_to_end(tmp_path):
    result = reproduce("norm_batch_size", ["model.width=16"], quick=True, out=tmp_path / "quick")
    assert all(run.status == "completed" for run in result.runs), result.not_completed
    assert {name: len(runs) for name, runs in result.parts.items()} == {
        "gradients": 2, "ghost": 1, **{f"batch_{b}": 1 for b in nbs.BATCH_SIZES}, "torch": 2}
    claims = {claim.claim: claim.outcome for claim in result.verdict.claims}
    assert list(claims.values())[:4] == [NOT_APPLICABLE] * 4  # 10 steps are not 5 epochs, depth 6 is not 30
    assert all(outcome not in (NOT_MEASURED, INCOMPLETE) for outcome in claims.values()), claims
    cross = result.verdict.claims[-1]
    assert cross.claim.startswith("bnlab's GroupNorm and LayerNorm") and "1 matched run " in cross.checks[0].what
    assert cross.checks[0].passed  # GroupNorm's twin ran at quick size (LayerNorm's did not)
    assert set(result.figures) == {"batch_size", "gradients_init"}
    text = result.markdown.read_text()
    assert "its gradient at init was measured at batch 256 only" in text and "norm=torch_group,torch_layer" in text
