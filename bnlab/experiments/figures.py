"""The figures of each experiment, drawn with bnlab.telemetry.plots from the runs read back.

Each function takes `{part name: [RunData]}` and returns [(name, caption, Figure)];
bnlab.experiments.reproduce saves them beside reproduce.md. Lines are means over seeds
(geometric for gradients), as in `bnlab report`.
"""

from __future__ import annotations

import math

from bnlab.analysis.aggregate import geometric_mean_profile, mean_series
from bnlab.analysis.readback import RunData
from bnlab.experiments.verdict import across, final_accuracy, init_figure, select, values_of
from bnlab.telemetry import plots
from bnlab.telemetry.figures import UNIT

# Dashed means step 0 in every figure (bnlab.telemetry.plots), so the arms differ by colour and, in profiles at
# step 0, by marker: no BatchNorm x, any BatchNorm o.
NORM_MARKER = {"none": "x"}


def xy_panel(ax, lines: list[tuple[str, list[float], list[float], str, str]], xlabel: str, ylabel: str,
             logx: bool = False, logy: bool = False) -> None:
    """Lines of (label, x, y, color, linestyle) on one axis; "--" marks step 0 (plots.line_style)."""
    for label, x, y, color, style in lines:
        y = plots.positive(y) if logy else [math.nan if v is None else v for v in y]
        ax.plot(x, y, color=color, marker="o", markersize=4, label=label, **plots.line_style(style == "--"))
    if logx:
        ax.set_xscale("log")
    elif lines:
        ax.set_xticks(sorted({x for line in lines for x in line[1]}))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _mean(runs: list[RunData], measure, geometric: bool = False) -> float | None:
    stat = across(runs, measure, geometric)
    return None if stat is None else stat.mean


