"""optim.adaptive_clip (adaptive gradient clipping, Brock et al. 2021): the clipping against a direct per-unit
loop in float64, in real trainings with the optimizers the trainer builds (fused, foreach), in two processes
against one, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, compose, run_bnlab, scalars, train_in_process

from bnlab.errors import ConfigError
from bnlab.train import loop
from bnlab.train.clipping import adaptive_clip_


def _clipped_by_loop(weight: torch.Tensor, grad: torch.Tensor, clipping: float) -> np.ndarray:
    """The paper's rule unit by unit, in Python floats: rows (output units) of a weight of 2 or more
    dimensions; a vector or a scalar as one unit."""
    w, g = weight.detach().double().numpy(), grad.double().numpy().copy()
    units = [...] if w.ndim <= 1 else range(w.shape[0])
    for unit in units:
        weight_norm = math.sqrt(sum(float(v) ** 2 for v in np.ravel(w[unit])))
        grad_norm = math.sqrt(sum(float(v) ** 2 for v in np.ravel(g[unit])))
        limit = clipping * max(weight_norm, 1e-3)
        if grad_norm > limit:
            g[unit] = g[unit] * (limit / grad_norm)
    return g


def _parameters(dtype: torch.dtype) -> list[torch.Tensor]:
    """A Linear weight and bias, a conv weight (also channels-last), BatchNorm's gain and shift (the shift at
    zero: the eps floor), a scalar, and a weight with a zero row; gradients of every size around the limit."""
    generator = torch.Generator().manual_seed(0)

    def random(shape, scale=1.0):
        return scale * torch.randn(tuple(shape), generator=generator, dtype=dtype)

    linear = random((6, 4))
    linear[2] = 0.0  # a unit whose weights are zero: its limit is clipping * 1e-3
    tensors = [linear, random((6,)), random((5, 3, 3, 3)), random((5, 3, 3, 3)).to(memory_format=torch.channels_last),
               torch.ones(6, dtype=dtype), torch.zeros(6, dtype=dtype), random(())]
    parameters = []
    for index, tensor in enumerate(tensors):
        parameter = torch.nn.Parameter(tensor)
        # gradients from 1e-4 to 100 times the size of the weights, unit by unit: some clipped, some not
        scale = (torch.logspace(-4, 2, len(tensor), dtype=dtype).reshape(-1, *[1] * (tensor.ndim - 1))
                 if tensor.ndim >= 2 else 10.0 ** (index % 4 - 2))
        parameter.grad = random(tensor.shape, scale=scale).contiguous(
            memory_format=torch.channels_last if tensor.ndim == 4 and index == 3 else torch.contiguous_format)
        if index == 0:
            parameter.grad[4] = 0.0  # a unit without gradient stays without
        parameters.append(parameter)
    return parameters


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("clipping", [0.01, 0.16, 1.0])
def test_adaptive_clipping_matches_a_direct_loop_over_units(dtype, clipping):
    parameters = _parameters(dtype)
    expected = [_clipped_by_loop(p, p.grad, clipping) for p in parameters]
    weights = [p.detach().clone() for p in parameters]
    adaptive_clip_(parameters, clipping)
    clipped = kept = 0
    tolerance = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 1e-9}
    for parameter, weight, want in zip(parameters, weights, expected, strict=True):
        assert torch.equal(parameter.detach(), weight)  # only the gradient changes
        assert parameter.grad.dtype == dtype
        np.testing.assert_allclose(parameter.grad.double().numpy(), want, **tolerance)
        units = [parameter.grad.double().reshape(-1)] if parameter.ndim <= 1 else parameter.grad.double().flatten(1)
        limits = [clipping * max(float(w.norm()), 1e-3) for w in ([weight.double().reshape(-1)] if weight.ndim <= 1
                                                                   else weight.double().flatten(1))]
        for unit, limit in zip(units, limits, strict=True):
            assert float(unit.norm()) <= limit * (1 + 1e-6)
            clipped += math.isclose(float(unit.norm()), limit, rel_tol=1e-6)
            kept += float(unit.norm()) < limit * 0.999
    assert clipped >= 4 and kept >= 4  # both sides of the rule were exercised


def test_a_parameter_without_gradient_is_skipped_and_non_finite_gradients_stay_non_finite():
    weight, bias, unused = (torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(3)),
                            torch.nn.Parameter(torch.ones(2)))
    weight.grad = torch.tensor([[1.0, math.nan], [math.inf, 1.0], [1e3, 0.0]])
    bias.grad = torch.tensor([math.inf, 0.0, 0.0])
    adaptive_clip_([weight, bias, unused], 0.01)
    assert unused.grad is None
    assert not torch.isfinite(weight.grad[0]).all() and not torch.isfinite(weight.grad[1]).all()
    assert not torch.isfinite(bias.grad).all()  # the finite check after clipping still sees the divergence
    assert weight.grad[2].norm().item() == pytest.approx(0.01 * math.sqrt(2), rel=1e-6)


class _NoFusedSGD(torch.optim.SGD):
    """SGD as on a device or torch without a fused kernel: build_optimizer falls back to foreach."""

    def __init__(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("no fused SGD kernel here")
        super().__init__(params, *args, **kwargs)


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_in_training_every_unit_moves_by_lr_times_lambda_of_its_weights(tmp_path, monkeypatch, kernel):
    """With a lambda so small that every unit is clipped, plain SGD moves each unit by exactly lr * lambda * ||W_i||,
    so each layer's update_ratio (read back from TensorBoard) is lr * lambda at every measured step."""
    if kernel == "foreach":
        monkeypatch.setattr(torch.optim, "SGD", _NoFusedSGD)
    built = []
    build = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", lambda cfg, model: built.append(build(cfg, model)) or built[-1])
    lr, clipping = 1.0, 1e-4
    run = [*(o for o in TINY if not o.startswith("log.every")), "optim=sgd", f"optim.lr={lr}", "log.every=1"]
    clipped = train_in_process(tmp_path / "clipped", *run, f"optim.adaptive_clip={clipping}")
    assert clipped.status == "completed"
    assert built[0].defaults["fused" if kernel == "fused" else "foreach"]
    ratios = {tag: values for tag, values in scalars(tmp_path / "clipped").items() if tag.startswith("update_ratio/")}
    assert len(ratios) == 4  # three hidden layers and the classifier
    for tag, values in ratios.items():
        assert [step for step, _ in values] == list(range(12)), tag
        np.testing.assert_allclose([value for _, value in values], lr * clipping, rtol=2e-3, err_msg=tag)
    plain = train_in_process(tmp_path / "plain", *run)
    assert plain.status == "completed"
    unclipped = [value for tag, values in scalars(tmp_path / "plain").items() if tag.startswith("update_ratio/")
                 for _, value in values]
    assert min(unclipped) > 10 * lr * clipping  # the same run without clipping takes far larger steps


