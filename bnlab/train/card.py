"""The run card: a run's outcome as markdown, written as the TensorBoard text `run_card`.

It is built from the same record that becomes summary.json, and numbers are written
as Python writes them into JSON (the shortest exact decimal), so the card and
summary.json agree digit for digit. A value summary.json holds as null (NaN, Inf)
reads `n/a` here.
"""

from __future__ import annotations

import math

FINAL_METRICS = ("loss/train", "loss/test", "acc/test")
FIGURE_ROWS = (("first-to-last hidden-layer gradient ratio", "grad_ratio_first_last"),
               ("per-layer growth factor toward the input", "growth_factor"))


def exact(value) -> str:
    """A number as summary.json holds it (repr, the shortest exact decimal), or n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return repr(value)


def run_card(record: dict) -> str:
    """Markdown for a run's record (the dict written to summary.json)."""
    status = record.get("status", "?")
    lines = [f"**{status}** after {record.get('steps', '?')}/{record.get('total_steps', '?')} steps "
             f"(seed {record.get('seed', '?')})", ""]
    if record.get("diverged_at") is not None:
        lines += [f"The loss or a gradient became NaN/Inf at step {record['diverged_at']}.", ""]
    if record.get("error"):
        lines += [f"Error: `{record['error']}`", ""]
    overrides = " ".join(record.get("overrides") or []) or "(defaults)"
    lines += [f"Overrides: `{overrides}`", "", "| final metric | value |", "|---|---|"]
    metrics = record.get("metrics") or {}
    lines += [f"| {name} | {exact(metrics.get(name))} |" for name in FINAL_METRICS]
    figures = record.get("figures") or {}
    lines += ["", "| vanishing-gradient figure (grad_norm/output) | at step 0 | at the end |",
              "|---|---|---|"]
    lines += [f"| {text} | {exact(figures.get(f'{key}/init'))} | {exact(figures.get(f'{key}/final'))} |"
              for text, key in FIGURE_ROWS]
    lines += ["", "Ratio < 1 and growth factor < 1: the gradient shrinks toward the input (vanishing)."]
    return "\n".join(lines)
