"""The gradient verdicts: `vanishing`, `glorot2010`, `yang2019` (the training ones are in verdicts_training).

Each function takes the runs of an experiment's parts, read back by bnlab.analysis.readback
(`{part name: [RunData]}`), measures the claim and returns a `Verdict`. The thresholds
are module constants, fixed before any full-size run and never tuned to make a claim
pass; each check prints its own. "Deepest", "shallowest" and the like refer to what
was run, so a reduced sweep (`--quick`, overrides) measures the same quantities.
"""

from __future__ import annotations

from bnlab.analysis.readback import RunData
from bnlab.experiments.verdict import (
    Check,
    Claim,
    Table,
    Verdict,
    across,
    check,
    final_accuracy,
    fmt,
    growth,
    init_figure,
    mean,
    saturated_fraction,
    select,
    setting,
    values_of,
)

RATIO_INIT, RATIO_END = init_figure("grad_ratio_first_last/init"), init_figure("grad_ratio_first_last/final")
GROWTH_INIT, GROWTH_END = init_figure("growth_factor/init"), init_figure("growth_factor/final")

# vanishing
VANISHED = 1e-3  # without BN, the deepest networks' first/last gradient ratio at init is below this
COMPARABLE = (0.1, 10.0)  # with BN, the first/last ratio at init lies in this range at every depth
STALLED = 0.20  # the deepest sigmoid network without BN ends below this test accuracy (chance: 0.10)
TRAINED = 0.80  # the deepest networks with BN end above this test accuracy

# glorot2010
TOP_SATURATED = 0.10  # (a) the top hidden layer's mean activation falls below this in the first half
LOWER_ABOVE = 0.5  # (a) ... while each lower hidden layer's mean activation stays above this
SHRINKING = 0.8  # (b) growth factor per layer below this: the gradient shrinks toward the input
FLAT = (0.8, 1.25)  # (b) growth factor per layer in this range: roughly flat

# yang2019
BN_RELU = (1.09, 1.33)  # sqrt(pi / (pi - 1)) = 1.21 within ±10%
NEAR_ONE = (0.9, 1.1)  # no BN (ReLU, kaiming), or BN with a linear activation
COLLAPSED = 0.5  # the deepest plain BN network ends below this test accuracy
RESIDUAL_RATIO = 100.0  # with residual connections, the deepest network's first/last ratio at init is below


def bn_arm(runs: list[RunData], with_bn: bool) -> list[RunData]:
    return [run for run in runs if (setting(run, "norm.name") != "none") == with_bn]


def within(bounds: tuple[float, float]):
    return lambda value: bounds[0] <= value <= bounds[1]


def gradient_row(label: list[str], runs: list[RunData]) -> list[str]:
    """A measurement row: n, first/last ratio and growth factor at init and end, accuracy, saturation."""
    return [*label, str(len(runs)), fmt(across(runs, RATIO_INIT, True), ".2e"),
            fmt(across(runs, RATIO_END, True), ".2e"), fmt(across(runs, GROWTH_INIT, True)),
            fmt(across(runs, GROWTH_END, True)), fmt(across(runs, final_accuracy), ".3f"),
            fmt(across(runs, saturated_fraction), ".2f")]


GRADIENT_HEADERS = ["n", "first/last, init", "first/last, end", "growth/layer, init", "growth/layer, end",
                    "test acc", "saturated"]


