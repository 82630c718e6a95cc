"""`santurkar2018_landscape`: Santurkar, Tsipras, Ilyas & Madry 2018, §3.1 and Figure 4: BatchNorm makes the
loss landscape smoother.

The network of `santurkar2018` (a 10-layer ReLU MLP on the embedded digits) without and with BatchNorm, at the
same learning rate, 0.1 and 0.2, each judged on its own, with the landscape probe on (`log.landscape`,
bnlab.telemetry.landscape): at every measured step the loss and its gradient are evaluated at x − eta·g for
step sizes eta from lr/4 to 4·lr, giving the loss range along the gradient (Figure 4a), the largest change of
the gradient (its predictiveness, 4b) and the largest change per distance moved (the effective
beta-smoothness, 4c). Parts: `main` (both arms, 3 seeds) and `torch` (the cross-check of seed 0).
"""

from __future__ import annotations

import math
import statistics

from bnlab import formatting
from bnlab.analysis.aggregate import mean_series
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import Parts, across, final_accuracy, largest, listed, seeds, select, values_of
from bnlab.experiments.santurkar2018 import QUICK, Window, diverged_notes, geometric_mean, halves, in_window
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict
from bnlab.telemetry import plots
from bnlab.telemetry.landscape import TAGS

LOSS_MIN, LOSS_MAX, LOSS_RANGE, PREDICTIVENESS, BETA = TAGS
QUANTITIES = {  # tag -> (what it is, the claim, what the paper shows)
    LOSS_RANGE: ("loss range along the gradient", "With BatchNorm the loss varies less along the gradient",
                 "Santurkar et al. (2018), Figure 4(a): the band of the loss along the gradient direction is "
                 "narrower with BatchNorm throughout training"),
    PREDICTIVENESS: ("largest ||∇L(x) − ∇L(x − ηg)|| (gradient predictiveness)",
                     "With BatchNorm the gradient is more predictive: it changes less along its own direction",
                     "Santurkar et al. (2018), Figure 4(b): the ℓ2 change of the gradient along the gradient "
                     "direction is smaller with BatchNorm"),
    BETA: ("effective β-smoothness, largest ||∇L(x) − ∇L(x − ηg)|| / ||ηg||",
           "With BatchNorm the effective β-smoothness is smaller",
           "Santurkar et al. (2018), Figure 4(c): the largest change of the gradient per distance moved is "
           "smaller with BatchNorm"),
}
BUDGET = 500  # steps: the comparison is over training, not over its first few steps
SMOOTHER = Threshold("BN / no BN < 1", lambda ratio: ratio < 1, "paper",
                     "Santurkar et al. (2018), Figure 4: each quantity is lower with BatchNorm ('a clear improvement "
                     "in all of these measures'); judged on the geometric mean over the measured steps, with the two "
                     "arms' 95% intervals across seeds apart", (("train.steps", BUDGET),))
MOST_STEPS = Threshold("≥ 0.75", lambda fraction: fraction >= 0.75, "choice",
                       "'over training': BatchNorm's value (mean over seeds) is below the plain network's at three "
                       "quarters of the measured steps or more, not only on average", (("train.steps", BUDGET),))
THRESHOLDS = {"each landscape quantity, BN relative to no BN (geometric mean over training)": SMOOTHER,
              "each landscape quantity: fraction of the measured steps at which BN's is lower": MOST_STEPS}
ARMS = ("none", "bnlab")
ARM_LABELS = {"none": "no BN", "bnlab": "BN"}


def over_training(tag: str, window: Window = None):
    """A measure: the geometric mean of `tag` over the run's measured steps in `window` (the quantities span
    decades)."""
    return lambda run: geometric_mean([value for step, value in run.series(tag) if in_window(step, window)])


def fraction_lower(bn: list[RunData], plain: list[RunData], tag: str) -> float | None:
    """The fraction of the steps both arms measured at which BN's mean over seeds is below no BN's."""
    ours, theirs = dict(mean_series(bn, tag)), dict(mean_series(plain, tag))
    steps = sorted(set(ours) & set(theirs))
    return sum(ours[step] < theirs[step] for step in steps) / len(steps) if steps else None


