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


def _print_version(asked: bool) -> None:
    if asked:
        from bnlab import __version__

        print(f"bnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _terminal(version: Annotated[bool, typer.Option(
        "--version", help="Print bnlab's version and exit.", is_eager=True, callback=_print_version)] = False) -> None:
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


class _ConfigKeysHelp(typer.core.TyperCommand):
    """A command whose --help ends with every config key, read from the schema only when help is asked for."""

    def format_help(self, ctx, formatter) -> None:
        from bnlab.console import config_keys_help

        self.help = f"{self.help}\n\n{config_keys_help()}"
        super().format_help(ctx, formatter)


@app.command(context_settings=HYDRA_ARGS, cls=_ConfigKeysHelp)
def train(ctx: typer.Context) -> None:
    """Train a deep MLP or CNN with or without BatchNorm; every argument is a Hydra override.

    Examples: [bold]bnlab train[/] (a 20-layer sigmoid MLP with bnlab's BatchNorm on the embedded digits),
    [bold]bnlab train norm=none[/], [bold]bnlab train model=cnn model.depth=8 data=digits[/],
    [bold]bnlab train -m norm=none,bnlab train.seed=0,1,2[/] (a sweep),
    [bold]bnlab train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 ...[/] (in parallel),
    [bold]bnlab train resume=RUN_OR_SWEEP_DIR[/], [bold]bnlab train --cfg job[/], [bold]bnlab train --hydra-help[/].
    """

    def action() -> int:
        from bnlab import console as terminal
        from bnlab.config.launch import plan

        return terminal.train(console, errors, plan(ctx.args))

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
        from bnlab.analysis.report import build_report
        from bnlab.console import print_report

        print_report(console, errors, build_report(paths, out=out, layer=layer))

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
    Extra arguments are Hydra overrides for every run of the experiment; one that would drop an arm the
    experiment compares (e.g. norm=none on vanishing) is refused. The exit code is 0 whatever the verdict (a
    claim that does not hold is a finding); 1 if a run failed; 2 for a refused override.
    """

    def action() -> int:
        from bnlab.errors import ConfigError

        if list_:
            from bnlab.console import print_experiments

            print_experiments(console)
            return 0
        if name is None:
            from bnlab.experiments.catalog import EXPERIMENTS

            raise ConfigError(f"name an experiment: bnlab reproduce NAME, one of {', '.join(EXPERIMENTS)} "
                              "(bnlab reproduce --list describes them)")
        from bnlab.console import print_reproduction
        from bnlab.experiments.reproduce import reproduce as run_experiment

        return print_reproduction(console, errors, run_experiment(name, list(ctx.args), quick=quick, out=out))

    _guarded(action)


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="A runs folder, sweep or run directory.")] = Path("runs"),
) -> None:
    """List the runs under ROOT (default: runs/), newest first: when, what, status, steps, final metrics."""

    def action() -> None:
        from bnlab.analysis.runs import list_runs
        from bnlab.console import print_runs

        print_runs(console, list_runs(root), root)

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
