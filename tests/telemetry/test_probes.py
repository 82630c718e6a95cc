"""Probes against values computed directly (numpy and retained gradients) on a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose

from bnlab.models.nets import build_model
from bnlab.telemetry.layout import saturated_mask
from bnlab.telemetry.probes import Probes
from bnlab.telemetry.statistics import HISTOGRAM_BINS, HISTOGRAM_HEAD


def _tiny(activation="sigmoid", norm="bnlab", position="before_act"):
    cfg = compose("model.depth=3", "model.width=6", f"model.activation={activation}", f"norm={norm}",
                  f"norm.position={position}")
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.norm, (5,), 4).double()


def _direct(net, x, y):
    """Forward by hand, block by block, keeping z (layer output) and the nonlinearity's input and output."""
    zs, pres, posts = [], [], []
    h = x
    for block in net.blocks:
        z = block.weight_layer(h)
        z.retain_grad()
        pre = block.norm(z) if block.norm_first else z
        post = block.act(pre)
        h = block.norm(post) if not block.norm_first else post
        zs.append(z), pres.append(pre), posts.append(post)
    logits = net.classifier(h)
    logits.retain_grad()
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return zs + [logits], pres, posts


@pytest.mark.parametrize("activation,norm,position", [
    ("sigmoid", "bnlab", "before_act"), ("tanh", "none", "before_act"),
    ("relu", "bnlab", "after_act"), ("gelu", "torch", "before_act"),
])
def test_every_statistic_equals_a_direct_computation(activation, norm, position):
    torch.manual_seed(1)
    x, y = torch.randn(16, 5, dtype=torch.float64) * 3, torch.randint(0, 4, (16,))
    reference = _tiny(activation, norm, position)
    zs, pres, posts = _direct(reference, x, y)

    net = _tiny(activation, norm, position)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    probes = Probes(net)
    probes.start(histograms=True)
    optimizer.zero_grad()
    F.cross_entropy(net(x), y).backward()
    weights_before = [layer.weight.detach().clone() for layer in net.weight_layers.values()]
    optimizer.step()
    measured = probes.finish()
    s = {tag: value.item() for tag, value in measured.scalars.items()}

    for i, layer in enumerate(net.weight_layers.values()):
        name = f"layer{i:02d}"
        ref_layer = list(reference.weight_layers.values())[i]
        assert s[f"grad_norm/output/{name}"] == pytest.approx(np.linalg.norm(zs[i].grad.numpy()), rel=1e-10)
        assert s[f"grad_norm/weight/{name}"] == pytest.approx(np.linalg.norm(ref_layer.weight.grad.numpy()), rel=1e-10)
        w_after = layer.weight.detach().numpy()
        assert s[f"weight_norm/{name}"] == pytest.approx(np.linalg.norm(w_after), rel=1e-10)
        step = np.linalg.norm(w_after - weights_before[i].numpy())
        assert step == pytest.approx(0.5 * np.linalg.norm(ref_layer.weight.grad.numpy()), rel=1e-8)  # plain SGD
        assert s[f"update_ratio/{name}"] == pytest.approx(step / np.linalg.norm(weights_before[i].numpy()), rel=1e-10)
    for i, (pre, post) in enumerate(zip(pres, posts, strict=True)):
        name, pre, post = f"layer{i:02d}", pre.detach().numpy(), post.detach().numpy()
        assert s[f"preact/mean/{name}"] == pytest.approx(pre.mean(), rel=1e-10, abs=1e-12)
        assert s[f"preact/std/{name}"] == pytest.approx(pre.std(), rel=1e-10)
        for key, q in (("p15", 15), ("p50", 50), ("p85", 85)):
            assert s[f"preact/{key}/{name}"] == pytest.approx(np.percentile(pre, q), rel=1e-10, abs=1e-12)
            # one fixed unit (unit 0) over the batch, as Ioffe & Szegedy plot it
            assert s[f"preact/unit0/{key}/{name}"] == pytest.approx(np.percentile(pre[:, 0], q), rel=1e-10,
                                                                    abs=1e-12)
        assert s[f"act/mean/{name}"] == pytest.approx(post.mean(), rel=1e-10, abs=1e-12)
        assert s[f"act/std/{name}"] == pytest.approx(post.std(), rel=1e-10)
        flat = {"sigmoid": (post < 0.01) | (post > 0.99), "tanh": np.abs(post) > 0.99, "relu": post == 0,
                "gelu": pre < -3}[activation]
        assert s[f"act/saturated/{name}"] == pytest.approx(flat.mean(), abs=1e-12)
    # histograms: of every hidden layer's preactivation and every weight gradient, binned as numpy bins them
    rows = dict(zip(measured.histogram_tags, measured.histogram_rows.tolist(), strict=True))
    expected = {f"preact/layer{i:02d}": pre.detach().numpy() for i, pre in enumerate(pres)}
    expected |= {f"grad/weight/layer{i:02d}": layer.weight.grad.numpy()
                 for i, layer in enumerate(reference.weight_layers.values())}
    # and of log10 |g|, zeros left out, so vanished and healthy gradients both get bins
    expected |= {f"grad/log10_abs_weight/layer{i:02d}": np.log10(np.abs(grad[grad != 0]))
                 for i, grad in enumerate(layer.weight.grad.numpy() for layer in reference.weight_layers.values())}
    assert set(rows) == set(expected) and "preact/layer03" not in rows
    for tag, values in expected.items():
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(values.min(), values.max()))
        row = rows[tag]
        assert row[:3] == [values.min(), values.max(), values.size]
        assert row[3] == pytest.approx(values.sum(), rel=1e-9, abs=1e-12)
        assert row[4] == pytest.approx((values ** 2).sum(), rel=1e-9)
        assert row[HISTOGRAM_HEAD:HISTOGRAM_HEAD + HISTOGRAM_BINS] == counts.tolist()
        assert row[HISTOGRAM_HEAD + HISTOGRAM_BINS:] == edges[1:].tolist()
    assert "preact/mean/layer03" not in s  # the classifier has no nonlinearity