@pytest.mark.slow  # a long end-to-end run; `make test-slow` (and CI) runs it
def test_two_processes_clip_the_averaged_gradients_as_one_process_does(tmp_path):
    """Clipping each process's own gradients before DDP's average would not give one process's training."""
    tiny = [*TINY, "optim.adaptive_clip=0.001", "norm.sync=true", "log.enabled=false"]
    reference = train_in_process(tmp_path / "one", *tiny)
    unclipped = train_in_process(tmp_path / "unclipped", *[o for o in tiny if "adaptive" not in o])
    assert reference.status == unclipped.status == "completed"
    result = run_bnlab("train", *tiny, "train.nproc=2", f"hydra.run.dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr
    final, expected, plain = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
                              for name in ("two", "one", "unclipped"))
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert any(not torch.allclose(plain[key].float(), value.float(), atol=1e-4) for key, value in expected.items()
               if key.endswith("weight"))  # the clipping changed the training


@pytest.mark.parametrize(("value", "read"), [("0", "0.0"), ("-0.5", "-0.5"), ("-1e-9", "-1e-09")])
def test_a_lambda_that_is_not_positive_is_refused_naming_the_key(value, read):
    with pytest.raises(ConfigError, match=rf"optim.adaptive_clip={read} is out of range; expected a clipping "
                                          r"threshold > 0 .*or null"):
        compose(f"optim.adaptive_clip={value}")


def test_the_cli_refuses_a_bad_lambda_in_one_line_and_takes_null(tmp_path):
    result = run_bnlab("train", *TINY, "optim.adaptive_clip=-1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()][0].startswith(
        "error: optim.adaptive_clip=-1.0 is out of range")
    assert not (tmp_path / "runs").exists()
    assert compose("optim.adaptive_clip=null").optim.adaptive_clip is None
    assert compose().optim.adaptive_clip is None and compose("optim=adam").optim.adaptive_clip is None
    with pytest.raises(ConfigError, match="optim.adaptive_clip=nan is not a finite number"):
        compose("optim.adaptive_clip=nan")
