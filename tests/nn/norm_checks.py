"""What the norm layers' tests share: one forward/backward pass, and the finite-difference checks of a layer's
gradients through its input, weight and bias."""

from __future__ import annotations

import torch


def step(forward, params, x, grad_out) -> list[torch.Tensor]:
    """[y, dx, then each of `params`' gradients] of one forward/backward of `forward` on a leaf copy of x."""
    x = x.detach().clone().requires_grad_()
    for p in params:
        p.grad = None
    y = forward(x)
    y.backward(grad_out)
    return [y, x.grad] + [p.grad for p in params]


def assert_gradchecks(layer: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """gradcheck and gradgradcheck of `layer` (float64, in the mode and state it is in) at a random input of
    `shape`, with its weight and bias as inputs too."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(shape[1], dtype=torch.float64).add_(0.5).requires_grad_()
    bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)

    def forward(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(forward, (x, weight, bias))
    assert torch.autograd.gradgradcheck(forward, (x, weight, bias))