def quantity_checks(tag: str, bn: list[RunData], plain: list[RunData], ran: dict) -> list[Check]:
    """BN's geometric mean over training below no BN's (ratio, 95% intervals apart) and at most steps."""
    ours, theirs = across(bn, over_training(tag), True), across(plain, over_training(tag), True)
    measured = f"BN {formatting.stat(ours, '.3g')} vs no BN {formatting.stat(theirs, '.3g')}"
    short = SMOOTHER.shortfall(ran)
    if ours is None or theirs is None or theirs.mean <= 0:
        ratio = [Check("BN / no BN, geometric mean over training", measured, SMOOTHER.label, None,
                       not_applicable=short)]
    else:
        apart = None if ours.high is None or theirs.low is None else ours.high < theirs.low
        ratio = [Check("BN / no BN, geometric mean over training", f"{measured}, ratio "
                       f"{formatting.number(ours.mean / theirs.mean, '.3g')}", SMOOTHER.label,
                       bool(SMOOTHER.passes(ours.mean / theirs.mean)), not_applicable=short),
                 Check("95% intervals across seeds", measured + ("" if apart is not None else " (one seed: no "
                       "interval)"), "BN's below, apart", apart, not_applicable=short)]
    fraction = fraction_lower(bn, plain, tag)
    steps = Check("measured steps at which BN's is lower", formatting.number(fraction, ".0%", "not measured"),
                  MOST_STEPS.label, None if fraction is None else bool(MOST_STEPS.passes(fraction)),
                  not_applicable=MOST_STEPS.shortfall(ran))
    return [*ratio, steps]


def verdict(parts: Parts) -> Verdict:
    runs = parts.get("main", [])
    ran = largest(runs, "train.steps")
    checks: dict[str, list[Check]] = {tag: [] for tag in QUANTITIES}
    rows, phase_rows = [], []
    for lr in values_of(runs, "optim.lr"):
        at = f"lr {formatting.number(lr, 'g')}"
        bn, plain = select(runs, norm__name="bnlab", optim__lr=lr), select(runs, norm__name="none", optim__lr=lr)
        for tag, (what, _, _) in QUANTITIES.items():
            checks[tag] += [Check(f"{at}, {what}: {c.what}", c.measured, c.test, c.passed, c.not_applicable)
                            for c in quantity_checks(tag, bn, plain, ran)]
        rows += [[formatting.number(lr, "g"), f"{ARM_LABELS[norm]} (norm={norm})", str(len(group)),
                  *(formatting.stat(across(group, over_training(tag), True), ".3g") for tag in QUANTITIES),
                  formatting.stat(across(group, final_accuracy), ".3f")]
                 for norm, group in (("none", plain), ("bnlab", bn)) if group]
        phase_rows += [[formatting.number(lr, "g"), name, f"{ARM_LABELS[norm]} (norm={norm})",
                        *(formatting.stat(across(group, over_training(tag, window), True), ".3g")
                          for tag in ("loss/train", *QUANTITIES))]
                       for name, window in halves(runs) for norm, group in (("none", plain), ("bnlab", bn)) if group]
    claims = [Claim(claim, paper, checks[tag]) for tag, (_, claim, paper) in QUANTITIES.items()]
    table = Table("per learning rate and arm: each quantity's geometric mean over the measured steps (geometric "
                  "mean across seeds ×/÷ 95% factor), and the final test accuracy",
                  ["lr", "arm", "n", "loss range", "gradient predictiveness", "effective β", "final test acc"], rows)
    phases = Table("by half of training (descriptive, not part of the verdict, which judges all of training as fixed "
                   "before the runs): geometric means over the measured steps of each half",
                   ["lr", "half", "arm", "training loss", "loss range", "gradient predictiveness", "effective β"],
                   phase_rows)
    return Verdict(claims, [table, phases], diverged_notes(runs))


