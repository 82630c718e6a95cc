"""`bn_vs_l1l2`: BatchNorm against L1 and L2 regularization. With BatchNorm a layer's output does not depend on
the scale of its weights, so L2 on them does not regularize the function: it shrinks ||W||, and since the
gradient of a scale-invariant weight scales as 1/||W||, it raises the effective learning rate ||ΔW|| / ||W||
(van Laarhoven 2017).

A 6-layer ReLU MLP (kaiming weights, plain SGD at a constant rate) with and without BatchNorm, in three parts
that differ only in the regularization: `none`, `l1` (optim.l1: l1 * sum |W| of the weight layers added to the
loss) and `l2` (optim.weight_decay), plus `torch`, the norm=torch cross-check of seed 0 of the L2 part. Measured
per hidden layer (the weights that BatchNorm makes scale-invariant; the classifier is not): weight_norm/layerNN
and update_ratio/layerNN, the effective learning rate, early (the first fifth of training) and late (the last
fifth).
"""

from __future__ import annotations

import math
import statistics

from bnlab import formatting
from bnlab.analysis.aggregate import Stat, mean_interval
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import Parts, across, bn_arm, final_accuracy, largest, listed, mean, seeds, setting
from bnlab.experiments.verdict import Claim, Table, Verdict, above, below, judged
from bnlab.telemetry import plots

REGULARIZERS = ("none", "l1", "l2")
NAMES = {"none": "no regularization", "l1": "L1", "l2": "L2"}
STEPS = 2000
WEIGHT_DECAY = 5e-3  # lr * lambda * steps = 0.1 * 5e-3 * 2000 = 1: the decay alone would shrink ||W|| by e^-1
L1 = 6.25e-4  # = lambda * 0.125, the RMS of a kaiming weight at width 128: L1's and L2's pulls match at init
EARLY, LATE = (0.0, 0.2), (0.8, 1.01)  # fractions of train.steps

SHRINKS = below(1, "theory", "a penalty pulls W toward 0 (L2: a factor 1 − ηλ a step; L1: −η·l1·sign(W), whose "
                "component along W is negative), while the gradient of a weight followed by BatchNorm is orthogonal "
                "to it and only grows ||W||: the regularized run's final ||W|| is below the same seed's "
                "unregularized one", train__steps=STEPS)
RAISES = above(1, "theory", "for a weight followed by BatchNorm ||∇W|| ∝ 1/||W||, so ||ΔW||/||W|| = η||∇W||/||W|| "
               "∝ η/||W||² (van Laarhoven 2017): a smaller norm is a larger effective learning rate, late in training "
               "above the same seed's unregularized run", train__steps=STEPS)
GROWS = above(1, "theory", "without a penalty, SGD on a scale-invariant weight only grows its norm: ||W + ΔW||² = "
              "||W||² + η²||∇W||², since ∇W ⊥ W", train__steps=STEPS)
SHRINKS_PLAIN = below(1, "theory", "without BatchNorm the penalty still pulls the weights toward 0: the final ||W|| is "
                      "below the same seed's unregularized run", train__steps=STEPS)
LESS_THAN_BN = below(1, "theory", "without BatchNorm nothing makes ||∇W|| grow as ||W|| shrinks, so the rise of "
                     "||ΔW||/||W|| that L2 brings is smaller than with BatchNorm (their ratio below 1)",
                     train__steps=STEPS)
AS_GOOD = above(-0.02, "choice", "BatchNorm alone ends at most 0.02 (about 7 of the embedded digits' 359 test images) "
                "below the regularized network without it", train__steps=STEPS)
THRESHOLDS = {"final ||W|| of the hidden layers, regularized / unregularized (same seed)": SHRINKS,
              "effective learning rate late in training, regularized / unregularized (same seed)": RAISES,
              "BN, no regularization: final / initial ||W||": GROWS,
              "no BN: final ||W||, L2 / none (same seed)": SHRINKS_PLAIN,
              "late effective-learning-rate ratio L2 / none, without BN / with BN": LESS_THAN_BN,
              "final test accuracy, BN without regularization minus no BN with L1 or L2": AS_GOOD}


