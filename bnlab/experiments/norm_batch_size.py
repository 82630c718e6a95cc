"""`norm_batch_size`: BatchNorm, Batch Renormalization, Ghost BatchNorm, GroupNorm and LayerNorm against the
batch size, from 2 to 256: where each one's batch dependence shows.

Parts: `gradients` (Yang et al.'s deep plain ReLU MLP at initialization, every batch size, every norm but ghost),
`ghost` (the same for Ghost BatchNorm with ghost batches of 16, from batch 16 on: below it one ghost batch is the
whole batch, which is BatchNorm exactly), `batch_<B>` for each batch size (a small CNN trained for the same
number of epochs at every batch size, SGD at a learning rate scaled linearly with the batch, as Wu & He 2018
train; each batch size is a part of its own because its steps, rate and ghost batch follow from it) and `torch`
(the norm=torch_group and norm=torch_layer cross-check of one trained batch size).
"""

from __future__ import annotations

import math

from bnlab import formatting
from bnlab.analysis.aggregate import geometric_mean_profile
from bnlab.analysis.readback import RunData
from bnlab.data.datasets import data_shape
from bnlab.experiments.experiment import Experiment, Part
from bnlab.experiments.measures import (
    GROWTH_INIT,
    RATIO_INIT,
    Parts,
    across,
    final_accuracy,
    largest,
    listed,
    mean,
    seeds,
    select,
    setting,
    values_of,
)
from bnlab.experiments.plotting import mean_of, xy_panel
from bnlab.experiments.verdict import Check, Claim, Table, Threshold, Verdict, below, between, check, higher, judged
from bnlab.telemetry import plots

BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256)
NORMAL_BATCH = 32  # Wu & He's 32 images per GPU: their normal batch, and the base of the learning-rate scaling
GHOST_SIZE = 16  # Ghost BatchNorm's ghost batch from batch 16 on; below it, the whole batch
EPOCHS = 5  # every batch size sees the training set this many times
BASE_LR = 0.1  # SGD's rate at NORMAL_BATCH; lr = BASE_LR * batch / NORMAL_BATCH (Goyal et al. 2017)
NORMS = ("bnlab", "renorm", "ghost", "group", "layer")
NAMES = {"bnlab": "BatchNorm", "renorm": "Batch Renorm", "ghost": "Ghost BN", "group": "GroupNorm",
         "layer": "LayerNorm"}
FULL = {"epochs": EPOCHS, "seeds": 2}  # the size the accuracy thresholds are written for
DEEP = {"model__depth": 30}  # ... and the gradient thresholds: Yang et al.'s is a deep-network limit

FLAT = below(0.03, "choice", "Wu & He (2018, Figure 1) find GroupNorm's ImageNet error within 0.5 points from "
             "batch 32 down to 2; 0.03 is 11 of the 359 test images (their 0.5 points would be under 2 images, "
             "below the spread between seeds on digits)", **FULL)
DEGRADES = Threshold("> 0.05", lambda drop: drop > 0.05, "paper", "Wu & He (2018, Figure 1): BatchNorm's error "
                     "rises from 23.6% at batch 32 to 34.7% at batch 2 (11 points); 0.05 is half of that",
                     tuple(FULL.items()))
COMPARABLE = below(0.03, "paper", "Wu & He (2018): at batch 32 GroupNorm is within 0.5 points of BatchNorm "
                   "(24.1% vs 23.6% error); 0.03 as for FLAT, seed noise on digits", **FULL)
BN_AT_256 = between(1.09, 1.33, "theory", "Yang et al. (2019): sqrt(π/(π-1)) = 1.21 per layer for BatchNorm + "
                    "ReLU at a large batch, ±10%", **DEEP)
BN_AT_8 = between(1.21, 1.47, "control run", "bnlab measured 1.34 per layer at batch 8 (against 1.21 at 256) "
                  "before this experiment; ±10%", **DEEP)
SAME_GROWTH = between(0.95, 1.05, "choice", "no batch statistics: the per-sample backward pass does not depend "
                      "on the batch (theory); ±5% is half the 11% rise BatchNorm showed from batch 256 to 8", **DEEP)
