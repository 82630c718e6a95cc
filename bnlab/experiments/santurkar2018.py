"""`santurkar2018`: Santurkar, Tsipras, Ilyas & Madry 2018, "How does batch normalization help
optimization?", §2: BatchNorm's benefit does not come from reducing internal covariate shift.

One network, three arms: without BatchNorm (`norm=none`), with it (`norm=bnlab`), and with "noisy" BatchNorm
(`norm=noisy`: every unit's mean and scale moved by noise re-drawn at every step, bnlab.nn.noisy). The paper's
two findings: the noisy network, whose layers see an input distribution that keeps moving, trains about as well
as the BatchNorm one and far better than the plain one (§2.1, Figure 2); and internal covariate shift measured
as the change of a layer's gradient when the layers below it are updated (Definition 2.1: ||G - G'|| and
cos(G, G'), the `log.covariate_shift` probe) is not smaller with BatchNorm (§2.2, Figure 3).

A 10-layer ReLU MLP on the embedded digits at two learning rates, each the same in every arm: 0.1, where the
network trains without BatchNorm too, and 0.2, where without it training is unsteady; every claim is judged at
each rate. Parts: `main` (the three arms, 3 seeds, the probe on) and `torch` (the norm=torch cross-check of
seed 0).
"""

from __future__ import annotations

import math
import statistics

from bnlab import formatting
from bnlab.analysis.aggregate import Stat, mean_series
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
    setting,
    values_of,
)
from bnlab.experiments.plotting import points
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict, check
from bnlab.telemetry import plots
from bnlab.telemetry.covariate_shift import COSINE, L2

BUDGET = 500  # steps: the accuracy thresholds are for networks trained this long
AS_WELL = Threshold("|noisy − BN| ≤ 0.03", lambda gap: gap <= 0.03, "choice",
                    "'about as well': within 0.03 of BatchNorm's test accuracy, about 11 of the embedded digits' "
                    "359 test images (Santurkar et al., Figure 2: the two curves nearly coincide)",
                    (("train.steps", BUDGET),))
FAR_BETTER = Threshold("BN arm − no BN > 0.1", lambda gap: gap > 0.1, "choice",
                       "'far better': a mean test accuracy over training (how fast, how high and how steadily it "
                       "trains) at least a tenth of the test set higher, and the two arms' 95% intervals apart "
                       "(Santurkar et al., Figure 2: both BatchNorm networks' curves well above the standard one's)",
                       (("train.steps", BUDGET),))
NOT_SMALLER = Threshold("BN / no BN ≥ 0.8", lambda ratio: ratio >= 0.8, "choice",
                        "'does not reduce': BatchNorm's ||G − G'|| is at least 0.8 times the plain network's (a "
                        "reduction of more than a fifth fails; Santurkar et al., Figure 3, find it as large or "
                        "larger with BatchNorm)")
NOT_MORE_ALIGNED = Threshold("BN − no BN ≤ 0.05", lambda gap: gap <= 0.05, "choice",
                             "'does not reduce': BatchNorm's cos(G, G') is not more than 0.05 above the plain "
                             "network's (Santurkar et al., Figure 3: as low or lower with BatchNorm)")
THRESHOLDS = {"noisy BatchNorm against BatchNorm: test accuracy, final and mean over training": AS_WELL,
              "BatchNorm and noisy BatchNorm against no BatchNorm: mean test accuracy over training": FAR_BETTER,
              "internal covariate shift ||G − G'||, BN relative to no BN": NOT_SMALLER,
              "internal covariate shift cos(G, G'), BN minus no BN": NOT_MORE_ALIGNED}
ARMS = ("none", "bnlab", "noisy")
ARM_LABELS = {"none": "no BN", "bnlab": "BN", "noisy": "noisy BN", "torch": "BN (torch)"}


def mean_accuracy(run: RunData) -> float | None:
    """The mean test accuracy over the evaluations after step 0: how fast and how high it trains."""
    values = [value for step, value in run.series("acc/test") if step > 0]
    return sum(values) / len(values) if values else None


Window = tuple[int, int] | None  # (first step, last step) of the measured steps to use; None: all of them


def in_window(step: int, window: Window) -> bool:
    return window is None or window[0] <= step <= window[1]


def halves(runs: list[RunData]) -> list[tuple[str, Window]]:
    """The two halves of training, as (name, window)."""
    total = int(max(values_of(runs, "train.steps"), default=0))
    middle = total // 2
    return [(f"steps 0–{middle - 1}", (0, middle - 1)), (f"steps {middle}–{total}", (middle, total))]


