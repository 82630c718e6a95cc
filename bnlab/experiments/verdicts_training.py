"""The training verdicts: `ioffe2015_fig1` and `lr_tolerance` (the gradient ones are in bnlab.experiments.verdicts).

Same contract as bnlab.experiments.verdicts: runs of each part in, a `Verdict` out, thresholds as
module constants fixed before any full-size run.
"""

from __future__ import annotations

import math

from bnlab.analysis.readback import RunData
from bnlab.experiments.verdict import Check, Claim, Table, Verdict, across, final_accuracy, fmt, higher, setting
from bnlab.experiments.verdicts import TRAINED, bn_arm
from bnlab.telemetry.figures import UNIT

# ioffe2015_fig1
EARLY = 0.10  # "trains faster": mean test accuracy over the first 10% of training
DRIFT_RATIO = 0.5  # "stable": BN's drift is at most half the drift without BN, for median and spread alike

# lr_tolerance: a rate "trains" when every seed completes and ends above TRAINED test accuracy
TOLERANCE = 5.0  # BN's largest training rate is at least 5x the largest without BN (Ioffe & Szegedy's BN-x5)


def early_accuracy(run: RunData) -> float | None:
    """Mean test accuracy over the evaluations in (0, EARLY x steps]; the first one after step 0 if none."""
    points = [(step, value) for step, value in run.series("acc/test") if step > 0]
    limit = EARLY * run.summary.get("total_steps", 0)
    early = [value for step, value in points if step <= limit] or [value for _, value in points[:1]]
    return sum(early) / len(early) if early else None


WHOLE_LAYER, ONE_UNIT = "preact", f"preact/unit{UNIT}"


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


def ioffe2015_fig1(parts: dict[str, list[RunData]]) -> Verdict:
    runs = parts["main"]
    plain, normed = bn_arm(runs, False), bn_arm(runs, True)
    stats = {}
    for arm, group in (("no BN", plain), ("BN", normed)):
        stats[arm] = {"final": across(group, final_accuracy), "early": across(group, early_accuracy)}
        for scope, family in (("unit", ONE_UNIT), ("layer", WHOLE_LAYER)):
            stats[arm][f"{scope} shift"] = across(group, lambda r, f=family: drift(r, f)[0])
            stats[arm][f"{scope} spread"] = across(group, lambda r, f=family: drift(r, f)[1], geometric=True)
    bn, no = stats["BN"], stats["no BN"]

    def smaller(what, key, spec, log):
        a, b = bn[key], no[key]
        measured = f"BN {fmt(a, spec)} vs no BN {fmt(b, spec)}"
        if a is None or b is None:
            return Check(what, measured, f"BN <= {DRIFT_RATIO:g} x no BN", None)
        value = (lambda x: math.log(x)) if log else (lambda x: x)
        return Check(what, measured, f"BN <= {DRIFT_RATIO:g} x no BN" + (" (in log)" if log else ""),
                     value(a.mean) <= DRIFT_RATIO * value(b.mean))

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
              [smaller(f"largest shift of the median from step 0 (unit {UNIT} of the last hidden layer, as the "
                       "paper plots it)", "unit shift", ".3g", False),
               smaller(f"largest change of the p15-p85 spread from step 0, as a factor (unit {UNIT})",
                       "unit spread", ".3g", True),
               smaller("largest shift of the median from step 0 (whole last hidden layer)", "layer shift", ".3g",
                       False),
               smaller("largest change of the p15-p85 spread from step 0, as a factor (whole layer)",
                       "layer spread", ".3g", True)]),
    ]
    table = Table("per arm (mean across seeds)", ["arm", "n", "final test acc", f"test acc, first {EARLY:.0%}",
                                                  f"unit {UNIT}: median shift", f"unit {UNIT}: spread change ×",
                                                  "layer: median shift", "layer: spread change ×"],
                  [[arm, str(len(group)), fmt(stats[arm]["final"], ".4f"), fmt(stats[arm]["early"], ".3f")]
                   + [fmt(stats[arm][key], ".3g") for key in ("unit shift", "unit spread", "layer shift",
                                                                "layer spread")]
                   for arm, group in (("no BN", plain), ("BN", normed))])
    notes = [f"The paper plots one 'typical' sigmoid without saying which; bnlab follows unit {UNIT} of the last "
             "hidden layer (its percentiles over each logged batch) and also measures the whole layer (all its "
             "units and the batch)."]
    return Verdict(claims, [table], notes)


def trains(runs: list[RunData]) -> bool:
    return bool(runs) and all(run.status == "completed" and (final_accuracy(run) or 0) > TRAINED for run in runs)


def largest_training_rate(runs: list[RunData]) -> float | None:
    rates = sorted({setting(run, "optim.lr") for run in runs})
    good = [lr for lr in rates if trains([run for run in runs if setting(run, "optim.lr") == lr])]
    return max(good, default=None)


def lr_tolerance(parts: dict[str, list[RunData]]) -> Verdict:
    runs = parts["main"]
    plain, normed = bn_arm(runs, False), bn_arm(runs, True)
    best_plain, best_bn = largest_training_rate(plain), largest_training_rate(normed)
    measured = f"BN {_rate(best_bn)}, no BN {_rate(best_plain)}"
    if not plain or not normed:
        ratio = None
    elif best_bn is None:  # BatchNorm trains at no rate of the grid
        ratio = 0.0
    else:
        ratio = math.inf if best_plain is None else best_bn / best_plain
    ratio_text = measured + ("" if ratio is None else f", ratio {ratio:.3g}")
    rate_checks = [Check("largest learning rate that trains", ratio_text, "BN's larger", None if ratio is None
                         else ratio > 1),
                   Check("ratio of the largest training rates, BN / no BN", ratio_text, f">= {TOLERANCE:g}",
                         None if ratio is None else ratio >= TOLERANCE)]
    claims = [Claim("BatchNorm networks train at learning rates where the same network without it diverges or "
                    "stalls", "Ioffe & Szegedy (2015), §4.2.2: BN-x5 and BN-x30 train at 5x and 30x the base "
                    "rate; Bjorck et al. (2018): BN allows larger learning rates, without it training diverges",
                    rate_checks)]
    rows = []
    for lr in sorted({setting(run, "optim.lr") for run in runs}):
        row = [f"{lr:g}"]
        for group in (plain, normed):
            at = [run for run in group if setting(run, "optim.lr") == lr]
            statuses = ", ".join(sorted({run.status for run in at})) or "-"
            row += [fmt(across(at, final_accuracy), ".3f"), statuses, "yes" if trains(at) else "no"]
        rows.append(row)
    table = Table(f"final test accuracy per learning rate (trains: every seed completes above {TRAINED:g})",
                  ["lr", "no BN: test acc", "no BN: status", "no BN: trains", "BN: test acc", "BN: status",
                   "BN: trains"], rows)
    return Verdict(claims, [table])


def _rate(value: float | None) -> str:
    return "none of the grid" if value is None else f"{value:g}"
