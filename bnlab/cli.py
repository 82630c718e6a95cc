"""The `bnlab` command: thin on purpose.

Each command parses its arguments, calls one library function, and turns a
`BnlabError` into one red line and an exit code (2 for bad input, 1 for a failed
run, 130 for an interruption). Heavy imports (torch, Hydra, matplotlib) happen
inside the commands, so `bnlab --help` starts at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="bnlab",
    help="A laboratory for the claim that Batch Normalization overcomes vanishing gradients.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


@app.callback()
def _terminal() -> None:
    """A laboratory for the claim that Batch Normalization overcomes vanishing gradients."""
    # each invocation reads the terminal's width as it is now (an app invoked twice in one process, as tests do)
    global console, errors
    console, errors = Console(), Console(stderr=True)


HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _guarded(action: Callable[[], int | None]) -> None:
    """Run `action`; map domain errors and Ctrl-C to one line and an exit code."""
    from bnlab.errors import BnlabError

    try:
        code = action() or 0
    except BnlabError as error:
        # a message may quote paths and "[Errno 28]": text, never markup
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        code = error.exit_code
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/]")
        code = 130
    raise typer.Exit(code)


@app.command(context_settings=HYDRA_ARGS)
def train(ctx: typer.Context) -> None:
    """Train a deep MLP or CNN with or without BatchNorm; every argument is a Hydra override.

    Examples: [bold]bnlab train[/] (a 20-layer sigmoid MLP with bnlab's BatchNorm on the embedded digits),
    [bold]bnlab train norm=none[/], [bold]bnlab train model=cnn model.depth=8 data=digits[/],
    [bold]bnlab train -m norm=none,bnlab train.seed=0,1,2[/] (a sweep),
    [bold]bnlab train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 ...[/] (in parallel),
    [bold]bnlab train resume=RUN_OR_SWEEP_DIR[/], [bold]bnlab train --cfg job[/], [bold]bnlab train --hydra-help[/].
    Keys: model.{depth,width,activation,init,residual}, norm.{eps,momentum,position},
    data.{batch_size,root,download}, optim.{lr,momentum,weight_decay,l1,grad_clip},
    train.{steps,seed,device,eval_every,checkpoint_every,on_divergence},
    log.{enabled,every,hist_every,image_every}.
    """

    def action() -> int:
        from bnlab.config.launch import plan, run_hydra
        from bnlab.console import print_run_result, print_sweep

        launch = plan(ctx.args)
        if launch.note:
            errors.print(f"[yellow]note:[/] {escape(launch.note)}", highlight=False, soft_wrap=True)
        results = run_hydra(launch)
        if launch.inspect_only:
            return 0
        if launch.multirun:
            code = print_sweep(console, launch.sweep_dir)
            for error in launch.errors:  # jobs that could not run at all, e.g. a resume that failed to load
                errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            return code or int(bool(launch.errors))
        return print_run_result(console, errors, results[-1]) if results else 1

    _guarded(action)


@app.command("show-config", context_settings=HYDRA_ARGS)
def show_config(ctx: typer.Context) -> None:
    """Print the config that `bnlab train OVERRIDES...` would run, after validation."""

    def action() -> None:
        from omegaconf import OmegaConf
        from rich.syntax import Syntax

        from bnlab.config.launch import compose_config

        cfg = compose_config(list(ctx.args))
        console.print(Syntax(OmegaConf.to_yaml(cfg), "yaml", theme="ansi_dark", background_color="default"))

    _guarded(action)


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run or sweep directories, in any mix.")],
    out: Annotated[Path | None, typer.Option(
        help="Where to write report.md and the figures (default: the input directory, or the common parent "
             "of several).")] = None,
    layer: Annotated[str | None, typer.Option(help="The layer of the Figure-1 percentile plot, e.g. layer03 "
                                              "(default: the last hidden layer).")] = None,
) -> None:
    """Compare configurations across seeds: a table (mean ± 95% CI), report.md and PNG figures.

    Example: [bold]bnlab report runs/sweep/2026-11-26_12-00-00_abc123[/]
    """

    def action() -> None:
        from bnlab.analysis.report import build_report, headline, rich_tables

        result = build_report(paths, out=out, layer=layer)
        console.print(headline(result), highlight=False)
        for table in rich_tables(result):
            console.print(table)
        for note in result.notes:
            console.print(f"[yellow]not completed:[/] {escape(note)}", highlight=False, soft_wrap=True)
        for warning in result.warnings:
            errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        console.print(f"wrote [bold]{result.markdown}[/] and {len(result.figures)} figures to "
                      f"{result.out_dir}", highlight=False)

    _guarded(action)


@app.command(context_settings=HYDRA_ARGS)
def reproduce(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="The experiment; --list shows them.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the experiments: paper, claim, expected run time.")] = (
        False),
    quick: Annotated[bool, typer.Option(help="A reduced sweep that measures the same quantities (for CI).")] = False,
    out: Annotated[Path | None, typer.Option(
        help="The experiment directory (default: runs/reproduce/NAME_<date>_<time>_<random>).")] = None,
) -> None:
    """Run a named experiment from the papers and judge its claims: verdict table, reproduce.md, figures.

    Examples: [bold]bnlab reproduce --list[/], [bold]bnlab reproduce vanishing[/],
    [bold]bnlab reproduce vanishing --quick[/], [bold]bnlab reproduce ioffe2015_fig1 data=mnist data.download=true[/],
    [bold]bnlab reproduce lr_tolerance train.device=cuda[/],
    [bold]bnlab reproduce vanishing hydra/launcher=joblib hydra.launcher.n_jobs=2[/].
    Extra arguments are Hydra overrides for every run of the experiment. The exit code is 0 whatever the
    verdict (a claim that does not hold is a finding); 1 if a run failed.
    """

    def action() -> int:
        from bnlab.errors import ConfigError

        if list_:
            from bnlab.experiments.reproduce import list_table

            console.print(list_table())
            return 0
        if name is None:
            from bnlab.experiments.catalog import EXPERIMENTS

            raise ConfigError(f"name an experiment: bnlab reproduce NAME, one of {', '.join(EXPERIMENTS)} "
                              "(bnlab reproduce --list describes them)")
        from bnlab.experiments.reproduce import reproduce as run_experiment
        from bnlab.experiments.reproduce import rich_table

        result = run_experiment(name, list(ctx.args), quick=quick, out=out)
        console.print(rich_table(result))
        for note in result.not_completed:
            console.print(f"[yellow]not completed:[/] {escape(note)}", highlight=False, soft_wrap=True)
        for warning in result.warnings:
            errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        console.print(f"wrote [bold]{result.markdown}[/] and {len(result.figures)} figures "
                      f"({result.seconds:.0f} s to plan and run)", highlight=False, soft_wrap=True)
        console.print(f"look deeper: [bold]bnlab tb {result.directory}[/]", highlight=False, soft_wrap=True)
        return 1 if any(run.status == "failed" for run in result.runs) else 0

    _guarded(action)


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="A runs folder, sweep or run directory.")] = Path("runs"),
) -> None:
    """List the runs under ROOT (default: runs/), newest first: when, what, status, steps, final metrics."""

    def action() -> None:
        from bnlab.analysis.runs import list_runs, runs_table

        console.print(runs_table(list_runs(root), root))

    _guarded(action)


@app.command()
def tb(
    root: Annotated[Path, typer.Argument(help="A runs folder, sweep or run directory.")] = Path("runs"),
    port: Annotated[int, typer.Option(help="The port to serve on; 0 picks a free one.")] = 6006,
    host: Annotated[str, typer.Option(help="The address to serve on (127.0.0.1: this machine only).")] = (
        "127.0.0.1"),
) -> None:
    """Start TensorBoard on ROOT (default: runs/) and wait; Ctrl-C stops it."""

    def action() -> int:
        from bnlab.analysis.tensorboard import start_tensorboard, stop, stop_on_termination
        from bnlab.errors import BnlabError

        with stop_on_termination():  # SIGTERM and SIGHUP stop TensorBoard as Ctrl-C does
            server = start_tensorboard(root, port=port, host=host)
            try:  # from here on, Ctrl-C is the normal way out
                console.print(f"TensorBoard on {root}: [bold]{server.url}[/]  (Ctrl-C stops it)", highlight=False,
                              soft_wrap=True)  # never break the URL
                code = server.process.wait()
            except KeyboardInterrupt:
                stop(server)
                console.print("TensorBoard stopped")
                return 0
        output = server.output()
        stop(server)
        raise BnlabError(f"TensorBoard exited on its own (exit code {code}); it said:\n"
                         f"{output or '(nothing)'}")

    _guarded(action)


@app.command()
def bench(
    which: Annotated[str, typer.Argument(help="bn, telemetry, loop, experience, or all")] = "all",
    repeats: Annotated[int, typer.Option(help="interleaved repeats per measurement (median)")] = 5,
) -> None:
    """Measure the performance targets; each figure is a ratio measured side by side in this process."""

    def action() -> int:
        from bnlab.bench.targets import BENCHES, machine
        from bnlab.console import print_bench
        from bnlab.errors import ConfigError

        chosen = list(BENCHES) if which == "all" else [which]
        unknown = [name for name in chosen if name not in BENCHES]
        if unknown:
            raise ConfigError(f"unknown benchmark {which!r}; expected one of: {', '.join(BENCHES)}, all")
        for name in chosen:  # a target that falls short is a finding shown in the table, not an error
            rows = BENCHES[name]() if name == "experience" else BENCHES[name](repeats=repeats)
            print_bench(console, rows, machine())
        return 0

    _guarded(action)


def main() -> None:
    # Hydra reads sys.argv itself; Typer needs the program name to read nicely in --help.
    sys.argv[0] = str(Path(sys.argv[0]).name)
    app()


if __name__ == "__main__":
    main()
