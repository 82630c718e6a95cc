"""What the terminal shows around training: a run's result, a sweep's or a folder's runs, an interruption.

Everything here fits an 80-column terminal without breaking a word: a listing puts each run's numbers on
one line of fixed columns, and its overrides and its directory on lines of their own. A directory is
printed whole, on one line (the terminal may wrap it, but copying it gives the whole path back).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from bnlab.formatting import number

STATUS_STYLE = {"completed": "green", "diverged": "yellow", "interrupted": "yellow", "failed": "red",
                "running": "cyan", "damaged": "red"}
EXIT_CODES = {"completed": 0, "diverged": 0, "interrupted": 130, "failed": 1}
# A listing's line of numbers: (header, width, right-aligned); 3 + 13 + 12 + 13 + 7 + 7 + 19 = 74 columns.
COLUMNS = (("#", 3, True), ("started", 13, False), ("status", 12, False), ("steps", 13, False),
           ("loss", 7, True), ("acc", 7, True), ("grad ratio init → end", 19, True))


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


def train(console: Console, errors: Console, launch) -> int:
    """Run `launch` (bnlab.config.launch.plan), a sweep on one progress line; print what came of it."""
    from bnlab.config import app
    from bnlab.config.launch import run_hydra
    from bnlab.train.progress import SweepProgress

    if launch.note:
        errors.print(f"[yellow]note:[/] {escape(launch.note)}", highlight=False, soft_wrap=True)
    sweep = SweepProgress(launch.jobs, console) if launch.multirun and not launch.inspect_only else None
    try:
        results = run_hydra(launch, sweep)
    except KeyboardInterrupt:
        if sweep is not None:
            sweep.stop()
        done = [result for result in app.RESULTS if hasattr(result, "run_dir")]
        return print_interrupted(console, errors, launch.sweep_dir or launch.run_dir, done[-1:],
                                 "sweep" if launch.multirun else "run")
    if sweep is not None:
        sweep.stop()
    if launch.inspect_only:
        return 0
    if launch.multirun:
        code = print_sweep(console, launch.sweep_dir)
        for error in launch.errors:  # jobs that could not run at all, e.g. a resume that failed to load
            errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return code or int(bool(launch.errors))
    return print_run_result(console, errors, results[-1]) if results else 1


def print_run_result(console: Console, errors: Console, result) -> int:
    from bnlab.train import summary

    record = summary.read(result.run_dir)
    style = STATUS_STYLE.get(record["status"], "white")
    console.print(f"[{style}]{one_line(record)}[/]", highlight=False)
    console.print(f"run directory: [bold]{escape(str(result.run_dir))}[/]", highlight=False, soft_wrap=True)
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
    if record["status"] == "interrupted":
        return print_interrupted(console, errors, result.run_dir, [result])
    console.print(f"look at it: [bold]bnlab tb {escape(str(result.run_dir))}[/]", highlight=False, soft_wrap=True)
    return EXIT_CODES.get(record["status"], 1)


def print_interrupted(console: Console, errors: Console, directory: Path | None, results: list,
                      kind: str = "run") -> int:
    """Where the stopped run or sweep (`kind`) is, and the exact command that continues it; exit code 130."""
    at = f" after {results[-1].steps} steps" if results else ""
    errors.print(f"[yellow]interrupted[/]{at}; the last checkpoint is kept", highlight=False)
    if directory is not None:
        console.print(f"{kind} directory: [bold]{escape(str(directory))}[/]", highlight=False, soft_wrap=True)
        console.print(f"continue it: [bold]bnlab train resume={escape(str(directory))}[/]", highlight=False,
                      soft_wrap=True)
    return 130


def print_sweep(console: Console, sweep_dir: Path) -> int:
    """Every job of the sweep and its status; exit 1 if any job failed, 130 if one was interrupted."""
    from bnlab.analysis.runs import find_runs

    runs = sorted(find_runs(sweep_dir), key=lambda run: run.path.name)
    shared = set.intersection(*(set(run.overrides) for run in runs))
    console.print(f"sweep of {len(runs)} jobs, all with: {' '.join(sorted(shared)) or '(defaults)'}",
                  highlight=False)
    console.print(f"[bold]{escape(str(sweep_dir))}[/]", highlight=False, soft_wrap=True)
    print_listing(console, runs, lambda run: " ".join(o for o in run.overrides if o not in shared))
    console.print(f"compare them: [bold]bnlab report {escape(str(sweep_dir))}[/]", highlight=False, soft_wrap=True)
    console.print(f"look: [bold]bnlab tb {escape(str(sweep_dir))}[/]", highlight=False, soft_wrap=True)
    if any(run.status == "interrupted" for run in runs):
        return 130
    return 1 if any(run.status in ("failed", "damaged") for run in runs) else 0


def print_runs(console: Console, runs: list, root: Path) -> None:
    """`bnlab runs`: the runs under `root`, newest first."""
    console.print(f"{len(runs)} runs under {escape(str(root))}, newest first", highlight=False, soft_wrap=True)
    print_listing(console, runs, lambda run: " ".join(o for o in run.overrides if not o.startswith("hydra")))


def print_listing(console: Console, runs: list, label) -> None:
    """Each run (a bnlab.analysis.runs.RunInfo) as three lines: its numbers in fixed columns, what it
    varied (`label(run)`), and its whole directory."""
    console.print(_columns([header for header, _, _ in COLUMNS]), style="bold", highlight=False)
    for index, run in enumerate(runs, start=1):
        metrics, figures = run.summary.get("metrics") or {}, run.summary.get("figures") or {}
        # A running run's summary.json says how far it got at its last checkpoint (also after a kill -9).
        done = run.summary.get("steps", "-")
        steps = f"{done}/{run.summary.get('total_steps', '-')}" if run.summary else "-"
        ratio = (f"{number(figures.get('grad_ratio_first_last/init'), '.1e')} → "
                 f"{number(figures.get('grad_ratio_first_last/final'), '.1e')}") if figures else "-"
        cells = [str(index), f"{run.started:%m-%d %H:%M}", run.status, steps,
                 number(metrics.get("loss/train"), ".3g"), number(metrics.get("acc/test"), ".3f"), ratio]
        line = _columns(cells).replace(run.status, f"[{STATUS_STYLE.get(run.status, 'white')}]{run.status}[/]", 1)
        console.print(line, highlight=False)
        what = f"damaged: {run.error}" if run.error is not None else (label(run) or "(defaults)")
        console.print(Padding(Text(what), (0, 0, 0, 4)))
        console.print(f"    [dim]{escape(_shown_path(run.path))}[/]", highlight=False, soft_wrap=True)
        if run.status == "failed":  # why, and where the traceback is
            console.print(f"    [red]why:[/] {_why(run)}", highlight=False, soft_wrap=True)


def _columns(cells: list[str]) -> str:
    return "".join(f"{cell:>{width - 1}} " if right else f"{cell:<{width}}"
                   for cell, (_, width, right) in zip(cells, COLUMNS, strict=True)).rstrip()


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies under it (shorter, and as copyable), else whole."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def print_table(console: Console, headers: list[str], rows: list[list[str]], *, title: str | None = None,
                right: tuple[str, ...] = (), key: str | None = None, show_lines: bool = False,
                compact: bool = False) -> None:
    """A table that breaks its cells between words only: no column narrower than its longest word, the
    space left shared by the columns whose text wraps. When the words alone are too wide for the terminal,
    the `key` column's cells (e.g. a configuration's overrides) become numbers, spelled out below the table.
    `compact`: no vertical rules (for tables of many numbers). `rows` are text (rich markup allowed)."""
    from rich import box
    from rich.table import Column

    style = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False} if compact else {}
    overhead = 3 * len(headers) - 3 if compact else 3 * len(headers) + 1  # rules and padding around the cells
    legend = []
    widths = _widths(headers, rows, console.width - overhead)
    if widths is None and key is not None:
        index = headers.index(key)
        legend = [row[index] for row in rows]
        rows = [[*row[:index], str(position), *row[index + 1:]] for position, row in enumerate(rows, start=1)]
        headers = [*headers[:index], "#", *headers[index + 1:]]
        widths = _widths(headers, rows, console.width - overhead)
    columns = [Column(header, justify="right" if header in right else "left", width=width)
               for header, width in zip(headers, widths or [None] * len(headers), strict=True)]
    table = Table(*columns, title=title, title_justify="left", show_lines=show_lines, **style)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if legend:  # what the numbers stand for: a number, then its text wrapped between words
        grid = Table.grid(Column(justify="right", width=3), Column(), padding=(0, 2))
        for index, text in enumerate(legend, start=1):
            grid.add_row(str(index), text)
        console.print(grid)


def _widths(headers: list[str], rows: list[list[str]], room: int) -> list[int] | None:
    """Column widths that add up to at most `room`: each column its longest word at least, then the spare
    room shared out among the columns whose text is longer; None when the words alone do not fit."""
    from rich.cells import cell_len

    columns = list(zip(headers, *rows, strict=True))
    lines = [[line for cell in column for line in Text.from_markup(cell).plain.splitlines()] for column in columns]
    shortest = [max((cell_len(word) for line in column for word in line.split()), default=1) for column in lines]
    natural = [max((cell_len(line) for line in column), default=1) for column in lines]
    spare = room - sum(shortest)
    if spare < 0:
        return None
    # the spare room in proportion to each column's amount of text, none beyond its longest line: the
    # columns that say the most wrap the least
    amount = [sum(cell_len(line) for line in column) for column in lines]
    widths = list(shortest)
    wanting = [i for i in range(len(widths)) if widths[i] < natural[i]]
    while spare > 0 and wanting:
        total = sum(amount[i] for i in wanting) or 1
        gains = {i: min(max(spare * amount[i] // total, 0), natural[i] - widths[i]) for i in wanting}
        if not any(gains.values()):
            gains = {max(wanting, key=lambda i: amount[i]): 1}
        for i, gain in gains.items():
            widths[i] += gain
            spare -= gain
        wanting = [i for i in wanting if widths[i] < natural[i]]
    return widths


def print_report(console: Console, errors: Console, report) -> None:
    """`bnlab report`: what the cells mean, the tables, the runs that did not complete, what was written."""
    from bnlab.analysis.report import headline

    console.print(headline(report), highlight=False)
    worst = [next((status for status in ("failed", "diverged", "interrupted", "running") if config.statuses[status]),
                  "completed") for config in report.configurations]
    for title, headers, rows in report.tables:
        rows = [[escape(cell) for cell in row] for row in rows]
        if "status" in headers:
            index = headers.index("status")
            rows = [[*row[:index], f"[{STATUS_STYLE[status]}]{row[index]}[/]", *row[index + 1:]]
                    for row, status in zip(rows, worst, strict=True)]
        print_table(console, headers, rows, title=title, key="configuration", compact=True,
                    right=tuple(header for header in headers if header not in ("configuration", "status")))
    for note in report.notes:
        console.print(f"[yellow]not completed:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for warning in report.warnings:
        errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{escape(str(report.markdown))}[/] and {len(report.figures)} figures to "
                  f"{escape(str(report.out_dir))}", highlight=False, soft_wrap=True)
    if report.bands is not None:
        console.print(f"seed bands in TensorBoard (Custom Scalars): [bold]bnlab tb {escape(str(report.out_dir))}[/]",
                      highlight=False, soft_wrap=True)


def print_reproduction(console: Console, errors: Console, result) -> int:
    """`bnlab reproduce NAME`: the verdict table and where everything went; 1 if a run failed. A --quick
    verdict says so in the title and in every outcome."""
    from bnlab.experiments.writeup import OUTCOME_STYLE, QUICK_NOTE, outcome, sized

    rows = [[escape(claim.claim), escape(claim.paper),
             escape("\n".join(sized(check.text, result.quick) for check in claim.checks)),
             f"[bold {OUTCOME_STYLE.get(claim.outcome, 'white')}]{escape(outcome(claim, result.quick))}[/]"]
            for claim in result.verdict.claims]
    title = f"bnlab reproduce {result.experiment.name}" + (f"  [bold yellow]{QUICK_NOTE}[/]" if result.quick else "")
    print_table(console, ["claim", "the paper reports", "this run measured", "verdict"], rows, title=title,
                show_lines=True)
    for note in result.not_completed:
        console.print(f"[yellow]not completed:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for warning in result.warnings:
        errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{escape(str(result.markdown))}[/] and {len(result.figures)} figures "
                  f"({result.seconds:.0f} s to plan and run)", highlight=False, soft_wrap=True)
    console.print(f"look deeper: [bold]bnlab tb {escape(str(result.directory))}[/]", highlight=False, soft_wrap=True)
    return 1 if any(run.status == "failed" for run in result.runs) else 0


def print_experiments(console: Console) -> None:
    """`bnlab reproduce --list`: each experiment, its paper, its claim and its expected run times."""
    from bnlab.experiments.catalog import EXPERIMENTS

    # the paper heads its claim in one column: four columns of whole words fit 80 characters, five do not
    rows = [[f"[bold]{experiment.name}[/]", f"[italic]{escape(experiment.paper)}[/]: {escape(experiment.claim)}",
             f"~{experiment.minutes:g} min", f"~{experiment.quick_seconds:g} s"] for experiment in EXPERIMENTS.values()]
    print_table(console, ["name", "paper: claim", "full size", "--quick"], rows,
                title="bnlab reproduce NAME [--quick] [OVERRIDES...]   (times on a 2-core CPU)", show_lines=True)


def _why(run) -> str:
    """A failed job's reason (the first line of its error) and where its log with the traceback is."""
    reason = run.error or (run.summary.get("error") or "no reason recorded").splitlines()[0]
    return escape(f"{reason} ({run.path / 'train.log'})")


