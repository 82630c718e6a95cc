"""Tiny float64 networks, batches and snapshots for the opt-in probes' oracle tests."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from bnlab.config.schema import ModelConfig, NormConfig
from bnlab.models.nets import build_model

BATCH, CLASSES = 8, 3
INPUT = {"mlp": (4,), "cnn": (2, 6, 6)}


def tiny_net(model: str = "mlp", norm: str = "bnlab", residual: bool = False, activation: str = "tanh",
             depth: int = 3, width: int = 5, seed: int = 0):
    """(network in float64 and training mode, x, y): a bnlab DeepNet as `bnlab train` builds it."""
    torch.manual_seed(seed)
    net = build_model(ModelConfig(name=model, depth=depth, width=width, activation=activation, residual=residual),
                      NormConfig(name=norm), INPUT[model], CLASSES).double()
    x = torch.randn(BATCH, *INPUT[model], dtype=torch.float64)
    y = torch.randint(0, CLASSES, (BATCH,))
    return net, x, y


def cross_entropy(net, x, y):
    return F.cross_entropy(net(x), y)


def snapshot(net, optimizer=None) -> dict:
    """Deep copies of everything a probe must leave alone: parameters, their gradients, buffers (BatchNorm's
    running statistics and num_batches_tracked) and the optimizer's state."""
    return {"state": copy.deepcopy(net.state_dict()),
            "grads": {name: None if p.grad is None else p.grad.clone() for name, p in net.named_parameters()},
            "optimizer": copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None}


def assert_same(a, b) -> None:
    """Bit-identical nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num()))
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for left, right in zip(a, b, strict=True):
            assert_same(left, right)
    else:
        assert a == b
