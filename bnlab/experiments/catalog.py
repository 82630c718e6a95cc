"""The named experiments of `bnlab reproduce`: what each runs, where it comes from, how it is judged.

An experiment is one or more *parts*, each a Hydra multirun of an experiment config
(`configs/experiment/<config>.yaml`, which holds the sweep axes) into its own
subdirectory. A part's overrides are applied in this order, later ones winning:
`overrides` (the part's own defaults), `quick` (with --quick: a smaller sweep that
measures the same quantities), the user's command-line overrides, then `fixed` (what
makes the part what it is, e.g. the cross-check's norm=torch). A part with
`cross_check_of` reruns another part's BatchNorm runs with torch's layer; the two are
compared run for run (bnlab.experiments.verdict.cross_check).

Expected run times: measured at full size on this project's 2-core CPU machine (docs/results/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bnlab.config.schema import close_match
from bnlab.errors import ConfigError
from bnlab.experiments import figures as reproduce_figures
from bnlab.experiments import verdicts, verdicts_training

TORCH = ("norm=torch", "train.seed=0")


@dataclass(frozen=True)
class Part:
    name: str  # its subdirectory of the experiment directory
    config: str  # configs/experiment/<config>.yaml
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    cross_check_of: str | None = None


@dataclass(frozen=True)
class Fallback:
    """What to run when the experiment's data files are missing, and the deviation to state."""

    overrides: tuple[str, ...]
    deviation: str


@dataclass(frozen=True)
class Experiment:
    name: str
    paper: str
    claim: str
    minutes: float  # expected wall time at full size on a 2-core CPU
    quick_seconds: float
    parts: tuple[Part, ...]
    verdict: Callable  # {part: [RunData]} -> bnlab.experiments.verdict.Verdict
    figures: Callable  # {part: [RunData]} -> [(name, caption, Figure)]
    deviations: tuple[str, ...]
    fallback: Fallback | None = None


# --quick: one seed and small sizes, the same measurements (about 40 runs for all five experiments)
VANISHING_QUICK = ("model.depth=2,5", "model.width=64", "train.seed=0", "train.steps=60", "train.eval_every=20",
                   "log.every=20")
IOFFE_QUICK = ("train.steps=600", "train.eval_every=50", "log.every=50", "train.seed=0")
GLOROT_QUICK = ("model.width=200", "train.seed=0")
YANG_QUICK = ("model.depth=10", "model.width=128", "data.batch_size=128", "train.seed=0")
LR_QUICK = ("model.depth=5", "model.width=64", "train.steps=100", "train.eval_every=50", "log.every=25",
            "train.seed=0")

