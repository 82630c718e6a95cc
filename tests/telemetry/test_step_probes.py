"""The opt-in probes in real runs: a measured run ends bit-identical to an unmeasured one, the switches
off change nothing in the loop, each probe costs the passes it states, and its tags are read back."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import TINY, compose, run_bnlab, scalars, train_in_process
from probe_nets import assert_same
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnlab.errors import ConfigError
from bnlab.models.nets import DeepNet
from bnlab.telemetry.signal_figure import IMAGE_TAG, signal_propagation_figure

ALL_ON = ["log.landscape=true", "log.covariate_shift=true", "log.signal_prop=true",
          "log.signal_prop_over_training=true", "log.gradient_noise=true"]
MEASURED_STEPS = [0, 4, 8, 11]  # TINY: log.every=4 over 12 steps


def _final_state(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    return state["model"], state["optimizer"]


@pytest.mark.parametrize("arm", [
    ["optim.momentum=0.9", "model.residual=true"],
    ["optim=adam", "optim.lr=0.01", "norm=torch", "optim.grad_clip=0.5"],
    ["optim.momentum=0.9", "model=cnn", "model.depth=3", "model.width=4", "optim.l1=0.001"],
])
def test_a_measured_run_ends_bit_identical_to_an_unmeasured_one(tmp_path, arm):
    """Parameters, BatchNorm's buffers (num_batches_tracked included), the optimizer's state and every logged
    loss and accuracy: the probes' extra passes leave no trace in the run they measure."""
    plain = train_in_process(tmp_path / "plain", *TINY, *arm)
    plain_rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    measured = train_in_process(tmp_path / "measured", *TINY, *arm, *ALL_ON)
    assert plain.status == measured.status == "completed", (plain.error, measured.error)
    assert torch.equal(torch.get_rng_state(), plain_rng[0])  # each run seeds at its start: the same draws
    assert np.array_equal(np.random.get_state()[1], plain_rng[1]) and random.getstate() == plain_rng[2]
    assert_same(_final_state(tmp_path / "measured"), _final_state(tmp_path / "plain"))
    plain_tags, measured_tags = scalars(tmp_path / "plain"), scalars(tmp_path / "measured")
    for tag in ("loss/train", "loss/test", "acc/test", "grad_norm/weight/layer00", "update_ratio/layer01"):
        assert measured_tags[tag] == plain_tags[tag], tag
    assert [step for step, _ in measured_tags["landscape/loss_range"]] == MEASURED_STEPS


def _count_training_forwards(monkeypatch) -> dict:
    """Count forward passes of any DeepNet (the live model or a probe's copy) in training mode."""
    calls = {"n": 0}
    forward = DeepNet.forward

    def counted(self, x):
        calls["n"] += self.training
        return forward(self, x)

    monkeypatch.setattr(DeepNet, "forward", counted)
    return calls


@pytest.mark.parametrize("switches,extra_passes", [
    ([], 0),
    (["log.landscape=true"], len(MEASURED_STEPS) * (5 + 1)),  # the step's point and 5 step sizes
    (["log.covariate_shift=true"], len(MEASURED_STEPS) * 4),  # G, then G' for layers 01..03
    (["log.signal_prop=true"], 1),  # step 0 only
    (["log.gradient_noise=true"], len(MEASURED_STEPS) * 4),  # one per ghost batch
])
def test_switches_off_the_loop_runs_exactly_its_own_passes_and_each_probe_adds_what_it_states(
        tmp_path, monkeypatch, switches, extra_passes):
    calls = _count_training_forwards(monkeypatch)
    result = train_in_process(tmp_path / "run", *TINY, *switches)
    assert result.status == "completed"
    assert calls["n"] == 12 + extra_passes  # 12 steps: one training forward pass each


def test_the_switches_are_off_by_default_and_nothing_is_built_for_them(tmp_path, monkeypatch):
    from bnlab.telemetry import step_probes

    cfg = compose()
    assert not any(getattr(cfg.log, name) for name in step_probes.SWITCHES)
    monkeypatch.setattr(step_probes.StepProbes, "__init__", lambda *a, **k: pytest.fail("built while off"))
    assert train_in_process(tmp_path / "run", *TINY).status == "completed"


def test_every_probe_writes_its_tags_at_measured_steps_and_the_figure_draws_from_read_back_tags(tmp_path):
    run = tmp_path / "run"
    result = train_in_process(run, *TINY, "model.residual=true", *ALL_ON[:3], "log.gradient_noise=true",
                              "log.signal_prop_over_training=false")
    assert result.status == "completed"
    tags = scalars(run)
    for tag in ("landscape/loss_min", "landscape/loss_max", "landscape/loss_range", "landscape/grad_predictiveness",
                "landscape/beta_smoothness", "covariate_shift/l2/layer01", "covariate_shift/cosine/layer03",
                "grad_noise/variance/layer00", "grad_noise/snr/all", "grad_noise/b_simple/layer03"):
        assert [step for step, _ in tags[tag]] == MEASURED_STEPS, tag
    assert "covariate_shift/l2/layer00" not in tags  # nothing below the first layer
    assert [step for step, _ in tags["signal_prop/var/layer02"]] == [0]  # at initialization only
    assert "signal_prop/residual_var/layer00" not in tags and "signal_prop/residual_var/layer02" in tags
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Images(IMAGE_TAG)] == [0]
    at_init = {tag: values[0][1] for tag, values in tags.items() if tag.startswith("signal_prop/")}
    figure = signal_propagation_figure([("read back", at_init)], "from the event file")
    assert list(figure.axes[1].lines[0].get_ydata()) == [at_init[f"signal_prop/var/layer{i:02d}"] for i in range(3)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["landscape/loss_range"] == pytest.approx(tags["landscape/loss_range"][-1][1], rel=1e-6)


@pytest.mark.parametrize("overrides,fragments", [
    (["log.gradient_noise=true", "data.batch_size=30"], ["log.gradient_noise_chunks=4", "data.batch_size=30",
                                                         "one of 2, 3, 5, 6, 10, 15"]),
    (["log.gradient_noise=true", "log.gradient_noise_chunks=32", "data.batch_size=32"],
     ["ghost batches of 1 example", "at most 16 chunks"]),
    (["log.gradient_noise_chunks=1"], ["log.gradient_noise_chunks=1", ">= 2"]),
    (["log.landscape_points=0"], ["log.landscape_points=0", ">= 1"]),
    (["log.landscape_max_multiple=0"], ["log.landscape_max_multiple=0", "> 0"]),
    (["log.landscpe=true"], ["log.landscpe"]),
])
def test_bad_probe_settings_name_the_key_and_the_fix(overrides, fragments):
    with pytest.raises(ConfigError) as error:
        compose(*overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_ghost_batches_of_one_are_fine_without_batchnorm():
    assert compose("norm=none", "log.gradient_noise=true", "log.gradient_noise_chunks=32").log.gradient_noise


def test_the_cli_refuses_a_bad_chunk_count_in_one_line_with_exit_2(tmp_path):
    result = run_bnlab("train", *TINY, "log.gradient_noise=true", "log.gradient_noise_chunks=5", cwd=tmp_path)
    assert result.returncode == 2
    assert "log.gradient_noise_chunks=5 does not divide data.batch_size=32" in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()
