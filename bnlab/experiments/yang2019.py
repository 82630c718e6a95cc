"""`yang2019`: Yang et al. 2019, A Mean Field Theory of Batch Normalization.

Parts: `init` (ReLU and linear MLPs, depth 30, width 512, batch 512, with and without BatchNorm: the gradient's
growth toward the input at initialization), `depth` (plain and residual BatchNorm ReLU MLPs at growing depth,
a fixed budget: trainability) and `torch` (the cross-check of `init`).
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    GROWTH_INIT,
    RATIO_INIT,
    Parts,
    across,
    bn_arm,
    final_accuracy,
    largest,
    listed,
    select,
    values_of,
)
from bnlab.experiments.plotting import init_profiles, mean_of, xy_panel
from bnlab.experiments.verdict import Claim, Table, Verdict, above, below, between, check
from bnlab.telemetry import plots

BN_RELU = between(1.09, 1.33, "theory", "Yang et al. (2019): sqrt(π/(π-1)) = 1.21 per layer for BatchNorm + ReLU "
                  "at a large batch, ±10%")
NEAR_ONE = between(0.9, 1.1, "theory", "kaiming init keeps the gradient's scale without BatchNorm; BatchNorm + a "
                   "linear activation tends to 1 as the batch grows (Yang et al. 2019); ±10%")
TRAINED = above(0.8, "choice", "'trains': far above chance (0.1), below the 0.95-0.98 the networks reach on digits",
                train__steps=300)
COLLAPSED = below(0.5, "choice", "'stops training': below half of what the shallow network reaches in the same "
                  "budget", train__steps=300, model__depth=50)
RESIDUAL_RATIO = below(100, "theory", "the plain network's explosion at depth 50 is 1.21^49 ≈ 1.2e4; 100 is two "
                       "orders of magnitude below it", model__depth=50)
THRESHOLDS = {"ReLU with BatchNorm: growth per layer at init": BN_RELU,
              "ReLU without BatchNorm, and linear with BatchNorm": NEAR_ONE,
              "the shallowest plain network, and the deepest residual one, train": TRAINED,
              "the deepest plain BatchNorm network: final test accuracy": COLLAPSED,
              "the deepest residual network: first/last gradient ratio at init": RESIDUAL_RATIO}


def verdict(parts: Parts) -> Verdict:
    init, depth = parts.get("init", []), bn_arm(parts.get("depth", []), True)
    growth_of = {(act, bn): across(select(bn_arm(init, bn), model__activation=act), GROWTH_INIT, True)
                 for act in ("relu", "linear") for bn in (True, False)}
    explode = [check("ReLU with BatchNorm: growth per layer toward the input at init", growth_of["relu", True],
                     ".3g", BN_RELU),
               check("ReLU without BatchNorm", growth_of["relu", False], ".3g", NEAR_ONE),
               check("linear with BatchNorm", growth_of["linear", True], ".3g", NEAR_ONE)]
    depths = values_of(depth, "model.depth")
    shallow, deep = min(depths, default=None), max(depths, default=None)
    plain, residual = select(depth, model__residual=False), select(depth, model__residual=True)
    ran = largest(depth, "train.steps", "model.depth")
    collapse = [check(f"plain, depth {shallow}: final test accuracy",
                      across(select(plain, model__depth=shallow), final_accuracy), ".3f", TRAINED, ran),
                check(f"plain, depth {deep}: final test accuracy",
                      across(select(plain, model__depth=deep), final_accuracy), ".3f", COLLAPSED, ran)]
    rescue = [check(f"residual, depth {deep}: first/last at init",
                    across(select(residual, model__depth=deep), RATIO_INIT, True), ".2e", RESIDUAL_RATIO, ran),
              check(f"residual, depth {deep}: final test accuracy",
                    across(select(residual, model__depth=deep), final_accuracy), ".3f", TRAINED, ran)]
    claims = [
        Claim("At initialization BatchNorm makes a deep plain ReLU network's gradient explode toward the input; "
              "without BatchNorm, or with a linear activation, it does not",
              "Yang et al. (2019): gradient growth sqrt(pi/(pi-1)) ~ 1.21 per layer toward the input with "
              "BN + ReLU at a large batch; ~1 without BN; -> 1 for BN + linear as the batch grows", explode),
        Claim("With BatchNorm, accuracy after a fixed budget collapses beyond a few tens of layers",
              "Yang et al. (2019), trainability over depth x learning rate: plain BN networks stop training "
              "beyond a few tens of layers, as the explosion predicts", collapse),
        Claim("Residual connections remove the explosion", "(bnlab's addition: Yang et al. analyse plain "
              "networks; residual connections are the usual remedy)", rescue),
    ]
    tables = [Table("gradient at initialization", ["activation", "BatchNorm", "n", "first/last, init",
                                                    "growth/layer, init"],
                    [[act, norm, str(len(group)), formatting.stat(across(group, RATIO_INIT, True), ".2e"),
                      formatting.stat(across(group, GROWTH_INIT, True))]
                     for act in values_of(init, "model.activation") for norm in values_of(init, "norm.name")
                     if (group := select(init, model__activation=act, norm__name=norm))]),
              Table("trainable depth (BatchNorm, ReLU)", ["residual", "depth", "n", "first/last, init",
                                                          "growth/layer, init", "test acc"],
                    [[str(res), str(d), str(len(group)), formatting.stat(across(group, RATIO_INIT, True), ".2e"),
                      formatting.stat(across(group, GROWTH_INIT, True)),
                      formatting.stat(across(group, final_accuracy), ".3f")]
                     for res in (False, True) for d in depths
                     if (group := select(depth, model__residual=res, model__depth=d))])]
    return Verdict(claims, tables)


def figures(parts: Parts):
    result = []
    init = parts.get("init", [])
    if init:
        lines = init_profiles(init, "model.activation", "grad_norm/output")
        result.append(("gradients_init", "‖∂L/∂z‖ across the hidden layers at initialization (geometric mean over "
                       "seeds): BatchNorm with ReLU explodes toward the input",
                       plots.profiles_figure(lines, "‖∂L/∂(layer output)‖", "Yang et al. (2019): gradient "
                                             "at initialization, kaiming weights")))
    depth = bn_arm(parts.get("depth", []), True)
    if depth:
        depths = values_of(depth, "model.depth")
        figure, (left, right) = plots.new_figure(1100, 430, 1, 2)
        arms = [(f"residual={res}", [select(depth, model__residual=res, model__depth=d) for d in depths], f"C{i}")
                for i, res in enumerate(values_of(depth, "model.residual"))]
        xy_panel(left, [(label, depths, [mean_of(r, RATIO_INIT, True) for r in at], color, "-")
                        for label, at, color in arms], "hidden layers (depth)", "‖∂L/∂z‖ first / last, at init",
                 logy=True)
        xy_panel(right, [(label, depths, [mean_of(r, final_accuracy) for r in at], color, "-")
                         for label, at, color in arms], "hidden layers (depth)", "final test accuracy")
        right.set_ylim(0, 1.02)
        figure.suptitle("BatchNorm + ReLU: gradient explosion at init and accuracy after a fixed budget, by depth "
                        "(mean over seeds)", fontsize=10)
        result.append(("depth", "First/last gradient ratio at initialization and final test accuracy against "
                       "depth, plain and residual (mean over seeds)", figure))
    return result


def deviations(parts: Parts) -> list[str]:
    init, depth = parts.get("init", []), parts.get("depth", [])
    return [f"The theory is for infinite width and batch: depth {listed(init, 'model.depth')}, width "
            f"{listed(init, 'model.width')}, batch {listed(init, 'data.batch_size')} here, on "
            f"{listed(init, 'data.name')}.",
            f"Trainable depth reduced to one learning rate (SGD at {listed(depth, 'optim.lr')}), "
            f"{listed(depth, 'train.steps')} steps, depths {listed(depth, 'model.depth')}, width "
            f"{listed(depth, 'model.width')}, on {listed(depth, 'data.name')} (the paper sweeps depth x learning "
            "rate on MNIST and CIFAR-10)."]


QUICK = ("model.depth=10", "model.width=128", "data.batch_size=128", "train.seed=0")
ARMS = {"model.activation": ("relu", "linear"), "norm": ("none", "bnlab")}
EXPERIMENT = Experiment(
    name="yang2019",
    paper="Yang et al. 2019, A Mean Field Theory of Batch Normalization",
    claim="at init BatchNorm makes plain deep ReLU nets' gradients explode (~1.21 per layer); deep plain BN nets "
          "stop training; residual connections remove the explosion",
    minutes=2.0, quick_seconds=25,
    parts=(Part(name="init", config="yang2019", quick=QUICK, arms=ARMS),
           Part(name="depth", config="yang2019_depth", arms={"model.residual": ("false", "true"), "norm": ("bnlab",)},
                quick=("model.depth=3,12", "model.width=32", "train.steps=60", "train.eval_every=20", "log.every=20",
                       "train.seed=0")),
           Part(name="torch", config="yang2019", quick=QUICK, fixed=("norm=torch", "train.seed=0"),
                cross_check_of="init")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