def print_bench(console: Console, rows, machine: str) -> None:
    """One benchmark's rows: the figure, the target, pass or fall short, and the machine."""
    cells = [[escape(row.name), f"{row.figure:.3g} {row.unit}", escape(row.target),
              "[green]pass[/]" if row.passed else "[red]falls short[/]", escape(row.detail)] for row in rows]
    print_table(console, ["measure", "figure", "target", "result", "detail"], cells,
                title=f"bnlab bench {rows[0].group}" if rows else "bnlab bench")
    console.print(machine, highlight=False)


def config_keys_help() -> str:
    """Every config key, read from the schema (bnlab.config.schema), and each group's choices, read from the
    config folders: what `bnlab train --help` ends with, so the list cannot fall behind the schema."""
    import dataclasses
    import importlib.util
    import typing

    from bnlab.config.overrides import group_options
    from bnlab.config.schema import Config

    config_dir = importlib.util.find_spec("bnlab.conf").submodule_search_locations[0]
    paragraphs = ["[bold]Config groups[/] (GROUP=CHOICE): " + " · ".join(
        f"{group}: {', '.join(group_options(config_dir, group))}"
        for group in ("model", "norm", "data", "optim", "experiment"))]
    paragraphs.append("[bold]Config keys[/] (KEY=VALUE; [bold]bnlab show-config OVERRIDES...[/] prints the values):")
    for name, kind in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(kind):
            paragraphs.append(" ".join(f"{name}.{field.name}" for field in dataclasses.fields(kind)))
        else:
            paragraphs.append(name)
    return "\n\n".join(paragraphs)
