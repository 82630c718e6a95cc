"""`vanishing`: without BatchNorm the gradient vanishes with depth and deep sigmoid MLPs stall; with it,
the gradient reaches the first layer and they train (Ioffe & Szegedy 2015, §1 and §3.3; Glorot & Bengio 2010).

Parts: `main` (sigmoid and tanh MLPs at depths 2-50, with and without bnlab's BatchNorm, 3 seeds, 300 steps),
`stall` (sigmoid, a shallow and a deep network, 1,000 steps: the budget in which the shallow network without
BatchNorm trains, so that the deep one's stall is shown to be an effect of depth) and `torch` (the
cross-check). The claim functions below take the activations and depths from what ran, and serve
bnlab.experiments.vanishing_cnn as well.
"""

from __future__ import annotations

from bnlab import formatting
from bnlab.analysis.aggregate import mean_series
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    GROWTH_END,
    GROWTH_INIT,
    RATIO_END,
    RATIO_INIT,
    Parts,
    across,
    bn_arm,
    final_accuracy,
    largest,
    listed,
    mean,
    saturated_fraction,
    seeds,
    select,
    values_of,
)
from bnlab.experiments.plotting import mean_of, points, start_and_end_profiles, xy_panel
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict, above, below, between, check
from bnlab.telemetry import plots

VANISHED = below(1e-3, "theory", "with U(±1/√fan_in) weights each layer scales the back-propagated gradient by "
                 "about 1/√3 × the activation's mean slope: ≤ 0.144 per layer (sigmoid), ≤ 0.577 (tanh); over "
                 "19 layers that is ≤ 1e-16 and ≤ 3e-5, far below a thousandfold loss", model__depth=20)
COMPARABLE = between(0.1, 10, "choice", "'comparable' read as within one order of magnitude either way; the "
                     "no-BatchNorm control at each depth shows whether the band tells the arms apart")
TRAINED = above(0.8, "choice", "'trains': far above chance (0.1), below the 0.95-0.98 the networks reach on "
                "digits", train__steps=300)
TRAINED_IN_BUDGET = above(0.8, "control run", "the 1,000-step budget is where a control run of the depth-2 "
                          "sigmoid network without BatchNorm trains (0.89 at 1,000 steps; 0.36 at 300)",
                          train__steps=1000)
STALLED = below(0.2, "choice", "'stalls': within 0.1 of chance (0.1 for ten classes)", train__steps=1000)
THRESHOLDS = {"no BN, deepest network: first/last gradient ratio at init": VANISHED,
              "BN: first/last gradient ratio at init, at every depth": COMPARABLE,
              "BN: final test accuracy at every depth (main sweep)": TRAINED,
              "stall part: the shallow network without BN, and the deep one with BN, train": TRAINED_IN_BUDGET,
              "stall part: the deep network without BN stalls": STALLED}

PAPER_SHRINKS = ("Ioffe & Szegedy (2015, §1): saturating nonlinearities make gradients vanish in deep networks; "
                 "Glorot & Bengio (2010): the back-propagated gradient shrinks toward the input")
PAPER_COMPARABLE = ("Ioffe & Szegedy (2015, §3.3): BatchNorm keeps the back-propagated gradient's scale "
                    "independent of the layer's parameters")
PAPER_STALL = ("Ioffe & Szegedy (2015, §4.2.2): with BatchNorm a sigmoid Inception trains (69.8%), without it "
               "stays at chance (1/1000)")
GRADIENT_HEADERS = ["n", "first/last, init", "first/last, end", "growth/layer, init", "growth/layer, end",
                    "test acc", "saturated"]