# --- per-run measures of the hidden layers (geometric mean over the layers at each measured step)

def layer_series(run: RunData, family: str) -> list[tuple[int, float]]:
    """[(step, geometric mean over the hidden layers of `family`)] at the steps where every layer has a positive
    finite value."""
    per_layer = [dict(run.series(f"{family}/{layer}")) for layer in run.hidden_layers]
    if not per_layer:
        return []
    steps = sorted(set.intersection(*(set(values) for values in per_layer)))
    series = []
    for step in steps:
        values = [values[step] for values in per_layer]
        if all(math.isfinite(v) and v > 0 for v in values):
            series.append((step, statistics.geometric_mean(values)))
    return series


def _window(run: RunData, family: str, window: tuple[float, float]) -> float | None:
    total = run.summary.get("total_steps") or 1
    values = [v for step, v in layer_series(run, family) if window[0] * total <= step < window[1] * total]
    return sum(values) / len(values) if values else None


def effective_lr(window: tuple[float, float]):
    """A measure: ||ΔW|| / ||W|| of the hidden layers, averaged over the steps in `window` (fractions of training)."""
    return lambda run: _window(run, "update_ratio", window)


def weight_norm(which: str):
    """A measure: the hidden layers' ||W|| at the first ("start") or last ("end") measured step."""
    def measure(run: RunData) -> float | None:
        series = layer_series(run, "weight_norm")
        return (series[0] if which == "start" else series[-1])[1] if series else None
    return measure


def norm_growth(run: RunData) -> float | None:
    start, end = weight_norm("start")(run), weight_norm("end")(run)
    return end / start if start and end else None


def paired(runs: list[RunData], reference: list[RunData], measure) -> Stat | None:
    """measure(run) / measure(reference run of the same seed), geometric mean over the seeds (completed runs)."""
    by_seed = {run.seed: run for run in reference if run.status == "completed"}
    ratios = []
    for run in runs:
        other = by_seed.get(run.seed)
        if run.status == "completed" and other is not None:
            mine, theirs = measure(run), measure(other)
            if mine and theirs:
                ratios.append(mine / theirs)
    return mean_interval(ratios, geometric=True)


# --- the verdict

def _ratio(stat: Stat | None) -> str:
    return formatting.stat(stat, ".3g") if stat is not None else "not measured"


def groups_of(parts: Parts) -> dict[tuple[bool, str], list[RunData]]:
    """(with BatchNorm, regularizer) -> runs."""
    return {(with_bn, reg): bn_arm(parts.get(reg, []), with_bn) for with_bn in (False, True) for reg in REGULARIZERS}


LATE_LR, EARLY_LR = effective_lr(LATE), effective_lr(EARLY)


def scale_claim(reg: str, groups: dict, ran: dict, paper: str) -> Claim:
    """With BatchNorm, `reg` against none: the final weight norm down, the late effective learning rate up."""
    runs, reference = groups[(True, reg)], groups[(True, "none")]
    norm_ratio = paired(runs, reference, weight_norm("end"))
    late, early = paired(runs, reference, LATE_LR), paired(runs, reference, EARLY_LR)
    checks = [judged(f"BN, {NAMES[reg]} / none: final ||W||", mean(norm_ratio), _ratio(norm_ratio), SHRINKS, ran),
              judged(f"BN, {NAMES[reg]} / none: ||ΔW||/||W|| over the last fifth of training", mean(late),
                     f"{_ratio(late)} (first fifth: {_ratio(early)})", RAISES, ran)]
    if reg == "l2":
        growth = across([run for run in reference if run.status == "completed"], norm_growth, geometric=True)
        measured = formatting.stat(growth, ".4g") if growth is not None else "not measured"  # ~1: small growth
        checks.insert(0, judged("BN, no regularization: final / initial ||W||", mean(growth), measured, GROWS, ran))
    name = "L2 weight decay" if reg == "l2" else "L1"
    return Claim(f"With BatchNorm, {name} shrinks the weights and raises the effective learning rate ||ΔW||/||W|| "
                 "over training, relative to BatchNorm without it", paper, checks)


