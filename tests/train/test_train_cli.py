"""`bnlab train` end to end: a real subprocess, real Hydra, event files read back with TensorBoard's reader."""

from __future__ import annotations

import json

from conftest import TINY, run_bnlab, scalars, train_in_process

LAYER_FAMILIES_ALL = ["grad_norm/weight", "grad_norm/output", "weight_norm", "update_ratio"]
LAYER_FAMILIES_HIDDEN = ["preact/mean", "preact/std", "preact/p15", "preact/p50", "preact/p85",
                         "preact/unit0/p15", "preact/unit0/p50", "preact/unit0/p85",
                         "act/mean", "act/std", "act/saturated"]


def test_bnlab_train_writes_every_tag_for_every_layer(tmp_path):
    run_dir = tmp_path / "run"
    result = run_bnlab("train", *TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "completed after 12/12 steps" in result.stdout and str(run_dir) in result.stdout

    tags = scalars(run_dir)
    logged_steps = [0, 4, 8, 11]  # step 0, every log.every steps, and the last step
    for layer in range(4):  # 3 hidden layers and the classifier
        families = LAYER_FAMILIES_ALL + (LAYER_FAMILIES_HIDDEN if layer < 3 else [])
        for family in families:
            tag = f"{family}/layer{layer:02d}"
            assert [step for step, _ in tags[tag]] == logged_steps, tag
    assert "preact/mean/layer03" not in tags
    assert [step for step, _ in tags["loss/train"]] == logged_steps
    assert [step for step, _ in tags["lr"]] == logged_steps
    # every eval_every steps, and the trained network's at the last step, where every other series ends too
    assert [step for step, _ in tags["acc/test"]] == [0, 5, 10, 11]
    assert [step for step, _ in tags["loss/test"]] == [0, 5, 10, 11]
    assert {series[-1][0] for series in tags.values()} == {11}

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12 and summary["seed"] == 0
    assert summary["metrics"] == {tag: series[-1][1] for tag, series in tags.items()}  # to the last bit
    assert set(summary["figures"]) == {"grad_ratio_first_last/init", "grad_ratio_first_last/final",
                                       "growth_factor/init", "growth_factor/final"}
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "checkpoint.pt", "train.log"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))


def test_histograms_layout_config_text_and_hparams_are_in_the_run_directory(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    run_dir = tmp_path / "run"
    train_in_process(run_dir, *TINY)
    accumulator = EventAccumulator(str(run_dir), size_guidance={"histograms": 0, "tensors": 0})
    accumulator.Reload()
    histograms = accumulator.Tags()["histograms"]
    assert {"preact/layer00", "preact/layer02", "grad/weight/layer00", "grad/weight/layer03"} <= set(histograms)
    histogram = accumulator.Histograms("preact/layer00")
    assert [event.step for event in histogram] == [0, 4, 8]  # every log.hist_every steps
    assert histogram[0].histogram_value.num == 32 * 16  # batch x units
    assert sum(histogram[0].histogram_value.bucket) == 32 * 16

    layout_event = accumulator.Tensors("custom_scalars__config__")[0]
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    charts = {chart.title: chart for category in layout.category for chart in category.chart}
    assert "grad_norm/output" in charts and "act/std" in charts and "preact/p15" in charts
    assert charts["grad_norm/output"].multiline.tag[0] == r"^grad_norm/output/layer\d+$"

    assert "config/text_summary" in accumulator.Tags()["tensors"]
    hparams = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.SESSION_START_INFO_TAG in hparams and hparams_metadata.EXPERIMENT_TAG in hparams
    start = hparams_metadata.parse_session_start_info_plugin_data(hparams[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["norm.name"].string_value == "bnlab"
    experiment = hparams_metadata.parse_experiment_plugin_data(hparams[hparams_metadata.EXPERIMENT_TAG])
    names = [info.name for info in experiment.hparam_infos]  # every run the same columns: the config, sorted
    assert names == sorted(names) and {o.split("=")[0] for o in TINY} <= set(names)
    assert "figures/grad_ratio_first_last/init" in [m.name.tag for m in experiment.metric_infos]
    assert start.hparams["model.depth"].string_value == "3"  # an integer reads 3, not 3.000
    assert not [p for p in run_dir.iterdir() if p.is_dir() and p.name != ".hydra"]  # no add_hparams sub-run


def test_telemetry_off_still_logs_losses_and_accuracy(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, *TINY, "log.enabled=false")
    tags = scalars(run_dir)
    assert set(tags) == {"loss/train", "lr", "loss/test", "acc/test"}


def test_a_two_job_multirun_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_bnlab("train", "-m", "norm=none,bnlab", *TINY, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    assert "norm=none" in jobs[0].name and "norm=bnlab" in jobs[1].name  # the name says what varied
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    assert "norm=none" in result.stdout and "norm=bnlab" in result.stdout and "completed" in result.stdout


def test_show_config_prints_the_composed_config():
    result = run_bnlab("show-config", "model.depth=7", "norm=none")
    assert result.returncode == 0, result.stderr
    assert "depth: 7" in result.stdout and "name: none" in result.stdout


def test_hydra_cfg_flag_passes_through():
    result = run_bnlab("train", "--cfg", "job", "model.width=77")
    assert result.returncode == 0, result.stderr
    assert "width: 77" in result.stdout


def test_the_claim_at_initialization(tmp_path):
    """20-layer sigmoid MLP, width 512, standard init, synthetic data: step-0 gradient of layer00 is more than
    six orders of magnitude below the last hidden layer's without BatchNorm, within 10x with bnlab's BatchNorm."""
    claim = ["model.depth=20", "model.width=512", "model.init=standard", "model.activation=sigmoid",
             "data=synthetic", "train.steps=1", "data.batch_size=128"]
    without = train_in_process(tmp_path / "none", *claim, "norm=none").metrics
    with_bn = train_in_process(tmp_path / "bn", *claim, "norm=bnlab").metrics
    first, last = "grad_norm/weight/layer00", "grad_norm/weight/layer19"
    assert without[first] > 0  # measured, not underflowed to zero
    assert without[first] / without[last] < 1e-6
    assert 0.1 < with_bn[first] / with_bn[last] < 10