def _band(runs: list[RunData], tag: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, geometric mean over seeds, lowest seed, highest seed) of `tag`."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in run.series(tag):
            if math.isfinite(value) and value > 0:
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (steps, [statistics.geometric_mean(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])


def landscape_figure(runs: list[RunData]):
    """Figure 4 of the paper, one row per learning rate: (a) the loss between its lowest and highest value along
    the gradient, (b) the gradient predictiveness and (c) the effective beta-smoothness over training, one colour
    per arm."""
    rates = values_of(runs, "optim.lr")
    figure, axes = plots.new_figure(1500, 60 + 380 * len(rates), len(rates), 3, squeeze=False)
    for row, lr in zip(axes, rates, strict=True):
        arms = [(f"{ARM_LABELS[norm]} (norm={norm})", group) for norm in ARMS
                if (group := select(runs, norm__name=norm, optim__lr=lr))]
        for index, (label, group) in enumerate(arms):
            color = f"C{index}"
            low, high = dict(mean_series(group, LOSS_MIN)), dict(mean_series(group, LOSS_MAX))
            steps = sorted(set(low) & set(high))
            row[0].fill_between(steps, [low[s] for s in steps], [high[s] for s in steps], color=color, alpha=0.35,
                                linewidth=0, label=label)
            for ax, tag in ((row[1], PREDICTIVENESS), (row[2], BETA)):
                steps, middle, lowest, highest = _band(group, tag)
                ax.fill_between(steps, lowest, highest, color=color, alpha=0.25, linewidth=0)
                ax.plot(steps, middle, color=color, linewidth=1.5, label=label)
        at = f"lr {formatting.number(lr, 'g')}"
        titles = (f"{at} · (a) loss along the gradient,\nlowest to highest (mean over seeds)",
                  f"{at} · (b) gradient predictiveness: largest\n||∇L(x) − ∇L(x − ηg)|| (line: geometric mean; "
                  "band: seeds)",
                  f"{at} · (c) effective β-smoothness: largest\n||∇L(x) − ∇L(x − ηg)|| / ||ηg|| (line: geometric "
                  "mean; band: seeds)")
        for ax, title in zip(row, titles, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        row[0].set_ylabel("training loss")
        row[1].set_yscale("log")
        row[2].set_yscale("log")
    figure.suptitle("Santurkar et al. (2018), Figure 4: the loss landscape along the gradient, with and without "
                    "BatchNorm, at the same learning rate", fontsize=10)
    return figure


def figures(parts: Parts):
    return [("landscape", "The loss landscape along the gradient over training, with and without BatchNorm, one row "
             "per learning rate: (a) the loss between its lowest and highest value over the step sizes, (b) the "
             "gradient predictiveness, (c) the effective β-smoothness (Santurkar et al. 2018, Figure 4)",
             landscape_figure(parts.get("main", [])))]


def deviations(parts: Parts) -> list[str]:
    main, torch = parts.get("main", []), parts.get("torch", [])
    return [f"A {listed(main, 'model.depth')}-block {listed(main, 'model.activation')} "
            f"{listed(main, 'model.name')} of width {listed(main, 'model.width')} ({listed(main, 'model.init')} "
            f"weights) on {listed(main, 'data.name')} instead of VGG on CIFAR-10; {listed(main, 'train.steps')} "
            f"steps of plain SGD, batch {listed(main, 'data.batch_size')}, {seeds(main)}.",
            f"Both arms train at the same learning rate, as in the paper's comparison, at each of "
            f"{listed(main, 'optim.lr')} (not each arm's best rate); each quantity is compared at each rate. A step "
            "whose loss or gradient is not finite is skipped (train.on_divergence=continue), so a network that "
            "breaks stays in the comparison.",
            f"Every {listed(main, 'log.every')} steps, on the step's batch (BatchNorm in training mode, as the step "
            f"sees it), the loss and its gradient over all parameters at x − ηg for "
            f"{listed(main, 'log.landscape_points')} step sizes η doubling up to "
            f"{listed(main, 'log.landscape_max_multiple')} × lr; the paper moves up to η = 0.4 along the gradient "
            "(Figure 4's caption). Each quantity is the largest over the step sizes; the paper's (b) shades their "
            "range.",
            f"The norm=torch cross-check reran the BatchNorm networks of seed {listed(torch, 'train.seed')} at "
            f"{listed(torch, 'optim.lr')}."]


EXPERIMENT = Experiment(
    name="santurkar2018_landscape",
    paper="Santurkar, Tsipras, Ilyas & Madry 2018, §3.1 (Figure 4)",
    claim="BatchNorm makes the loss landscape smoother: along the gradient the loss varies less, the gradient "
          "changes less (it is more predictive), and the effective β-smoothness is smaller",
    minutes=1.9, quick_seconds=22,
    parts=(Part(name="main", config="santurkar2018_landscape", quick=QUICK, arms={"norm": ARMS}),
           Part(name="torch", config="santurkar2018_landscape", quick=QUICK, fixed=("norm=torch", "train.seed=0"),
                cross_check_of="main")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
