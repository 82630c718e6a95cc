"""Synchronized BatchNorm (bnlab.nn.sync) against its oracle: torch's own BatchNorm on the concatenated batch.

Two and three real processes on the gloo backend (loopback only, rendezvous through a file) each hold one
part of a global batch, uneven parts and an empty one included. Every process checks its outputs, input
gradients and running statistics against torch's layer run on the whole batch in one process, and the sum
of the processes' weight and bias gradients against the layer's.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bnlab.nn import BatchNorm1d, BatchNorm2d
from bnlab.nn.batchnorm import convert_sync_batchnorm
from bnlab.nn.sync import combine_moments, is_synchronized

TOLERANCE = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}
C = 4
# (per-process batch sizes, input shape after N, memory format, dtype, momentum, affine): one spawn runs them all
CASES = [
    ((7, 3), (), torch.contiguous_format, torch.float64, 0.1, True),
    ((7, 3), (5,), torch.contiguous_format, torch.float64, None, True),
    ((2, 5), (3, 3), torch.channels_last, torch.float64, 0.1, False),
    ((6, 6), (3, 2), torch.contiguous_format, torch.float32, 0.1, True),
    ((5, 0, 4), (), torch.contiguous_format, torch.float64, 0.1, True),
    ((0, 3, 9), (3, 3), torch.contiguous_format, torch.float64, None, True),
    ((4, 0, 2), (6,), torch.contiguous_format, torch.float32, 0.5, True),
]


def _loopback_interface() -> str:
    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def _spawn(worker, world_size: int, tmp_path, monkeypatch, *args) -> list[int]:
    """Run worker(rank, world_size, store, *args) in world_size fresh processes; a failure in any is raised here.
    Returns the ranks that ran to their end (each worker marks it with `_finished`)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", _loopback_interface())  # gloo talks over loopback only
    store = str(tmp_path / "rendezvous")
    mp.start_processes(worker, args=(world_size, store, *args), nprocs=world_size, start_method="spawn")
    return sorted(int(path.name.rsplit(".", 1)[1]) for path in tmp_path.glob("rendezvous.finished.*"))


def _finished(rank: int, store: str) -> None:
    open(f"{store}.finished.{rank}", "w").close()


def _init(rank: int, world_size: int, store: str) -> None:
    torch.set_num_threads(1)
    # A lost peer ends the test with an error after the timeout instead of a hang.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))


def _layers(tail: tuple, dtype, momentum, affine):
    """(bnlab's layer with sync=True, torch's layer) with the same random affine parameters."""
    ours_cls, torch_cls = (BatchNorm2d, torch.nn.BatchNorm2d) if len(tail) == 2 else (
        BatchNorm1d, torch.nn.BatchNorm1d)
    ours = convert_sync_batchnorm(ours_cls(C, momentum=momentum, affine=affine, dtype=dtype))
    ref = torch_cls(C, momentum=momentum, affine=affine, dtype=dtype)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
            ours.weight.copy_(ref.weight)
            ours.bias.copy_(ref.bias)
    return ours, ref


def _step(layer, x, grad_out):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad_out)
    return y.detach(), x.grad, [p.grad for p in (layer.weight, layer.bias) if p is not None]


def _check_case(rank: int, sizes, tail, memory_format, dtype, momentum, affine) -> None:
    tolerance = TOLERANCE[dtype]
    ours, ref = _layers(tail, dtype, momentum, affine)
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    for _ in range(3):  # training steps: batch statistics and running-statistics updates
        x = (torch.randn(sum(sizes), C, *tail, dtype=dtype) * 3 + 2).contiguous(memory_format=memory_format)
        grad_out = torch.randn_like(x)  # the same on every process: all draw from the same seed
        y, dx, grads = _step(ours, x[start:stop], grad_out[start:stop])
        y_ref, dx_ref, grads_ref = _step(ref, x, grad_out)
        torch.testing.assert_close(y, y_ref[start:stop], **tolerance)
        torch.testing.assert_close(dx, dx_ref[start:stop], **tolerance)
        for grad, grad_ref in zip(grads, grads_ref, strict=True):
            total = grad.clone()
            dist.all_reduce(total)  # as DistributedDataParallel adds the processes' shares
            torch.testing.assert_close(total, grad_ref, **tolerance)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **tolerance)
        torch.testing.assert_close(ours.running_var, ref.running_var, **tolerance)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
        dims = (0, *range(2, x.dim()))
        torch.testing.assert_close(ours.batch_mean, x.mean(dims), **tolerance)  # probes see the global batch
        torch.testing.assert_close(ours.batch_var, x.var(dims, unbiased=False), **tolerance)