def test_hooks_are_gone_after_finish_so_unlogged_steps_cost_nothing():
    net = _tiny()
    probes = Probes(net)
    probes.start()
    net(torch.randn(8, 5, dtype=torch.float64)).sum().backward()
    probes.finish()
    for module in net.modules():
        assert not module._forward_hooks


def test_saturation_thresholds():
    y = torch.tensor([0.005, 0.5, 0.995])
    assert saturated_mask("sigmoid", y, y).tolist() == [True, False, True]
    assert saturated_mask("tanh", y, torch.tensor([-0.999, 0.0, 0.98])).tolist() == [True, False, False]
    assert saturated_mask("relu", y, torch.tensor([0.0, 0.1, 0.0])).tolist() == [True, False, True]
    assert saturated_mask("linear", y, y).tolist() == [False, False, False]


def test_convolution_unit_percentiles_cover_channel_zero_over_batch_and_positions():
    cfg = compose("model=cnn", "model.depth=3", "model.width=4", "norm=bnlab")
    torch.manual_seed(2)
    net = build_model(cfg.model, cfg.norm, (1, 8, 8), 3).double()
    seen = {}
    for name, act in net.activations.items():  # the nonlinearity's input, captured independently
        act.register_forward_hook(lambda m, inputs, out, name=name: seen.__setitem__(name, inputs[0].detach()))
    probes = Probes(net)
    probes.start()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    F.cross_entropy(net(x), torch.tensor([0, 1, 2, 0, 1])).backward()
    s = {tag: value.item() for tag, value in probes.finish().scalars.items()}
    assert seen
    for name, pre in seen.items():
        channel = pre[:, 0].numpy()  # (batch, H, W)
        assert channel.size > 5
        for key, q in (("p15", 15), ("p50", 50), ("p85", 85)):
            assert s[f"preact/unit0/{key}/{name}"] == pytest.approx(np.percentile(channel, q), rel=1e-10, abs=1e-12)
            assert s[f"preact/{key}/{name}"] == pytest.approx(np.percentile(pre.numpy(), q), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_compiled_and_pytorch_statistics_agree_on_a_float32_step(model, monkeypatch):
    """The same captured step measured by bnlab's compiled loops and by PyTorch ops (BNLAB_NATIVE=0)."""
    from bnlab.telemetry import native

    cfg = compose(f"model={model}", "model.depth=3", "model.width=8", "norm=bnlab")
    torch.manual_seed(3)
    shape = (1, 8, 8) if model == "cnn" else (20,)
    net = build_model(cfg.model, cfg.norm, shape, 4)
    x = torch.randn(16, *shape)
    if model == "cnn":  # as a CNN trains here
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    probes = Probes(net)
    probes.start(histograms=True)
    F.cross_entropy(net(x), torch.randint(0, 4, (16,))).backward()
    optimizer.step()
    capture = probes.capture()
    assert native.handles(list(capture.weight_grads.values())), "the compiled statistics did not build"
    compiled = capture.measure()
    monkeypatch.setenv("BNLAB_NATIVE", "0")
    reference = capture.measure()
    assert isinstance(compiled.values, np.ndarray) and isinstance(reference.values, torch.Tensor)  # the two paths
    assert compiled.tags == reference.tags and compiled.histogram_tags == reference.histogram_tags
    assert compiled.values.tolist() == pytest.approx(reference.values.tolist(), rel=1e-12, abs=1e-300)
    # log10 |g| rows: the C library's log10 and numpy's may differ in the last bit (both within one ulp), so
    # their extremes and edges agree to a few ulps and their counts exactly; every other row agrees bit for bit
    logs = [tag.startswith("grad/log10_abs_weight/") for tag in compiled.histogram_tags]
    for row, other, log in zip(compiled.histogram_rows.tolist(), reference.histogram_rows.tolist(), logs, strict=True):
        same = (lambda a, b: a == pytest.approx(b, rel=1e-15, abs=1e-13)) if log else (lambda a, b: a == b)
        assert same(row[:2], other[:2]) and row[2] == other[2]
        assert row[3:5] == pytest.approx(other[3:5], rel=1e-12)
        edges = HISTOGRAM_HEAD + HISTOGRAM_BINS
        assert row[HISTOGRAM_HEAD:edges] == other[HISTOGRAM_HEAD:edges] and same(row[edges:], other[edges:])
    assert any(logs) and not all(logs)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "gelu", "linear"])