def vanishing(parts: dict[str, list[RunData]]) -> Verdict:
    runs = parts["main"]
    activations, depths = values_of(runs, "model.activation"), values_of(runs, "model.depth")
    deepest = max(depths, default=None)
    plain, normed = bn_arm(runs, False), bn_arm(runs, True)

    shrinks, comparable = [], []
    for activation in activations:
        ratios = [across(select(plain, model__activation=activation, model__depth=d), RATIO_INIT, True)
                  for d in depths]
        shrinks.append(check(f"{activation}, no BN, depth {deepest}: first/last at init", ratios[-1], ".1e",
                             f"< {VANISHED:g}", lambda m: m < VANISHED))
        means = [mean(stat) for stat in ratios]
        measured = " > ".join(f"{m:.1e}" if m is not None else "-" for m in means)
        falls = [b < a for a, b in zip(means, means[1:], strict=False)] if None not in means else []
        monotone = all(falls) if falls else None
        shrinks.append(Check(f"{activation}, no BN, first/last at init at depths {', '.join(map(str, depths))}",
                             measured, "falls with every added depth", monotone))
        with_bn = [across(select(normed, model__activation=activation, model__depth=d), RATIO_INIT, True)
                   for d in depths]
        measured = ", ".join(f"{m:.2g} ({d})" for d, m in zip(depths, map(mean, with_bn), strict=True) if m is not None)
        inside = None if None in with_bn or not with_bn else all(within(COMPARABLE)(s.mean) for s in with_bn)
        comparable.append(Check(f"{activation}, BN, first/last at init (depth)", measured or "not measured",
                                f"within [{COMPARABLE[0]:g}, {COMPARABLE[1]:g}] at every depth", inside))

    deep = [check(f"sigmoid, no BN, depth {deepest}: final test accuracy",
                  across(select(plain, model__activation="sigmoid", model__depth=deepest), final_accuracy),
                  ".3f", f"< {STALLED:g} (chance 0.1)", lambda m: m < STALLED)]
    deep += [check(f"{activation}, BN, depth {deepest}: final test accuracy",
                   across(select(normed, model__activation=activation, model__depth=deepest), final_accuracy),
                   ".3f", f"> {TRAINED:g}", lambda m: m > TRAINED) for activation in activations]

    claims = [
        Claim("Without BatchNorm the first layers' gradient shrinks geometrically with depth",
              "Ioffe & Szegedy (2015, §1): saturating nonlinearities make gradients vanish in deep "
              "networks; Glorot & Bengio (2010): the back-propagated gradient shrinks toward the input", shrinks),
        Claim("With BatchNorm the gradient reaches the first layer at a comparable size",
              "Ioffe & Szegedy (2015, §3.3): BatchNorm keeps the back-propagated gradient's scale "
              "independent of the layer's parameters", comparable),
        Claim("Deep sigmoid networks without BatchNorm stall near chance; with BatchNorm the deep networks train",
              "Ioffe & Szegedy (2015, §4.2.2): with BatchNorm a sigmoid Inception trains (69.8%), without it "
              "stays at chance (1/1000)", deep),
    ]
    tables = [Table(f"{activation}: gradient first/last hidden layer, growth per layer toward the input",
                    ["BatchNorm", "depth", *GRADIENT_HEADERS],
                    [gradient_row([norm, str(depth)], select(runs, model__activation=activation, norm__name=norm,
                                                             model__depth=depth))
                     for norm in values_of(runs, "norm.name") for depth in depths])
              for activation in activations]
    return Verdict(claims, tables)


