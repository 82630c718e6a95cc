"""`vanishing_cnn`: the vanishing-gradient claim on plain CNNs, with and without BatchNorm.

Parts: `gradients` (sigmoid and ReLU CNNs at depths 4-16, with and without bnlab's BatchNorm, 3 seeds: the
gradient at initialization, from the first batch), `training` (a shallow and a deep network of each, 500
steps: the budget in which the shallow ReLU network without BatchNorm trains) and `torch` (the norm=torch
cross-check of the deep trained networks). The claims are those of bnlab.experiments.vanishing, with
thresholds stated for CNNs.
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    GROWTH_INIT,
    RATIO_INIT,
    Parts,
    across,
    listed,
    seeds,
    select,
    values_of,
)
from bnlab.experiments.plotting import mean_of, xy_panel
from bnlab.experiments.vanishing import (
    COMPARABLE,
    deepest_profiles_figure,
    gradient_claims,
    gradient_tables,
    stall_claim,
    training_figure,
    underflow_note,
)
from bnlab.experiments.verdict import Table, Verdict, above, below
from bnlab.telemetry import plots

VANISHED = below(1e-3, "theory", "as for the MLP, each 3×3 convolution with U(±1/√fan_in) weights scales the "
                 "back-propagated gradient by about 1/√3 × the activation's RMS slope: ≤ 0.144 per layer "
                 "(sigmoid), ≈ 0.41 (ReLU, half the units pass); over 11 layers that is ≤ 6e-5",
                 model__depth=12)
TRAINED = above(0.8, "control run", "the 500-step budget is where a control run of the depth-4 ReLU CNN without "
                "BatchNorm trains (0.92 at 400 steps, 0.58 at 300)", train__steps=500)
STALLED = below(0.2, "choice", "'stalls': within 0.1 of chance (0.1 for ten classes)", train__steps=500)
THRESHOLDS = {"no BN, deepest network: first/last gradient ratio at init": VANISHED,
              "BN: first/last gradient ratio at init, at every depth": COMPARABLE,
              "training part: the shallow network without BN, and the deep one with BN, train": TRAINED,
              "training part: the deep network without BN stalls": STALLED}
PAPER_TRAINS = ("Ioffe & Szegedy (2015, §3.2, §4.2): BatchNorm per feature map lets deep convolutional "
                "networks (Inception) train, with saturating nonlinearities too")


def verdict(parts: Parts) -> Verdict:
    gradients, training = parts.get("gradients", []), parts.get("training", [])
    claims = [*gradient_claims(gradients, VANISHED, COMPARABLE),
              stall_claim(training, TRAINED, STALLED, PAPER_TRAINS, "CNNs")]
    tables = [init_table(gradients)]
    tables += gradient_tables(training, "the training part, gradient first/last hidden layer and accuracy")
    return Verdict(claims, tables, underflow_note(gradients))


def init_table(runs: list[RunData]) -> Table:
    """The gradient at initialization: first/last ratio and growth per layer toward the input."""
    return Table("gradient at initialization (first batch), first/last hidden layer and growth per layer toward "
                 "the input", ["activation", "BatchNorm", "depth", "n", "first/last, init", "growth/layer, init"],
                 [[activation, norm, str(depth), str(len(group)),
                   formatting.stat(across(group, RATIO_INIT, True), ".2e"),
                   formatting.stat(across(group, GROWTH_INIT, True))]
                  for activation in values_of(runs, "model.activation") for norm in values_of(runs, "norm.name")
                  for depth in values_of(runs, "model.depth")
                  if (group := select(runs, model__activation=activation, norm__name=norm, model__depth=depth))])


def init_by_depth_figure(runs: list[RunData]):
    """First/last ratio (left) and growth per layer (right) at initialization, against depth."""
    depths = values_of(runs, "model.depth")
    figure, (left, right) = plots.new_figure(1100, 430, 1, 2)
    ratio, growth = [], []
    for index, (activation, norm) in enumerate((a, n) for a in values_of(runs, "model.activation")
                                               for n in values_of(runs, "norm.name")):
        at = [select(runs, model__activation=activation, norm__name=norm, model__depth=d) for d in depths]
        label, color, style = f"{activation}, norm={norm}", f"C{index % 10}", "--"  # all at step 0
        ratio.append((label, depths, [mean_of(r, RATIO_INIT, True) for r in at], color, style))
        growth.append((label, depths, [mean_of(r, GROWTH_INIT, True) for r in at], color, style))
    xy_panel(left, ratio, "convolutional blocks (depth)", "‖∂L/∂z‖ first / last block, at init", logy=True)
    left.axhline(1.0, color="grey", linewidth=0.8)
    xy_panel(right, growth, "convolutional blocks (depth)", "growth per block toward the input, at init")
    right.axhline(1.0, color="grey", linewidth=0.8)
    figure.suptitle("plain CNNs at initialization: gradient ratio first/last block and growth per block, by depth "
                    "(geometric mean over seeds)", fontsize=10)
    return figure


def figures(parts: Parts):
    gradients, training = parts.get("gradients", []), parts.get("training", [])
    deepest = max(values_of(training, "model.depth"), default=0)
    return [("vanishing_by_depth", "First/last block gradient ratio and growth per block toward the input at "
             "initialization, against depth (geometric mean over seeds)", init_by_depth_figure(gradients)),
            ("gradients_deepest", f"‖∂L/∂z‖ across the blocks of the depth-{deepest} CNNs, at step 0 (dashed) and "
             "at the end of training (solid), geometric mean over seeds", deepest_profiles_figure(training)),
            ("training", "Test accuracy over training of the shallow and the deep CNNs, with and without "
             "BatchNorm (mean over seeds)",
             training_figure(training, "plain CNNs: test accuracy over training"))]


def deviations(parts: Parts) -> list[str]:
    gradients, training, torch = (parts.get(name, []) for name in ("gradients", "training", "torch"))
    return [f"Not one paper's experiment: the claim on plain CNNs (no residual connections), "
            f"{listed(gradients, 'model.activation')}, {listed(gradients, 'model.width')} channels of 3×3 "
            f"convolutions, max-pooling after a third and two thirds of the blocks, global average pooling, on "
            f"{listed(gradients, 'data.name')} (8×8 images); Ioffe & Szegedy's CNN evidence is Inception on ImageNet.",
            f"The gradient at initialization is measured on the first batch (train.steps="
            f"{listed(gradients, 'train.steps')}) at depths {listed(gradients, 'model.depth')}, "
            f"{seeds(gradients)}; training at depths {listed(training, 'model.depth')}, "
            f"{listed(training, 'train.steps')} steps of plain SGD at {listed(training, 'optim.lr')}, batch "
            f"{listed(training, 'data.batch_size')}, {seeds(training)}: bnlab's choices.",
            f"The norm=torch cross-check (torch.nn.BatchNorm2d) reran the depth-{listed(torch, 'model.depth')} "
            f"trained BatchNorm networks of seed {listed(torch, 'train.seed')}."]


QUICK = ("model.width=8", "train.seed=0")
ARMS = {"norm": ("none", "bnlab")}
TRAINING_QUICK = (*QUICK, "model.depth=3,6", "train.steps=60", "train.eval_every=20", "log.every=20")
EXPERIMENT = Experiment(
    name="vanishing_cnn",
    paper="BatchNorm's motivating claim on convolutional networks (Ioffe & Szegedy 2015, §3.2; Glorot & Bengio "
          "2010)",
    claim="without BatchNorm the gradient of plain sigmoid and ReLU CNNs vanishes geometrically with depth and "
          "deep ones stall; with it the gradient reaches the first block and they train",
    minutes=6, quick_seconds=30,
    parts=(Part(name="gradients", config="vanishing_cnn", overrides=("train.steps=1", "log.every=1"),
                quick=(*QUICK, "model.depth=3,6"), arms=ARMS),
           Part(name="training", config="vanishing_cnn", overrides=("model.depth=4,16",), quick=TRAINING_QUICK,
                arms=ARMS),
           Part(name="torch", config="vanishing_cnn", overrides=("model.depth=16",),
                quick=(*TRAINING_QUICK, "model.depth=6"), fixed=("norm=torch", "train.seed=0"),
                cross_check_of="training")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