def geometric_mean(values: list[float]) -> float | None:
    """Of the finite values: None when there are none, 0 when one of them is 0 (nothing changed there, which is
    the smallest value possible, not a missing one)."""
    values = [value for value in values if math.isfinite(value)]
    if not values:
        return None
    if min(values) <= 0:
        return 0.0
    return statistics.geometric_mean(values)


def layer_series(run: RunData, family: str, window: Window = None) -> dict[str, list[tuple[int, float]]]:
    """{layer: [(step, value)]} of a per-layer probe family, e.g. covariate_shift/l2, at the steps in `window`."""
    prefix = f"{family}/"
    return {tag[len(prefix):]: [(step, value) for step, value in values if in_window(step, window)]
            for tag, values in sorted(run.scalars.items()) if tag.startswith(prefix)}


def shift_l2(run: RunData, window: Window = None) -> float | None:
    """||G − G'|| over every layer the probe logs and every measured step, geometric mean (it spans decades
    across layers and over training)."""
    return geometric_mean([v for series in layer_series(run, L2, window).values() for _, v in series])


def shift_cosine(run: RunData, window: Window = None) -> float | None:
    """cos(G, G') over every layer the probe logs and every measured step, arithmetic mean."""
    values = [v for series in layer_series(run, COSINE, window).values() for _, v in series if math.isfinite(v)]
    return sum(values) / len(values) if values else None


def relative_shift(run: RunData, window: Window = None) -> float | None:
    """||G − G'|| / ||G||, ||G|| from grad_norm/weight of the same layer and step: the shift on the scale of the
    gradient itself (the two arms' gradients differ in size); geometric mean as for `shift_l2`."""
    ratios = []
    for layer, series in layer_series(run, L2, window).items():
        norms = dict(run.series(f"grad_norm/weight/{layer}"))
        ratios += [value / norms[step] for step, value in series if norms.get(step, 0) > 0 and value > 0]
    return geometric_mean(ratios)


def training_loss(run: RunData, window: Window = None) -> float | None:
    """The training loss at the measured steps in `window`, geometric mean: where training has got to."""
    return geometric_mean([value for step, value in run.series("loss/train") if in_window(step, window)])


def shift_over_training(run: RunData, family: str, geometric: bool) -> list[tuple[int, float]]:
    """[(step, the family's mean over layers)]: the line of Figure 3, averaged over the layers."""
    by_step: dict[int, list[float]] = {}
    for series in layer_series(run, family).values():
        for step, value in series:
            if math.isfinite(value) and (value > 0 or not geometric):
                by_step.setdefault(step, []).append(math.log(value) if geometric else value)
    return [(step, math.exp(sum(v) / len(v)) if geometric else sum(v) / len(v))
            for step, v in sorted(by_step.items())]


def _difference(what: str, a: Stat | None, b: Stat | None, threshold: Threshold, ran: dict,
                absolute: bool = False, spec: str = ".3f") -> Check:
    """A check of the difference of two arms' means (its absolute value when `absolute`) against `threshold`."""
    measured = f"{formatting.stat(a, spec)} vs {formatting.stat(b, spec)}"
    short = threshold.shortfall(ran)
    if a is None or b is None:
        return Check(what, measured, threshold.label, None, not_applicable=short)
    gap = abs(a.mean - b.mean) if absolute else a.mean - b.mean
    measured += f", difference {formatting.number(gap, '.3f' if absolute else '+.3f')}"
    return Check(what, measured, threshold.label, bool(threshold.passes(gap)), not_applicable=short)


def _apart(what: str, better: Stat | None, other: Stat | None, ran: dict, spec: str = ".3f") -> Check:
    """The two arms' 95% intervals do not overlap, `better` above (not measured with one seed)."""
    measured = f"{formatting.stat(better, spec)} vs {formatting.stat(other, spec)}"
    short = FAR_BETTER.shortfall(ran)
    if better is None or other is None or better.low is None or other.high is None:
        return Check(what, measured + ("" if better is None or other is None else " (one seed: no interval)"),
                     "do not overlap", None, not_applicable=short)
    return Check(what, measured, "do not overlap", better.low > other.high, not_applicable=short)


