"""`bn_clipping`: at learning rates where the network without BatchNorm diverges, does gradient clipping
(Pascanu et al. 2013) or adaptive gradient clipping (Brock et al. 2021) give what BatchNorm gives; and with
BatchNorm, does clipping change anything?

The network and the learning-rate grid of `lr_tolerance` (a 10-layer ReLU MLP, kaiming weights, plain SGD),
with and without BatchNorm, in three parts that differ only in the clipping: `no_clip`, `clip`
(optim.grad_clip: the norm of all gradients together at most c) and `adaptive` (optim.adaptive_clip: each
unit's gradient at most lambda times its weights' norm), plus `torch`, the norm=torch cross-check of two
rates of the adaptive part. A rate "trains" as in `lr_tolerance`: every seed completes above 0.8.
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.lr_tolerance import QUICK, TRAINED, largest_training_rate, trains
from bnlab.experiments.measures import (
    Parts,
    across,
    bn_arm,
    final_accuracy,
    largest,
    listed,
    seeds,
    select,
    setting,
    values_of,
)
from bnlab.experiments.plotting import mean_of, xy_panel
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict, above, below, judged
from bnlab.telemetry import plots

ARMS = ("no_clip", "clip", "adaptive")
ARM_NAMES = {"no_clip": "no clipping", "clip": "gradient clipping", "adaptive": "adaptive clipping"}
# Pascanu et al. (2013, §3.2): clip at half to ten times the average gradient norm of training. A control run
# (norm=none, lr 0.1, seed 0, 500 steps, every 10th step measured): the weight gradients' joint norm averaged 1.38.
GRAD_CLIP = 1.0
ADAPTIVE_CLIP = 0.01  # the clipping threshold lambda of the NFNets of Brock et al. (2021)
STEPS = (("train.steps", 500),)

NO_DIVERGENCE = Threshold("= 0", lambda fraction: fraction == 0, "theory", "a clipped step moves the weights by at "
                          "most lr × c (gradient clipping) or each unit by at most lr × λ of its norm (adaptive "
                          "clipping), so no single step can jump to an overflow: no clipped run should diverge", STEPS)
REACHES_BN = Threshold(">= 1", lambda ratio: ratio >= 1, "choice", "'gives what BatchNorm gives': the clipped network "
                       "without BatchNorm trains at every rate of the grid at which the unclipped BatchNorm network "
                       "trains (their largest training rates in a ratio of at least 1)", STEPS)
MATCHES_BN = above(-0.02, "choice", "at BatchNorm's largest training rate, the clipped network without BatchNorm ends "
                   "at most 0.02 below BatchNorm's test accuracy (about 7 of the embedded digits' 359 test images)",
                   train__steps=500)
UNCHANGED = below(0.02, "choice", "clipping 'changes nothing' with BatchNorm when the final test accuracy moves by "
                  "less than 0.02 (about 7 of 359 test images) at every rate where the unclipped BatchNorm network "
                  "trains", train__steps=500)
SAME_RANGE = Threshold("= 1", lambda ratio: ratio == 1, "choice", "... and the largest rate of the grid that trains "
                       "stays the same", STEPS)
THRESHOLDS = {"a learning rate trains: final test accuracy of every seed": TRAINED,
              "no BN, clipped: fraction of runs that diverge at the rates where an unclipped run diverges":
                  NO_DIVERGENCE,
              "largest training rate, no BN clipped / BN unclipped": REACHES_BN,
              "test accuracy at BN's largest training rate, no BN clipped minus BN unclipped": MATCHES_BN,
              "BN: largest change of the final test accuracy by clipping, at the rates BN trains at": UNCHANGED,
              "BN: largest training rate, clipped / unclipped": SAME_RANGE}


def _rate(value: float | None) -> str:
    return formatting.number(value, "g", missing="none of the grid")


def _stat(runs: list[RunData]) -> str:
    return formatting.stat(across(runs, final_accuracy), ".3f")


def _accuracy(runs: list[RunData], lr: float) -> float | None:
    return mean_of(select(runs, optim__lr=lr), final_accuracy)


def divergence_check(name: str, clipped: list[RunData], unclipped: list[RunData], ran: dict) -> Check:
    """The fraction of `clipped` runs that diverged at the rates where an `unclipped` run diverged."""
    diverging = [lr for lr in values_of(unclipped, "optim.lr")
                 if any(run.status == "diverged" for run in select(unclipped, optim__lr=lr))]
    at = [run for lr in diverging for run in select(clipped, optim__lr=lr)]
    if not at:
        why = "no clipped runs" if not clipped else "no unclipped run diverged"
        return judged(f"no BN, {name}: divergence", None, f"not measured ({why})", NO_DIVERGENCE, ran)
    unclipped_at = [run for lr in diverging for run in select(unclipped, optim__lr=lr)]
    diverged = sum(run.status == "diverged" for run in at)
    measured = (f"{diverged} of {len(at)} clipped runs diverged at rates {', '.join(map(formatting.number, diverging))}"
                f" (unclipped: {sum(run.status == 'diverged' for run in unclipped_at)} of {len(unclipped_at)})")
    return judged(f"no BN, {name}: divergence", diverged / len(at), measured, NO_DIVERGENCE, ran)


def recovery_claim(arm: str, plain: dict[str, list[RunData]], normed: dict[str, list[RunData]]) -> Claim:
    """Without BatchNorm, `arm`'s clipping against no clipping (divergence) and against unclipped BatchNorm."""
    clipped, unclipped, batchnorm = plain[arm], plain["no_clip"], normed["no_clip"]
    ran = largest(clipped + unclipped + batchnorm, "train.steps")
    name = ARM_NAMES[arm]
    checks = [divergence_check(name, clipped, unclipped, ran)]
    best_clipped, best_bn = largest_training_rate(clipped), largest_training_rate(batchnorm)
    ratio = None
    if clipped and best_bn is not None:
        ratio = 0.0 if best_clipped is None else best_clipped / best_bn
    measured = f"no BN with {name} {_rate(best_clipped)}, BN unclipped {_rate(best_bn)}"
    checks.append(judged("largest learning rate that trains", ratio, measured, REACHES_BN, ran))
    gap = None
    if best_bn is not None:
        ours, theirs = _accuracy(clipped, best_bn), _accuracy(batchnorm, best_bn)
        gap = None if ours is None or theirs is None else ours - theirs
    measured = (f"at lr {_rate(best_bn)}: {_stat(select(clipped, optim__lr=best_bn))} vs BN "
                f"{_stat(select(batchnorm, optim__lr=best_bn))}" if gap is not None else "not measured")
    checks.append(judged("final test accuracy, no BN clipped vs BN unclipped", gap, measured, MATCHES_BN, ran))
    paper = ("Pascanu et al. (2013): clipping the gradient norm prevents the exploding steps that make training "
             "diverge" if arm == "clip" else
             "Brock et al. (2021), §3: adaptive clipping lets networks without normalization train at the large "
             "batch sizes and learning rates where they otherwise become unstable, matching BatchNorm networks")
    return Claim(f"Without BatchNorm, {name} keeps the network from diverging and trains it at the learning rates "
                 "where BatchNorm trains", paper, checks)


