"""The run card: a run's outcome as markdown, written as the TensorBoard text `run_card`.

It is built from the same record that becomes summary.json, with the numbers rounded as people read
them (`bnlab.formatting.rounded`): summary.json keeps every digit. A value summary.json holds as null
(NaN, Inf) reads `n/a`. The card leads with the outcome and the figures; the run's overrides come last,
and the whole config is the separate text `config`, one line per section (`config_text`): TensorBoard
lists its text tags alphabetically, so `config` comes before `run_card`, and a config of a few lines
keeps the card on the first screen.
"""

from __future__ import annotations

import yaml

from bnlab.formatting import rounded

FINAL_METRICS = ("loss/train", "loss/test", "acc/test")
METRIC_DIGITS = ".4g"
FIGURE_DIGITS = ".3g"
FIGURE_ROWS = (("first-to-last hidden-layer gradient ratio", "grad_ratio_first_last"),
               ("per-layer growth factor toward the input", "growth_factor"))


def run_card(record: dict) -> str:
    """Markdown for a run's record (the dict written to summary.json)."""
    status = record.get("status", "?")
    lines = [f"**{status}** after {record.get('steps', '?')}/{record.get('total_steps', '?')} steps "
             f"(seed {record.get('seed', '?')})", ""]
    if record.get("diverged_at") is not None:
        lines += [f"The loss or a gradient became NaN/Inf at step {record['diverged_at']}.", ""]
    if record.get("error"):
        lines += [f"Error: `{record['error']}`", ""]
    metrics = record.get("metrics") or {}
    lines += ["| final metric | value |", "|---|---|"]
    lines += [f"| {name} | {rounded(metrics.get(name), METRIC_DIGITS)} |" for name in FINAL_METRICS]
    figures = record.get("figures") or {}
    lines += ["", "| vanishing-gradient figure (grad_norm/output) | at step 0 | at the end |",
              "|---|---|---|"]
    lines += [f"| {text} | {rounded(figures.get(f'{key}/init'), FIGURE_DIGITS)} | "
              f"{rounded(figures.get(f'{key}/final'), FIGURE_DIGITS)} |" for text, key in FIGURE_ROWS]
    lines += ["", "Ratio < 1 and growth factor < 1: the gradient shrinks toward the input (vanishing)."]
    overrides = " ".join(record.get("overrides") or []) or "(defaults)"
    lines += ["", f"Overrides: `{overrides}` (every setting: the text `config`; every digit: summary.json)"]
    return "\n".join(lines)


def config_text(config: dict) -> str:
    """The run's config as markdown: a YAML block of one line per section ('model: {name: mlp, depth: 20, ...}')."""
    # default_flow_style=None: a mapping of plain values (a section) on one line, the top level a line each
    return "```yaml\n" + yaml.safe_dump(config, default_flow_style=None, sort_keys=False, width=10_000) + "```"