def _ratio(bn: Stat | None, plain: Stat | None) -> Stat | None:
    """BN's geometric mean over no BN's, as a Stat without an interval (for `check`)."""
    if bn is None or plain is None or plain.mean <= 0:
        return None
    return Stat(bn.mean / plain.mean, None, None, min(bn.n, plain.n), geometric=True)


def verdict(parts: Parts) -> Verdict:
    runs = parts.get("main", [])
    ran = largest(runs, "train.steps")
    as_well, far_better, shift, rows, layer_rows, phase_rows = [], [], [], [], [], []
    for lr in values_of(runs, "optim.lr"):
        arms = {norm: select(runs, norm__name=norm, optim__lr=lr) for norm in ARMS}
        at = f"lr {formatting.number(lr, 'g')}"
        final = {norm: across(group, final_accuracy) for norm, group in arms.items()}
        average = {norm: across(group, mean_accuracy) for norm, group in arms.items()}
        l2 = {norm: across(group, shift_l2, geometric=True) for norm, group in arms.items()}
        cosine = {norm: across(group, shift_cosine) for norm, group in arms.items()}
        as_well += [_difference(f"{at}: final test accuracy, noisy BN vs BN", final["noisy"], final["bnlab"],
                                AS_WELL, ran, absolute=True),
                    _difference(f"{at}: mean test accuracy over training, noisy BN vs BN", average["noisy"],
                                average["bnlab"], AS_WELL, ran, absolute=True)]
        for norm in ("noisy", "bnlab"):
            what = f"{at}: mean test accuracy over training, {ARM_LABELS[norm]} vs no BN"
            far_better += [_difference(what, average[norm], average["none"], FAR_BETTER, ran),
                           _apart(f"{what}, 95% intervals", average[norm], average["none"], ran)]
        shift += [check(f"{at}: ||G − G'||, BN / no BN ({formatting.stat(l2['bnlab'], '.3g')} / "
                        f"{formatting.stat(l2['none'], '.3g')})", _ratio(l2["bnlab"], l2["none"]), ".3g",
                        NOT_SMALLER),
                  _difference(f"{at}: cos(G, G'), BN vs no BN", cosine["bnlab"], cosine["none"], NOT_MORE_ALIGNED,
                              ran)]
        rows += [[formatting.number(lr, "g"), f"{ARM_LABELS[norm]} (norm={norm})", str(len(group)),
                  formatting.stat(final[norm], ".3f"), formatting.stat(average[norm], ".3f"),
                  formatting.stat(l2[norm], ".3g"), formatting.stat(across(group, relative_shift, geometric=True),
                                                                    ".3g"),
                  formatting.stat(cosine[norm], ".3f")] for norm, group in arms.items() if group]
        layer_rows += _per_layer_rows(at, arms)
        phase_rows += [[formatting.number(lr, "g"), name, f"{ARM_LABELS[norm]} (norm={norm})",
                        *_phase_cells(group, window)]
                       for name, window in halves(runs) for norm, group in arms.items() if group]
    claims = [
        Claim("With noisy BatchNorm (each unit's distribution moved at every step) the network trains about as "
              "well as with BatchNorm", "Santurkar et al. (2018), §2.1, Figure 2: 'the performance difference "
              "between models with BatchNorm layers and noisy BatchNorm layers is almost non-existent'", as_well),
        Claim("Both BatchNorm networks, noisy or not, train far better than the network without BatchNorm",
              "Santurkar et al. (2018), §2.1, Figure 2: both perform much better than the standard network",
              far_better),
        Claim("BatchNorm does not reduce internal covariate shift (Definition 2.1: the change of a layer's gradient "
              "when the layers below it are updated)", "Santurkar et al. (2018), §2.2, Figure 3: with BatchNorm "
              "||G − G'|| is as large or larger and cos(G, G') as low or lower (VGG, and a 25-layer linear "
              "network)", shift),
    ]
    tables = [Table("per learning rate and arm (mean across seeds ± 95% interval; covariate shift over every logged "
                    "layer and measured step: ||G − G'|| and ||G − G'|| / ||G|| geometric, cos arithmetic)",
                    ["lr", "arm", "n", "final test acc", "mean test acc over training", "||G − G'||",
                     "||G − G'|| / ||G||", "cos(G, G')"], rows),
              Table("by half of training (descriptive, not part of the verdict, which judges all of training as fixed "
                    "before the runs): training loss and covariate shift at the measured steps of each half",
                    ["lr", "half", "arm", "training loss", "||G − G'||", "||G − G'|| / ||G||", "cos(G, G')"],
                    phase_rows),
              Table("covariate shift per layer (mean over measured steps and seeds)",
                    ["lr", "layer", *(f"{ARM_LABELS[norm]}: ||G − G'||" for norm in ARMS),
                     *(f"{ARM_LABELS[norm]}: cos" for norm in ARMS)], layer_rows)]
    notes = ["For noisy BatchNorm the probe's passes replay the noise of the step being measured, so G and G' see "
             "the same noise and its covariate shift is the one its layers' updates cause under that noise (the "
             "verdict compares BatchNorm with no BatchNorm, as the paper's Figure 3 does).",
             *diverged_notes(runs)]
    return Verdict(claims, tables, notes)


