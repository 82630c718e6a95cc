"""The training loop's parts against direct computations: the finite check and the optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose

from bnlab.models.nets import build_model
from bnlab.train.loop import FiniteCheck, build_optimizer


def _grads():
    torch.manual_seed(0)
    return [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2, 3, dtype=torch.float64)]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("where,bad", [(None, None), (0, math.nan), (1, math.inf), (2, -math.inf), ("loss", math.nan),
                                       ("loss", math.inf)])
def test_finite_check_flags_any_non_finite_value_and_leaves_gradients_alone(fused, where, bad):
    grads = _grads()
    loss = torch.tensor(2.5)
    if where == "loss":
        loss = torch.tensor(bad)
    elif where is not None:
        grads[where].view(-1)[3] = bad
    before = [g.clone() for g in grads]
    check = FiniteCheck(torch.device("cpu"))
    check.fused = fused and check.fused
    loss_value, finite = check(loss, grads)
    expected = all(torch.isfinite(g).all() for g in grads) and math.isfinite(loss.item())
    assert finite == expected == (where is None)
    assert loss_value == loss.item() or (math.isnan(loss_value) and math.isnan(loss.item()))
    for g, b in zip(grads, before, strict=True):
        assert torch.equal(g.nan_to_num(), b.nan_to_num()) and torch.equal(g.isnan(), b.isnan())
    # the flag is reset: a finite step after a non-finite one reads finite
    assert check(torch.tensor(1.0), _grads()) == (1.0, True)


def test_finite_check_falls_back_to_gradient_norms_where_the_overflow_kernel_is_missing(monkeypatch):
    def missing(*args):
        raise NotImplementedError("no kernel for this device")

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", missing)
    check = FiniteCheck(torch.device("cpu"))
    grads = _grads()
    grads[1][0] = math.nan
    assert check(torch.tensor(2.5), grads) == (2.5, False)
    assert not check.fused  # decided once, then the norms path every step
    assert check(torch.tensor(2.5), _grads()) == (2.5, True)


@pytest.mark.parametrize("optim", ["optim=sgd optim.momentum=0.9 optim.weight_decay=1e-3", "optim=adam optim.lr=1e-3"])
def test_the_optimizer_follows_torchs_reference_update(optim):
    cfg = compose("model.depth=3", "model.width=8", *optim.split())
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.norm, (5,), 3)
    reference = build_model(cfg.model, cfg.norm, (5,), 3)
    reference.load_state_dict(model.state_dict())
    ours = build_optimizer(cfg.optim, model)
    assert ours.defaults["fused"] or ours.defaults["foreach"]  # not the single-tensor loop it is checked against
    kind = torch.optim.Adam if cfg.optim.name == "adam" else torch.optim.SGD
    extra = {} if cfg.optim.name == "adam" else {"momentum": cfg.optim.momentum}
    theirs = kind(reference.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, foreach=False,
                  **extra)  # the single-tensor reference implementation
    for _ in range(5):
        x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
        for net, opt in ((model, ours), (reference, theirs)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channels_last_trains_the_same_network_in_another_memory_order(tmp_path):
    from conftest import TINY, train_in_process

    cnn = [*TINY, "model=cnn", "model.width=8", "train.steps=6", "log.every=2"]
    runs = {flag: train_in_process(tmp_path / f"cl_{flag}", *cnn, f"train.channels_last={flag}")
            for flag in ("true", "false")}
    assert all(run.status == "completed" for run in runs.values())
    a, b = runs["true"].metrics, runs["false"].metrics
    gradients = [tag for tag in a if tag.startswith("grad_norm/")]
    assert gradients and a.keys() == b.keys()
    for tag in gradients:  # the same numbers up to float32 rounding of another summation order
        assert a[tag] == pytest.approx(b[tag], rel=1e-3), tag
    state = torch.load(tmp_path / "cl_true" / "checkpoint.pt", weights_only=False)["model"]
    conv = state["blocks.1.weight_layer.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_summary_json_is_claimed_whole_and_only_once(tmp_path):
    """A new run's summary.json appears with its content (written aside, then linked into place), so a reader
    polling the directory never reads it empty; a second claim fails and leaves the first run's file as it was."""
    import json

    from bnlab.errors import RunFileError
    from bnlab.train import summary

    record = {"status": "running", "steps": 0, "total_steps": 10}
    summary.claim(tmp_path, record)
    first = (tmp_path / "summary.json").read_text()
    assert json.loads(first) == record
    with pytest.raises(RunFileError, match="already holds a run"):
        summary.claim(tmp_path, {**record, "total_steps": 99})
    assert (tmp_path / "summary.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # nothing left aside