def test_saturation_on_both_paths_uses_the_mask_s_float32_thresholds(activation, monkeypatch):
    from bnlab.telemetry import native
    from bnlab.telemetry.layout import saturated_fractions

    # values on and next to each threshold, in float32
    edges = torch.tensor([0.01, 0.99, -0.99, 0.0, -3.0])
    pre = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1), torch.randn(40)])
    post = pre.flip(0).clone()
    expected = [saturated_mask(activation, pre, post).double().mean().item(),
                saturated_mask(activation, pre[:7], post[:7]).double().mean().item()]
    assert saturated_fractions(activation, [pre, pre[:7]], [post, post[:7]]).tolist() == expected
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    pres, posts = [pre[:, None], pre[:7, None]], [post[:, None], post[:7, None]]  # (batch, units), as layers give
    compiled = native.StepStatistics([], [], [], [], pres, posts, 0, activation, (("act_saturated", None, 0),), 2)
    assert compiled.values.tolist() == expected


def test_hooks_kept_for_the_next_measured_step_are_not_doubled_and_ignore_evaluation():
    net = _tiny()
    probes = Probes(net)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 4, (8,))
    measurements = []
    for keep in (True, True, False):
        probes.start()
        F.cross_entropy(net(x), y).backward()
        measurements.append(probes.finish(keep_hooks=keep).scalars)
        hooked = sum(len(module._forward_hooks) for module in net.modules())
        assert hooked == (len(net.weight_layers) + len(net.activations) if keep else 0)
        with torch.no_grad():
            net(torch.randn(50, 5, dtype=torch.float64))  # an evaluation between measured steps
        assert probes._pre_post == {} and probes._outputs == {}
    # each step measured its own batch of 8 (not the evaluation's 50): the same tags, the same values
    assert measurements[0].keys() == measurements[2].keys()
    for tag in measurements[0]:
        if tag.startswith(("preact/", "act/", "grad_norm/output")):
            assert measurements[1][tag].item() == pytest.approx(measurements[0][tag].item(), rel=1e-12), tag


def test_the_update_ratio_of_later_steps_uses_that_step_s_weights_before():
    # from the second measured step on, the weights before are copied into the first step's buffers
    net = _tiny()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    probes = Probes(net)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 4, (8,))
    for _ in range(3):
        before = [layer.weight.detach().clone() for layer in net.weight_layers.values()]
        probes.start()
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        s = {tag: value.item() for tag, value in probes.finish(keep_hooks=True).scalars.items()}
        for i, layer in enumerate(net.weight_layers.values()):
            after = layer.weight.detach().numpy()
            expected = np.linalg.norm(after - before[i].numpy()) / np.linalg.norm(before[i].numpy())
            assert s[f"update_ratio/layer{i:02d}"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("fused", [False, True])
def test_weight_copies_of_consecutive_steps_alternate_and_stay_out_of_autograd(fused):
    """With copy_weights (telemetry's log.background), the copy of the weights after step t is the weights
    before step t + 1 when that step is measured; the copies never join a graph; a change in between is
    noticed, whether by an optimizer step (fused ones leave the weights' version counters alone: the step
    count tells) or by another in-place change."""
    net = _tiny()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, **({"fused": True} if fused else {"foreach": True}))
    probes = Probes(net)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 4, (8,))
    captures = []
    for step in (0, 1, 2, 4):
        if step == 2:
            with torch.no_grad():  # a change between measured steps (as a checkpoint load would make)
                next(iter(net.weight_layers.values())).weight.mul_(1.5)
        if step == 4:  # an unmeasured step in between
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        assert probes.start_copies(step) == (step != 1)
        probes.start(step)
        before = [layer.weight.detach().clone() for layer in net.weight_layers.values()]
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        capture = probes.capture(keep_hooks=True, copy_weights=True)
        assert not any(t.requires_grad for t in capture.weights_before + capture.weights_after)
        assert all(torch.equal(copy, weight) for copy, weight in zip(capture.weights_before, before, strict=True))
        assert all(torch.equal(copy, layer.weight) for copy, layer in zip(capture.weights_after,
                                                                            net.weight_layers.values(), strict=True))
        captures.append(capture)
    assert captures[1].weights_before[0] is captures[0].weights_after[0]  # reused, not copied again
    probes.detach()