def _phase_cells(runs: list[RunData], window: Window) -> list[str]:
    """Training loss, ||G − G'||, ||G − G'|| / ||G|| (geometric means) and cos(G, G') over `window`."""
    def within(measure):
        return lambda run: measure(run, window)
    return [formatting.stat(across(runs, within(training_loss), geometric=True), ".3g"),
            formatting.stat(across(runs, within(shift_l2), geometric=True), ".3g"),
            formatting.stat(across(runs, within(relative_shift), geometric=True), ".3g"),
            formatting.stat(across(runs, within(shift_cosine)), ".3f")]


def diverged_notes(runs: list[RunData]) -> list[str]:
    """One line per run whose loss or gradient stopped being finite (train.on_divergence=continue skips those
    steps: the network stays where it broke, and the probes record nothing finite after it)."""
    return [f"lr {formatting.number(setting(run, 'optim.lr'), 'g')}, {ARM_LABELS.get(setting(run, 'norm.name'), '?')} "
            f"(norm={setting(run, 'norm.name')}), seed {run.seed}: not finite from step "
            f"{run.summary['diverged_at']}, {run.summary.get('skipped_steps', '?')} of "
            f"{run.summary.get('total_steps', '?')} steps skipped; its test accuracy afterwards is the broken "
            "network's" for run in runs if run.summary.get("diverged_at") is not None]


def _per_layer_rows(at: str, arms: dict[str, list[RunData]]) -> list[list[str]]:
    layers = sorted({layer for group in arms.values() for run in group for layer in layer_series(run, L2)})
    return [[at.removeprefix("lr "), layer,
             *(formatting.stat(across(group, _layer_mean(layer, L2)), ".3g") for group in arms.values()),
             *(formatting.stat(across(group, _layer_mean(layer, COSINE)), ".3f") for group in arms.values())]
            for layer in layers]


def _layer_mean(layer: str, family: str):
    """A measure: `family` of `layer` averaged over the run's measured steps."""
    def measure(run: RunData) -> float | None:
        values = [v for _, v in layer_series(run, family).get(layer, []) if math.isfinite(v)]
        return sum(values) / len(values) if values else None
    return measure


