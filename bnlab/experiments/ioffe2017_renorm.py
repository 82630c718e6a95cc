"""`ioffe2017_renorm`: Batch Renormalization against BatchNorm with small and non-i.i.d. batches (Ioffe 2017).

A ReLU MLP on MNIST-1D, trained with bnlab's BatchNorm (norm=bnlab) and with Batch Renormalization
(norm=renorm, the paper's warm-up scaled to the run), and evaluated in eval mode, with the moving statistics:
where BatchNorm's training (batch statistics) and inference (moving ones) part ways. Parts: `small` (i.i.d.
batches of 4: 4000 steps at a rate scaled by sqrt(4/64), the warm-up scaled with the steps), `normal` (i.i.d.
batches of 64), `noniid` (batches of 64 drawn from 2 classes each, data.classes_per_batch=2) and `torch` (the
norm=torch cross-check of the non-i.i.d. BatchNorm runs of seed 0).
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.analysis.aggregate import Stat, mean_interval, mean_series
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    Parts,
    across,
    final_accuracy,
    largest,
    listed,
    seeds,
    select,
    values_of,
)
from bnlab.experiments.plotting import points
from bnlab.experiments.verdict import Check, Claim, Table, Verdict, above, between, check, higher
from bnlab.telemetry import plots

CLEARLY = above(0.02, "choice", "'clearly better' read as at least 2 points more test accuracy (16 of MNIST-1D's "
                "800 test samples), paired by seed, on top of 95% intervals across seeds that do not overlap",
                train__steps=1000)
MATCH = between(-0.02, 0.02, "choice", "'they match' read as within the same 2 points that make 'clearly better'",
                train__steps=1000)
THRESHOLDS = {"renorm − BN test accuracy, small or non-i.i.d. batches (paired by seed)": CLEARLY,
              "renorm − BN test accuracy, i.i.d. batches of normal size (paired by seed)": MATCH}
PAPER_SMALL = ("Ioffe (2017), §4: Inception v3 normalized over microbatches of 4: Batch Renorm trains faster and "
               "ends higher than BatchNorm, whose moving statistics do not fit what the network saw in training")
PAPER_NONIID = ("Ioffe (2017), §4: non-i.i.d. minibatches (few labels, several examples of each): BatchNorm's "
                "validation accuracy falls far below the i.i.d. baseline, Batch Renorm's stays close to it")
PAPER_MATCH = ("Ioffe (2017), §4: with i.i.d. minibatches of 32, Batch Renorm matches BatchNorm's accuracy and "
               "training speed")


SETTINGS = {"small": "small", "normal": "normal", "non-i.i.d.": "noniid"}  # setting -> its part


def setting_runs(parts: Parts) -> dict[str, list[RunData]]:
    """{'small', 'normal', 'non-i.i.d.'} -> their runs, every norm."""
    return {name: parts.get(part, []) for name, part in SETTINGS.items()}


def paired_difference(runs: list[RunData]) -> Stat | None:
    """Final test accuracy, renorm minus BatchNorm, for each seed that ran both; mean and 95% interval."""
    bn = {run.seed: final_accuracy(run) for run in select(runs, norm__name="bnlab")}
    renorm = {run.seed: final_accuracy(run) for run in select(runs, norm__name="renorm")}
    return mean_interval([renorm[seed] - bn[seed] for seed in bn.keys() & renorm.keys()
                          if renorm[seed] is not None and bn[seed] is not None])


def describe(name: str, runs: list[RunData]) -> str:
    """'batches of 4' / 'batches of 64, 2 classes each'."""
    size = listed(runs, "data.batch_size")
    classes = values_of(runs, "data.classes_per_batch")
    return f"{name} (batches of {size}" + (f", {classes[0]} classes each)" if classes else ", i.i.d.)")


def better_checks(name: str, runs: list[RunData]) -> list[Check]:
    renorm, bn = (across(select(runs, norm__name=norm), final_accuracy) for norm in ("renorm", "bnlab"))
    what = describe(name, runs)
    return [*higher(f"{what}: final test accuracy, renorm vs BN", renorm, bn, ".3f"),
            check(f"{what}: renorm − BN, paired by seed", paired_difference(runs), "+.3f", CLEARLY,
                  largest(runs, "train.steps"))]


def verdict(parts: Parts) -> Verdict:
    by_setting = setting_runs(parts)
    normal = by_setting["normal"]
    claims = [Claim("With small batches, Batch Renormalization trains clearly better than BatchNorm", PAPER_SMALL,
                    better_checks("small", by_setting["small"])),
              Claim("With non-i.i.d. batches (few classes each), Batch Renormalization trains clearly better than "
                    "BatchNorm", PAPER_NONIID, better_checks("non-i.i.d.", by_setting["non-i.i.d."])),
              Claim("With i.i.d. batches of normal size, Batch Renormalization and BatchNorm match", PAPER_MATCH,
                    [check(f"{describe('normal', normal)}: renorm − BN final test accuracy, paired by seed",
                           paired_difference(normal), "+.3f", MATCH, largest(normal, "train.steps"))])]
    rows = []
    for name, runs in by_setting.items():
        for norm in values_of(runs, "norm.name"):
            arm = select(runs, norm__name=norm)
            rows.append([describe(name, runs), norm, str(len(arm)), formatting.stat(across(arm, final_accuracy), ".3f"),
                         formatting.stat(across(arm, best_accuracy), ".3f"),
                         formatting.stat(across(arm, lambda run: run.last("acc/train")), ".3f"),
                         formatting.stat(across(arm, lambda run: run.last("loss/train")), ".3g")])
        rows.append([describe(name, runs), "renorm − BN", "", formatting.stat(paired_difference(runs), "+.3f"), "",
                     "", ""])
    table = Table("accuracy at the end of training per setting and norm, mean across seeds",
                  ["setting", "norm", "n", "test acc", "best test acc", "train acc (eval mode)",
                   "training loss (last batch, train mode)"], rows)
    return Verdict(claims, [table], [
        "Accuracies are measured in eval mode, with each layer's moving mean and variance, as the paper evaluates: "
        "test accuracy on the test split, train accuracy on the whole training split (log.train_accuracy). The "
        "training loss is the last logged batch's, in training mode with that batch's statistics: a low training "
        "loss beside a low eval-mode train accuracy is the mismatch between the two modes the paper describes."])


def best_accuracy(run: RunData) -> float | None:
    return max((value for _, value in run.series("acc/test")), default=None)


def figures(parts: Parts):
    by_setting = {name: runs for name, runs in setting_runs(parts).items() if runs}
    figure, axes = plots.new_figure(1200, 420, 1, max(len(by_setting), 1), squeeze=False)
    for ax, (name, runs) in zip(axes[0], by_setting.items(), strict=False):
        for index, norm in enumerate(values_of(runs, "norm.name")):
            steps, values = points(mean_series(select(runs, norm__name=norm), "acc/test"))
            ax.plot(steps, values, color=f"C{index}", marker="o", markersize=3, label=f"norm={norm}")
        ax.set_title(describe(name, runs), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy (eval mode)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    figure.suptitle("BatchNorm (bnlab) and Batch Renormalization (renorm): test accuracy over training, mean over "
                    "seeds", fontsize=10)
    return [("accuracy", "Test accuracy (eval mode, moving statistics) over training with small, normal and "
             "non-i.i.d. batches, BatchNorm against Batch Renormalization (mean over seeds)", figure)]


def deviations(parts: Parts) -> list[str]:
    small, normal, noniid, torch = (parts.get(name, []) for name in ("small", "normal", "noniid", "torch"))
    runs = small + normal + noniid
    return [f"A {listed(runs, 'model.depth')}-layer {listed(runs, 'model.activation')} MLP of width "
            f"{listed(runs, 'model.width')} on {listed(runs, 'data.name')} instead of Inception v3 on ImageNet; "
            f"SGD with momentum {listed(runs, 'optim.momentum')} instead of RMSProp on 50 workers; {seeds(runs)}.",
            f"Small batches: the whole batch is {listed(small, 'data.batch_size')} samples, the gradient's too, where "
            "the paper normalized microbatches of 4 within minibatches of 32 per worker; so that they train at all, "
            f"{listed(small, 'train.steps')} steps at a rate of {listed(small, 'optim.lr')} (the batch of 64's "
            f"{listed(normal, 'optim.lr')} × sqrt(4/64)) against {listed(normal + noniid, 'train.steps')} steps "
            "for the batches of 64.",
            f"Non-i.i.d. batches: batches of {listed(noniid, 'data.batch_size')} from "
            f"{listed(noniid, 'data.classes_per_batch')} of the 10 classes each, in equal shares "
            "(data.classes_per_batch), the paper's 'few labels, several examples each' on a 10-class problem.",
            f"Batch Renorm's warm-up scaled to each run's length: plain BatchNorm for "
            f"{listed(runs, 'norm.warmup_steps')} steps, then d_max reaches {listed(runs, 'norm.dmax')} at step "
            f"{listed(runs, 'norm.dmax_step')} and r_max {listed(runs, 'norm.rmax')} at step "
            f"{listed(runs, 'norm.rmax_step')} (the paper: 5k, 25k and 40k steps); moving statistics updated at "
            f"momentum {listed(runs, 'norm.momentum')} in both arms (the paper's α = 0.01); bnlab's renorm keeps a "
            "moving variance, not a moving standard deviation (bnlab/nn/renorm.py).",
            f"The norm=torch cross-check reran the non-i.i.d. BatchNorm runs of seed {listed(torch, 'train.seed')}."]


QUICK = ("model.width=32", "train.steps=100", "train.eval_every=50", "log.every=50", "log.images=false",
         "train.seed=0,1")
# Batches of 4 see 16 times fewer samples a step: 4 times the steps, the rate × sqrt(4/64), the warm-up × 4.
SMALL = ("data.batch_size=4", "optim.lr=0.005", "train.steps=4000", "train.eval_every=400", "log.every=200",
         "norm.warmup_steps=200", "norm.dmax_step=1000", "norm.rmax_step=1600")
SMALL_QUICK = (*QUICK, "train.steps=400", "train.eval_every=200", "log.every=200")
NONIID = ("data.classes_per_batch=2",)
ARMS = {"norm": ("bnlab", "renorm")}
EXPERIMENT = Experiment(
    name="ioffe2017_renorm",
    paper="Ioffe 2017, Batch Renormalization",
    claim="with small or non-i.i.d. batches Batch Renormalization trains clearly better than BatchNorm; with "
          "i.i.d. batches of normal size they match",
    minutes=2.9, quick_seconds=25,
    parts=(Part(name="small", config="ioffe2017_renorm", overrides=SMALL, quick=SMALL_QUICK, arms=ARMS),
           Part(name="normal", config="ioffe2017_renorm", quick=QUICK, arms=ARMS),
           Part(name="noniid", config="ioffe2017_renorm", overrides=NONIID, quick=QUICK, arms=ARMS),
           Part(name="torch", config="ioffe2017_renorm", overrides=NONIID, quick=QUICK,
                fixed=("norm=torch", "train.seed=0"), cross_check_of="noniid")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