def gradient_claims(runs: list[RunData], vanished: Threshold, comparable: Threshold) -> list[Claim]:
    """'Without BN the gradient shrinks geometrically with depth' and 'with BN it reaches the first layer at a
    comparable size', per activation, from the step-0 first/last ratio of every depth that ran."""
    depths = values_of(runs, "model.depth")
    plain, normed = bn_arm(runs, False), bn_arm(runs, True)
    shrinks, reaches = [], []
    for activation in values_of(runs, "model.activation"):
        def ratios(arm, act=activation):
            return [across(select(arm, model__activation=act, model__depth=d), RATIO_INIT, True) for d in depths]

        without, with_bn = ratios(plain), ratios(normed)
        deepest = select(plain, model__activation=activation, model__depth=max(depths, default=None))
        shrinks.append(check(f"{activation}, no BN, depth {max(depths, default='-')}: first/last at init",
                             without[-1] if without else None, ".1e", vanished, largest(deepest, "model.depth")))
        shrinks.append(_falls(f"{activation}, no BN, first/last at init at depths {listed(plain, 'model.depth')}",
                              [mean(stat) for stat in without]))
        reaches.append(_every_depth(f"{activation}, BN, first/last at init (depth)", depths, with_bn, comparable))
        reaches.append(_below_control(f"{activation}: no BN's first/last at init below the BN arm's 95% interval",
                                      depths, without, with_bn))
    return [Claim("Without BatchNorm the first layers' gradient shrinks geometrically with depth", PAPER_SHRINKS,
                  shrinks),
            Claim("With BatchNorm the gradient reaches the first layer at a comparable size", PAPER_COMPARABLE,
                  reaches)]


def _falls(what: str, means: list[float | None]) -> Check:
    measured = " > ".join(formatting.number(m, ".1e") for m in means) or "not measured"
    if len(means) < 2:
        return Check(what, measured, "falls with every added depth", None, not_applicable="needs two depths")
    if None in means:
        return Check(what, measured, "falls with every added depth", None)
    falls = all(deeper < shallower for shallower, deeper in zip(means, means[1:], strict=False))
    return Check(what, measured, "falls with every added depth", falls)


def _every_depth(what: str, depths: list[int], stats: list, threshold: Threshold, spec: str = ".2g") -> Check:
    measured = ", ".join(f"{formatting.number(mean(s), spec)} ({d})" for d, s in zip(depths, stats, strict=True))
    test = f"{threshold.test} at every depth [{threshold.source}]"
    if not stats or None in stats:
        return Check(what, measured or "not measured", test, None)
    return Check(what, measured, test, all(threshold.passes(s.mean) for s in stats))


def _below_control(what: str, depths: list[int], without: list, with_bn: list) -> Check:
    """The control that makes the band discriminate: at each depth the network without BatchNorm has a smaller
    first/last ratio than the lower end of the BatchNorm arm's 95% interval."""
    test = "below at every depth [control run]"
    measured = "; ".join(f"{formatting.number(mean(a), '.2g')} vs {formatting.stat(b, '.2g')} ({d})"
                         for d, a, b in zip(depths, without, with_bn, strict=True))
    if not depths or None in without or None in with_bn:
        return Check(what, measured or "not measured", test, None)
    if any(b.low is None for b in with_bn):
        return Check(what, measured, test, None, not_applicable="needs two or more seeds for an interval (ran 1)")
    return Check(what, measured, test, all(a.mean < b.low for a, b in zip(without, with_bn, strict=True)))


def trains_at_every_depth(runs: list[RunData], trained: Threshold, paper: str) -> Claim:
    """With BatchNorm, final test accuracy above `trained` at every depth of the sweep, per activation."""
    normed, checks = bn_arm(runs, True), []
    for activation in values_of(runs, "model.activation"):
        arm = select(normed, model__activation=activation)
        depths = values_of(arm, "model.depth")
        stats = [across(select(arm, model__depth=d), final_accuracy) for d in depths]
        found = _every_depth(f"{activation}, BN: final test accuracy (depth)", depths, stats, trained, ".3f")
        found.not_applicable = trained.shortfall(largest(arm, "train.steps"))
        checks.append(found)
    return Claim("With BatchNorm the networks of every depth train in the same budget", paper, checks)


def stall_claim(runs: list[RunData], trained: Threshold, stalled: Threshold, paper: str, subject: str) -> Claim:
    """Per activation: the shallowest network without BN trains (the control), the deepest without BN stalls,
    the deepest with BN trains, all in the same budget."""
    checks = []
    for activation in values_of(runs, "model.activation"):
        arm = select(runs, model__activation=activation)
        depths = values_of(arm, "model.depth")
        shallow, deep = min(depths, default=None), max(depths, default=None)
        for what, group, threshold in (
                (f"{activation}, no BN, depth {shallow} (control): final test accuracy",
                 select(bn_arm(arm, False), model__depth=shallow), trained),
                (f"{activation}, no BN, depth {deep}: final test accuracy",
                 select(bn_arm(arm, False), model__depth=deep), stalled),
                (f"{activation}, BN, depth {deep}: final test accuracy", select(bn_arm(arm, True), model__depth=deep),
                 trained)):
            found = check(what, across(group, final_accuracy), ".3f", threshold, largest(group, "train.steps"))
            if len(depths) < 2 and found.not_applicable is None:
                found.not_applicable = "needs a shallow and a deep network (ran one depth)"
            checks.append(found)
    return Claim(f"Without BatchNorm the deep {subject} stall where the shallow ones train; with BatchNorm the "
                 "deep ones train", paper, checks)