def _over_layers_and_seeds(runs: list[RunData], family: str, geometric: bool) -> tuple[list[int], list[float]]:
    """(steps, the family's mean over the layers, averaged over the runs): one line of the figure."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in shift_over_training(run, family, geometric):
            by_step.setdefault(step, []).append(math.log(value) if geometric else value)
    steps = sorted(by_step)
    means = [sum(by_step[step]) / len(by_step[step]) for step in steps]
    return steps, [math.exp(mean) for mean in means] if geometric else means


def _arms_by_rate(runs: list[RunData]) -> list[tuple[float, list[tuple[str, list[RunData]]]]]:
    return [(lr, [(f"{ARM_LABELS[norm]} (norm={norm})", group) for norm in ARMS
                  if (group := select(runs, norm__name=norm, optim__lr=lr))]) for lr in values_of(runs, "optim.lr")]


def training_figure(runs: list[RunData]):
    """Test accuracy over training, one panel per learning rate, one line per arm (mean over seeds)."""
    rates = _arms_by_rate(runs)
    figure, axes = plots.new_figure(550 * len(rates), 430, 1, len(rates), squeeze=False, sharey=True)
    for ax, (lr, arms) in zip(axes[0], rates, strict=True):
        for index, (label, group) in enumerate(arms):
            ax.plot(*points(mean_series(group, "acc/test")), color=f"C{index}", marker="o", markersize=3,
                    label=label)
        ax.set_title(f"lr {formatting.number(lr, 'g')}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("test accuracy (mean over seeds)")
    figure.suptitle("Santurkar et al. (2018), Figure 2: without BatchNorm, with it, and with noisy BatchNorm",
                    fontsize=10)
    return figure


def covariate_shift_figure(runs: list[RunData]):
    """||G − G'|| (log, top) and cos(G, G') (bottom) over training, averaged over the layers and the seeds; one
    column per learning rate, one line per arm."""
    rates = _arms_by_rate(runs)
    figure, axes = plots.new_figure(550 * len(rates), 720, 2, len(rates), squeeze=False, sharex=True)
    for column, (lr, arms) in enumerate(rates):
        top, bottom = axes[0][column], axes[1][column]
        for index, (label, group) in enumerate(arms):
            top.plot(*_over_layers_and_seeds(group, L2, True), color=f"C{index}", marker="o", markersize=3,
                     label=label)
            bottom.plot(*_over_layers_and_seeds(group, COSINE, False), color=f"C{index}", marker="o",
                        markersize=3, label=label)
        top.set_yscale("log")
        top.set_title(f"lr {formatting.number(lr, 'g')}", fontsize=9)
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel("||G − G'|| (geometric mean\nover layers and seeds)")
    axes[1][0].set_ylabel("cos(G, G') (mean over\nlayers and seeds)")
    figure.suptitle("Internal covariate shift (Santurkar et al. 2018, Definition 2.1, Figure 3): the change of "
                    "each layer's gradient when the layers below it are updated", fontsize=10)
    return figure


def figures(parts: Parts):
    runs = parts.get("main", [])
    return [("training", "Test accuracy over training without BatchNorm, with BatchNorm and with noisy BatchNorm, "
             "at each learning rate (mean over seeds)", training_figure(runs)),
            ("covariate_shift", "Internal covariate shift over training: ||G − G'|| and cos(G, G'), averaged over the "
             "layers and the seeds, at each learning rate (noisy BatchNorm's includes its noise, re-drawn between G "
             "and G')", covariate_shift_figure(runs))]


def deviations(parts: Parts) -> list[str]:
    main, torch = parts.get("main", []), parts.get("torch", [])
    return [f"A {listed(main, 'model.depth')}-block {listed(main, 'model.activation')} "
            f"{listed(main, 'model.name')} of width {listed(main, 'model.width')} ({listed(main, 'model.init')} "
            f"weights) on {listed(main, 'data.name')} instead of VGG on CIFAR-10; {listed(main, 'train.steps')} "
            f"steps of plain SGD at each of the rates {listed(main, 'optim.lr')} (the same in every arm), batch "
            f"{listed(main, 'data.batch_size')}, {seeds(main)}. A step whose loss or gradient is not finite is "
            "skipped (train.on_divergence=continue), so a network that breaks stays in the comparison.",
            f"Noisy BatchNorm: each unit's output scaled by noise_std^u, u ~ U(-1, 1), and shifted by "
            f"U(±noise_mean), re-drawn at every step and shared by the batch (noise_mean "
            f"{listed(main, 'norm.noise_mean')}, noise_std {listed(main, 'norm.noise_std')}); the paper draws "
            "i.i.d. noise per activation from a distribution whose mean and variance change at every step.",
            f"Internal covariate shift measured every {listed(main, 'log.every')} steps on the step's batch, for "
            "every layer above the first (the classifier included), with SGD's own update as the step of the "
            "layers below; the paper plots single layers of VGG and of a 25-layer linear network.",
            f"The norm=torch cross-check reran the BatchNorm networks of seed {listed(torch, 'train.seed')} at "
            f"{listed(torch, 'optim.lr')}."]


QUICK = ("model.depth=4", "model.width=32", "optim.lr=0.1", "train.steps=60", "train.eval_every=20",
         "log.every=20", "train.seed=0,1")
EXPERIMENT = Experiment(
    name="santurkar2018",
    paper="Santurkar, Tsipras, Ilyas & Madry 2018, §2 (Figures 2 and 3)",
    claim="BatchNorm does not help by reducing internal covariate shift: with noise that moves every unit's "
          "distribution at every step the network trains as well as with BatchNorm, far better than without, "
          "and BatchNorm does not make a layer's gradient change less when the layers below it are updated",
    minutes=1.0, quick_seconds=30,
    parts=(Part(name="main", config="santurkar2018", quick=QUICK, arms={"norm": ARMS}),
           Part(name="torch", config="santurkar2018", quick=QUICK, fixed=("norm=torch", "train.seed=0"),
                cross_check_of="main")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
