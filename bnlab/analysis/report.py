"""`bnlab report`: configurations compared across seeds, as a table, report.md and figures.

`build_report` reads the runs back (event files and summary.json), groups seeds into
configurations (bnlab.analysis.aggregate), writes report.md and the PNG figures, and returns a
`Report`; the CLI prints it. Runs that did not complete are reported as such; a
damaged run is skipped with a warning.

It also writes the seed bands back as TensorBoard data, which TensorBoard cannot draw from the runs
themselves: under `<out>/seed_bands/`, a run per configuration holding, for each of `BAND_TAGS` at
each step, the mean across seeds and its 95 % interval (`band/<tag>/mean`, `/low`, `/high`), and a
custom-scalars margin chart per tag, so a sweep's arms compare as bands rather than as a line per seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bnlab import formatting
from bnlab.analysis.aggregate import (
    Configuration,
    Stat,
    configurations,
    geometric_mean_profile,
    mean_interval,
    mean_series,
)
from bnlab.analysis.readback import RunData, load_runs
from bnlab.errors import BnlabError, ConfigError, RunFileError
from bnlab.telemetry import plots

METHOD = ("mean ± 95% confidence interval across seeds (Student t with n-1 degrees of freedom; no "
          "interval for a single seed). Gradient ratios and growth factors are geometric means (averaged in "
          "log space), their interval written ×/÷ a factor. A configuration's statistics use its completed "
          "runs; `partial` marks one with no completed run, whose numbers describe runs cut short.")
# Two tables, so each fits a terminal: (title, leading columns, [(header, statistic, number format)]);
# the statistic names are bnlab.analysis.aggregate's.
TABLES = (
    ("Outcome at the end of training", ("configuration", "n", "status"),
     (("loss/train", "loss/train", ".3g"), ("loss/test", "loss/test", ".3g"), ("acc/test", "acc/test", ".3f"),
      ("saturated", "act/saturated", ".2f"))),
    ("Vanishing gradient: grad_norm/output across the hidden layers", ("configuration",),
     (("first/last, init", "grad_ratio_first_last/init", ".2e"),
      ("first/last, end", "grad_ratio_first_last/final", ".2e"),
      ("growth/layer, init", "growth_factor/init", ".3g"),
      ("growth/layer, end", "growth_factor/final", ".3g"))),
)
BANDS_DIR = "seed_bands"
# (tag, chart title): the ratio in log10, so its band is the geometric mean's interval, as in the tables
BAND_TAGS = (("profile/log10_grad_ratio_first_last", "log10 first/last hidden-layer gradient ratio"),
             ("profile/growth_factor", "gradient growth per layer toward the input"),
             ("acc/test", "test accuracy"), ("loss/train", "training loss"), ("loss/test", "test loss"))
BANDS_CATEGORY = "seed bands: mean and 95% interval across seeds, one band per configuration"
NOT_DONE = {"running": "unfinished (status running: still training, or its process was killed)",
            "interrupted": "interrupted", "diverged": "diverged", "failed": "failed"}


@dataclass
class Report:
    out_dir: Path
    markdown: Path
    configurations: list[Configuration]
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG path
    bands: Path | None = None  # the TensorBoard runs of the seed bands
    captions: dict[str, str] = field(default_factory=dict)  # name -> what the figure shows
    notes: list[str] = field(default_factory=list)  # runs that did not complete, said plainly
    warnings: list[str] = field(default_factory=list)  # damaged runs skipped, missing layers

    @property
    def shared_overrides(self) -> list[str]:
        """Overrides every configuration has; the table's labels leave them out."""
        sets = [set(config.label.split()) for config in self.configurations]
        return sorted(set.intersection(*sets)) if len(sets) > 1 else []

    def short_label(self, config: Configuration) -> str:
        """The overrides that tell this configuration from the others."""
        shared = set(self.shared_overrides)
        return " ".join(o for o in config.label.split() if o not in shared) or config.label

    @property
    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """(title, headers, rows of text cells), a row per configuration; the terminal and report.md agree."""
        result = []
        for title, leading, columns in TABLES:
            rows = []
            for config in self.configurations:
                lead = {"configuration": self.short_label(config) + (" (partial)" if config.partial else ""),
                        "n": str(config.n), "status": status_text(config)}
                cells = [formatting.stat(config.stats.get(stat), spec, len(config.used))
                         for _, stat, spec in columns]
                rows.append([*(lead[name] for name in leading), *cells])
            result.append((title, [*leading, *(header for header, _, _ in columns)], rows))
        return result


