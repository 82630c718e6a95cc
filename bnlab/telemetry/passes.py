"""What the opt-in probes share: a private copy of the model, the step the optimizer would take,
gradients of the training objective, and the random state they must leave as they found it.

The opt-in probes (`landscape`, `covariate_shift`, `signal_propagation`, `gradient_noise`) run extra
forward and backward passes at a measured step. They run them on a `replica` (a deep copy without
anyone's hooks, kept from one measurement to the next by `Twin`), never on the live model: the live
parameters, their gradients, BatchNorm's running statistics and `num_batches_tracked`, and the
optimizer's state are only read, so the training step that follows is the one an unmeasured run
takes, to the bit. `preserved_rng` covers the random generators (torch's, CUDA's, numpy's and
Python's), which none of the probes draws from today.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

# loss_of(model, x, y) -> 0-d loss: the training objective, which the loop hands over on measured steps
LossFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def replica(model: nn.Module) -> nn.Module:
    """A deep copy of `model` (parameters, buffers, train/eval mode) without gradients or hooks: the
    live model's probes must not see the copy's passes, and the copy's passes change nothing live."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks is not None:
                hooks.clear()
    for parameter in twin.parameters():
        parameter.grad = None
    _replay_noise(twin, model)
    return twin


def _replay_noise(twin: nn.Module, model: nn.Module) -> None:
    """Layers that draw noise at every training pass (norm=noisy) repeat the live step's draw in the copy."""
    for target, source in zip(twin.modules(), model.modules(), strict=True):
        if hasattr(target, "replay_noise_of"):
            target.replay_noise_of(source)


class Twin:
    """One private copy of a live model, made once (`replica`) and refreshed before each use: a deep copy
    of the default MLP costs about two of its forward passes, a refresh one copy of its tensors."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._copy: nn.Module | None = None

    @torch.no_grad()
    def synced(self) -> nn.Module:
        """The copy, holding the live model's parameters, buffers and train/eval modes now."""
        if self._copy is None:
            self._copy = replica(self.model)
            return self._copy
        for target, source in zip(self._copy.modules(), self.model.modules(), strict=True):
            target.training = source.training
        targets = [*self._copy.parameters(), *self._copy.buffers()]
        torch._foreach_copy_(targets, [*self.model.parameters(), *self.model.buffers()])
        _replay_noise(self._copy, self.model)
        return self._copy


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore every random generator the training run draws from (torch CPU and CUDA, numpy, Python)."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def loss_and_grads(model: nn.Module, loss_of: LossFunction, x: torch.Tensor, y: torch.Tensor,
                   params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The detached loss on (x, y) and its gradient with respect to each of `params` (zeros where unused)."""
    loss = loss_of(model, x, y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(sum of numels,) float64: the tensors as one vector, for norms and inner products."""
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """||tensors as one vector||, 0-d float64: one norm kernel for all of them, no concatenated copy."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).double())


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> / (|a| |b|) of two float64 vectors (NaN when either is zero)."""
    return torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))


def layer_units(model: nn.Module) -> list[tuple[str, list[str], str]]:
    """(layer name, its parameters' names, its weight's name) per weight layer, input side first.

    A layer is a whole block of `bnlab.models.nets.DeepNet` (weight layer, bias, BatchNorm's gamma and beta),
    the classifier is the last; the names are `named_parameters` names, the same in a `replica`."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    units = [*model.blocks, model.classifier]
    layers = model.weight_layers
    if len(units) != len(layers):
        raise ValueError(f"expected one block per weight layer, got {len(units)} blocks and {len(layers)} layers")
    return [(layer_name, [names[id(p)] for p in unit.parameters()], names[id(layer.weight)])
            for (layer_name, layer), unit in zip(layers.items(), units, strict=True)]


@torch.no_grad()
def parameters_after_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """{parameter name: its value after the step `optimizer` would take now}, from the gradients in `.grad`.

    The step is taken by a twin of the optimizer (same class, hyperparameters and a deep copy of its state:
    momentum buffers, Adam's moments and step counts) on clones of the parameters, so it is the live step's
    arithmetic, kernel and all, and the live optimizer and parameters stay untouched."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    clones: dict[str, torch.Tensor] = {}
    groups = []
    for group in optimizer.param_groups:
        group_clones = []
        for parameter in group["params"]:
            clone = parameter.detach().clone().requires_grad_(parameter.requires_grad)
            clone.grad = None if parameter.grad is None else parameter.grad.detach().clone()
            clones[names[id(parameter)]] = clone
            group_clones.append(clone)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": group_clones})
    twin = type(optimizer)(groups, **optimizer.defaults)
    # A deep copy: load_state_dict keeps the given state tensors, and the twin's step updates them in place.
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.step()
    return {name: clone.detach() for name, clone in clones.items()}