def _points(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [step for step, _ in points], [value for _, value in points]


def vanishing(parts: dict[str, list[RunData]]):
    runs = parts["main"]
    depths = values_of(runs, "model.depth")
    ratio, ratio_end = init_figure("grad_ratio_first_last/init"), init_figure("grad_ratio_first_last/final")
    figure, (left, right) = plots.new_figure(1100, 430, 1, 2)
    gradient, accuracy, profiles = [], [], []
    index = 0
    for activation in values_of(runs, "model.activation"):
        for norm in values_of(runs, "norm.name"):
            arm = select(runs, model__activation=activation, norm__name=norm)
            label, color = f"{activation}, norm={norm}", f"C{index % 10}"
            index += 1
            at = [select(arm, model__depth=d) for d in depths]
            gradient.append((f"{label}, init", depths, [_mean(r, ratio, True) for r in at], color, "--"))
            gradient.append((f"{label}, end", depths, [_mean(r, ratio_end, True) for r in at], color, "-"))
            accuracy.append((label, depths, [_mean(r, final_accuracy) for r in at], color, "-"))
            deepest = select(arm, model__depth=max(depths))
            profiles += [plots.ProfileLine(geometric_mean_profile(deepest, "grad_norm/output", 0), None, color,
                                           initial=True),
                         plots.ProfileLine(geometric_mean_profile(deepest, "grad_norm/output"), label, color)]
    xy_panel(left, gradient, "hidden layers (depth)", "‖∂L/∂z‖ first / last hidden layer", logy=True)
    left.axhline(1.0, color="grey", linewidth=0.8)
    xy_panel(right, accuracy, "hidden layers (depth)", "final test accuracy")
    right.set_ylim(0, 1.02)
    figure.suptitle("gradient ratio first/last hidden layer (dashed: initialization, solid: end of training) "
                    "and final test accuracy, by depth (mean over seeds)", fontsize=10)
    title = f"gradient across the {max(depths)} hidden layers · dashed: step 0, solid: end"
    return [("vanishing_by_depth", "First/last hidden-layer gradient ratio at initialization and at the end, "
             "and final test accuracy, against depth (mean over seeds)", figure),
            ("gradients_deepest", f"‖∂L/∂z‖ across the hidden layers of the depth-{max(depths)} networks, at "
             "step 0 (dashed) and at the end (solid), geometric mean over seeds",
             plots.profiles_figure(profiles, "‖∂L/∂(layer output)‖", title))]


def ioffe2015_fig1(parts: dict[str, list[RunData]]):
    runs = parts["main"]
    arms = [(f"norm={norm}", select(runs, norm__name=norm)) for norm in values_of(runs, "norm.name")]
    accuracy = plots.lines_figure([(label, *_points(mean_series(group, "acc/test"))) for label, group in arms],
                                  "test accuracy", "Ioffe & Szegedy (2015), Figure 1(a): test accuracy over "
                                  "training, mean over seeds")
    bands = []
    for label, group in arms:
        layer = max((run.hidden_layers for run in group), key=len, default=["?"])[-1]
        for family, scope in ((f"preact/unit{UNIT}", f"unit {UNIT}"), ("preact", "whole layer")):
            series = {name: dict(mean_series(group, f"{family}/{name}/{layer}")) for name in plots.BAND}
            steps = sorted(series["p50"])
            p15, p50, p85 = ([series[name].get(step) for step in steps] for name in plots.BAND)
            bands.append(plots.Band(f"{label} · {layer} (last hidden layer), {scope}", steps, p15, p50, p85))
    return [("accuracy", "Test accuracy over training, with and without BatchNorm (mean over seeds)", accuracy),
            ("figure1", f"The last hidden layer's sigmoid input over training: 15th, 50th and 85th percentiles "
             f"for one fixed unit (unit {UNIT}, over the batch) as in Figure 1(b, c), and over all the layer's "
             "units and the batch (mean over seeds)",
             plots.bands_figure(bands, "Ioffe & Szegedy (2015), Figure 1(b, c)"))]


def _init_profiles(runs: list[RunData], key: str, family: str) -> list[plots.ProfileLine]:
    """One step-0 profile of `family` per (value of `key`, norm), geometric mean over seeds."""
    lines = []
    for value in values_of(runs, key):
        for norm in values_of(runs, "norm.name"):
            group = select(runs, **{key.replace(".", "__"): value, "norm__name": norm})
            lines.append(plots.ProfileLine(geometric_mean_profile(group, family, 0), f"{value}, norm={norm}",
                                           f"C{len(lines)}", initial=True, marker=NORM_MARKER.get(norm, "o")))
    return lines


def glorot2010(parts: dict[str, list[RunData]]):
    result = []
    saturation = parts.get("saturation", [])
    if saturation:
        layers = max((run.hidden_layers for run in saturation), key=len, default=[])
        lines = [(f"{layer}" + (" (top)" if layer == layers[-1] else ""),
                  *_points(mean_series(saturation, f"act/mean/{layer}"))) for layer in layers]
        result.append(("mean_activation", "Mean sigmoid activation of each hidden layer over training (mean over "
                       "seeds), as in Glorot & Bengio (2010), Figure 2",
                       plots.lines_figure(lines, "mean activation", "Glorot & Bengio (2010), Figure 2: mean "
                                          "activation per hidden layer (sigmoid, standard init)")))
    gradients = parts.get("gradients", [])
    if gradients:
        output = _init_profiles(gradients, "model.init", "grad_norm/output")
        weight = _init_profiles(gradients, "model.init", "grad_norm/weight")
        figure = plots.gradient_figure(output, weight, "Glorot & Bengio (2010), Figures 7-8: tanh, at "
                                       "initialization")
        result.append(("gradients_init", "Back-propagated ‖∂L/∂z‖ and weight-gradient ‖∂L/∂W‖ of each hidden "
                       "layer at initialization (geometric mean over seeds)", figure))
    return result


def yang2019(parts: dict[str, list[RunData]]):
    result = []
    init = parts.get("init", [])
    if init:
        lines = _init_profiles(init, "model.activation", "grad_norm/output")
        result.append(("gradients_init", "‖∂L/∂z‖ across the hidden layers at initialization (geometric mean over "
                       "seeds): BatchNorm with ReLU explodes toward the input",
                       plots.profiles_figure(lines, "‖∂L/∂(layer output)‖", "Yang et al. (2019): gradient "
                                             "at initialization, kaiming weights")))
    depth = parts.get("depth", [])
    if depth:
        depths = values_of(depth, "model.depth")
        figure, (left, right) = plots.new_figure(1100, 430, 1, 2)
        ratio = init_figure("grad_ratio_first_last/init")
        arms = [(f"residual={res}", [select(depth, model__residual=res, model__depth=d) for d in depths],
                 f"C{i}", "-") for i, res in enumerate(values_of(depth, "model.residual"))]
        xy_panel(left, [(label, depths, [_mean(r, ratio, True) for r in at], color, style)
                        for label, at, color, style in arms], "hidden layers (depth)",
                 "‖∂L/∂z‖ first / last, at init", logy=True)
        xy_panel(right, [(label, depths, [_mean(r, final_accuracy) for r in at], color, style)
                         for label, at, color, style in arms], "hidden layers (depth)", "final test accuracy")
        right.set_ylim(0, 1.02)
        figure.suptitle("BatchNorm + ReLU: gradient explosion at init and accuracy after a fixed budget, by depth "
                        "(mean over seeds)", fontsize=10)
        result.append(("depth", "First/last gradient ratio at initialization and final test accuracy against "
                       "depth, plain and residual (mean over seeds)", figure))
    return result


def lr_tolerance(parts: dict[str, list[RunData]]):
    runs = parts["main"]
    figure, ax = plots.new_figure(800, 450)
    for index, norm in enumerate(values_of(runs, "norm.name")):
        arm = select(runs, norm__name=norm)
        rates = values_of(arm, "optim.lr")
        at = [select(arm, optim__lr=lr) for lr in rates]
        xy_panel(ax, [(f"norm={norm}", rates, [_mean(r, final_accuracy) for r in at], f"C{index}",
                       "-")], "learning rate", "final test accuracy", logx=True)
        failed = [lr for lr, r in zip(rates, at, strict=True) if any(run.status != "completed" for run in r)]
        ax.plot(failed, [0.02] * len(failed), "x", color=f"C{index}", markersize=9,
                label=f"norm={norm}: a seed diverged" if failed else None)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("final test accuracy against learning rate (mean over seeds; x: a seed diverged)", fontsize=9)
    return [("lr_sweep", "Final test accuracy against learning rate, with and without BatchNorm (mean over "
             "seeds; an x marks a rate where a seed diverged)", figure)]