def plain_claim(groups: dict, ran: dict) -> Claim:
    """Without BatchNorm: L2 shrinks the weights, but raises the effective learning rate less than with it."""
    norm_ratio = paired(groups[(False, "l2")], groups[(False, "none")], weight_norm("end"))
    plain = paired(groups[(False, "l2")], groups[(False, "none")], LATE_LR)
    normed = paired(groups[(True, "l2")], groups[(True, "none")], LATE_LR)
    relative = None if plain is None or normed is None else plain.mean / normed.mean
    checks = [judged("no BN, L2 / none: final ||W||", mean(norm_ratio), _ratio(norm_ratio), SHRINKS_PLAIN, ran),
              judged("L2 / none, ||ΔW||/||W|| over the last fifth: without BN vs with BN", relative,
                     f"{_ratio(plain)} vs {_ratio(normed)}", LESS_THAN_BN, ran)]
    return Claim("Without BatchNorm, L2 shrinks the weights but does not raise the effective learning rate as it "
                 "does with BatchNorm", "van Laarhoven (2017): the learning-rate effect comes from the scale "
                 "invariance that normalization gives; without it L2 is an ordinary regularizer", checks)


def accuracy_claim(groups: dict, ran: dict) -> Claim:
    batchnorm = [run for run in groups[(True, "none")] if run.status == "completed"]
    ours = across(batchnorm, final_accuracy)
    checks = []
    for reg in ("l1", "l2"):
        theirs = across(groups[(False, reg)], final_accuracy)
        gap = None if ours is None or theirs is None else ours.mean - theirs.mean
        checks.append(judged(f"final test accuracy, BN without regularization vs no BN with {NAMES[reg]}", gap,
                             f"{formatting.stat(ours, '.3f')} vs {formatting.stat(theirs, '.3f')}", AS_GOOD, ran))
    return Claim("BatchNorm alone reaches the test accuracy that L1 or L2 give the network without it",
                 "Ioffe & Szegedy (2015), §3.4 and §4.2.1: BatchNorm regularizes the model, and with it the L2 weight "
                 "regularization of Inception was reduced 5 times", checks)


def verdict(parts: Parts) -> Verdict:
    groups = groups_of(parts)
    ran = largest([run for runs in groups.values() for run in runs], "train.steps")
    van_laarhoven = ("van Laarhoven (2017): with normalization L2 regularization has no regularizing effect; it "
                     "shrinks the weights' scale and so raises the effective learning rate η/||W||²")
    claims = [scale_claim("l2", groups, ran, van_laarhoven),
              plain_claim(groups, ran),
              scale_claim("l1", groups, ran, "(bnlab's extension of van Laarhoven's argument: any penalty that "
                          "shrinks a scale-invariant weight raises its effective learning rate)"),
              accuracy_claim(groups, ran)]
    return Verdict(claims, [arm_table(groups), paired_table(groups)], late_update_note(groups))