def gradient_row(label: list[str], runs: list[RunData]) -> list[str]:
    """A measurement row: n, first/last ratio and growth factor at init and end, accuracy, saturation."""
    n = len(runs)

    def cell(measure, spec: str = ".3g", geometric: bool = False) -> str:  # '(n=1)' where fewer runs had it
        return formatting.stat(across(runs, measure, geometric), spec, n)

    return [*label, str(n), cell(RATIO_INIT, ".2e", True), cell(RATIO_END, ".2e", True),
            cell(GROWTH_INIT, geometric=True), cell(GROWTH_END, geometric=True), cell(final_accuracy, ".3f"),
            cell(saturated_fraction, ".2f")]


def gradient_tables(runs: list[RunData], title: str) -> list[Table]:
    """One table per activation: a row per (norm, depth)."""
    return [Table(f"{activation}: {title}", ["BatchNorm", "depth", *GRADIENT_HEADERS],
                  [gradient_row([norm, str(depth)], group) for norm in values_of(runs, "norm.name")
                   for depth in values_of(runs, "model.depth")
                   if (group := select(runs, model__activation=activation, norm__name=norm, model__depth=depth))])
            for activation in values_of(runs, "model.activation")]


def underflow_note(runs: list[RunData]) -> list[str]:
    zeros = [run for run in runs if RATIO_INIT(run) == 0]
    if not zeros:
        return []
    where = sorted({f"{run.config['model']['activation']} at depth {run.config['model']['depth']}" for run in zeros})
    return [f"A first/last ratio of 0 is a first-layer gradient that underflowed float32 and was flushed to zero "
            f"({', '.join(where)}, without BatchNorm): it vanished further than any number the run can hold."]


def verdict(parts: Parts) -> Verdict:
    main, stall = parts.get("main", []), parts.get("stall", [])
    claims = [*gradient_claims(main, VANISHED, COMPARABLE),
              stall_claim(stall, TRAINED_IN_BUDGET, STALLED, PAPER_STALL, "sigmoid networks"),
              trains_at_every_depth(main, TRAINED, "(bnlab's extension of the above to every depth of the "
                                    "sweep, in the main sweep's budget)")]
    tables = gradient_tables(main, "gradient first/last hidden layer, growth per layer toward the input")
    tables += gradient_tables(stall, "the stall part (a shallow and a deep network, a longer budget)")
    return Verdict(claims, tables, underflow_note(main))


def by_depth_figure(runs: list[RunData], title: str):
    """Left: first/last ratio at init (dashed) and end (solid) against depth; right: final test accuracy."""
    depths = values_of(runs, "model.depth")
    figure, (left, right) = plots.new_figure(1100, 430, 1, 2)
    gradient, accuracy = [], []
    for index, (activation, norm) in enumerate((a, n) for a in values_of(runs, "model.activation")
                                               for n in values_of(runs, "norm.name")):
        at = [select(runs, model__activation=activation, norm__name=norm, model__depth=d) for d in depths]
        label, color = f"{activation}, norm={norm}", f"C{index % 10}"
        gradient.append((f"{label}, init", depths, [mean_of(r, RATIO_INIT, True) for r in at], color, "--"))
        gradient.append((f"{label}, end", depths, [mean_of(r, RATIO_END, True) for r in at], color, "-"))
        accuracy.append((label, depths, [mean_of(r, final_accuracy) for r in at], color, "-"))
    xy_panel(left, gradient, "hidden layers (depth)", "‖∂L/∂z‖ first / last hidden layer", logy=True)
    left.axhline(1.0, color="grey", linewidth=0.8)
    xy_panel(right, accuracy, "hidden layers (depth)", "final test accuracy")
    right.set_ylim(0, 1.02)
    figure.suptitle(title, fontsize=10)
    return figure