def build_report(paths, out=None, layer: str | None = None) -> Report:
    """Read the runs at or under `paths`; write report.md and figures to `out` (default: beside them)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise BnlabError("bnlab report needs at least one run or sweep directory, "
                         "e.g. bnlab report runs/sweep/...")
    runs, warnings = load_runs(paths)
    if not runs:
        raise RunFileError(f"no readable run under {', '.join(map(str, paths))}: " + "; ".join(warnings))
    if layer is not None and not any(layer in run.hidden_layers for run in runs):
        have = sorted({name for run in runs for name in run.hidden_layers})
        raise ConfigError(f"--layer {layer} is not a hidden layer of these runs; they have "
                          f"{', '.join(have) or 'no recorded layers'}; leave --layer out for the last one")
    configs = configurations(runs)
    out_dir = Path(out) if out is not None else default_out_dir(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir, out_dir / "report.md", configs, notes=[_note(run) for run in runs if _note(run)],
                    warnings=warnings)
    _write_figures(report, layer)
    report.bands = write_bands(report)
    report.markdown.write_text(markdown(report, paths))
    return report


def default_out_dir(paths: list[Path]) -> Path:
    """The single input directory, or the common parent of several."""
    resolved = [p.resolve() for p in paths]
    return resolved[0] if len(resolved) == 1 else Path(os.path.commonpath(resolved))


def status_text(config: Configuration) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(config.statuses.items()))


def markdown(report: Report, inputs: list[Path]) -> str:
    runs = sum(config.n for config in report.configurations)
    lines = ["# bnlab report", "",
             f"{runs} runs in {len(report.configurations)} configurations, read from "
             + ", ".join(f"`{p}`" for p in inputs) + f" on {datetime.now():%Y-%m-%d %H:%M}.", "",
             f"Each cell: {METHOD}", "", "## Results",
             *(["", f"All configurations: `{' '.join(report.shared_overrides)}`."]
               if report.shared_overrides else [])]
    for title, headers, rows in report.tables:
        lines += ["", f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if report.notes:
        lines += ["", "## Runs that did not complete", "", *(f"- {note}" for note in report.notes)]
    if report.warnings:
        lines += ["", "## Skipped or incomplete", "", *(f"- {warning}" for warning in report.warnings)]
    lines += ["", "## Settings", "", "Configurations (their overrides, seed excluded): " + "; ".join(
        f"`{config.label}`" for config in report.configurations) + ".", "",
        "Shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in _shared_settings(report).items()) + "."]
    if report.bands is not None:
        lines += ["", "## Seed bands in TensorBoard", "", f"`bnlab tb {report.out_dir}`, tab Custom Scalars: each "
                  f"configuration's mean across seeds and its 95% interval over training, as a band (runs "
                  f"`{BANDS_DIR}/...`)."]
    lines += ["", "## Figures", ""]
    for name, path in report.figures.items():
        relative = os.path.relpath(path, report.out_dir)
        lines += [f"### {report.captions[name]}", "", f"![{name}]({relative})", ""]
    return "\n".join(lines) + "\n"


def headline(report: Report) -> str:
    """One line: how many runs and configurations, what they share, what a cell means."""
    shared = f" · all with {' '.join(report.shared_overrides)}" if report.shared_overrides else ""
    runs = sum(config.n for config in report.configurations)
    return (f"{runs} runs in {len(report.configurations)} configurations{shared}"
            " · each cell: mean ± 95% CI across seeds (ratios and growth: geometric mean ×/÷ factor)")


def _write_figures(report: Report, layer: str | None) -> None:
    """The four figures, each drawn by bnlab.telemetry.plots from the configurations' seed means."""
    configs, label = report.configurations, report.short_label
    colors = {config.label: f"C{index % 10}" for index, config in enumerate(configs)}

    lines = []
    for config in configs:
        init = geometric_mean_profile(config.used, "grad_norm/output", 0)
        end = geometric_mean_profile(config.used, "grad_norm/output")
        lines += [plots.ProfileLine(init, None, colors[config.label], initial=True),
                  plots.ProfileLine(end, label(config), colors[config.label])]
    title = "gradient across depth · dashed: initialization (step 0), solid: end"
    _save(report, "gradients_by_depth", plots.profiles_figure(lines, "‖∂L/∂(layer output)‖", title),
          "Back-propagated gradient ‖∂L/∂(layer output)‖ across depth: dashed at initialization, solid at "
          "the end (geometric mean over seeds)")

    bands = []
    for config in configs:
        chosen = layer or config.last_hidden_layer
        series = {name: dict(mean_series(config.used, f"preact/{name}/{chosen}")) for name in plots.BAND}
        steps = sorted(series["p50"])
        if not steps:
            report.warnings.append(f"{config.label}: no preactivation record of {chosen}; "
                                   "its Figure-1 panel is empty")
        p15, p50, p85 = ([series[name].get(step) for step in steps] for name in plots.BAND)
        bands.append(plots.Band(f"{label(config)} · {chosen}", steps, p15, p50, p85))
    name = layer or _common({config.last_hidden_layer for config in configs}, "last_hidden")
    _save(report, f"percentiles_{name}", plots.bands_figure(bands, "preactivation percentiles over training"),
          "Preactivation percentiles (p15, p50, p85) of one hidden layer over training, as in Ioffe & "
          "Szegedy (2015), Figure 1 (mean over seeds)")

    accuracy = [(label(config), *_unzip(mean_series(config.used, "acc/test"))) for config in configs]
    figure = plots.lines_figure(accuracy, "test accuracy", "test accuracy (mean over seeds)")
    _save(report, "accuracy", figure,
          "Test accuracy over training (mean over seeds)")

    panels = []
    for config in configs:
        layers = max((run.hidden_layers for run in config.used), key=len, default=[])
        series = [dict(mean_series(config.used, f"act/saturated/{name}")) for name in layers]
        steps = sorted({step for points in series for step in points})
        matrix = [[points.get(step, float("nan")) for step in steps] for points in series]  # (layers, steps)
        panels.append((label(config), steps, matrix))
    figure = plots.heatmaps_figure(panels, "saturated fraction", "saturated units per layer")
    _save(report, "saturation", figure,
          "Fraction of saturated units per hidden layer over training (mean over seeds)")