def late_update_note(groups: dict) -> list[str]:
    """What the late ||ΔW||/||W|| is made of, from the runs: how far the unregularized runs have stopped, and the
    share the decay alone keeps moving."""
    still = {with_bn: across(groups[(with_bn, "none")], LATE_LR, True) for with_bn in (False, True)}
    decayed = groups[(False, "l2")] + groups[(True, "l2")]
    lr, decay = (setting(decayed[0], key) for key in ("optim.lr", "optim.weight_decay")) if decayed else (None, None)
    if any(stat is None for stat in still.values()) or lr is None or decay is None:
        return []
    floor = lr * decay
    loss = {with_bn: across(groups[(with_bn, "none")], lambda run: run.last("loss/train"), True)
            for with_bn in (False, True)}
    moving = f"{formatting.stat(still[False], '.2e')} without BatchNorm, {formatting.stat(still[True], '.2e')} with it"
    fitted = f"{formatting.stat(loss[False], '.1e')} and {formatting.stat(loss[True], '.1e')}"
    return [f"Late in training the unregularized networks barely move (||ΔW||/||W|| {moving}: the training set is "
            f"fit, final training loss {fitted}, and the gradient has all but vanished), while a decayed weight moves "
            f"by ηλ = {formatting.number(floor, '.2g')} of its norm a step from the decay alone, plus the gradient "
            "that balances the decay. The late ratio regularized / unregularized therefore also measures how far the "
            "unregularized run has come to rest, with and without BatchNorm; 'late, from the norms' is what the "
            "norms alone predict for a scale-invariant weight, (||W|| ratio)^-2."]


def arm_table(groups: dict) -> Table:
    rows = []
    for (with_bn, reg), runs in groups.items():
        if not runs:
            continue
        rows.append(["BN" if with_bn else "no BN", NAMES[reg], str(len(runs)),
                     formatting.stat(across(runs, weight_norm("start"), True)),
                     formatting.stat(across(runs, weight_norm("end"), True)),
                     formatting.stat(across(runs, EARLY_LR, True), ".2e"),
                     formatting.stat(across(runs, LATE_LR, True), ".2e"),
                     formatting.stat(across(runs, final_accuracy), ".3f")])
    return Table("per arm: hidden layers' ||W|| (geometric mean over layers and seeds) at the first and last measured "
                 "step, ||ΔW||/||W|| over the first and last fifth of training, and final test accuracy",
                 ["BatchNorm", "regularization", "runs", "||W|| start", "||W|| end", "||ΔW||/||W|| early",
                  "||ΔW||/||W|| late", "test accuracy"], rows)


def paired_table(groups: dict) -> Table:
    rows = []
    for with_bn in (False, True):
        for reg in ("l1", "l2"):
            runs, reference = groups[(with_bn, reg)], groups[(with_bn, "none")]
            norm_ratio, late = paired(runs, reference, weight_norm("end")), paired(runs, reference, LATE_LR)
            predicted = None if norm_ratio is None else 1 / norm_ratio.mean ** 2
            rows.append(["BN" if with_bn else "no BN", NAMES[reg], _ratio(norm_ratio),
                         _ratio(paired(runs, reference, EARLY_LR)), _ratio(late),
                         formatting.number(predicted, ".3g")])
    return Table("regularized / unregularized, seed by seed (geometric mean ×/÷ 95% factor); 'from the norms': "
                 "(||W|| ratio)^-2, what ||∇W|| ∝ 1/||W|| predicts for the effective learning rate",
                 ["BatchNorm", "regularization", "final ||W||", "||ΔW||/||W|| early", "||ΔW||/||W|| late",
                  "late, from the norms"], rows)


# --- figures

def _mean_series(runs: list[RunData], family: str) -> tuple[list[int], list[float]]:
    """Geometric mean over the runs at each step all of them measured."""
    series = [dict(layer_series(run, family)) for run in runs if run.status == "completed"]
    if not series:
        return [], []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return steps, [math.exp(sum(math.log(s[step]) for s in series) / len(series)) for step in steps]


