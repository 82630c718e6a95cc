"""Probes: per-layer gradient and activation statistics, observed through hooks.

The training loop only says when to measure (`start` before the forward pass,
`finish` after the optimizer step); it does not know which statistics exist.
Everything is computed on the device as 0-d tensors; the caller brings the lot to
the host in one transfer. Between measurements no hook is attached, so an
unlogged step costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PERCENTILES = {"p15": 0.15, "p50": 0.50, "p85": 0.85}


def norm(x: torch.Tensor) -> torch.Tensor:
    """L2/Frobenius norm accumulated in float64: the squares of a vanished float32 gradient (~1e-21 per
    element) underflow float32, and its norm would read 0 instead of ~1e-18."""
    return torch.linalg.vector_norm(x.detach(), dtype=torch.float64)


def saturated_mask(activation: str, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Units in the flat part of the nonlinearity, where the local derivative is about 0.

    sigmoid: y < 0.01 or y > 0.99; tanh: |y| > 0.99; relu: y == 0;
    gelu: pre-activation < -3 (derivative below 0.012); linear: never.
    """
    if activation == "sigmoid":
        return (post < 0.01) | (post > 0.99)
    if activation == "tanh":
        return post.abs() > 0.99
    if activation == "relu":
        return post == 0
    if activation == "gelu":
        return pre < -3.0
    return torch.zeros_like(post, dtype=torch.bool)


def percentiles(x: torch.Tensor, qs: list[float]) -> torch.Tensor:
    """Linear-interpolated percentiles of all elements of x (numpy's default method), one sort."""
    flat = x.detach().flatten()
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32)).sort().values  # (n,), bf16/fp16 widened
    position = torch.tensor(qs, device=flat.device, dtype=torch.float64) * (flat.numel() - 1)
    lower = position.floor().long()
    upper = torch.clamp(lower + 1, max=flat.numel() - 1)
    frac = (position - lower).to(flat.dtype)
    return flat[lower] * (1 - frac) + flat[upper] * frac


@dataclass
class Measurement:
    """One step's statistics: {tag: 0-d tensor} scalars and {tag: tensor} values to histogram."""

    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    histograms: dict[str, torch.Tensor] = field(default_factory=dict)


class Probes:
    """Hooks on a model's weight layers and activations (see `bnlab.models.DeepNet`)."""

    def __init__(self, model: nn.Module):
        self.layers: dict[str, nn.Module] = model.weight_layers
        self.activations: dict[str, nn.Module] = model.activations
        self.activation_name: str = model.activation_name
        self._handles: list = []
        self._weights_before: dict[str, torch.Tensor] = {}
        self._current = Measurement()
        self._histograms = False

    def start(self, histograms: bool = False) -> None:
        """Attach hooks for the coming forward/backward pass and remember the weights before the step."""
        self._current = Measurement()
        self._histograms = histograms
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_hook(self._output_hook(name)))
            self._weights_before[name] = layer.weight.detach().clone()
        for name, act in self.activations.items():
            self._handles.append(act.register_forward_hook(self._activation_hook(name)))

    def finish(self) -> Measurement:
        """Detach the hooks and add weight statistics (call after optimizer.step())."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        scalars = self._current.scalars
        for name, layer in self.layers.items():
            weight, before = layer.weight.detach(), self._weights_before.pop(name)
            if layer.weight.grad is not None:
                scalars[f"grad_norm/weight/{name}"] = norm(layer.weight.grad)
                if self._histograms:
                    self._current.histograms[f"grad/weight/{name}"] = layer.weight.grad.detach()
            weight_norm = norm(weight)
            scalars[f"weight_norm/{name}"] = weight_norm
            scalars[f"update_ratio/{name}"] = norm(weight - before) / weight_norm
        return self._current

    def _output_hook(self, name: str):
        def hook(module: nn.Module, inputs, z: torch.Tensor) -> None:
            # z is the layer's output before norm and activation; dL/dz is the back-propagated signal.
            if z.requires_grad:
                z.register_hook(lambda grad: self._store(f"grad_norm/output/{name}", norm(grad)))

        return hook

    def _activation_hook(self, name: str):
        def hook(module: nn.Module, inputs, post: torch.Tensor) -> None:
            pre = inputs[0].detach()  # the input to the nonlinearity (after BatchNorm when it comes first)
            post = post.detach()
            scalars = self._current.scalars
            scalars[f"preact/mean/{name}"] = pre.mean()
            scalars[f"preact/std/{name}"] = pre.std(correction=0)
            for key, value in zip(PERCENTILES, percentiles(pre, list(PERCENTILES.values())), strict=True):
                scalars[f"preact/{key}/{name}"] = value
            scalars[f"act/mean/{name}"] = post.mean()
            scalars[f"act/std/{name}"] = post.std(correction=0)
            saturated = saturated_mask(self.activation_name, pre, post)
            scalars[f"act/saturated/{name}"] = saturated.sum(dtype=torch.float64) / saturated.numel()
            if self._histograms:
                self._current.histograms[f"preact/{name}"] = pre

        return hook

    def _store(self, tag: str, value: torch.Tensor) -> None:
        self._current.scalars[tag] = value
