"""`ioffe2015_fig1`: Ioffe & Szegedy 2015, §4.1 and Figure 1.

A 3-layer sigmoid MLP of 100 units, with and without BatchNorm, 50,000 steps: BatchNorm trains faster and ends
higher (Figure 1a), and the input of a sigmoid in the last hidden layer keeps a stable distribution (1b, c).
Parts: `main` and `torch` (the cross-check of the first 5,000 steps of seed 0).
"""

from __future__ import annotations

import math

from bnlab import formatting
from bnlab.analysis.aggregate import mean_series
from bnlab.analysis.readback import RunData
from bnlab.experiments.experiment import Experiment, Fallback, Part
from bnlab.experiments.measures import Parts, across, bn_arm, final_accuracy, listed, seeds, select, values_of
from bnlab.experiments.plotting import points
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict, higher
from bnlab.telemetry import plots
from bnlab.telemetry.figures import UNIT

EARLY = 0.10  # "trains faster": mean test accuracy over the first 10% of training
STABLE = Threshold("BN ≤ 0.5 × no BN", lambda ratio: ratio <= 0.5, "choice",
                   "'much more stable' read as at most half the drift without BatchNorm, for the median's shift "
                   "and (in log) for the change of the p15-p85 spread alike")
THRESHOLDS = {"drift of the sigmoid's input over training, BN relative to no BN": STABLE}
WHOLE_LAYER, ONE_UNIT = "preact", f"preact/unit{UNIT}"


def early_accuracy(run: RunData) -> float | None:
    """Mean test accuracy over the evaluations in (0, EARLY x steps]; the first one after step 0 if none."""
    series = [(step, value) for step, value in run.series("acc/test") if step > 0]
    limit = EARLY * run.summary.get("total_steps", 0)
    early = [value for step, value in series if step <= limit] or [value for _, value in series[:1]]
    return sum(early) / len(early) if early else None


def drift(run: RunData, family: str = WHOLE_LAYER) -> tuple[float | None, float | None]:
    """(largest shift of the median from step 0, largest change of the p15-p85 spread from step 0 as a
    factor >= 1) of the last hidden layer's preactivation (the sigmoid's input) over training: over the
    whole layer (`WHOLE_LAYER`) or over the batch for the one fixed unit the probes follow (`ONE_UNIT`)."""
    layers = run.hidden_layers
    if not layers:
        return None, None
    series = {name: dict(run.series(f"{family}/{name}/{layers[-1]}")) for name in ("p15", "p50", "p85")}
    steps = sorted(set(series["p15"]) & set(series["p50"]) & set(series["p85"]))
    if len(steps) < 2:
        return None, None
    first = steps[0]
    spread0 = series["p85"][first] - series["p15"][first]
    shift = max(abs(series["p50"][s] - series["p50"][first]) for s in steps)
    spreads = [series["p85"][s] - series["p15"][s] for s in steps]
    if spread0 <= 0 or min(spreads) <= 0:
        return shift, None
    return shift, math.exp(max(abs(math.log(s / spread0)) for s in spreads))


def _smaller(what: str, bn, no, spec: str, log: bool) -> Check:
    measured = f"BN {formatting.stat(bn, spec)} vs no BN {formatting.stat(no, spec)}"
    test = f"{STABLE.test}{' (in log)' if log else ''} [{STABLE.source}]"
    if bn is None or no is None:
        return Check(what, measured, test, None)
    value = math.log if log else float
    if value(no.mean) <= 0:  # no drift without BatchNorm: nothing to be half of
        return Check(what, measured, test, False)
    return Check(what, measured, test, bool(STABLE.passes(value(bn.mean) / value(no.mean))))


