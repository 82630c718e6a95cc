"""The memory estimate that lets `bnlab train` refuse a model too large for the machine before building it,
held to the truth: parameter counts of the model torch builds, the bytes autograd keeps for backward, and the
data sets' sizes as their loaders return them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import compose


@pytest.mark.parametrize("name,kwargs", [("digits", {}), ("mnist1d", {}),
                                         ("synthetic", {"synthetic_dim": 12, "synthetic_samples": 333})])
def test_data_shape_is_what_the_loader_returns(name, kwargs):
    from bnlab.data.datasets import data_shape, load_dataset

    data = load_dataset(name, **kwargs)
    assert data_shape(name, **kwargs) == (len(data.x_train), data.input_shape)


def _saved_bytes(model, x) -> int:
    """The bytes autograd keeps for backward in one training forward, parameters aside (they are counted
    with the parameters): the oracle for the activation estimate."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in parameters:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long))
    return sum(storages.values())


@pytest.mark.parametrize("overrides", [
    ("model.depth=10", "model.width=64"),
    ("model.depth=10", "model.width=64", "norm=none"),
    ("model.depth=7", "model.width=32", "norm=torch", "model.activation=gelu", "optim=adam"),
    ("model.depth=6", "model.width=64", "model.residual=true", "norm.position=after_act", "optim.momentum=0.9"),
    ("model=cnn", "model.depth=6", "model.width=16"),
    ("model=cnn", "model.depth=9", "model.width=8", "norm=none"),
    ("data=mnist1d", "model.depth=4", "model.width=32"),
    ("model.depth=20",),
])
def test_the_memory_estimate_matches_the_model_torch_builds(overrides):
    from bnlab.config.resources import estimate
    from bnlab.data.datasets import data_shape
    from bnlab.models.nets import build_model

    cfg = compose(*overrides)
    _, shape = data_shape(cfg.data.name)
    input_shape = (math.prod(shape),) if cfg.model.name == "mlp" else shape
    model = build_model(cfg.model, cfg.norm, input_shape, 10)
    need = estimate(cfg)
    assert need.parameters == sum(p.numel() for p in model.parameters())  # exact
    optimizer = torch.optim.Adam(model.parameters()) if cfg.optim.name == "adam" else torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=cfg.optim.momentum)
    model(torch.randn(cfg.data.batch_size, *input_shape)).sum().backward()
    optimizer.step()  # the optimizer's state exists from its first step
    state_bytes = sum(value.nbytes for state in optimizer.state.values() for value in state.values()
                      if torch.is_tensor(value) and value.dim() > 0)
    weight_bytes = sum(p.nbytes for p in model.parameters())
    telemetry_copies = 2 * weight_bytes  # the probes' weights before and after a measured step
    assert need.parameter_bytes == 2 * weight_bytes + state_bytes + telemetry_copies  # weights and gradients
    measured = _saved_bytes(model, torch.randn(cfg.data.batch_size, *input_shape))
    assert 0.7 * measured <= need.activation_bytes <= 1.5 * measured, (need.activation_bytes, measured)


@pytest.mark.parametrize("share,outcome", [(0.1, None), (0.5, "note"), (2.0, "refused")])
def test_check_fits_refuses_above_the_free_memory_and_announces_a_large_share(monkeypatch, share, outcome):
    from bnlab.config import resources
    from bnlab.errors import ConfigError

    cfg = compose("model.depth=40", "model.width=256")
    need = resources.estimate(cfg).total_bytes
    # this machine's free memory, set so that the run needs `share` of it
    monkeypatch.setattr(resources, "available_bytes", lambda device: (int(need / share), "available RAM"))
    if outcome == "refused":
        with pytest.raises(ConfigError, match=r"model.depth=40 model.width=256 .* is available RAM; reduce"):
            resources.check_fits(cfg, torch.device("cpu"))
        return
    note = resources.check_fits(cfg, torch.device("cpu"))
    assert (note is None) if outcome is None else note.startswith("a large model: about 2.")


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads /proc/meminfo (Linux)")
def test_the_free_memory_is_read_from_this_machine():
    from bnlab.config.resources import available_bytes

    free, what = available_bytes(torch.device("cpu"))
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024  # MemTotal, kB
    assert 0 < free <= total and what