THRESHOLDS = {"(a) GroupNorm, LayerNorm: spread of the final test accuracy across batch sizes": FLAT,
              "(a) BatchNorm: final test accuracy at batch 32 minus at batch 2": DEGRADES,
              "(a) at batch 32: |BatchNorm - GroupNorm| final test accuracy": COMPARABLE,
              "(b) BatchNorm, batch 256: growth per layer toward the input at init": BN_AT_256,
              "(b) BatchNorm, batch 8: growth per layer at init": BN_AT_8,
              "(b) GroupNorm, LayerNorm, ghost at batch ≥ 16 vs BatchNorm at 16: growth at init relative to "
              "the reference": SAME_GROWTH}


def training_samples(run: RunData) -> int:
    return data_shape(setting(run, "data.name") or "digits", synthetic_samples=setting(run, "data.samples") or 4096)[0]


def epochs(run: RunData) -> float:
    """How many times the run saw the training set (its last incomplete batch of each epoch dropped)."""
    batch = setting(run, "data.batch_size")
    return setting(run, "train.steps") / (training_samples(run) // batch)


def budget(batch: int) -> tuple[int, float]:
    """(steps, learning rate) of batch size `batch` on digits: EPOCHS epochs, the rate scaled with the batch."""
    return EPOCHS * (data_shape("digits")[0] // batch), BASE_LR * batch / NORMAL_BATCH


def training_runs(parts: Parts) -> list[RunData]:
    return [run for name, runs in parts.items() if name.startswith("batch_") for run in runs]


def gradient_runs(parts: Parts) -> list[RunData]:
    return [*parts.get("gradients", []), *parts.get("ghost", [])]


def at(runs: list[RunData], norm: str, batch: int) -> list[RunData]:
    return select(runs, norm__name=norm, data__batch_size=batch)


def size_ran(runs: list[RunData]) -> dict[str, float | None]:
    """The fewest epochs and the number of seeds among `runs`, for the accuracy thresholds' `needs`."""
    return {"epochs": min((epochs(run) for run in runs), default=None),
            "seeds": len(values_of(runs, "train.seed")) or None}


def accuracy_claims(runs: list[RunData]) -> list[Claim]:
    ran = size_ran(runs)
    paper_range = [batch for batch in BATCH_SIZES if batch <= NORMAL_BATCH]
    flat = []
    for norm in ("group", "layer"):
        for batches, label in ((paper_range, "the paper's range"), (BATCH_SIZES, "all")):
            means = {batch: mean(across(at(runs, norm, batch), final_accuracy)) for batch in batches}
            flat.append(spread_check(f"{NAMES[norm]}: spread of final test accuracy over batch sizes ({label})",
                                     means, FLAT, ran))
    accuracy = {(norm, batch): across(at(runs, norm, batch), final_accuracy) for norm in NORMS
                for batch in (2, NORMAL_BATCH)}
    bn_small, bn_normal = mean(accuracy["bnlab", 2]), mean(accuracy["bnlab", NORMAL_BATCH])
    drop = None if bn_small is None or bn_normal is None else bn_normal - bn_small
    gap = (None if bn_normal is None or accuracy["group", NORMAL_BATCH] is None
           else abs(bn_normal - accuracy["group", NORMAL_BATCH].mean))
    degrades = [value_check(f"BatchNorm: final test accuracy at batch {NORMAL_BATCH} minus at batch 2", drop,
                            f"{formatting.stat(accuracy['bnlab', NORMAL_BATCH], '.3f')} - "
                            f"{formatting.stat(accuracy['bnlab', 2], '.3f')}", DEGRADES, ran),
                *[sized(c, ran) for norm in ("group", "layer")
                  for c in higher(f"batch 2: {NAMES[norm]} vs BatchNorm, final test accuracy", accuracy[norm, 2],
                                  accuracy["bnlab", 2], ".3f")],
                value_check(f"batch {NORMAL_BATCH}: |BatchNorm - GroupNorm| final test accuracy", gap,
                            f"{formatting.stat(accuracy['bnlab', NORMAL_BATCH], '.3f')} vs "
                            f"{formatting.stat(accuracy['group', NORMAL_BATCH], '.3f')}", COMPARABLE, ran)]
    return [Claim("(a) GroupNorm's and LayerNorm's accuracy does not depend on the batch size",
                  "Wu & He (2018), Figure 1: GroupNorm's ImageNet error is 24.1% at 32 images per GPU and within "
                  "0.5 points of it down to 2 (equal epochs, learning rate scaled with the batch)", flat),
            Claim("(a) BatchNorm's accuracy degrades at batch 2, where GroupNorm and LayerNorm stay far above it; "
                  "at a normal batch they are comparable",
                  "Wu & He (2018), Figure 1: BatchNorm 34.7% error at batch 2 against GroupNorm's 24.1%; 23.6% "
                  "against 24.1% at batch 32", degrades)]


def gradient_claims(runs: list[RunData]) -> list[Claim]:
    ran, deep = values_of(runs, "data.batch_size"), largest(runs, "model.depth")
    growth = {(norm, batch): across(at(runs, norm, batch), GROWTH_INIT, True) for norm in NORMS
              for batch in {*BATCH_SIZES, *ran}}
    shrinking = (4, 8, NORMAL_BATCH, 256)
    falls = [mean(growth["bnlab", b]) for b in shrinking]
    order = " > ".join(f"{formatting.number(v, '.3g')} ({b})" for b, v in zip(shrinking, falls, strict=True))
    grows = [check("BatchNorm, batch 256: growth per layer toward the input at init", growth["bnlab", 256],
                   ".3g", BN_AT_256, deep),
             check("BatchNorm, batch 8: growth per layer at init", growth["bnlab", 8], ".3g", BN_AT_8, deep),
             *compared(higher("BatchNorm: growth per layer at init, batch 8 vs 256", growth["bnlab", 8],
                              growth["bnlab", 256], ".3g"), len(values_of(runs, "train.seed"))),
             Check("BatchNorm: growth per layer at init (batch)", order, "falls as the batch grows from 4 to 256 "
                   "[theory: Yang et al. 2019]", None if None in falls else falls == sorted(falls, reverse=True)
                   and len(set(falls)) == len(falls))]
    same = [ratio_check(f"{NAMES[norm]}: growth at init relative to batch 256's, every batch size",
                        {b: _ratio(growth[norm, b], growth[norm, 256]) for b in batches_of(runs, norm) if b != 256},
                        SAME_GROWTH)
            for norm in ("group", "layer")]
    ghost = ratio_check(f"Ghost BN (ghost batches of {GHOST_SIZE}): growth at init relative to BatchNorm's at batch "
                        f"{GHOST_SIZE}, every batch size above it",
                        {b: _ratio(growth["ghost", b], growth["bnlab", GHOST_SIZE])
                         for b in batches_of(runs, "ghost") if b > GHOST_SIZE},
                        SAME_GROWTH)
    for check_ in [*grows[2:], *same, ghost]:  # the comparisons too are meant for the deep network
        if (short := BN_AT_256.shortfall(deep)) is not None:
            check_.passed, check_.not_applicable = None, short
    return [Claim("(b) BatchNorm's gradient explosion at init in a deep plain ReLU network grows as the batch "
                  "shrinks", "Yang et al. (2019): sqrt(π/(π-1)) ≈ 1.21 per layer toward the input at a large "
                  "batch, more at smaller batches (1.34 measured by bnlab at batch 8)", grows),
            Claim("(b) GroupNorm and LayerNorm show no batch dependence in the gradient at init; Ghost BatchNorm "
                  "shows BatchNorm's at its ghost batch size", "(bnlab's addition: GroupNorm and LayerNorm use no "
                  "batch statistics; Hoffer et al. 2017 normalize each ghost batch on its own)", [*same, ghost])]


def batches_of(runs: list[RunData], norm: str) -> list[int]:
    return values_of(select(runs, norm__name=norm), "data.batch_size")


def _ratio(stat, reference) -> float | None:
    return None if stat is None or reference is None or reference.mean == 0 else stat.mean / reference.mean


def spread_check(what: str, means: dict[int, float | None], threshold: Threshold, ran: dict) -> Check:
    values = [v for v in means.values() if v is not None]
    measured = ", ".join(f"{formatting.number(v, '.3f')} ({b})" for b, v in means.items())
    spread = max(values) - min(values) if len(values) == len(means) >= 2 else None
    return value_check(what, spread, measured or "not measured", threshold, ran)


def value_check(what: str, value: float | None, detail: str, threshold: Threshold, ran: dict) -> Check:
    """A Check of one measured number against `threshold`, not applicable where `ran` falls short of its needs."""
    return judged(what, value, f"{formatting.number(value, '.3f', missing='not measured')} ({detail})", threshold,
                  ran)


def compared(checks: list[Check], seed_count: int) -> list[Check]:
    """`higher`'s two checks, the intervals' one not applicable (rather than not measured) with one seed."""
    if seed_count == 1 and len(checks) == 2:
        checks[-1].passed, checks[-1].not_applicable = None, "needs seeds ≥ 2 for an interval (ran 1)"
    return checks


def sized(check_: Check, ran: dict) -> Check:
    """`check_` (a comparison of accuracies) made not applicable below the full training size."""
    check_.not_applicable = FLAT.shortfall(ran)
    if check_.not_applicable is not None:
        check_.passed = None
    return check_


def ratio_check(what: str, ratios: dict[int, float | None], threshold: Threshold) -> Check:
    """Each batch size's ratio (None: one side did not run) against `threshold`: passed when every one is within."""
    measured = ", ".join(f"{formatting.number(v, '.3g')} ({b})" for b, v in ratios.items()) or "not measured"
    if not ratios or None in ratios.values():
        return Check(what, measured, threshold.label, None)
    return Check(what, measured, f"{threshold.label} at every batch size",
                 all(threshold.passes(v) for v in ratios.values()))


def verdict(parts: Parts) -> Verdict:
    training, gradients = training_runs(parts), gradient_runs(parts)
    notes = [text for norm, when in (("renorm", "at step 0 (its warm-up)"), ("ghost", f"at batch {GHOST_SIZE}"))
             if (text := same_as_batchnorm(gradients, norm, when))]
    return Verdict([*accuracy_claims(training), *gradient_claims(gradients)], tables(training, gradients), notes)


def same_as_batchnorm(runs: list[RunData], norm: str, when: str) -> str | None:
    """How far `norm`'s step-0 growth is from BatchNorm's on the same batch and seed, where it should equal it:
    renorm's warm-up is plain BatchNorm, and one ghost batch is the whole batch."""
    gaps = []
    for run in select(runs, norm__name=norm):
        batch, seed = setting(run, "data.batch_size"), setting(run, "train.seed")
        if norm == "ghost" and setting(run, "norm.ghost_batch_size") != batch:
            continue
        for twin in select(runs, norm__name="bnlab", data__batch_size=batch, train__seed=seed):
            ours, theirs = GROWTH_INIT(run), GROWTH_INIT(twin)
            if ours and theirs and math.isfinite(ours) and math.isfinite(theirs):
                gaps.append(abs(ours / theirs - 1))
    if not gaps:
        return None
    return (f"{NAMES[norm]} is BatchNorm {when}: its growth per layer at init differs from BatchNorm's on the same "
            f"batch and seed by at most {formatting.number(max(gaps), '.1e')} ({len(gaps)} runs).")


def tables(training: list[RunData], gradients: list[RunData]) -> list[Table]:
    trained = values_of(training, "data.batch_size")
    measured = values_of(gradients, "data.batch_size")

    def row(runs, norm, batches, measure, spec, geometric=False):
        return [NAMES[norm], *(formatting.stat(across(at(runs, norm, b), measure, geometric), spec) for b in batches)]

    budget_rows = [[str(b), str(setting(runs[0], "train.steps")), formatting.number(epochs(runs[0]), ".3g"),
                    formatting.number(setting(runs[0], "optim.lr"), ".4g"),
                    str(setting(g[0], "norm.ghost_batch_size")) if (g := at(runs, "ghost", b)) else "-"]
                   for b in trained if (runs := select(training, data__batch_size=b))]
    return [Table(f"final test accuracy against the batch size (equal epochs; {seeds(training)})",
                  ["norm", *map(str, trained)], [row(training, n, trained, final_accuracy, ".3f") for n in NORMS]),
            Table("the training budget of each batch size", ["batch", "steps", "epochs", "lr", "ghost batch"],
                  budget_rows),
            Table(f"growth per layer toward the input at init ({seeds(gradients)})", ["norm", *map(str, measured)],
                  [row(gradients, n, measured, GROWTH_INIT, ".3g", True) for n in NORMS]),
            Table("first/last hidden-layer gradient ratio at init", ["norm", *map(str, measured)],
                  [row(gradients, n, measured, RATIO_INIT, ".2e", True) for n in NORMS]),
            Table("where the batch dependence shows", ["norm", "accuracy > 0.03 below batch 32's at",
                                                       "growth at init > 5% off batch 256's at"],
                  [[NAMES[n], dependence(training, n, final_accuracy, NORMAL_BATCH, False),
                    dependence(gradients, n, GROWTH_INIT, 256, True)] for n in NORMS])]


def dependence(runs: list[RunData], norm: str, measure, reference: int, relative: bool) -> str:
    """The batch sizes at which `measure`'s mean departs from its value at batch `reference`: by more than 0.03
    below it (accuracy), or by more than 5% either way (`relative`, growth)."""
    base = mean_of(at(runs, norm, reference), measure, relative)
    if base is None:
        return "-"
    found = []
    for batch in values_of(runs, "data.batch_size"):
        value = mean_of(at(runs, norm, batch), measure, relative)
        if value is not None and (abs(value / base - 1) > 0.05 if relative else base - value > 0.03):
            found.append(str(batch))
    return ", ".join(found) or "nowhere"


def figures(parts: Parts):
    training, gradients = training_runs(parts), gradient_runs(parts)
    figure, (left, right) = plots.new_figure(1150, 450, 1, 2)
    for ax, runs, measure, geometric, label in ((left, training, final_accuracy, False, "final test accuracy"),
                                                (right, gradients, GROWTH_INIT, True,
                                                 "growth per layer toward the input, at init")):
        batches = values_of(runs, "data.batch_size")
        xy_panel(ax, [(NAMES[norm], batches, [mean_of(at(runs, norm, b), measure, geometric) for b in batches],
                       f"C{index}", "--" if geometric else "-")
                      for index, norm in enumerate(NORMS) if select(runs, norm__name=norm)],
                 "batch size", label, logx=True, logy=geometric)
        ax.set_xscale("log", base=2)
    right.axhline(math.sqrt(math.pi / (math.pi - 1)), color="grey", linewidth=0.8, linestyle=":")
    figure.suptitle("Normalization against the batch size: accuracy after equal epochs (left), BatchNorm's "
                    "gradient explosion at init (right; dotted: Yang et al.'s 1.21)", fontsize=10)
    shown = [("bnlab", b) for b in (2, 8, NORMAL_BATCH, 256)] + [("layer", 8), ("layer", 256)]
    lines = [plots.ProfileLine(geometric_mean_profile(at(gradients, norm, b), "grad_norm/output", 0),
                               f"{NAMES[norm]}, batch {b}", f"C{index}", initial=True,
                               marker="o" if norm == "bnlab" else "x")
             for index, (norm, b) in enumerate(shown) if at(gradients, norm, b)]
    profiles = plots.profiles_figure(lines, "‖∂L/∂(layer output)‖", "gradient at initialization, deep ReLU MLP")
    return [("batch_size", "Final test accuracy after equal epochs (left) and growth of the gradient per layer "
             "toward the input at initialization (right) against the batch size, per norm (mean over seeds; "
             "geometric for growth). At init Batch Renorm's line lies on BatchNorm's (its warm-up is BatchNorm)",
             figure),
            ("gradients_init", "‖∂L/∂z‖ across the hidden layers of the deep ReLU MLP at initialization, "
             "BatchNorm at several batch sizes and LayerNorm (geometric mean over seeds)", profiles)]


def deviations(parts: Parts) -> list[str]:
    training, gradients, torch = training_runs(parts), gradient_runs(parts), parts.get("torch", [])
    return [f"Wu & He train ResNet-50 on ImageNet at 2 to 32 images per GPU; here a plain "
            f"{listed(training, 'model.activation')} {listed(training, 'model.name')} of "
            f"{listed(training, 'model.depth')} blocks and width {listed(training, 'model.width')} on "
            f"{listed(training, 'data.name')}, batch sizes {listed(training, 'data.batch_size')}, {seeds(training)}.",
            "The same number of epochs at every batch size (steps = epochs × training samples // batch), as Wu & "
            "He compare: a fixed number of steps would give the large batches more passes over the data. Plain "
            f"SGD at a rate scaled linearly with the batch ({BASE_LR:g} at batch {NORMAL_BATCH}), Wu & He's rule; "
            "the steps, epochs and rates are in the budget table.",
            f"Ghost BatchNorm trained with ghost batches of min({GHOST_SIZE}, batch): "
            f"{listed(select(training, norm__name='ghost'), 'norm.ghost_batch_size')} (a ghost batch must divide the "
            f"batch; at batch ≤ {GHOST_SIZE} it is BatchNorm exactly); its gradient at init was measured at batch "
            f"{listed(select(gradients, norm__name='ghost'), 'data.batch_size')} only. GroupNorm with "
            f"{listed(select(training + gradients, norm__name='group'), 'norm.groups')} groups, which divide the "
            "widths. Batch Renormalization's warm-up is counted in steps, so the large batches, with few steps, "
            "spend most of their budget in it (plain BatchNorm).",
            f"The gradient at init: Yang et al.'s theory is for infinite width and depth; here depth "
            f"{listed(gradients, 'model.depth')}, width {listed(gradients, 'model.width')}, "
            f"{listed(gradients, 'model.init')} weights, the first batch of {listed(gradients, 'data.name')}, "
            f"{seeds(gradients)}. Whether BatchNorm's growth falls as the batch grows is judged from batch 4: at "
            "batch 2 each unit's two normalized values are ±1 whatever its input, a case Yang et al.'s smooth "
            "dependence on the batch size does not describe.",
            f"The cross-check ran norm={listed(torch, 'norm.name')} at batch {listed(torch, 'data.batch_size')}, "
            f"seed {listed(torch, 'train.seed')}."]


def training_part(batch: int) -> Part:
    steps, lr = budget(batch)
    return Part(name=f"batch_{batch}", config="norm_batch_size", arms=ARMS, quick=TRAINING_QUICK,
                overrides=(f"data.batch_size={batch}", f"train.steps={steps}", f"train.eval_every={steps}",
                           f"optim.lr={lr:g}", f"norm.ghost_batch_size={min(GHOST_SIZE, batch)}"))


ARMS = {"norm": NORMS}
TRAINING_QUICK = ("norm=group", "train.steps=10", "train.eval_every=10", "train.seed=0")
GRADIENT_QUICK = ("model.depth=6", "model.width=64", "train.seed=0")
CROSS_CHECKED = 8
EXPERIMENT = Experiment(
    name="norm_batch_size",
    paper="Wu & He 2018, Group Normalization; Yang et al. 2019, A Mean Field Theory of Batch Normalization",
    claim="GroupNorm and LayerNorm do not depend on the batch size, BatchNorm degrades at batch 2; BatchNorm's "
          "gradient explosion at init grows as the batch shrinks; renorm and ghost batches in between",
    minutes=21, quick_seconds=40,
    parts=(Part(name="gradients", config="norm_batch_size_gradients", quick=(*GRADIENT_QUICK, "norm=bnlab",
                                                                             "data.batch_size=8,256"),
                arms={"norm": ("bnlab", "renorm", "group", "layer")}),
           Part(name="ghost", config="norm_batch_size_gradients", arms={"norm": ("ghost",)}, fixed=("norm=ghost",),
                overrides=("data.batch_size=16,32,64,128,256", f"norm.ghost_batch_size={GHOST_SIZE}"),
                quick=(*GRADIENT_QUICK, "data.batch_size=256")),
           *(training_part(batch) for batch in BATCH_SIZES),
           Part(name="torch", config="norm_batch_size", cross_check_of=f"batch_{CROSS_CHECKED}",
                overrides=training_part(CROSS_CHECKED).overrides, quick=TRAINING_QUICK,
                fixed=("norm=torch_group,torch_layer", "train.seed=0"))),
    verdict=verdict, figures=figures, deviations=deviations, thresholds=THRESHOLDS)
