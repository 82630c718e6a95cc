"""`lr_tolerance`: BatchNorm networks train at learning rates where the same network without it diverges or
stalls (Ioffe & Szegedy 2015, BN-x5 and BN-x30; Bjorck et al. 2018).

A 10-layer ReLU MLP (kaiming weights) on a half-decade learning-rate grid, with and without BatchNorm.
Parts: `main` and `torch` (the cross-check of two rates of seed 0).
"""

from __future__ import annotations

import math

from bnlab import formatting
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    Parts,
    across,
    bn_arm,
    final_accuracy,
    largest,
    listed,
    seeds,
    select,
    values_of,
)
from bnlab.experiments.plotting import mean_of, xy_panel
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict, above
from bnlab.telemetry import plots

TRAINED = above(0.8, "choice", "a rate 'trains' when every seed completes and ends above 0.8 test accuracy: far "
                "above chance (0.1), below the 0.95-0.98 the networks reach on digits", train__steps=500)
TOLERANCE = Threshold(">= 5", lambda ratio: ratio >= 5, "paper", "Ioffe & Szegedy (2015, §4.2.2): BN-x5 trains at "
                      "5 times the base rate (BN-x30 at 30 times)", (("train.steps", 500),))
THRESHOLDS = {"a learning rate trains: final test accuracy of every seed": TRAINED,
              "largest training rate, BN / no BN": TOLERANCE}


def trains(runs: list[RunData]) -> bool:
    return bool(runs) and all(run.status == "completed" and TRAINED.passes(final_accuracy(run) or 0) for run in runs)


def largest_training_rate(runs: list[RunData]) -> float | None:
    rates = values_of(runs, "optim.lr")
    return max((lr for lr in rates if trains(select(runs, optim__lr=lr))), default=None)


def verdict(parts: Parts) -> Verdict:
    runs = parts.get("main", [])
    plain, normed = bn_arm(runs, False), bn_arm(runs, True)
    best_plain, best_bn = largest_training_rate(plain), largest_training_rate(normed)
    measured = f"BN {_rate(best_bn)}, no BN {_rate(best_plain)}"
    if not plain or not normed:
        ratio = None
    elif best_bn is None:  # BatchNorm trains at no rate of the grid
        ratio = 0.0
    else:
        ratio = math.inf if best_plain is None else best_bn / best_plain
    measured += "" if ratio is None else f", ratio {formatting.number(ratio, '.3g', missing='∞')}"
    short = TOLERANCE.shortfall(largest(runs, "train.steps"))
    checks = [Check("largest learning rate that trains", measured, "BN's larger", None if ratio is None
                    else ratio > 1, not_applicable=short),
              Check("ratio of the largest training rates, BN / no BN", measured, TOLERANCE.label,
                    None if ratio is None else bool(TOLERANCE.passes(ratio)), not_applicable=short)]
    claims = [Claim("BatchNorm networks train at learning rates where the same network without it diverges or "
                    "stalls", "Ioffe & Szegedy (2015), §4.2.2: BN-x5 and BN-x30 train at 5x and 30x the base "
                    "rate; Bjorck et al. (2018): BN allows larger learning rates, without it training diverges",
                    checks)]
    rows = []
    for lr in values_of(runs, "optim.lr"):
        row = [formatting.number(lr, "g")]
        for group in (plain, normed):
            at = select(group, optim__lr=lr)
            statuses = ", ".join(sorted({run.status for run in at})) or "-"
            row += [formatting.stat(across(at, final_accuracy), ".3f"), statuses, "yes" if trains(at) else "no"]
        rows.append(row)
    table = Table(f"final test accuracy per learning rate (trains: every seed completes, test accuracy {TRAINED.test})",
                  ["lr", "no BN: test acc", "no BN: status", "no BN: trains", "BN: test acc", "BN: status",
                   "BN: trains"], rows)
    return Verdict(claims, [table])


def _rate(value: float | None) -> str:
    return formatting.number(value, "g", missing="none of the grid")


def figures(parts: Parts):
    runs = parts.get("main", [])
    figure, ax = plots.new_figure(800, 450)
    for index, norm in enumerate(values_of(runs, "norm.name")):
        arm = select(runs, norm__name=norm)
        rates = values_of(arm, "optim.lr")
        at = [select(arm, optim__lr=lr) for lr in rates]
        xy_panel(ax, [(f"norm={norm}", rates, [mean_of(r, final_accuracy) for r in at], f"C{index}",
                       "-")], "learning rate", "final test accuracy", logx=True)
        failed = [lr for lr, r in zip(rates, at, strict=True) if any(run.status != "completed" for run in r)]
        ax.plot(failed, [0.02] * len(failed), "x", color=f"C{index}", markersize=9,
                label=f"norm={norm}: a seed diverged" if failed else None)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("final test accuracy against learning rate (mean over seeds; x: a seed diverged)", fontsize=9)
    return [("lr_sweep", "Final test accuracy against learning rate, with and without BatchNorm (mean over "
             "seeds; an x marks a rate where a seed diverged)", figure)]


def deviations(parts: Parts) -> list[str]:
    main, torch = parts.get("main", []), parts.get("torch", [])
    return [f"A {listed(main, 'model.depth')}-layer {listed(main, 'model.activation')} MLP of width "
            f"{listed(main, 'model.width')} ({listed(main, 'model.init')} weights) on {listed(main, 'data.name')} "
            "instead of Inception on ImageNet (Ioffe & Szegedy) or ResNet-110 on CIFAR-10 (Bjorck et al.); "
            f"{listed(main, 'train.steps')} steps of plain SGD at a constant rate, rates "
            f"{listed(main, 'optim.lr')}, {seeds(main)}.",
            f"The norm=torch cross-check ran the rates {listed(torch, 'optim.lr')} of seed "
            f"{listed(torch, 'train.seed')}."]


QUICK = ("model.depth=5", "model.width=64", "train.steps=100", "train.eval_every=50", "log.every=25",
         "train.seed=0")
EXPERIMENT = Experiment(
    name="lr_tolerance",
    paper="Ioffe & Szegedy 2015 (BN-x5, BN-x30); Bjorck et al. 2018",
    claim="BatchNorm networks train at learning rates where the same network without it diverges or stalls",
    minutes=2.5, quick_seconds=20,
    parts=(Part(name="main", config="lr_tolerance", quick=(*QUICK, "optim.lr=0.01,0.1,1.0,10.0"),
                arms={"norm": ("none", "bnlab")}),
           Part(name="torch", config="lr_tolerance", overrides=("optim.lr=0.1,1.0",), quick=(*QUICK, "optim.lr=0.1"),
                fixed=("norm=torch", "train.seed=0"), cross_check_of="main")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
