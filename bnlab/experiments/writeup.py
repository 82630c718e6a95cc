"""What `bnlab reproduce` writes and prints: reproduce.md, the terminal's verdict table, `--list`.

reproduce.md holds the verdict table (claim, what the paper reports, what this run measured, outcome), the
thresholds with their sources, the measurement tables, the deviations from the paper as the settings that
actually ran, the settings and equivalent `bnlab train` commands, the figures and where to look deeper.
"""

from __future__ import annotations

import os
from datetime import datetime

from bnlab import formatting
from bnlab.experiments.crosscheck import THRESHOLDS as CROSS_CHECK_THRESHOLDS
from bnlab.experiments.experiment import Experiment, Reproduction
from bnlab.experiments.verdict import NOT_APPLICABLE, Claim

OUTCOME_STYLE = {"held": "green", "partly": "yellow", "not held": "red", "not measured": "dim", "incomplete": "dim",
                 NOT_APPLICABLE: "dim"}
QUICK_NOTE = ("--quick: a reduced sweep that measures the same quantities; checks whose thresholds need the full "
              "size are not applicable, and this verdict is not the full-size experiment's")
LEGEND = ("Each check: ✓ passed, ✗ failed, ? not measured, – not applicable at the size that ran (its threshold "
          "needs e.g. a deeper network or a longer budget). A claim is judged on its applicable checks: held when "
          "every one passed, not held when none did, partly otherwise; incomplete when one of them was not "
          "measured, not measured when none was. Numbers are means across seeds ± 95% interval (ratios and growth "
          "factors: geometric mean ×/÷ factor). The thresholds, each with its source, are fixed in the "
          "experiment's module, `bnlab/experiments/{name}.py`, before the full-size runs.")


def outcome(claim: Claim, quick: bool) -> str:
    """The claim's outcome as printed: with the count of checks that did not apply, and the quick mark."""
    text = claim.outcome
    if text == NOT_APPLICABLE:
        return sized(text, quick)
    skipped = len(claim.checks) - len(claim.applicable)
    if skipped:
        text += f" ({skipped} of {len(claim.checks)} checks not applicable)"
    return text + (" · --quick" if quick else "")


def sized(text: str, quick: bool) -> str:
    """A check's text as printed: at quick size, its "not applicable" says so."""
    return text.replace("at this size", "at quick size") if quick else text


def markdown(result: Reproduction) -> str:
    experiment, verdict = result.experiment, result.verdict
    command = " ".join(["bnlab reproduce", experiment.name, *(["--quick"] if result.quick else []),
                        *result.overrides])
    lines = [f"# bnlab reproduce {experiment.name}", "",
             f"{experiment.paper[:1].upper()}{experiment.paper[1:]}: {experiment.claim}.", "",
             f"Command: `{command}`{f' ({QUICK_NOTE})' if result.quick else ''}. {len(result.runs)} runs, "
             f"{result.seconds:.0f} s to plan and run them (expected at full size on a 2-core CPU: about "
             f"{experiment.minutes:g} min), written {datetime.now():%Y-%m-%d %H:%M}.", "",
             "## Verdict", "", "| claim | the paper reports | this run measured | verdict |", "|---|---|---|---|"]
    for claim in verdict.claims:
        measured = "<br>".join(_cell(sized(check.text, result.quick)) for check in claim.checks)
        lines.append(f"| {_cell(claim.claim)} | {_cell(claim.paper)} | {measured} | "
                     f"**{outcome(claim, result.quick)}** |")
    lines += ["", LEGEND.format(name=experiment.name), "", "### Thresholds and their sources", "",
              "| what | test | source | why this value |", "|---|---|---|---|"]
    for what, threshold in _thresholds(experiment).items():
        needs = "; ".join(f"applies from {key} = {formatting.number(value, 'g')}" for key, value in threshold.needs)
        lines.append(f"| {_cell(what)} | {_cell(threshold.test)} | {threshold.source} | "
                     f"{_cell(threshold.basis)}{f' ({needs})' if needs else ''} |")
    for table in verdict.tables:
        lines += ["", f"### {table.title}", "", "| " + " | ".join(table.headers) + " |",
                  "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in table.rows]
    lines += ["", "## Deviations from the paper", "",
              *(f"- {text}" for text in [*result.deviations, *experiment.deviations(result.parts)])]
    if result.quick:
        quick = "; ".join(f"{part.name}: `{' '.join(part.quick)}`" for part in experiment.parts if part.quick)
        lines.append(f"- `--quick` ran a reduced sweep ({quick}); its verdict is not the experiment's.")
    if result.overrides:
        lines.append(f"- Overrides given on the command line: `{' '.join(result.overrides)}`.")
    lines += [*(f"- {note}" for note in verdict.notes), "", "## Settings", ""]
    for part in experiment.parts:
        shared, varied = settings(result.parts.get(part.name, []))
        lines += [f"**{part.name}**" + (f" (norm=torch cross-check of {part.cross_check_of})"
                                         if part.cross_check_of else "") + f": `{result.commands.get(part.name)}`",
                  "", f"- varied: {', '.join(f'`{k}`: {v}' for k, v in varied.items()) or 'nothing'}",
                  f"- shared: {', '.join(f'`{k}={v}`' for k, v in shared.items())}", ""]
    problems = [*result.not_completed, *result.warnings]
    if problems:
        lines += ["## Runs that did not complete, and warnings", "", *(f"- {text}" for text in problems), ""]
    lines += ["## Figures", ""]
    for name, (path, caption) in result.figures.items():
        lines += [f"### {caption}", "", f"![{name}]({os.path.relpath(path, result.directory)})", ""]
    lines += ["## Look deeper", "", f"- `bnlab tb {result.directory}` (TensorBoard on every run: scalars, "
              "profiles, Figure-1 images, HParams)",
              *(f"- `bnlab report {result.directory / part.name}`" for part in experiment.parts)]
    return "\n".join(lines) + "\n"


def _thresholds(experiment: Experiment) -> dict:
    cross_checked = any(part.cross_check_of for part in experiment.parts)
    return {**experiment.thresholds, **(CROSS_CHECK_THRESHOLDS if cross_checked else {})}


def settings(runs) -> tuple[dict, dict]:
    """(config keys with one value across `runs`, keys that vary -> their sorted values), seed included."""
    flat = [_flatten(run.config) for run in runs]
    keys = sorted(set().union(*flat)) if flat else []
    shared, varied = {}, {}
    for key in keys:
        values = {repr(f.get(key)) for f in flat}
        if len(values) == 1:
            shared[key] = flat[0].get(key)
        else:
            varied[key] = ", ".join(sorted(values, key=lambda v: (len(v), v)))
    return shared, varied


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif key != "resume":
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