def unchanged_claim(normed: dict[str, list[RunData]]) -> Claim:
    """With BatchNorm: each clipping against none, at the rates where unclipped BatchNorm trains."""
    unclipped = normed["no_clip"]
    rates = [lr for lr in values_of(unclipped, "optim.lr") if trains(select(unclipped, optim__lr=lr))]
    checks = []
    for arm in ("clip", "adaptive"):
        clipped, name = normed[arm], ARM_NAMES[arm]
        ran = largest(clipped + unclipped, "train.steps")
        gaps = {lr: abs(a - b) for lr in rates if (a := _accuracy(clipped, lr)) is not None
                and (b := _accuracy(unclipped, lr)) is not None}
        worst = max(gaps.values()) if gaps and len(gaps) == len(rates) else None
        measured = "; ".join(f"{_stat(select(clipped, optim__lr=lr))} vs {_stat(select(unclipped, optim__lr=lr))} "
                             f"(lr {formatting.number(lr, 'g')})" for lr in gaps) or "not measured"
        checks.append(judged(f"BN, {name} vs none: final test accuracy at the rates BN trains at", worst, measured,
                              UNCHANGED, ran))
        best, best_unclipped = largest_training_rate(clipped), largest_training_rate(unclipped)
        ratio = None
        if clipped and unclipped and best_unclipped is not None:
            ratio = 0.0 if best is None else best / best_unclipped
        checks.append(judged(f"BN, {name}: largest learning rate that trains", ratio,
                              f"{_rate(best)} vs {_rate(best_unclipped)} unclipped", SAME_RANGE, ran))
    return Claim("With BatchNorm, clipping changes neither the final accuracy nor the range of learning rates that "
                 "train", "(bnlab's question: BatchNorm already makes a layer's output independent of its weights' "
                 "scale and its gradient inversely proportional to it; Brock et al. (2021) introduce adaptive "
                 "clipping for networks without normalization)", checks)