def glorot2010(parts: dict[str, list[RunData]]) -> Verdict:
    saturation, gradients = parts.get("saturation", []), parts.get("gradients", [])
    top_min = across(saturation, lambda run: _saturation(run)[0])
    lower = across(saturation, lambda run: _saturation(run)[1])
    saturates = [check("top hidden layer: lowest mean activation in the first half of training", top_min,
                       ".3f", f"< {TOP_SATURATED:g} (0.5 at init)", lambda m: m < TOP_SATURATED),
                 check("lower hidden layers at that step: lowest mean activation", lower, ".3f",
                       f"> {LOWER_ABOVE:g}", lambda m: m > LOWER_ABOVE)]
    plain, normed = bn_arm(gradients, False), bn_arm(gradients, True)

    def backprop(runs, init):
        return across(select(runs, model__init=init), GROWTH_INIT, True)

    def weight(runs, init):  # layer00's fan-in is the input's (64 for digits), not comparable: left out
        return across(select(runs, model__init=init), lambda r: growth(r, "grad_norm/weight", 0, 1), True)

    flat = f"within [{FLAT[0]:g}, {FLAT[1]:g}]"
    shape = [check("standard init: back-propagated gradient, growth per layer toward the input",
                   backprop(plain, "standard"), ".3g", f"< {SHRINKING:g}", lambda m: m < SHRINKING),
             check("xavier init: back-propagated gradient, growth per layer", backprop(plain, "xavier"), ".3g",
                   flat, within(FLAT))]
    weights = [check(f"{init} init: weight gradient (layers 01 on), growth per layer", weight(plain, init), ".3g",
                     flat, within(FLAT)) for init in ("standard", "xavier")]
    with_bn = [check(f"{init} init with BatchNorm: back-propagated gradient, growth per layer",
                     backprop(normed, init), ".3g", flat, within(FLAT)) for init in ("standard", "xavier")]
    claims = [
        Claim("(a) Early in training the top hidden layer's sigmoid saturates at 0 while the lower layers stay "
              "above 0.5", "Glorot & Bengio (2010), Figure 2: 'very quickly at the beginning' the last hidden "
              "layer's activations are pushed to 0; the other layers' mean activation is above 0.5", saturates),
        Claim("(b) The back-propagated gradient shrinks toward the input with standard init, stays flat with "
              "normalized (xavier) init", "Glorot & Bengio (2010), Figure 7 (tanh, 5 layers, at initialization)",
              shape),
        Claim("(b) The weight gradients stay roughly flat across layers with either init",
              "Glorot & Bengio (2010), Figure 8 and §4.2.1", weights),
    ]
    if normed:
        claims.append(Claim("(b) With BatchNorm the back-propagated gradient is flat with either init",
                            "(bnlab's addition: the paper predates BatchNorm)", with_bn))
    layers = max((run.hidden_layers for run in saturation), key=len, default=[])
    mean_act = [Table("(a) mean activation of each hidden layer (sigmoid, standard init)",
                      ["layer", "at init", "lowest, first half", "at the top layer's lowest", "at the end"],
                      [[layer, fmt(across(saturation, lambda r, t=f"act/mean/{layer}": r.first(t)), ".3f"),
                        fmt(across(saturation, lambda r, t=f"act/mean/{layer}": _lowest_first_half(r, t)[1]),
                            ".3f"),
                        fmt(across(saturation, lambda r, t=f"act/mean/{layer}": r.at_step(t, _saturation(r)[2])),
                            ".3f"),
                        fmt(across(saturation, lambda r, t=f"act/mean/{layer}": r.last(t)), ".3f")]
                       for layer in layers])]
    grads = Table("(b) gradients at initialization (tanh)",
                  ["init", "BatchNorm", "n", "back-prop growth/layer", "back-prop first/last",
                   "weight-gradient growth/layer (01 on)"],
                  [[init, norm, str(len(group)), fmt(across(group, GROWTH_INIT, True)),
                    fmt(across(group, RATIO_INIT, True), ".2e"),
                    fmt(across(group, lambda r: growth(r, "grad_norm/weight", 0, 1), True))]
                   for init in values_of(gradients, "model.init") for norm in values_of(gradients, "norm.name")
                   if (group := select(gradients, model__init=init, norm__name=norm))])
    return Verdict(claims, [*mean_act, grads])


def _lowest_first_half(run: RunData, tag: str) -> tuple[int | None, float | None]:
    """(step, value) of the lowest value of `tag` in the first half of training."""
    half = run.summary.get("total_steps", 0) / 2
    points = [(value, step) for step, value in run.series(tag) if step <= half]
    if not points:
        return None, None
    value, step = min(points)
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


