"""`glorot2010`: Glorot & Bengio (2010), Figures 2, 7 and 8.

Parts: `saturation` (sigmoid MLP, 4 layers of 1000, standard init: the mean activation of each hidden layer
over training), `gradients` (tanh, 5 layers of 1000, standard vs xavier init, with and without BatchNorm: the
back-propagated and weight gradients at initialization) and `torch` (the cross-check of `gradients`).
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.analysis.aggregate import mean_series
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    GROWTH_INIT,
    RATIO_INIT,
    Parts,
    across,
    bn_arm,
    growth,
    largest,
    listed,
    seeds,
    select,
    values_of,
)
from bnlab.experiments.plotting import init_profiles, points
from bnlab.experiments.verdict import Claim, Table, Verdict, above, below, between, check
from bnlab.telemetry import plots

TOP_SATURATED = below(0.10, "paper", "Figure 2: 'very quickly at the beginning' the top hidden layer's mean "
                      "activation is pushed from 0.5 toward 0", train__steps=2000)
LOWER_ABOVE = above(0.5, "paper", "Figure 2: the other hidden layers' mean activation stays above 0.5",
                    train__steps=2000)
SHRINKING = below(0.8, "theory", "with standard init U(±1/√fan_in) each tanh layer scales the back-propagated "
                  "gradient by about 1/√3 × tanh's mean slope ≈ 0.55")
FLAT = between(0.8, 1.25, "theory", "xavier init keeps the back-propagated variance per layer (Glorot & Bengio "
               "2010, eq. 12-16); the band allows tanh's mean slope < 1 and finite width")
THRESHOLDS = {"(a) top hidden layer: lowest mean activation, first half of training": TOP_SATURATED,
              "(a) lower hidden layers at that step": LOWER_ABOVE,
              "(b) standard init: back-propagated gradient, growth per layer": SHRINKING,
              "(b) xavier init, weight gradients, and with BatchNorm: growth per layer": FLAT}


def verdict(parts: Parts) -> Verdict:
    saturation, gradients = parts.get("saturation", []), parts.get("gradients", [])
    ran = largest(saturation, "train.steps")
    saturates = [check("top hidden layer: lowest mean activation in the first half of training",
                       across(saturation, lambda run: _saturation(run)[0]), ".3f", TOP_SATURATED, ran),
                 check("lower hidden layers at that step: lowest mean activation",
                       across(saturation, lambda run: _saturation(run)[1]), ".3f", LOWER_ABOVE, ran)]
    plain, normed = bn_arm(gradients, False), bn_arm(gradients, True)

    def backprop(runs, init):
        return across(select(runs, model__init=init), GROWTH_INIT, True)

    def weight(runs, init):  # layer00's fan-in is the input's (64 for digits), not comparable: left out
        return across(select(runs, model__init=init), lambda r: growth(r, "grad_norm/weight", 0, 1), True)

    shape = [check("standard init: back-propagated gradient, growth per layer toward the input",
                   backprop(plain, "standard"), ".3g", SHRINKING),
             check("xavier init: back-propagated gradient, growth per layer", backprop(plain, "xavier"), ".3g", FLAT)]
    weights = [check(f"{init} init: weight gradient (layers 01 on), growth per layer", weight(plain, init), ".3g",
                     FLAT) for init in ("standard", "xavier")]
    with_bn = [check(f"{init} init with BatchNorm: back-propagated gradient, growth per layer",
                     backprop(normed, init), ".3g", FLAT) for init in ("standard", "xavier")]
    claims = [
        Claim("(a) Early in training the top hidden layer's sigmoid saturates at 0 while the lower layers stay "
              "above 0.5", "Glorot & Bengio (2010), Figure 2: 'very quickly at the beginning' the last hidden "
              "layer's activations are pushed to 0; the other layers' mean activation is above 0.5", saturates),
        Claim("(b) The back-propagated gradient shrinks toward the input with standard init, stays flat with "
              "normalized (xavier) init", "Glorot & Bengio (2010), Figure 7 (tanh, 5 layers, at initialization)",
              shape),
        Claim("(b) The weight gradients stay roughly flat across layers with either init",
              "Glorot & Bengio (2010), Figure 8 and §4.2.1", weights),
        Claim("(b) With BatchNorm the back-propagated gradient is flat with either init",
              "(bnlab's addition: the paper predates BatchNorm)", with_bn),
    ]
    return Verdict(claims, [_activation_table(saturation), _gradient_table(gradients)])


def _activation_table(saturation: list[RunData]) -> Table:
    layers = max((run.hidden_layers for run in saturation), key=len, default=[])

    def stat(layer, pick):
        return formatting.stat(across(saturation, lambda r: pick(r, f"act/mean/{layer}")), ".3f")

    return Table("(a) mean activation of each hidden layer (sigmoid, standard init)",
                 ["layer", "at init", "lowest, first half", "at the top layer's lowest", "at the end"],
                 [[layer, stat(layer, lambda r, t: r.first(t)), stat(layer, lambda r, t: _lowest_first_half(r, t)[1]),
                   stat(layer, lambda r, t: r.at_step(t, _saturation(r)[2])), stat(layer, lambda r, t: r.last(t))]
                  for layer in layers])


def _gradient_table(gradients: list[RunData]) -> Table:
    return Table("(b) gradients at initialization (tanh)",
                 ["init", "BatchNorm", "n", "back-prop growth/layer", "back-prop first/last",
                  "weight-gradient growth/layer (01 on)"],
                 [[init, norm, str(len(group)), formatting.stat(across(group, GROWTH_INIT, True)),
                   formatting.stat(across(group, RATIO_INIT, True), ".2e"),
                   formatting.stat(across(group, lambda r: growth(r, "grad_norm/weight", 0, 1), True))]
                  for init in values_of(gradients, "model.init") for norm in values_of(gradients, "norm.name")
                  if (group := select(gradients, model__init=init, norm__name=norm))])


def _lowest_first_half(run: RunData, tag: str) -> tuple[int | None, float | None]:
    """(step, value) of the lowest value of `tag` in the first half of training."""
    half = run.summary.get("total_steps", 0) / 2
    found = [(value, step) for step, value in run.series(tag) if step <= half]
    if not found:
        return None, None
    value, step = min(found)
    return step, value


def _saturation(run: RunData) -> tuple[float | None, float | None, int | None]:
    """(top layer's lowest mean activation in the first half, lowest lower-layer mean at that step, step)."""
    layers = run.hidden_layers
    if len(layers) < 2:
        return None, None, None
    step, top = _lowest_first_half(run, f"act/mean/{layers[-1]}")
    if step is None:
        return None, None, None
    lower = [run.at_step(f"act/mean/{layer}", step) for layer in layers[:-1]]
    lower = [value for value in lower if value is not None]
    return top, (min(lower) if lower else None), step


def figures(parts: Parts):
    result = []
    saturation = parts.get("saturation", [])
    if saturation:
        layers = max((run.hidden_layers for run in saturation), key=len, default=[])
        lines = [(f"{layer}" + (" (top)" if layer == layers[-1] else ""),
                  *points(mean_series(saturation, f"act/mean/{layer}"))) for layer in layers]
        result.append(("mean_activation", "Mean sigmoid activation of each hidden layer over training (mean over "
                       "seeds), as in Glorot & Bengio (2010), Figure 2",
                       plots.lines_figure(lines, "mean activation", "Glorot & Bengio (2010), Figure 2: mean "
                                          "activation per hidden layer (sigmoid, standard init)")))
    gradients = parts.get("gradients", [])
    if gradients:
        output = init_profiles(gradients, "model.init", "grad_norm/output")
        weight = init_profiles(gradients, "model.init", "grad_norm/weight")
        figure = plots.gradient_figure(output, weight, "Glorot & Bengio (2010), Figures 7-8: tanh, at "
                                       "initialization")
        result.append(("gradients_init", "Back-propagated ‖∂L/∂z‖ and weight-gradient ‖∂L/∂W‖ of each hidden "
                       "layer at initialization (geometric mean over seeds)", figure))
    return result


def deviations(parts: Parts) -> list[str]:
    saturation, gradients = parts.get("saturation", []), parts.get("gradients", [])
    return [f"The {listed(saturation, 'data.name')} data set (64 inputs) instead of Shapeset-3×2 (32×32 images); SGD "
            f"at {listed(saturation, 'optim.lr')} instead of a learning rate tuned per model; (a) ran "
            f"{listed(saturation, 'train.steps')} steps of batch {listed(saturation, 'data.batch_size')}, width "
            f"{listed(saturation, 'model.width')}, so it shows the early phase only, not the later desaturation "
            "around epoch 100.",
            f"(b) ran width {listed(gradients, 'model.width')}, {seeds(gradients)}. The "
            "first layer's weight gradient is left out of the flatness test: its fan-in is the input's (64 for "
            "digits) instead of ~1,000, so its scale is not comparable.",
            "(b) with BatchNorm, and its norm=torch cross-check, are bnlab's additions."]


QUICK = ("model.width=200", "train.seed=0")
EXPERIMENT = Experiment(
    name="glorot2010",
    paper="Glorot & Bengio 2010, Figures 2, 7 and 8",
    claim="(a) the top sigmoid layer saturates early; (b) with standard init the back-propagated gradient shrinks "
          "toward the input, with xavier it stays flat; weight gradients flat in both",
    minutes=2.0, quick_seconds=15,
    parts=(Part(name="saturation", config="glorot2010", quick=(*QUICK, "train.steps=200"),
                arms={"norm": ("none",)}),
           Part(name="gradients", config="glorot2010_gradients", quick=QUICK,
                arms={"model.init": ("standard", "xavier"), "norm": ("none", "bnlab")}),
           Part(name="torch", config="glorot2010_gradients", quick=QUICK, fixed=("norm=torch", "train.seed=0"),
                cross_check_of="gradients")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