EXPERIMENTS = {e.name: e for e in (
    Experiment(
        "vanishing", "the seed's headline claim (Ioffe & Szegedy 2015, §1 and §3.3; Glorot & Bengio 2010)",
        "without BatchNorm the gradient vanishes geometrically with depth and deep sigmoid nets stall; "
        "with it the gradient reaches the first layer and they train",
        2.5, 20,
        (Part("main", "vanishing", quick=VANISHING_QUICK),
         Part("torch", "vanishing", overrides=("model.depth=20",), quick=(*VANISHING_QUICK, "model.depth=5"),
              fixed=TORCH, cross_check_of="main")),
        verdicts.vanishing, reproduce_figures.vanishing,
        ("Not one paper's experiment: the seed's claim, on the settings the issue states (sigmoid and tanh MLPs "
         "at depths 2, 5, 10, 20, 3 seeds, the embedded digits). Width 128, standard init U(±1/sqrt(fan_in)) "
         "with zero biases, plain SGD at 0.1, batch 64 and 300 steps are bnlab's choices.",
         "The norm=torch cross-check reruns the depth-20 BatchNorm networks of seed 0.")),
    Experiment(
        "ioffe2015_fig1", "Ioffe & Szegedy 2015, §4.1 and Figure 1",
        "BatchNorm trains faster and ends higher; it keeps the sigmoid's input distribution stable",
        8.5, 15,
        (Part("main", "ioffe2015_fig1", quick=IOFFE_QUICK),
         Part("torch", "ioffe2015_fig1", overrides=("train.steps=5000",), quick=IOFFE_QUICK, fixed=TORCH,
              cross_check_of="main")),
        verdicts_training.ioffe2015_fig1, reproduce_figures.ioffe2015_fig1,
        ("The paper states neither optimizer nor learning rate: plain SGD at 0.5 with N(0, 0.1²) weights, as a "
         "public reproduction used.",
         "3 seeds (the paper shows one run); the norm=torch cross-check runs the first 5,000 steps of seed 0."),
        Fallback(("data=digits",), "MNIST files were not found under data/mnist: ran on the embedded digits "
                 "(1797 8×8 images, 64 inputs) instead of MNIST (784 inputs), so the accuracies are not "
                 "comparable with the paper's MNIST numbers; 50,000 steps of 60 are ~2,000 epochs of digits.")),
    Experiment(
        "glorot2010", "Glorot & Bengio 2010, Figures 2, 7 and 8",
        "(a) the top sigmoid layer saturates early; (b) with standard init the back-propagated gradient "
        "shrinks toward the input, with xavier it stays flat; weight gradients flat in both",
        2.0, 15,
        (Part("saturation", "glorot2010", quick=(*GLOROT_QUICK, "train.steps=200")),
         Part("gradients", "glorot2010_gradients", quick=GLOROT_QUICK),
         Part("torch", "glorot2010_gradients", quick=GLOROT_QUICK, fixed=TORCH, cross_check_of="gradients")),
        verdicts.glorot2010, reproduce_figures.glorot2010,
        ("Digits (64 inputs) instead of Shapeset-3×2 (32×32 images); SGD at 0.1 instead of a learning rate "
         "tuned per model; (a) runs 2,000 steps (~14 epochs of digits), so it shows the early phase only, not "
         "the later desaturation around epoch 100.",
         "(b) the first layer's weight gradient is left out of the flatness test: its fan-in is 64 (digits) "
         "instead of ~1,000, so its scale is not comparable.",
         "(b) with BatchNorm, and its norm=torch cross-check, are bnlab's additions.")),
    Experiment(
        "yang2019", "Yang et al. 2019, A Mean Field Theory of Batch Normalization",
        "at init BatchNorm makes plain deep ReLU nets' gradients explode (~1.21 per layer); deep plain BN nets "
        "stop training; residual connections remove the explosion",
        2.0, 25,
        (Part("init", "yang2019", quick=YANG_QUICK),
         Part("depth", "yang2019_depth", quick=("model.depth=3,12", "model.width=32", "train.steps=60",
                                                 "train.eval_every=20", "log.every=20", "train.seed=0")),
         Part("torch", "yang2019", quick=YANG_QUICK, fixed=TORCH, cross_check_of="init")),
        verdicts.yang2019, reproduce_figures.yang2019,
        ("The theory is for infinite width and batch: depth 30, width 512, batch 512 here, on digits.",
         "Trainable depth reduced to one learning rate (SGD at 0.1), 300 steps, depths 5-50, width 128, on "
         "digits (the paper sweeps depth x learning rate on MNIST and CIFAR-10).")),
    Experiment(
        "lr_tolerance", "Ioffe & Szegedy 2015 (BN-x5, BN-x30); Bjorck et al. 2018",
        "BatchNorm networks train at learning rates where the same network without it diverges or stalls",
        2.5, 20,
        (Part("main", "lr_tolerance", quick=(*LR_QUICK, "optim.lr=0.01,0.1,1.0,10.0")),
         Part("torch", "lr_tolerance", overrides=("optim.lr=0.1,1.0",), quick=(*LR_QUICK, "optim.lr=0.1"),
              fixed=TORCH, cross_check_of="main")),
        verdicts_training.lr_tolerance, reproduce_figures.lr_tolerance,
        ("A 10-layer ReLU MLP (kaiming weights) on digits instead of Inception on ImageNet (Ioffe & Szegedy) "
         "or ResNet-110 on CIFAR-10 (Bjorck et al.); 500 steps of plain SGD at a constant rate.",
         "The norm=torch cross-check runs two rates (0.1 and 1.0) of seed 0.")),
)}


def get(name: str) -> Experiment:
    """The experiment called `name`; ConfigError naming the valid ones otherwise."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"no experiment named {name!r}{close_match(name, EXPERIMENTS)}; expected one of: "
                          f"{', '.join(EXPERIMENTS)} (bnlab reproduce --list describes them)")
    return EXPERIMENTS[name]