def deepest_profiles_figure(runs: list[RunData]):
    deepest = max(values_of(runs, "model.depth"), default=0)
    arms = [(f"{activation}, norm={norm}", select(runs, model__activation=activation, norm__name=norm,
                                                  model__depth=deepest))
            for activation in values_of(runs, "model.activation") for norm in values_of(runs, "norm.name")]
    return plots.profiles_figure(start_and_end_profiles(arms), "‖∂L/∂(layer output)‖",
                                 f"gradient across the {deepest} hidden layers · dashed: step 0, solid: end")


def training_figure(runs: list[RunData], title: str):
    """Test accuracy over training for each (activation, depth, norm) of `runs`, mean over seeds."""
    lines = [(f"{activation}, depth {depth}, norm={norm}",
              *points(mean_series(select(runs, model__activation=activation, model__depth=depth, norm__name=norm),
                                  "acc/test")))
             for activation in values_of(runs, "model.activation") for depth in values_of(runs, "model.depth")
             for norm in values_of(runs, "norm.name")]
    return plots.lines_figure(lines, "test accuracy", title)


def figures(parts: Parts):
    main, stall = parts.get("main", []), parts.get("stall", [])
    deepest = max(values_of(main, "model.depth"), default=0)
    return [("vanishing_by_depth", "First/last hidden-layer gradient ratio at initialization and at the end, and "
             "final test accuracy, against depth (mean over seeds)",
             by_depth_figure(main, "gradient ratio first/last hidden layer (dashed: initialization, solid: end) "
                             "and final test accuracy, by depth (mean over seeds)")),
            ("gradients_deepest", f"‖∂L/∂z‖ across the hidden layers of the depth-{deepest} networks, at step 0 "
             "(dashed) and at the end (solid), geometric mean over seeds", deepest_profiles_figure(main)),
            ("stall", "Test accuracy over training of the stall part: the shallow network without BatchNorm "
             "trains in this budget, the deep one does not (mean over seeds)",
             training_figure(stall, "test accuracy over training, shallow and deep, with and without BatchNorm"))]


def deviations(parts: Parts) -> list[str]:
    main, stall, torch = parts.get("main", []), parts.get("stall", []), parts.get("torch", [])
    return [f"Not one paper's experiment: BatchNorm's motivating claim, tested on {listed(main, 'model.activation')} "
            f"MLPs of depths {listed(main, 'model.depth')} ({seeds(main)}) on "
            f"{listed(main, 'data.name')} (Ioffe & Szegedy's evidence is a sigmoid Inception on ImageNet). Width "
            f"{listed(main, 'model.width')}, {listed(main, 'model.init')} init (U(±1/√fan_in), zero biases), plain "
            f"SGD at {listed(main, 'optim.lr')}, batch {listed(main, 'data.batch_size')} and "
            f"{listed(main, 'train.steps')} steps are bnlab's choices.",
            f"The stall is judged on its own part: {listed(stall, 'model.activation')} at depths "
            f"{listed(stall, 'model.depth')}, {listed(stall, 'train.steps')} steps.",
            f"The norm=torch cross-check reran the depth-{listed(torch, 'model.depth')} BatchNorm networks of seed "
            f"{listed(torch, 'train.seed')}."]


QUICK = ("model.depth=2,5", "model.width=64", "train.seed=0", "train.steps=60", "train.eval_every=20",
         "log.every=20")
ARMS = {"norm": ("none", "bnlab")}
EXPERIMENT = Experiment(
    name="vanishing",
    paper="BatchNorm's motivating claim (Ioffe & Szegedy 2015, §1 and §3.3; Glorot & Bengio 2010)",
    claim="without BatchNorm the gradient vanishes geometrically with depth and deep sigmoid nets stall; with it "
          "the gradient reaches the first layer and they train",
    minutes=3.0, quick_seconds=30,
    parts=(Part(name="main", config="vanishing", quick=QUICK, arms=ARMS),
           Part(name="stall", config="vanishing", arms=ARMS,
                overrides=("model.activation=sigmoid", "model.depth=2,20", "train.steps=1000"),
                quick=(*QUICK, "train.steps=100", "train.eval_every=50", "log.every=50")),
           Part(name="torch", config="vanishing", overrides=("model.depth=20",), quick=(*QUICK, "model.depth=5"),
                fixed=("norm=torch", "train.seed=0"), cross_check_of="main")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
