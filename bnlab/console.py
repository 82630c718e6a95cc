"""What the terminal shows after training: a run's one-line summary, a sweep's table of jobs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bnlab.analysis.runs import find_runs
from bnlab.formatting import number

STATUS_STYLE = {"completed": "green", "diverged": "yellow", "interrupted": "yellow", "failed": "red",
                "running": "cyan", "damaged": "red"}
EXIT_CODES = {"completed": 0, "diverged": 0, "interrupted": 130, "failed": 1}


def one_line(summary: dict) -> str:
    metrics, figures = summary.get("metrics", {}), summary.get("figures", {})
    parts = [f"{summary['status']} after {summary['steps']}/{summary.get('total_steps', '?')} steps",
             f"loss {number(metrics.get('loss/train'))}", f"test acc {number(metrics.get('acc/test'), '.3f')}"]
    if summary.get("skipped_steps"):
        parts.append(f"{summary['skipped_steps']} steps skipped (loss or gradient not finite)")
    if figures:
        parts.append("grad ratio first/last hidden "
                     f"{number(figures.get('grad_ratio_first_last/init'), '.2e')} at init, "
                     f"{number(figures.get('grad_ratio_first_last/final'), '.2e')} at end")
    return " · ".join(parts)


def print_run_result(console: Console, errors: Console, result) -> int:
    from bnlab.train import summary

    record = summary.read(result.run_dir)
    style = STATUS_STYLE.get(record["status"], "white")
    console.print(f"[{style}]{one_line(record)}[/]", highlight=False)
    console.print(f"run directory: [bold]{result.run_dir}[/]", highlight=False)
    if record["status"] == "diverged":
        errors.print(f"[yellow]warning:[/] the loss or a gradient became NaN/Inf at step {record['diverged_at']}; "
                     "the run stopped there (status diverged, telemetry kept)", highlight=False)
    elif record.get("skipped_steps"):
        errors.print(f"[yellow]warning:[/] {record['skipped_steps']} of {record['steps']} steps were skipped: "
                     f"the loss or a gradient was NaN/Inf (first at step {record['diverged_at']}; "
                     "train.on_divergence=continue)", highlight=False, soft_wrap=True)
    if record["status"] == "failed":
        errors.print(f"[bold red]error:[/] run failed: {escape(str(record['error']))} (traceback in "
                     f"{escape(str(Path(result.run_dir) / 'train.log'))})", highlight=False, soft_wrap=True)
    console.print(f"look at it: [bold]bnlab tb {result.run_dir}[/]", highlight=False)
    return EXIT_CODES.get(record["status"], 1)


def print_sweep(console: Console, sweep_dir: Path) -> int:
    """A table of every job of the sweep and its status; exit 1 if any job failed."""
    runs = sorted(find_runs(sweep_dir), key=lambda run: run.path.name)
    shared = set.intersection(*(set(run.overrides) for run in runs))
    table = Table(title=f"sweep {sweep_dir} (all jobs: {' '.join(sorted(shared)) or 'defaults'})",
                  title_justify="left")
    failed = any(run.status in ("failed", "damaged") for run in runs)
    for column in ("job", "status", "steps", "loss/train", "acc/test", "grad ratio@init", "grad ratio@end",
                   *(("why (log)",) if failed else ())):
        table.add_column(column, justify="left" if column in ("job", "status", "why (log)") else "right",
                         overflow="fold")
    for run in runs:
        metrics, figures = run.summary.get("metrics", {}), run.summary.get("figures", {})
        style = STATUS_STYLE.get(run.status, "white")
        varied = " ".join(o for o in run.overrides if o not in shared) or run.path.name
        why = _why(run) if run.status in ("failed", "damaged") else ""
        table.add_row(varied, f"[{style}]{run.status}[/]", str(run.summary.get("steps", "-")),
                      number(metrics.get("loss/train")), number(metrics.get("acc/test"), ".3f"),
                      number(figures.get("grad_ratio_first_last/init"), ".2e"),
                      number(figures.get("grad_ratio_first_last/final"), ".2e"), *((why,) if failed else ()))
    console.print(table)
    console.print(f"compare them: [bold]bnlab report {sweep_dir}[/]   look: [bold]bnlab tb {sweep_dir}[/]",
                  highlight=False)
    if any(run.status == "interrupted" for run in runs):
        return 130
    return 1 if any(run.status in ("failed", "damaged") for run in runs) else 0


def _why(run) -> str:
    """A failed job's reason (the first line of its error) and where its log with the traceback is."""
    reason = run.error or (run.summary.get("error") or "no reason recorded").splitlines()[0]
    return escape(f"{reason} ({run.path / 'train.log'})")


def print_bench(console: Console, rows, machine: str) -> None:
    """One benchmark's rows: the figure, the target, pass or fall short, and the machine."""
    table = Table(title=f"bnlab bench {rows[0].group}" if rows else "bnlab bench", title_justify="left",
                  caption=machine, caption_justify="left")
    for column in ("measure", "figure", "target", "result", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        result = "[green]pass[/]" if row.passed else "[red]falls short[/]"
        table.add_row(row.name, f"{row.figure:.3g} {row.unit}", row.target, result, row.detail)
    console.print(table)
