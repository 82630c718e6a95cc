"""Tests for bnlab.analysis.aggregate and bnlab.analysis.report (`bnlab report`), on a small real sweep."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from bnlab.analysis.aggregate import mean_interval, t_quantile, two_sided_t_cdf
from bnlab.analysis.readback import event_files, load_run
from bnlab.analysis.report import build_report
from bnlab.cli import app
from bnlab.config.launch import plan, run_hydra
from bnlab.errors import ConfigError, RunFileError
from bnlab.train import summary

TINY = ["train.steps=30", "model.depth=4", "model.width=16", "train.eval_every=10", "log.hist_every=1000",
        "log.image_every=1000", "log.every=10"]  # images only at the first and last step: not what is tested here
T_975_DF1 = 12.706204736174707  # Student t, 0.975 quantile, 1 degree of freedom (two seeds)
FIGURES = ("gradients_by_depth", "percentiles_layer03", "accuracy", "saturation")


# ---------------------------------------------------------------- aggregation by hand


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 10, 2.2281), (0.975, 30, 2.0423),
    (0.95, 3, 2.3534), (0.975, 100000, 1.9600),
])
def test_t_quantile_matches_the_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert two_sided_t_cdf(t_quantile(p, df), df) == pytest.approx(2 * p - 1, abs=1e-10)


def test_mean_interval_by_hand():
    stat = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) · s / sqrt(n), s² = 5/3
    assert (stat.mean, stat.n, stat.geometric) == (2.5, 4, False)
    assert (stat.low, stat.high) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    one = mean_interval([0.7, math.nan, None])
    assert (one.mean, one.low, one.high, one.n) == (0.7, None, None, 1)  # one seed: no interval
    assert mean_interval([math.nan]) is None
    with pytest.raises(ValueError, match="integer df"):
        t_quantile(0.975, 0)


def test_geometric_mean_of_ratios_is_averaged_in_log_space():
    stat = mean_interval([1e-1, 1e-3], geometric=True)
    logs = [math.log(1e-1), math.log(1e-3)]
    half = T_975_DF1 * abs(logs[0] - logs[1]) / math.sqrt(2) / math.sqrt(2)  # s = |a-b|/sqrt(2), n = 2
    assert stat.geometric and stat.mean == pytest.approx(1e-2, rel=1e-12)
    assert stat.low == pytest.approx(1e-2 * math.exp(-half), rel=1e-9)
    assert stat.high == pytest.approx(1e-2 * math.exp(half), rel=1e-9)
    assert stat.factor == pytest.approx(math.exp(half), rel=1e-9)


# ---------------------------------------------------------------- a report of a real sweep


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 2 norms x 2 seeds sweep, a diverged run, a run still 'running', and a damaged run."""
    root = tmp_path_factory.mktemp("report")
    sweep, extra = root / "sweep", root / "extra"
    results = run_hydra(plan(["-m", "norm=none,bnlab", "train.seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"]))
    assert [r.status for r in results] == ["completed"] * 4
    (diverged,) = run_hydra(plan(["norm=none", "model.activation=linear", "optim.lr=1e6", *TINY,
                                  f"hydra.run.dir={extra / 'diverged'}"]))
    assert diverged.status == "diverged"
    # A run whose process was killed mid-way looks like this on disk: status running, no figures yet.
    live = extra / "live"
    shutil.copytree(results[0].run_dir, live)
    record = json.loads((live / "summary.json").read_text())
    summary.write(live, {**record, "status": "running", "steps": 20, "figures": {}, "finished": None})
    damaged = extra / "damaged"
    shutil.copytree(results[1].run_dir, damaged)
    (events,) = event_files(damaged)
    events.write_bytes(events.read_bytes()[:-50])
    return {"root": root, "sweep": sweep, "extra": extra, "live": live, "diverged": extra / "diverged",
            "damaged": damaged, **{f"job{i}": r.run_dir for i, r in enumerate(results)}}


@pytest.fixture(scope="module")
def report(runs):
    return build_report([runs["sweep"], runs["extra"]])


def _events(run_dir: Path) -> dict[str, dict[int, float]]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def _last(points: dict[int, float]) -> float:
    return points[max(points)]


