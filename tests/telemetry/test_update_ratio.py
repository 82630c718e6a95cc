"""update_ratio/layerNN in real runs: ||W after - W before|| / ||W before|| of each logged step itself, with
the optimizers the trainer really builds (fused where torch has it, the foreach fallback, momentum, weight
decay, Adam), on both measuring paths (compiled, BNLAB_NATIVE=0), for consecutive and sparse measured steps.

The oracle watches the real optimizer: its step hooks copy the weights before each step and measure the
step's change after it, in float64, independently of the probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, scalars, train_in_process

from bnlab.train import loop

OPTIMIZERS = {
    "sgd": ["optim=sgd"],
    "sgd-momentum-decay": ["optim=sgd", "optim.momentum=0.9", "optim.weight_decay=0.001"],
    "sgd-foreach": ["optim=sgd", "optim.momentum=0.9"],  # with fused kernels refused: the trainer's fallback
    "adam": ["optim=adam", "optim.lr=0.01", "optim.weight_decay=0.001"],
}
# every step measured beside the next (weight copies reused), every step measured inline, every third step
MEASURING = {
    "consecutive-background": ["log.every=1", "log.background=true"],
    "consecutive-inline": ["log.every=1", "log.background=false"],
    "sparse": ["log.every=3"],
}


class _NoFusedSGD(torch.optim.SGD):
    """SGD as on a device or torch without a fused kernel: build_optimizer falls back to foreach."""

    def __init__(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("no fused SGD kernel here")
        super().__init__(params, *args, **kwargs)


def _watch_steps(monkeypatch) -> dict:
    """Wrap the trainer's build_optimizer: each optimizer step of the run appends, per weight layer,
    ||W before||, ||W after - W before|| and ||gradient|| (float64) to `seen["steps"]`."""
    seen = {"steps": [], "optimizer": None}
    build = loop.build_optimizer

    def watched(optim_cfg, model):
        optimizer = build(optim_cfg, model)
        layers = model.weight_layers
        before = {}

        def pre(*_):
            before.update({name: layer.weight.detach().double().clone() for name, layer in layers.items()})

        def post(*_):
            seen["steps"].append({name: (before[name].norm().item(),
                                         (layer.weight.detach().double() - before[name]).norm().item(),
                                         layer.weight.grad.double().norm().item())
                                  for name, layer in layers.items()})

        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)
        seen["optimizer"] = optimizer
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", watched)
    return seen


def _run(tmp_path, monkeypatch, *overrides):
    seen = _watch_steps(monkeypatch)
    result = train_in_process(tmp_path / "run", *TINY, *overrides)
    assert result.status == "completed", result.error
    assert len(seen["steps"]) == 12  # every step reached the optimizer
    return seen, scalars(tmp_path / "run")


@pytest.mark.parametrize("measuring", list(MEASURING))
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_update_ratio_is_the_logged_step_s_own_change(tmp_path, monkeypatch, path, optimizer, measuring):
    if optimizer == "sgd-foreach":
        monkeypatch.setattr(torch.optim, "SGD", _NoFusedSGD)
    seen, tags = _run(tmp_path, monkeypatch, *OPTIMIZERS[optimizer], *MEASURING[measuring])
    built = seen["optimizer"].defaults
    assert (built["fused"], built.get("foreach")) == ((None, True) if optimizer == "sgd-foreach" else (True, None))
    ratios = {tag: series for tag, series in tags.items() if tag.startswith("update_ratio/")}
    assert len(ratios) == 4  # three hidden layers and the classifier
    expected_steps = list(range(12)) if measuring.startswith("consecutive") else [0, 3, 6, 9, 11]
    for tag, series in ratios.items():
        name = tag.split("/")[1]
        assert [step for step, _ in series] == expected_steps
        for step, logged in series:
            before, change, _ = seen["steps"][step][name]
            assert logged == pytest.approx(change / before, rel=1e-6), (tag, step)  # float32 in the event file


@pytest.mark.parametrize("measuring", ["consecutive-background", "consecutive-inline"])
@pytest.mark.parametrize("norm", ["bnlab", "none"])
def test_plain_sgd_moves_each_weight_by_lr_times_its_gradient(tmp_path, monkeypatch, path, norm, measuring):
    """SGD, lr 0.1, no momentum, no weight decay: W after = W before - 0.1 g, so update_ratio is
    0.1 ||g|| / ||W before||, read entirely from the event files (||W before|| of step t is the weight_norm
    logged at step t - 1)."""
    _, tags = _run(tmp_path, monkeypatch, f"norm={norm}", "optim=sgd", "optim.lr=0.1", "optim.momentum=0.0",
                   "optim.weight_decay=0.0", *MEASURING[measuring])
    for layer in ("layer00", "layer01", "layer02", "layer03"):
        ratio = np.array([value for _, value in tags[f"update_ratio/{layer}"]])
        grad = np.array([value for _, value in tags[f"grad_norm/weight/{layer}"]])
        weight = np.array([value for _, value in tags[f"weight_norm/{layer}"]])
        expected = 0.1 * grad[1:] / weight[:-1]
        assert np.abs(ratio[1:] / expected - 1).max() < 0.03, layer  # (measured: ~1e-5, float32 rounding)


@pytest.mark.parametrize("norm", ["bnlab", "none"])
def test_plain_sgd_update_ratio_holds_at_sparse_measured_steps(tmp_path, monkeypatch, path, norm):
    seen, tags = _run(tmp_path, monkeypatch, f"norm={norm}", "optim=sgd", "optim.lr=0.1", "optim.momentum=0.0",
                      "optim.weight_decay=0.0", *MEASURING["sparse"])
    for layer in ("layer00", "layer01", "layer02", "layer03"):
        for step, logged in tags[f"update_ratio/{layer}"][1:]:
            before, _, grad = seen["steps"][step][layer]
            assert logged == pytest.approx(0.1 * grad / before, rel=0.03), (layer, step)
