"""What TensorBoard shows of a run, read back from real event files: the HParams columns every run declares,
the custom-scalars layout, the run-level profile scalars and their log10 per-layer companions."""

from __future__ import annotations

import math

import pytest
from conftest import TINY, train_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from bnlab.telemetry import figures
from bnlab.telemetry.writer import RunWriter, flatten


def _accumulator(run_dir):
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _experiment(accumulator):
    content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    return (hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG]),
            hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The default pair, shrunk: one run with bnlab's BatchNorm and no other override, one with norm=none."""
    root = tmp_path_factory.mktemp("pair")
    train_in_process(root / "bn", *TINY)
    train_in_process(root / "none", *TINY, "norm=none", "model.init=standard")
    return root / "bn", root / "none"


def test_every_run_declares_the_same_hparams_columns_sorted_and_typed(pair):
    from conftest import compose
    from omegaconf import OmegaConf

    declared = []
    for run_dir in pair:
        experiment, start = _experiment(_accumulator(run_dir))
        names = [info.name for info in experiment.hparam_infos]
        declared.append(names)
        expected = flatten({k: v for k, v in OmegaConf.to_container(compose(*TINY), resolve=True).items()
                            if k != "resume"})
        assert names == sorted(expected), "the flattened config, sorted"
        # the claim's axes flagged alike in every run: TensorBoard shows them first, five by default
        flagged = [info.name for info in experiment.hparam_infos if info.differs]
        assert flagged == ["model.activation", "model.depth", "model.init", "norm.name", "train.seed"]
        kinds = {info.name: info.type for info in experiment.hparam_infos}
        assert kinds["data.download"] == api_pb2.DATA_TYPE_BOOL and start.hparams["data.download"].bool_value is False
        assert kinds["data.batch_size"] == api_pb2.DATA_TYPE_STRING
        assert start.hparams["data.batch_size"].string_value == "32"  # not TensorBoard's 32.000
        assert kinds["optim.lr"] == api_pb2.DATA_TYPE_FLOAT64 and start.hparams["optim.lr"].number_value == 0.1
        assert start.hparams["optim.grad_clip"].string_value == "none"
        metrics = [info.name.tag for info in experiment.metric_infos]
        assert metrics[0] == "figures/grad_ratio_first_last/init"
    assert declared[0] == declared[1]
    assert _experiment(_accumulator(pair[1]))[1].hparams["norm.name"].string_value == "none"


def test_the_layout_opens_on_one_line_per_run_and_puts_log10_before_linear_and_act_last(pair):
    accumulator = _accumulator(pair[0])
    layout = layout_pb2.Layout.FromString(accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [category.title for category in layout.category]
    assert titles[0].startswith("vanishing gradient") and titles[1] == "log10" and titles[-1] == "act"
    first = layout.category[0].chart[0]
    assert first.multiline.tag == ["^profile/log10_grad_ratio_first_last$"]  # one tag: one line per run
    log10 = {chart.title: chart.multiline.tag[0] for chart in layout.category[1].chart}
    assert log10["log10/grad_norm/output"] == r"^log10/grad_norm/output/layer\d+$"
    assert set(log10) == {f"log10/{family}" for family in figures.LOG10_FAMILIES}


def test_profile_scalars_and_log10_tags_equal_a_direct_computation_at_every_logged_step(pair):
    for run_dir in pair:
        accumulator = _accumulator(run_dir)
        series = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}
        steps = sorted(series["grad_norm/output/layer00"])
        assert steps == [0, 4, 8, 11] and sorted(series["profile/log10_grad_ratio_first_last"]) == steps
        for step in steps:
            first, last = series["grad_norm/output/layer00"][step], series["grad_norm/output/layer02"][step]
            # the event files hold float32: compare at float32's precision
            assert series["profile/log10_grad_ratio_first_last"][step] == pytest.approx(
                math.log10(first / last), abs=1e-5)
            logs = [math.log(series[f"grad_norm/output/layer0{i}"][step]) for i in range(3)]
            slope = (logs[2] - logs[0]) / 2  # least squares through three equally spaced points
            assert series["profile/growth_factor"][step] == pytest.approx(math.exp(-slope), rel=1e-5)
            for family in figures.LOG10_FAMILIES:
                for layer in ("layer00", "layer03"):
                    value = series[f"{family}/{layer}"][step]
                    assert series[f"log10/{family}/{layer}"][step] == pytest.approx(math.log10(value), abs=1e-5)


def test_derived_scalars_leave_out_what_has_no_logarithm():
    values = {"preact/mean/layer00": 0.0, "preact/mean/layer01": 0.0, "grad_norm/output/layer00": 0.0,
              "grad_norm/output/layer01": 1e-3, "update_ratio/layer00": math.nan, "update_ratio/layer01": 1e-20}
    derived = figures.derived_scalars(values)
    # first/last = 0 and a single positive layer (no growth factor): no profile scalar, and no -inf or NaN point
    assert derived == {"log10/grad_norm/output/layer01": -3.0, "log10/update_ratio/layer01": -20.0}


def test_a_margin_chart_names_its_mean_low_and_high_tags(tmp_path):
    writer = RunWriter(tmp_path)
    writer.scalars(0, {"band/x/mean": 1.0, "band/x/low": 0.5, "band/x/high": 1.5})
    writer.bands_layout("bands", {"x": ("band/x/mean", "band/x/low", "band/x/high")})
    writer.close()
    accumulator = _accumulator(tmp_path)
    layout = layout_pb2.Layout.FromString(accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (series,) = layout.category[0].chart[0].margin.series
    assert (series.value, series.lower, series.upper) == ("band/x/mean", "band/x/low", "band/x/high")
