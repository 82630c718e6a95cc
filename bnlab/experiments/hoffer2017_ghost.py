"""`hoffer2017_ghost`: ghost batches close part of large-batch BatchNorm's generalization gap (Hoffer et al. 2017).

A ReLU MLP on MNIST-1D, for the same number of epochs in three arms: small batches with BatchNorm, large
batches (32 times larger, the learning rate scaled by sqrt(32) as the paper does) with BatchNorm, and the same
large batches with Ghost BatchNorm over ghost batches of the small batch's size. Every evaluation also
measures the training set in eval mode (log.train_accuracy), so train minus test accuracy is measured
beside test accuracy. Parts: `small`, `large` (norm=bnlab and norm=ghost) and `torch` (the norm=torch
cross-check of the large-batch BatchNorm runs of seed 0).
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.analysis.aggregate import Stat, mean_interval, mean_series
from bnlab.analysis.readback import RunData
from bnlab.data.datasets import data_shape
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import Parts, across, final_accuracy, largest, listed, seeds, select, setting
from bnlab.experiments.plotting import points
from bnlab.experiments.verdict import Check, Claim, Table, Verdict, above, higher
from bnlab.telemetry import plots

PART_OF_GAP = above(0.25, "choice", "'closes part of the gap' read as at least a quarter of the small − large "
                    "difference in mean test accuracy; the paper's +GBN closes a share that differs by network",
                    train__steps=300)
THRESHOLDS = {"fraction of the test-accuracy gap closed: (ghost − large) / (small − large)": PART_OF_GAP}
PAPER_GAP = ("Hoffer et al. (2017), Table 1, after Keskar et al. (2017): at the same number of epochs, "
             "large batches reach a lower test accuracy than small ones, the 'generalization gap'")
PAPER_GHOST = ("Hoffer et al. (2017), Ghost Batch Normalization and Table 1: with the learning rate scaled by "
               "sqrt(large/small), Ghost BatchNorm over ghost batches of 128 within batches of 4096 raises the "
               "large batch's validation accuracy (+GBN); adapting the regime (+RA) closes the rest")
ARMS = (("small batch, BN", "small", "bnlab"), ("large batch, BN", "large", "bnlab"),
        ("large batch, ghost BN", "large", "ghost"))


def train_accuracy(run: RunData) -> float | None:
    return run.last("acc/train")


def train_test_gap(run: RunData) -> float | None:
    """Final train minus test accuracy, both in eval mode (the training set as the test set is measured)."""
    train, test = run.last("acc/train"), final_accuracy(run)
    return None if train is None or test is None else train - test


def arms(parts: Parts) -> dict[str, list[RunData]]:
    """'small batch, BN', 'large batch, BN', 'large batch, ghost BN' -> their runs."""
    return {label: select(parts.get(part, []), norm__name=norm) for label, part, norm in ARMS}


def gap_closed(small: Stat | None, large: Stat | None, ghost: Stat | None) -> float | None:
    """(ghost − large) / (small − large) of the mean test accuracies; None without a positive gap to close."""
    if small is None or large is None or ghost is None or small.mean <= large.mean:
        return None
    return (ghost.mean - large.mean) / (small.mean - large.mean)


def ghost_minus_large(by_arm: dict[str, list[RunData]]) -> Stat | None:
    """Final test accuracy, ghost BN minus BN at the large batch, for each seed that ran both."""
    large = {run.seed: final_accuracy(run) for run in by_arm["large batch, BN"]}
    ghost = {run.seed: final_accuracy(run) for run in by_arm["large batch, ghost BN"]}
    return mean_interval([ghost[seed] - large[seed] for seed in large.keys() & ghost.keys()
                          if ghost[seed] is not None and large[seed] is not None])


def verdict(parts: Parts) -> Verdict:
    by_arm = arms(parts)
    test = {label: across(runs, final_accuracy) for label, runs in by_arm.items()}
    small, large, ghost = (test[label] for label, _, _ in ARMS)
    fraction = gap_closed(small, large, ghost)
    measured = (f"small {formatting.stat(small, '.3f')}, large {formatting.stat(large, '.3f')}, ghost "
                f"{formatting.stat(ghost, '.3f')}: {formatting.number(fraction, '.2f', 'no gap to close')}")
    short = PART_OF_GAP.shortfall(largest(parts.get("large", []), "train.steps"))
    if short is not None:
        closed = Check("fraction of the gap closed", measured, PART_OF_GAP.label, None, not_applicable=short)
    elif small is None or large is None or ghost is None:
        closed = Check("fraction of the gap closed", measured, PART_OF_GAP.label, None)
    else:  # no gap (small ≤ large) closes nothing
        closed = Check("fraction of the gap closed", measured, PART_OF_GAP.label,
                       fraction is not None and bool(PART_OF_GAP.passes(fraction)))
    claims = [Claim("With BatchNorm, large batches generalize worse than small ones at the same number of epochs",
                    PAPER_GAP, higher("final test accuracy, small vs large batch", small, large, ".3f")),
              Claim("Ghost batches close part of the large batch's generalization gap", PAPER_GHOST,
                    [*higher("final test accuracy, large batch with ghost BN vs with BN", ghost, large, ".3f"),
                     closed])]
    rows = [[label, listed(runs, "data.batch_size"), listed(runs, "norm.ghost_batch_size") if norm == "ghost"
             else "-", listed(runs, "optim.lr"), listed(runs, "train.steps"), str(len(runs)),
             formatting.stat(test[label], ".3f"), formatting.stat(across(runs, train_accuracy), ".3f"),
             formatting.stat(across(runs, train_test_gap), ".3f")]
            for (label, _, norm), runs in zip(ARMS, by_arm.values(), strict=True)]
    table = Table("per arm, at the end of training (mean across seeds; accuracies in eval mode)",
                  ["arm", "batch", "ghost batch", "lr", "steps", "n", "test acc", "train acc", "train − test"], rows)
    notes = ["The generalization gap in Hoffer et al.'s sense is the difference in test accuracy between small and "
             "large batches (the claims); train − test accuracy (the table) is the gap between the training and "
             "the test set within one arm, both measured in eval mode on the whole set (log.train_accuracy).",
             "Final test accuracy, large batch with ghost BN minus with BN, paired by seed (same data split and "
             f"initial weights; not one of the checks): {formatting.stat(ghost_minus_large(by_arm), '+.3f')}."]
    return Verdict(claims, [table], notes)


def epochs_per_step(run: RunData) -> float:
    """The fraction of the training split one step takes (the x axis where the arms' step counts differ)."""
    samples, _ = data_shape(setting(run, "data.name"), synthetic_dim=setting(run, "data.dim"),
                            synthetic_samples=setting(run, "data.samples"))
    return setting(run, "data.batch_size") / samples


def figures(parts: Parts):
    by_arm = arms(parts)
    figure, (left, right) = plots.new_figure(1150, 430, 1, 2)
    for index, (label, runs) in enumerate(by_arm.items()):
        if not runs:
            continue
        scale = epochs_per_step(runs[0])
        for ax, tag in ((left, "acc/test"), (right, "acc/train")):
            steps, values = points(mean_series(runs, tag))
            ax.plot([step * scale for step in steps], values, color=f"C{index}", marker="o", markersize=3,
                    label=label)
    for ax, name in ((left, "test"), (right, "training")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} accuracy (eval mode)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    figure.suptitle("small batch, large batch and large batch with ghost batches: accuracy over epochs (mean over "
                    "seeds)", fontsize=10)
    return [("accuracy", "Test (left) and training (right) accuracy, both in eval mode, against epochs, for the "
             "small batch, the large batch and the large batch with ghost batches (mean over seeds)", figure)]


def deviations(parts: Parts) -> list[str]:
    small, large, torch = (parts.get(name, []) for name in ("small", "large", "torch"))
    runs = small + large
    return [f"A {listed(runs, 'model.depth')}-layer {listed(runs, 'model.activation')} MLP of width "
            f"{listed(runs, 'model.width')} on {listed(runs, 'data.name')} (3,200 training samples) instead of "
            "ResNets and VGG-like networks on CIFAR and ImageNet; "
            f"batches of {listed(small, 'data.batch_size')} and {listed(large, 'data.batch_size')} instead of 128 "
            f"and 4096 (the same ratio, 32), ghost batches of {listed(large, 'norm.ghost_batch_size')}; {seeds(runs)}.",
            f"The same number of epochs in every arm ({listed(small, 'train.steps')} steps of the small batch, "
            f"{listed(large, 'train.steps')} of the large: 100 passes over the data, the large batch leaving out the "
            "samples that do not fill a batch in each), Hoffer et al.'s +GBN setting; their regime adaptation "
            "(+RA: as many steps as the small batch) was not run. SGD with momentum "
            f"{listed(runs, 'optim.momentum')}, a constant rate of {listed(small, 'optim.lr')} (small) and "
            f"{listed(large, 'optim.lr')} (large: × sqrt(32), the paper's scaling), no weight decay, no schedule.",
            f"The norm=torch cross-check reran the large-batch BatchNorm runs of seed {listed(torch, 'train.seed')}."]


# Same epochs: 100 per arm. The small batch (32) takes 100 steps an epoch, the large one (1024) 3.
SMALL = ("data.batch_size=32", "optim.lr=0.05", "train.steps=10000", "train.eval_every=500", "log.every=500",
         "norm=bnlab")
LARGE = ("data.batch_size=1024", "optim.lr=0.283", "train.steps=300", "train.eval_every=15", "log.every=15")
QUICK = ("model.width=32", "train.seed=0,1")
EXPERIMENT = Experiment(
    name="hoffer2017_ghost",
    paper="Hoffer, Hubara & Soudry 2017, Train longer, generalize better",
    claim="with BatchNorm, large batches generalize worse than small ones at the same number of epochs; ghost "
          "batches close part of that gap",
    minutes=3.0, quick_seconds=20,
    parts=(Part(name="small", config="hoffer2017_ghost", overrides=SMALL,
                quick=(*QUICK, "train.steps=400", "train.eval_every=100", "log.every=100"),
                arms={"norm": ("bnlab",)}),
           Part(name="large", config="hoffer2017_ghost", overrides=LARGE,
                quick=(*QUICK, "train.steps=12", "train.eval_every=4", "log.every=4"),
                arms={"norm": ("bnlab", "ghost")}),
           Part(name="torch", config="hoffer2017_ghost", overrides=LARGE,
                quick=(*QUICK, "train.steps=12", "train.eval_every=4", "log.every=4"),
                fixed=("norm=torch", "train.seed=0"), cross_check_of="large")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
