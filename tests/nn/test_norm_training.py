"""Every norm variant trains in a real run (the real configs, shrunk) for the MLP and the CNN, with the usual
telemetry, and a run interrupted by a signal and resumed equals the uninterrupted run bit for bit:
parameters, buffers, the layers' step counts and noise state, the optimizer, and every logged series."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
import torch
from conftest import BNLAB, TINY, compose, interrupt_after, run_bnlab, scalars

from bnlab.train.loop import train

# Each variant's knobs set so that it differs from BatchNorm within a 12-step run of batch 32.
VARIANTS = {
    "ghost": ["norm=ghost", "norm.ghost_batch_size=8"],
    "renorm": ["norm=renorm", "data.batch_size=4", "norm.warmup_steps=2", "norm.rmax_step=8", "norm.dmax_step=5",
               "norm.rmax=1.5", "norm.dmax=0.5"],
    "noisy": ["norm=noisy"],
    "layer": ["norm=layer"],
    "group": ["norm=group", "norm.groups=4"],
}
INTERRUPT_AFTER = 6  # steps; TINY logs every 4 and evaluates every 5, so both straddle the interruption


def _train(run_dir, overrides, progress=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(compose(*overrides), run_dir, overrides, progress)


def _assert_same_run(a, b):
    final_a, final_b = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (a, b))
    assert final_a["step"] == final_b["step"] == 12
    assert list(final_a["model"]) == list(final_b["model"])
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    for state_a, state_b in zip(final_a["optimizer"]["state"].values(), final_b["optimizer"]["state"].values(),
                                strict=True):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    series_a, series_b = scalars(a), scalars(b)
    assert set(series_a) == set(series_b)
    for tag in series_a:  # every series, update_ratio included: same steps, no duplicates, identical values
        assert series_a[tag] == series_b[tag], tag
    return final_a["model"]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_variant_trains_with_telemetry_and_resumes_bit_identically(tmp_path, variant, model):
    assert threading.current_thread() is threading.main_thread()  # where the loop's signal handler lives
    overrides = [*TINY, f"model={model}", *VARIANTS[variant]]
    uninterrupted = _train(tmp_path / "a", overrides)
    assert uninterrupted.status == "completed", uninterrupted.error
    interrupted = _train(tmp_path / "b", overrides, interrupt_after(INTERRUPT_AFTER))
    assert (interrupted.status, interrupted.steps) == ("interrupted", INTERRUPT_AFTER)
    resumed = _train(tmp_path / "b", [*overrides, f"resume={tmp_path / 'b'}"])
    assert resumed.status == "completed", resumed.error
    state = _assert_same_run(tmp_path / "a", tmp_path / "b")

    tags = scalars(tmp_path / "a")
    for family in ("grad_norm/output", "grad_norm/weight", "preact/mean", "act/saturated"):
        assert [step for step, _ in tags[f"{family}/layer00"]] == [0, 4, 8, 11], family
    assert tags["acc/test"][-1][0] == 11 and "figures/growth_factor/final" in tags
    if variant in ("ghost", "renorm", "noisy"):  # the layer's count of training steps went through the resume
        assert int(state["blocks.0.norm.num_batches_tracked"]) == 12
    if variant == "noisy":
        seed, draws = state["blocks.0.norm._extra_state"].tolist()
        assert draws == 12 and seed == 0  # train.seed=0, layer 0


def test_each_variant_trains_otherwise_than_batchnorm(tmp_path):
    def losses(name, overrides):
        assert _train(tmp_path / name, [*TINY, *overrides]).status == "completed"
        return [value for _, value in scalars(tmp_path / name)["loss/train"]]  # at steps 0, 4, 8 and 11

    batchnorm = {size: losses(f"bnlab{size}", ["norm=bnlab", f"data.batch_size={size}"]) for size in (4, 32)}
    for variant, overrides in VARIANTS.items():
        ours = losses(variant, overrides)
        reference = batchnorm[4 if variant == "renorm" else 32]
        assert ours[-1] != reference[-1], variant
        if variant == "renorm":  # plain BatchNorm during the warm-up, exactly
            assert ours[0] == reference[0]


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_noisy_run_interrupted_by_the_cli_and_resumed_equals_the_uninterrupted_one(tmp_path):
    long = ["model.depth=3", "model.width=16", "train.steps=1000", "log.every=20", "train.eval_every=500",
            "train.checkpoint_every=50", "data.batch_size=32", "log.hist_every=1000", "norm=noisy"]
    reference = run_bnlab("train", *long, f"hydra.run.dir={tmp_path / 'a'}")
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "b"
    process = subprocess.Popen([BNLAB, "train", *long, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    resumed = run_bnlab("train", f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    final_a, final_b = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (tmp_path / "a", run_dir))
    assert final_a["step"] == final_b["step"] == 1000
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    assert final_b["model"]["blocks.2.norm._extra_state"].tolist() == [2, 1000]
    assert scalars(tmp_path / "a")["loss/train"] == scalars(run_dir)["loss/train"]