def verdict(parts: Parts) -> Verdict:
    plain = {arm: bn_arm(parts.get(arm, []), False) for arm in ARMS}
    normed = {arm: bn_arm(parts.get(arm, []), True) for arm in ARMS}
    claims = [recovery_claim("clip", plain, normed), recovery_claim("adaptive", plain, normed),
              unchanged_claim(normed)]
    return Verdict(claims, [accuracy_table(plain, normed), range_table(plain, normed)], range_notes(normed))


def range_notes(normed: dict[str, list[RunData]]) -> list[str]:
    """Where clipping made BatchNorm train beyond its own range, and the step bound adaptive clipping puts on
    every rate, from the runs."""
    unclipped = normed["no_clip"]
    rates = values_of(unclipped, "optim.lr")
    best = largest_training_rate(unclipped)
    notes = []
    for arm in ("clip", "adaptive"):
        beyond = [lr for lr in rates if (best is None or lr > best) and trains(select(normed[arm], optim__lr=lr))]
        if beyond:
            notes.append(f"With BatchNorm, {ARM_NAMES[arm]} trains at {', '.join(map(formatting.number, beyond))}, "
                         f"beyond unclipped BatchNorm's largest training rate ({_rate(best)}).")
    clipped = normed["adaptive"]
    lam = setting(clipped[0], "optim.adaptive_clip") if clipped else None
    if lam is not None and rates:
        notes.append(f"Adaptive clipping bounds the step at every rate: each unit moves by at most lr × λ of its norm "
                     f"a step, {formatting.number(rates[0] * lam, '.2g')} at lr {formatting.number(rates[0])}.")
    return notes


def _cell(runs: list[RunData]) -> str:
    if not runs:
        return "-"
    diverged = sum(run.status == "diverged" for run in runs)
    text = _stat(runs)
    return text + (f" ({diverged}/{len(runs)} diverged)" if diverged else "") + (" ✓" if trains(runs) else "")


def accuracy_table(plain: dict, normed: dict) -> Table:
    arms = [(f"{'BN' if bn else 'no BN'}, {ARM_NAMES[arm]}", (normed if bn else plain)[arm])
            for bn in (False, True) for arm in ARMS]
    rates = values_of([run for _, runs in arms for run in runs], "optim.lr")
    return Table(f"final test accuracy per learning rate (✓: the rate trains, every seed completes above "
                 f"{TRAINED.test.lstrip('> ')}; diverged runs stop at the step that was not finite)",
                 ["lr", *(label for label, _ in arms)],
                 [[formatting.number(lr, "g"), *(_cell(select(runs, optim__lr=lr)) for _, runs in arms)]
                  for lr in rates])


def range_table(plain: dict, normed: dict) -> Table:
    rows = [["no BN" if group is plain else "BN", ARM_NAMES[arm], _rate(largest_training_rate(group[arm])),
             str(sum(run.status == "diverged" for run in group[arm])), str(len(group[arm]))]
            for group in (plain, normed) for arm in ARMS]
    return Table("largest learning rate that trains, and diverged runs, per arm",
                 ["BatchNorm", "clipping", "largest training rate", "diverged runs", "runs"], rows)