def band_series(runs: list[RunData], tag: str) -> list[tuple[int, Stat]]:
    """`tag` at each step: the mean across `runs` and its 95% interval (none for one run)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in run.series(tag):
            by_step.setdefault(step, []).append(value)
    return [(step, stat) for step, values in sorted(by_step.items()) if (stat := mean_interval(values))]


def write_bands(report: Report) -> Path | None:
    """The seed bands as TensorBoard runs under `<out>/seed_bands/`, one per configuration (see the module)."""
    from bnlab.telemetry.writer import RunWriter

    root = report.out_dir / BANDS_DIR
    for stale in root.glob("*/events.out.tfevents.*"):  # this report's own earlier output
        stale.unlink()
    charts = {title: tuple(f"band/{tag}/{part}" for part in ("mean", "low", "high")) for tag, title in BAND_TAGS}
    written = False
    for config in report.configurations:
        steps: dict[int, dict[str, float]] = {}
        for tag, _ in BAND_TAGS:
            for step, stat in band_series(config.used, tag):
                low, high = (stat.mean, stat.mean) if stat.low is None else (stat.low, stat.high)
                steps.setdefault(step, {}).update(
                    {f"band/{tag}/mean": stat.mean, f"band/{tag}/low": low, f"band/{tag}/high": high})
        if not steps:
            continue
        writer = RunWriter(root / _run_name(report.short_label(config)))
        for step, values in sorted(steps.items()):
            writer.scalars(step, values)
        writer.bands_layout(BANDS_CATEGORY, charts)
        writer.close()
        written = True
    return root if written else None


def _run_name(label: str) -> str:
    """A configuration's label as one directory name: TensorBoard's name of its band run."""
    return label.replace("/", "_").replace(" ", ",")


def _save(report: Report, name: str, figure, caption: str) -> None:
    path = report.out_dir / f"{name}.png"
    plots.save(figure, path)
    report.figures[name] = path
    report.captions[name] = caption


def _note(run: RunData) -> str | None:
    status = run.status
    if status == "completed":
        return None
    total = run.summary.get("total_steps", "?")
    if status == "running":  # summary.json is rewritten only at the end: the event files say how far it got
        at = f"records through step {run.last_step} of steps 0-{total - 1 if isinstance(total, int) else total}"
    else:
        at = f"at step {run.summary.get('steps', '?')}/{total}"
    where = f"`{run.path}` ({run.label}, seed {run.seed}): {NOT_DONE.get(status, status)}, {at}"
    if status == "diverged":
        where += f"; loss or gradient NaN/Inf at step {run.summary.get('diverged_at')}"
    if status == "interrupted":
        where += f"; continue it with `bnlab train resume={run.path}`"
    if status == "failed":
        where += f"; {run.summary.get('error')}"
    return where


def _shared_settings(report: Report) -> dict[str, object]:
    """Config keys (section.key) with one value across all runs, seed excluded."""
    flat = [_flatten(run.config) for config in report.configurations for run in config.runs]
    keys = set.intersection(*(set(f) for f in flat)) if flat else set()
    return {key: flat[0][key] for key in sorted(keys)
            if key != "train.seed" and all(f[key] == flat[0][key] for f in flat)}


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _common(values: set, otherwise: str) -> str:
    return next(iter(values)) if len(values) == 1 and None not in values else otherwise


def _unzip(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [step for step, _ in points], [value for _, value in points]