def yang2019(parts: dict[str, list[RunData]]) -> Verdict:
    init, depth = parts.get("init", []), parts.get("depth", [])
    growth_of = {(act, bn): across(select(bn_arm(init, bn), model__activation=act), GROWTH_INIT, True)
                 for act in ("relu", "linear") for bn in (True, False)}
    explode = [check("ReLU with BatchNorm: growth per layer toward the input at init", growth_of["relu", True],
                     ".3g", f"within [{BN_RELU[0]:g}, {BN_RELU[1]:g}] (theory 1.21)", within(BN_RELU)),
               check("ReLU without BatchNorm", growth_of["relu", False], ".3g",
                     f"within [{NEAR_ONE[0]:g}, {NEAR_ONE[1]:g}] (theory 1.0)", within(NEAR_ONE)),
               check("linear with BatchNorm", growth_of["linear", True], ".3g",
                     f"within [{NEAR_ONE[0]:g}, {NEAR_ONE[1]:g}] (theory 1.0 for a large batch)", within(NEAR_ONE))]
    depths = values_of(depth, "model.depth")
    shallow, deep = min(depths, default=None), max(depths, default=None)
    plain, residual = select(depth, model__residual=False), select(depth, model__residual=True)
    collapse = [check(f"plain, depth {shallow}: final test accuracy", across(select(plain, model__depth=shallow),
                      final_accuracy), ".3f", f"> {TRAINED:g}", lambda m: m > TRAINED),
                check(f"plain, depth {deep}: final test accuracy", across(select(plain, model__depth=deep),
                      final_accuracy), ".3f", f"< {COLLAPSED:g}", lambda m: m < COLLAPSED)]
    rescue = [check(f"residual, depth {deep}: first/last at init", across(select(residual, model__depth=deep),
                    RATIO_INIT, True), ".2e", f"< {RESIDUAL_RATIO:g} (plain: ~1.21^{(deep or 1) - 1})",
                    lambda m: m < RESIDUAL_RATIO),
              check(f"residual, depth {deep}: final test accuracy", across(select(residual, model__depth=deep),
                    final_accuracy), ".3f", f"> {TRAINED:g}", lambda m: m > TRAINED)]
    claims = [
        Claim("At initialization BatchNorm makes a deep plain ReLU network's gradient explode toward the input; "
              "without BatchNorm, or with a linear activation, it does not",
              "Yang et al. (2019): gradient growth sqrt(pi/(pi-1)) ~ 1.21 per layer toward the input with "
              "BN + ReLU at a large batch; ~1 without BN; -> 1 for BN + linear as the batch grows", explode),
        Claim("With BatchNorm, accuracy after a fixed budget collapses beyond a few tens of layers",
              "Yang et al. (2019), trainability over depth x learning rate: plain BN networks stop training "
              "beyond a few tens of layers, as the explosion predicts", collapse),
        Claim("Residual connections remove the explosion", "(the issue's claim; Yang et al. discuss the "
              "explosion of plain networks)", rescue),
    ]
    tables = [Table("gradient at initialization", ["activation", "BatchNorm", "n", "first/last, init",
                                                    "growth/layer, init"],
                    [[act, norm, str(len(group)), fmt(across(group, RATIO_INIT, True), ".2e"),
                      fmt(across(group, GROWTH_INIT, True))]
                     for act in values_of(init, "model.activation") for norm in values_of(init, "norm.name")
                     if (group := select(init, model__activation=act, norm__name=norm))]),
              Table("trainable depth (BatchNorm, ReLU)", ["residual", "depth", *GRADIENT_HEADERS[:2],
                                                          GRADIENT_HEADERS[3], "test acc"],
                    [[str(res), str(d), str(len(group)), fmt(across(group, RATIO_INIT, True), ".2e"),
                      fmt(across(group, GROWTH_INIT, True)), fmt(across(group, final_accuracy), ".3f")]
                     for res in (False, True) for d in depths
                     if (group := select(depth, model__residual=res, model__depth=d))])]
    return Verdict(claims, tables)