def figures(parts: Parts):
    groups = groups_of(parts)
    figure, axes = plots.new_figure(1100, 760, 2, 2)
    for row, (family, label) in enumerate((("weight_norm", "||W|| (hidden layers)"),
                                           ("update_ratio", "||ΔW|| / ||W|| (hidden layers)"))):
        for column, with_bn in enumerate((False, True)):
            ax = axes[row][column]
            for index, reg in enumerate(REGULARIZERS):
                steps, values = _mean_series(groups[(with_bn, reg)], family)
                ax.plot(steps, values, color=f"C{index}", label=NAMES[reg], **plots.line_style(False))
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            ax.set_title(f"{'with' if with_bn else 'without'} BatchNorm", fontsize=9)
    figure.suptitle("weight norm and effective learning rate over training, geometric mean over the hidden layers "
                    "and the seeds", fontsize=10)
    return [("norms_and_effective_lr", "The hidden layers' weight norm (top) and effective learning rate ||ΔW||/||W|| "
             "(bottom) over training, without BatchNorm (left) and with it (right), for no regularization, L1 and "
             "L2 (geometric mean over layers and seeds)", figure)]


def deviations(parts: Parts) -> list[str]:
    runs = [run for reg in REGULARIZERS for run in parts.get(reg, [])]
    torch = parts.get("torch", [])
    return [f"A {listed(runs, 'model.depth')}-layer {listed(runs, 'model.activation')} MLP of width "
            f"{listed(runs, 'model.width')} ({listed(runs, 'model.init')} weights) on {listed(runs, 'data.name')}, "
            f"{listed(runs, 'train.steps')} steps of plain SGD at {listed(runs, 'optim.lr')}, batch "
            f"{listed(runs, 'data.batch_size')}, {seeds(runs)}, instead of van Laarhoven's convolutional networks.",
            f"L2 is torch's weight decay, optim.weight_decay = {listed(parts.get('l2', []), 'optim.weight_decay')}, "
            "on every parameter (BatchNorm's gain and shift and the classifier included); L1 is optim.l1 = "
            f"{listed(parts.get('l1', []), 'optim.l1')} × Σ|W| of the weight layers (the classifier included), added "
            "to the loss. The coefficients are bnlab's choice: lr × λ × steps = 1, so that the decay is visible in "
            "the budget (the usual 5e-4 would shrink ||W|| by 10%), and L1's pull equal to L2's at initialization.",
            "The effective learning rate is the measured ||ΔW||/||W|| of each step (update_ratio), the decay's own "
            "share of ΔW included; it is averaged over the measured steps of the first and last fifth of training "
            "and over the hidden layers (geometric).",
            f"The norm=torch cross-check reran seed {listed(torch, 'train.seed')} of the L2 part with torch's "
            "BatchNorm."]


QUICK = ("model.depth=3", "model.width=32", "train.steps=100", "train.eval_every=50", "log.every=25",
         "train.seed=0")
ARMS_COMPARED = {"norm": ("none", "bnlab")}
NO_L1, NO_L2 = ("optim.l1=0",), ("optim.weight_decay=0",)
EXPERIMENT = Experiment(
    name="bn_vs_l1l2",
    paper="van Laarhoven 2017, L2 regularization versus batch and weight normalization; Ioffe & Szegedy 2015",
    claim="with BatchNorm, L2 (and L1) shrink the weights' scale and raise the effective learning rate instead of "
          "regularizing; without it L2 shrinks the weights but does not raise the effective learning rate",
    minutes=3.7, quick_seconds=34,
    parts=(Part(name="none", config="bn_vs_l1l2", quick=QUICK, fixed=(*NO_L1, *NO_L2), arms=ARMS_COMPARED),
           Part(name="l1", config="bn_vs_l1l2", overrides=(f"optim.l1={L1}",), quick=QUICK, fixed=NO_L2,
                arms=ARMS_COMPARED),
           Part(name="l2", config="bn_vs_l1l2", overrides=(f"optim.weight_decay={WEIGHT_DECAY}",), quick=QUICK,
                fixed=NO_L1, arms=ARMS_COMPARED),
           Part(name="torch", config="bn_vs_l1l2", overrides=(f"optim.weight_decay={WEIGHT_DECAY}",), quick=QUICK,
                fixed=("norm=torch", "train.seed=0", *NO_L1), cross_check_of="l2")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