def verdict(parts: Parts) -> Verdict:
    runs = parts.get("main", [])
    plain, normed = bn_arm(runs, False), bn_arm(runs, True)
    stats = {}
    for arm, group in (("no BN", plain), ("BN", normed)):
        stats[arm] = {"final": across(group, final_accuracy), "early": across(group, early_accuracy)}
        for scope, family in (("unit", ONE_UNIT), ("layer", WHOLE_LAYER)):
            stats[arm][f"{scope} shift"] = across(group, lambda r, f=family: drift(r, f)[0])
            stats[arm][f"{scope} spread"] = across(group, lambda r, f=family: drift(r, f)[1], geometric=True)
    bn, no = stats["BN"], stats["no BN"]
    claims = [
        Claim("With BatchNorm the network trains faster",
              "Ioffe & Szegedy (2015), Figure 1(a): the BN network's test accuracy rises faster",
              higher(f"mean test accuracy over the first {EARLY:.0%} of training, BN vs no BN", bn["early"],
                     no["early"], ".3f")),
        Claim("With BatchNorm the network ends at a higher test accuracy",
              "Ioffe & Szegedy (2015), Figure 1(a): BN ends higher (a public reproduction on MNIST: ~98.0% "
              "with BN, 97.5-97.7% without)", higher("final test accuracy, BN vs no BN", bn["final"],
                                                    no["final"], ".4f")),
        Claim("Without BatchNorm the sigmoid's input drifts in mean and spread over training; with it, stable",
              "Ioffe & Szegedy (2015), Figure 1(b, c): 15th/50th/85th percentiles of a typical sigmoid's "
              "input in the last hidden layer; 'the distribution ... is much more stable' with BN",
              [_smaller(f"largest shift of the median from step 0 (unit {UNIT} of the last hidden layer, as the "
                        "paper plots it)", bn["unit shift"], no["unit shift"], ".3g", False),
               _smaller(f"largest change of the p15-p85 spread from step 0, as a factor (unit {UNIT})",
                        bn["unit spread"], no["unit spread"], ".3g", True),
               _smaller("largest shift of the median from step 0 (whole last hidden layer)", bn["layer shift"],
                        no["layer shift"], ".3g", False),
               _smaller("largest change of the p15-p85 spread from step 0, as a factor (whole layer)",
                        bn["layer spread"], no["layer spread"], ".3g", True)]),
    ]
    keys = ("unit shift", "unit spread", "layer shift", "layer spread")
    table = Table("per arm (mean across seeds)", ["arm", "n", "final test acc", f"test acc, first {EARLY:.0%}",
                                                  f"unit {UNIT}: median shift", f"unit {UNIT}: spread change ×",
                                                  "layer: median shift", "layer: spread change ×"],
                  [[arm, str(len(group)), formatting.stat(stats[arm]["final"], ".4f"),
                    formatting.stat(stats[arm]["early"], ".3f"), *(formatting.stat(stats[arm][k]) for k in keys)]
                   for arm, group in (("no BN", plain), ("BN", normed))])
    notes = [f"The paper plots one 'typical' sigmoid without saying which; bnlab follows unit {UNIT} of the last "
             "hidden layer (its percentiles over each logged batch) and also measures the whole layer (all its "
             "units and the batch)."]
    return Verdict(claims, [table], notes)


def figures(parts: Parts):
    runs = parts.get("main", [])
    arms = [(f"norm={norm}", select(runs, norm__name=norm)) for norm in values_of(runs, "norm.name")]
    accuracy = plots.lines_figure([(label, *points(mean_series(group, "acc/test"))) for label, group in arms],
                                  "test accuracy", "Ioffe & Szegedy (2015), Figure 1(a): test accuracy over "
                                  "training, mean over seeds")
    bands = []
    for label, group in arms:
        layer = max((run.hidden_layers for run in group), key=len, default=["?"])[-1]
        for family, scope in ((ONE_UNIT, f"unit {UNIT}"), (WHOLE_LAYER, "whole layer")):
            series = {name: dict(mean_series(group, f"{family}/{name}/{layer}")) for name in plots.BAND}
            steps = sorted(series["p50"])
            p15, p50, p85 = ([series[name].get(step) for step in steps] for name in plots.BAND)
            bands.append(plots.Band(f"{label} · {layer} (last hidden layer), {scope}", steps, p15, p50, p85))
    return [("accuracy", "Test accuracy over training, with and without BatchNorm (mean over seeds)", accuracy),
            ("figure1", f"The last hidden layer's sigmoid input over training: 15th, 50th and 85th percentiles "
             f"for one fixed unit (unit {UNIT}, over the batch) as in Figure 1(b, c), and over all the layer's "
             "units and the batch (mean over seeds)",
             plots.bands_figure(bands, "Ioffe & Szegedy (2015), Figure 1(b, c)"))]


def deviations(parts: Parts) -> list[str]:
    main, torch = parts.get("main", []), parts.get("torch", [])
    return [f"The paper states neither optimizer nor learning rate: plain SGD at {listed(main, 'optim.lr')} with "
            f"N(0, {listed(main, 'model.init_std')}²) weights, as a public reproduction used.",
            f"Ran {listed(main, 'train.steps')} steps of batch {listed(main, 'data.batch_size')} on "
            f"{listed(main, 'data.name')}, {seeds(main)} (the paper shows one run); "
            f"the norm=torch cross-check ran the first {listed(torch, 'train.steps')} steps of seed "
            f"{listed(torch, 'train.seed')}."]


# --quick: two seeds, so that the 95% intervals the comparisons need exist
QUICK = ("train.steps=600", "train.eval_every=50", "log.every=50", "train.seed=0,1")
EXPERIMENT = Experiment(
    name="ioffe2015_fig1",
    paper="Ioffe & Szegedy 2015, §4.1 and Figure 1",
    claim="BatchNorm trains faster and ends higher; it keeps the sigmoid's input distribution stable",
    minutes=8.5, quick_seconds=25,
    parts=(Part(name="main", config="ioffe2015_fig1", quick=QUICK, arms={"norm": ("none", "bnlab")}),
           Part(name="torch", config="ioffe2015_fig1", overrides=("train.steps=5000",), quick=QUICK,
                fixed=("norm=torch", "train.seed=0"), cross_check_of="main")),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS,
    fallback=Fallback(overrides=("data=digits",), deviation="MNIST files were not found under data/mnist: ran on "
                      "the embedded digits (1797 8×8 images, 64 inputs) instead of MNIST (784 inputs), so the "
                      "accuracies are not comparable with the paper's MNIST numbers."))