def parity_worker(rank: int, world_size: int, store: str) -> None:
    _init(rank, world_size, store)
    assert is_synchronized()
    for case in CASES:
        if len(case[0]) == world_size:
            torch.manual_seed(sum(map(ord, repr(case))))
            _check_case(rank, *case)
    dist.destroy_process_group()
    _finished(rank, store)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch(world_size, tmp_path, monkeypatch):
    assert _spawn(parity_worker, world_size, tmp_path, monkeypatch) == list(range(world_size))


def special_cases_worker(rank: int, world_size: int, store: str) -> None:
    _init(rank, world_size, store)
    calls = []
    for name in ("all_gather", "all_reduce"):
        original = getattr(dist, name)
        setattr(dist, name, lambda *a, _original=original, _name=name, **k: (calls.append(_name),
                                                                             _original(*a, **k))[1])
    layer = convert_sync_batchnorm(BatchNorm1d(C, dtype=torch.float64))
    x = torch.randn(3 + rank, C, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert calls == ["all_gather", "all_reduce"], calls  # one collective each way

    # Eval mode does not communicate, even where it normalizes with batch statistics.
    calls.clear()
    layer.eval()
    untracked = convert_sync_batchnorm(BatchNorm1d(C, track_running_stats=False, dtype=torch.float64)).eval()
    local = torch.randn(5, C, dtype=torch.float64)
    torch.testing.assert_close(untracked(local), (local - local.mean(0)) / (local.var(0, unbiased=False) + 1e-5)
                               .sqrt(), atol=1e-10, rtol=1e-10)
    layer(local)
    assert calls == [], calls

    # One value per channel across all processes has no variance: every process refuses alike.
    layer.train()
    with torch.no_grad():
        single = torch.randn(1 if rank == 0 else 0, C, dtype=torch.float64)
        try:
            layer(single)
        except ValueError as error:
            assert "one across all 2 processes" in str(error), error
        else:
            raise AssertionError("a global batch of one value per channel was accepted")
    # An empty global batch gives an empty output and leaves the statistics as they were.
    before = layer.running_mean.clone()
    assert layer(torch.empty(0, C, dtype=torch.float64)).shape == (0, C)
    torch.testing.assert_close(layer.running_mean, before)
    dist.destroy_process_group()
    _finished(rank, store)


def test_sync_batchnorm_communicates_once_each_way_and_never_in_eval(tmp_path, monkeypatch):
    assert _spawn(special_cases_worker, 2, tmp_path, monkeypatch) == [0, 1]


@pytest.mark.parametrize("group", ["none", "one process"])
def test_without_a_group_of_two_sync_is_plain_batchnorm(group, tmp_path, monkeypatch):
    torch.manual_seed(0)
    plain, synced = BatchNorm2d(C, dtype=torch.float64), convert_sync_batchnorm(BatchNorm2d(C, dtype=torch.float64))
    x = torch.randn(6, C, 3, 3, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    if group == "one process":
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", _loopback_interface())
        _init(0, 1, str(tmp_path / "rendezvous"))
    try:
        assert not is_synchronized()
        for got, want in zip(_step(synced, x, grad_out), _step(plain, x, grad_out), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.testing.assert_close(synced.running_var, plain.running_var, atol=0, rtol=0)


def test_combine_moments_equals_the_moments_of_the_concatenation():
    torch.manual_seed(0)
    parts = [torch.randn(n, 3, dtype=torch.float64) * 5 + 100 for n in (4, 0, 1, 9)]
    counts = torch.tensor([float(len(p)) for p in parts], dtype=torch.float64)
    means = torch.stack([p.mean(0) if len(p) else torch.full((3,), 7.0, dtype=torch.float64) for p in parts])
    m2s = torch.stack([(p - p.mean(0)).square().sum(0) if len(p) else torch.zeros(3, dtype=torch.float64)
                       for p in parts])
    count, mean, m2 = combine_moments(counts, means, m2s)
    whole = torch.cat(parts)
    assert count == len(whole)
    torch.testing.assert_close(mean, whole.mean(0), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(m2 / len(whole), whole.var(0, unbiased=False), atol=1e-10, rtol=1e-10)


def test_convert_sync_batchnorm_keeps_bnlab_layers_and_their_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, C), BatchNorm1d(C), torch.nn.BatchNorm1d(C))
    model[1].running_mean.fill_(2.0)
    assert convert_sync_batchnorm(model) is model
    assert type(model[1]) is BatchNorm1d and model[1].sync and "sync=True" in repr(model[1])
    assert not hasattr(model[2], "sync")  # torch's layer is not bnlab's to convert
    assert model[1].running_mean.eq(2.0).all()
    assert set(model[1].state_dict()) == set(torch.nn.BatchNorm1d(C).state_dict())
