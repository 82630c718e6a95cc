"""The norm=torch cross-check: bnlab's layer against torch's, run for run (same config, same seed).

Each torch arm has one bnlab twin (`TWINS`): norm=torch checks bnlab's BatchNorm, norm=torch_group its
GroupNorm, norm=torch_layer its LayerNorm. At step 0 the two networks hold the same weights and see the
same batch, so their gradient profiles must agree to rounding; after training, chaotic growth of rounding
differences is allowed, up to a difference in test accuracy.
"""

from __future__ import annotations

import json

from bnlab import formatting
from bnlab.analysis.readback import RunData
from bnlab.experiments.measures import setting
from bnlab.experiments.verdict import Check, Claim, Threshold, below

PROFILE = below(1e-3, "theory", "the same arithmetic in another order: float32 rounding (~1e-7 per operation) "
                "compounded over a few tens of layers stays far below 1e-3")
ACCURACY = below(0.02, "choice", "rounding differences grow chaotically over training; 0.02 is about 7 of the "
                 "embedded digits' 359 test images")
TWINS = {"torch": "bnlab", "torch_group": "group", "torch_layer": "layer"}  # torch's arm -> bnlab's
LAYER_NAMES = {"bnlab": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm"}
THRESHOLDS = {"norm=torch cross-check: step-0 gradient profile, largest relative difference": PROFILE,
              "norm=torch cross-check: test accuracy at the torch run's last step, largest difference": ACCURACY}


def cross_check(reference: list[RunData], torch_runs: list[RunData]) -> Claim:
    """bnlab's layers (the `reference` runs with a norm in TWINS' values) against the matching `torch_runs`."""
    by_key = {_pair_key(run, setting(run, "norm.name")): run for run in reference
              if setting(run, "norm.name") in TWINS.values()}
    pairs = [(by_key[key], run) for run in torch_runs
             if (key := _pair_key(run, TWINS.get(setting(run, "norm.name")))) in by_key]
    profile_gaps, accuracy_gaps = [], []
    for ours, theirs in pairs:
        for a, b in zip(ours.profile("grad_norm/output", 0), theirs.profile("grad_norm/output", 0), strict=False):
            if a > 0 and b > 0:
                profile_gaps.append(abs(a / b - 1))
        value, mine = theirs.last("acc/test"), _accuracy_after(ours, setting(theirs, "train.steps"))
        if value is not None and mine is not None:
            accuracy_gaps.append(abs(mine - value))
    checks = [
        _gap_check(f"step-0 gradient profile, {len(pairs)} matched run{'' if len(pairs) == 1 else 's'} "
                   "(largest relative difference)", profile_gaps, ".1e", PROFILE),
        _gap_check("test accuracy at the torch run's last step (largest difference)", accuracy_gaps, ".3f",
                   ACCURACY),
    ]
    return Claim(_title(torch_runs), "(bnlab's own check, not a claim of the paper)", checks)


def _title(torch_runs: list[RunData]) -> str:
    """'bnlab's BatchNorm and torch's BatchNorm agree (norm=torch cross-check)', or the layers that ran."""
    arms = [name for name in TWINS if any(setting(run, "norm.name") == name for run in torch_runs)] or ["torch"]
    layers = " and ".join(LAYER_NAMES[TWINS[name]] for name in arms)
    return f"bnlab's {layers} and torch's {layers} agree (norm={', '.join(arms)} cross-check)"


def _accuracy_after(run: RunData, updates: int) -> float | None:
    """The run's test accuracy after `updates` optimizer steps: its final evaluation (logged at its last step)
    if it ran that many, else the evaluation logged before step `updates`."""
    if setting(run, "train.steps") == updates:
        return run.last("acc/test")
    return run.at_step("acc/test", updates)


def _gap_check(what: str, gaps: list[float], spec: str, threshold: Threshold) -> Check:
    if not gaps:
        return Check(what, "not measured (no matching bnlab run)", threshold.label, None)
    worst = max(gaps)
    return Check(what, formatting.number(worst, spec), threshold.label, bool(threshold.passes(worst)))


def _pair_key(run: RunData, twin: str | None) -> str:
    """The config without what the cross-check changes (norm name, length of training), and the bnlab layer
    the run stands for (`twin`)."""
    config = json.loads(json.dumps(run.config))
    config.get("norm", {})["name"] = twin
    config.get("train", {}).pop("steps", None)
    config.get("train", {}).pop("checkpoint_every", None)
    return json.dumps(config, sort_keys=True)