def figures(parts: Parts):
    figure, axes = plots.new_figure(1100, 430, 1, 2)
    for ax, with_bn in zip(axes, (False, True), strict=True):
        lines, diverged = [], []
        for index, arm in enumerate(ARMS):
            runs = bn_arm(parts.get(arm, []), with_bn)
            rates = values_of(runs, "optim.lr")
            at = [select(runs, optim__lr=lr) for lr in rates]
            lines.append((ARM_NAMES[arm], rates, [mean_of(r, final_accuracy) for r in at], f"C{index}", "-"))
            diverged.append([lr for lr, r in zip(rates, at, strict=True) if any(run.status == "diverged" for run in r)])
        xy_panel(ax, lines, "learning rate", "final test accuracy", logx=True)
        for index, rates in enumerate(diverged):  # staggered, so that the arms' marks do not hide each other
            ax.plot(rates, [0.02 + 0.03 * index] * len(rates), "x", color=f"C{index}", markersize=9)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{'with' if with_bn else 'without'} BatchNorm (x: a seed diverged)", fontsize=9)
    figure.suptitle("final test accuracy against learning rate, without and with clipping (mean over seeds)",
                    fontsize=10)
    return [("clipping_lr_sweep", "Final test accuracy against learning rate without BatchNorm (left) and with it "
             "(right), for no clipping, gradient clipping and adaptive clipping (mean over seeds; an x marks a "
             "rate where a seed diverged)", figure)]


def deviations(parts: Parts) -> list[str]:
    runs = [run for arm in ARMS for run in parts.get(arm, [])]
    clip, adaptive, torch = parts.get("clip", []), parts.get("adaptive", []), parts.get("torch", [])
    return [f"A {listed(runs, 'model.depth')}-layer {listed(runs, 'model.activation')} MLP of width "
            f"{listed(runs, 'model.width')} ({listed(runs, 'model.init')} weights) on {listed(runs, 'data.name')}, "
            f"{listed(runs, 'train.steps')} steps of plain SGD at a constant rate, rates "
            f"{listed(runs, 'optim.lr')}, {seeds(runs)}, instead of recurrent networks (Pascanu et al.) or "
            "NF-ResNets on ImageNet (Brock et al.).",
            f"Gradient clipping at c = {listed(clip, 'optim.grad_clip')}: the norm of all gradients together "
            "(torch.nn.utils.clip_grad_norm_), 0.72 times the average gradient norm (1.38) of a control run without "
            "BatchNorm at lr 0.1, within the half to ten times that Pascanu et al. (2013, §3.2) advise.",
            f"Adaptive clipping at λ = {listed(adaptive, 'optim.adaptive_clip')} (the paper's NFNets use 0.01 at "
            "batch size 4096 and report that smaller batches tolerate larger λ); every parameter is clipped, the "
            "classifier too, where NFNets leave their final layer unclipped; a bias or BatchNorm gain is one unit.",
            f"The norm=torch cross-check reran the adaptive part's rates {listed(torch, 'optim.lr')} of seed "
            f"{listed(torch, 'train.seed')} with torch's BatchNorm."]


ONLY_CLIP = ("optim.adaptive_clip=null",)
ONLY_ADAPTIVE = ("optim.grad_clip=null",)
QUICK_RATES = (*QUICK, "optim.lr=0.1,10.0")
ARMS_COMPARED = {"norm": ("none", "bnlab")}
EXPERIMENT = Experiment(
    name="bn_clipping",
    paper="Pascanu et al. 2013 (gradient clipping); Brock et al. 2021 (adaptive gradient clipping)",
    claim="without BatchNorm, gradient clipping and adaptive clipping keep the network from diverging at the "
          "learning rates where BatchNorm trains it; with BatchNorm, clipping changes little",
    minutes=4.5, quick_seconds=37,
    parts=(Part(name="no_clip", config="bn_clipping", quick=QUICK_RATES, fixed=(*ONLY_CLIP, *ONLY_ADAPTIVE),
                arms=ARMS_COMPARED),
           Part(name="clip", config="bn_clipping", overrides=(f"optim.grad_clip={GRAD_CLIP}",), quick=QUICK_RATES,
                fixed=ONLY_CLIP, arms=ARMS_COMPARED),
           Part(name="adaptive", config="bn_clipping", overrides=(f"optim.adaptive_clip={ADAPTIVE_CLIP}",),
                quick=QUICK_RATES, fixed=ONLY_ADAPTIVE, arms=ARMS_COMPARED),
           Part(name="torch", config="bn_clipping",
                overrides=("optim.lr=0.1,1.0", f"optim.adaptive_clip={ADAPTIVE_CLIP}"), quick=(*QUICK, "optim.lr=0.1"),
                fixed=("norm=torch", "train.seed=0", *ONLY_ADAPTIVE), cross_check_of="adaptive")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