def _by_hand(run_dirs: list[Path]) -> dict[str, tuple[float, float]]:
    """(mean, half width) or, for ratios, (geometric mean, factor), straight from the event files."""
    per_run = []
    for run_dir in run_dirs:
        events = _events(run_dir)
        layers = [f"layer0{i}" for i in range(4)]
        init = [events[f"grad_norm/output/{layer}"][0] for layer in layers]
        end = [_last(events[f"grad_norm/output/{layer}"]) for layer in layers]
        per_run.append({"loss/train": _last(events["loss/train"]), "loss/test": _last(events["loss/test"]),
                        "acc/test": _last(events["acc/test"]),
                        "act/saturated": sum(_last(events[f"act/saturated/{layer}"]) for layer in layers) / 4,
                        "grad_ratio_first_last/init": init[0] / init[-1],
                        "grad_ratio_first_last/final": end[0] / end[-1]})
    result = {}
    for name in per_run[0]:
        a, b = (values[name] for values in per_run)
        if name.startswith("grad_ratio"):
            a, b = math.log(a), math.log(b)
        mean, half = (a + b) / 2, T_975_DF1 * abs(a - b) / 2  # s/sqrt(n) = |a-b|/2 for two values
        result[name] = (math.exp(mean), math.exp(half)) if name.startswith("grad_ratio") else (mean, half)
    return result


def _cells(report, config) -> dict[str, str]:
    """header -> text of `config`'s row, over all of the report's tables."""
    index = report.configurations.index(config)
    return {header: cell for _, headers, rows in report.tables for header, cell in zip(headers, rows[index],
                                                                                         strict=True)}


def test_report_numbers_equal_a_computation_from_the_event_files(runs, report):
    for norm, jobs in (("none", ("job0", "job1")), ("bnlab", ("job2", "job3"))):
        config = next(c for c in report.configurations if report.short_label(c) == f"norm={norm}")
        assert [run.path for run in config.used] == [runs[job].resolve() for job in jobs]
        expected = _by_hand([runs[job] for job in jobs])
        for name, (mean, spread) in expected.items():
            stat = config.stats[name]
            assert stat.n == 2 and stat.mean == pytest.approx(mean, rel=1e-5), (norm, name)
            observed = stat.factor if stat.geometric else stat.half_width
            assert observed == pytest.approx(spread, rel=1e-4, abs=1e-9), (norm, name)
        cells = _cells(report, config)
        mean, half = expected["acc/test"]
        assert cells["acc/test"] == f"{mean:.3f} ± {half:.2g}"
        assert cells["loss/train"] == f"{expected['loss/train'][0]:.3g} ± {expected['loss/train'][1]:.2g}"
        ratio, factor = expected["grad_ratio_first_last/init"]
        assert cells["first/last, init"] == f"{ratio:.2e} ×/÷ {factor:.3g}"
        assert cells["n"] == ("3" if norm == "none" else "2")


def test_report_writes_every_figure_as_a_png_and_report_md_embeds_them(runs, report):
    assert report.out_dir == runs["root"].resolve()  # the common parent of the two inputs
    assert list(report.figures) == list(FIGURES)
    markdown = report.markdown.read_text()
    for name, path in report.figures.items():
        data = path.read_bytes()
        assert path.parent == report.out_dir and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 400 and height >= 250 and len(data) > 5000, name
        assert f"![{name}]({name}.png)" in markdown
    assert "| configuration | n | status | loss/train |" in markdown and "95% confidence interval" in markdown
    assert "| configuration | first/last, init | first/last, end |" in markdown
    assert "geometric mean" in markdown and "## Settings" in markdown


def test_unfinished_diverged_and_damaged_runs_are_reported_as_such(runs, report):
    notes = "\n".join(report.notes)
    assert f"`{runs['live'].resolve()}`" in notes and "unfinished (status running" in notes
    assert "records through step 29 of steps 0-29" in notes  # from the event files: its summary.json says 20 steps
    assert f"`{runs['diverged'].resolve()}`" in notes and "diverged, at step 2/30" in notes
    assert len(report.notes) == 2
    assert any(str(runs["damaged"].resolve()) in w and "damaged" in w for w in report.warnings)
    statuses = {cells["configuration"]: cells["status"]
                for cells in (_cells(report, config) for config in report.configurations)}
    assert statuses["norm=none"] == "2 completed, 1 running"  # the live run joins its seeds
    diverged = next(label for label in statuses if "optim.lr=1e6" in label)
    assert diverged.endswith("(partial)") and statuses[diverged] == "1 diverged"
    markdown = report.markdown.read_text()
    assert "## Runs that did not complete" in markdown and "## Skipped or incomplete" in markdown
    card = load_run(runs["diverged"]).text("run_card")  # written at divergence too, before the writer closed
    assert card.startswith("**diverged** after 2/30 steps") and "NaN/Inf at step 2" in card


