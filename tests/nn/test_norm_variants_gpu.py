"""The norm variants on a CUDA device against the same layers on the CPU: values, gradients and state
after training steps and in eval mode (the noisy layer's noise is drawn on the CPU, so it is the same).

Marked `gpu`: deselected by default and in CI (which has no GPU); run with `pytest -m gpu` where a GPU is
present.
"""

import copy

import pytest
import torch

from bnlab.nn import create_norm

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-4, "rtol": 1e-4}}
OPTIONS = {"ghost": {"ghost_batch_size": 4}, "renorm": {"warmup_steps": 1, "rmax_step": 2, "dmax_step": 2},
           "noisy": {"seed": 3}, "layer": {}, "group": {"groups": 4}}


def _step(layer, x, grad_out):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad_out)
    return [y, x.grad, layer.weight.grad, layer.bias.grad]


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("shape, channels_last", [((16, 8), False), ((8, 8, 5, 5), False), ((8, 8, 5, 5), True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(name, shape, channels_last, dtype):
    torch.manual_seed(0)
    cpu = create_norm(name, shape[1], dim=2 if len(shape) == 4 else 1, **OPTIONS[name]).to(dtype)
    with torch.no_grad():
        cpu.weight.uniform_(0.5, 1.5)
        cpu.bias.normal_()
    cuda = copy.deepcopy(cpu).cuda()
    for training in (True, True, True, False):
        cpu.train(training)
        cuda.train(training)
        x, grad_out = torch.randn(shape, dtype=dtype) * 2 + 1, torch.randn(shape, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for ours, reference in zip(_step(cuda, x.cuda(), grad_out.cuda()), _step(cpu, x, grad_out), strict=True):
            torch.testing.assert_close(ours.cpu(), reference, **TOL[dtype])
        for key, value in cpu.state_dict().items():
            torch.testing.assert_close(cuda.state_dict()[key].cpu(), value, **TOL[dtype], msg=key)