def test_cli_report_with_a_layer_and_an_output_directory(runs, tmp_path):
    args = ["report", str(runs["sweep"]), "--out", str(tmp_path), "--layer", "layer01"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "percentiles_layer01.png").is_file() and (tmp_path / "report.md").is_file()
    assert "norm=bnlab" in result.output and "wrote" in result.output
    with pytest.raises(ConfigError, match="--layer layer09 is not a hidden layer"):
        build_report([runs["sweep"]], out=tmp_path, layer="layer09")


def test_a_path_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(RunFileError, match="no bnlab runs"):
        build_report([tmp_path])
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "report.md").exists()


def test_the_seed_bands_are_tensorboard_runs_of_mean_and_95_percent_interval_at_every_step(runs, report):
    assert report.bands == report.out_dir / "seed_bands"
    for norm, jobs in (("none", ("job0", "job1")), ("bnlab", ("job2", "job3"))):
        bands = _events(report.bands / f"norm={norm}")
        seeds = [_events(runs[job]) for job in jobs]
        for tag in ("acc/test", "loss/train", "profile/log10_grad_ratio_first_last", "profile/growth_factor"):
            steps = sorted(set(seeds[0][tag]) & set(seeds[1][tag]))
            assert steps and sorted(bands[f"band/{tag}/mean"]) == steps, (norm, tag)
            for step in steps:
                a, b = seeds[0][tag][step], seeds[1][tag][step]
                half = T_975_DF1 * abs(a - b) / 2  # two seeds: t(0.975, 1) * s / sqrt(2), s = |a - b| / sqrt(2)
                assert bands[f"band/{tag}/mean"][step] == pytest.approx((a + b) / 2, rel=1e-5, abs=1e-6)
                assert bands[f"band/{tag}/low"][step] == pytest.approx((a + b) / 2 - half, rel=1e-5, abs=1e-5)
                assert bands[f"band/{tag}/high"][step] == pytest.approx((a + b) / 2 + half, rel=1e-5, abs=1e-5)
    from tensorboard.plugins.custom_scalar import layout_pb2

    accumulator = EventAccumulator(str(report.bands / "norm=none"), size_guidance={"tensors": 0})
    accumulator.Reload()
    layout = layout_pb2.Layout.FromString(accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    margins = {chart.title: chart.margin.series[0] for chart in layout.category[0].chart}
    ratio = margins["log10 first/last hidden-layer gradient ratio"]
    assert (ratio.value, ratio.lower, ratio.upper) == tuple(
        f"band/profile/log10_grad_ratio_first_last/{part}" for part in ("mean", "low", "high"))
    assert "`bnlab tb" in report.markdown.read_text() and "seed_bands" in report.markdown.read_text()


def test_a_second_report_replaces_its_bands_and_runs_are_not_confused_with_them(runs, tmp_path):
    first = build_report([runs["sweep"]], out=tmp_path)
    second = build_report([runs["sweep"]], out=tmp_path)
    assert len(event_files(second.bands / "norm=none")) == 1  # not one more per report
    assert [c.label for c in first.configurations] == [c.label for c in second.configurations]
    assert len(build_report([tmp_path, runs["sweep"]], out=tmp_path / "again").configurations) == 2


def test_bnlab_report_fits_80_columns_with_whole_words(runs, tmp_path):
    result = CliRunner().invoke(app, ["report", str(runs["sweep"]), str(runs["extra"]), "--out", str(tmp_path)],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    report = build_report([runs["sweep"], runs["extra"]], out=tmp_path / "again")
    tables = result.output[:result.output.index("not completed:")]
    assert max(len(line.rstrip()) for line in tables.splitlines()) <= 80, tables
    for _, headers, rows in report.tables:
        for text in [*headers, *(cell for row in rows for cell in row)]:
            for word in text.split():
                assert word in tables, f"{word!r} broken:\n{tables}"
    assert f"bnlab tb {tmp_path}" in result.output
