"""What each opt-in probe costs: one measurement against one training step, side by side in one process.

Usage: .venv/bin/python scripts/bench_probes.py [--repeats N] [OVERRIDES...]   (e.g. model=cnn)
The model, data, optimizer, threads and denormal flushing are those `bnlab train OVERRIDES` uses. Each
repeat times 20 plain training steps and then one measurement of every probe (`StepProbes.measure` with
only that switch on), the order alternating; the table gives medians, the cost in training steps, and
the share it adds to a run measured every log.every steps.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bnlab.config.launch import compose_config
from bnlab.data.datasets import BatchSampler, load_dataset
from bnlab.models.nets import build_model
from bnlab.telemetry.step_probes import SWITCHES, StepProbes
from bnlab.train.loop import build_optimizer

STEPS_PER_REPEAT = 20


def main(argv: list[str]) -> None:
    repeats = 5
    if argv[:1] == ["--repeats"]:
        repeats, argv = int(argv[1]), argv[2:]
    cfg = compose_config(argv)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    torch.set_flush_denormal(cfg.train.flush_denormal)
    torch.manual_seed(cfg.train.seed)
    data = load_dataset(cfg.data.name, root=cfg.data.root, seed=cfg.train.seed, flatten=cfg.model.name == "mlp")
    model = build_model(cfg.model, cfg.norm, data.input_shape, data.num_classes)
    if cfg.train.channels_last and data.is_image and cfg.model.name == "cnn":
        model, data = model.to(memory_format=torch.channels_last), data.to_memory_format(torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model)
    sampler = BatchSampler(len(data.x_train), cfg.data.batch_size, seed=cfg.train.seed)

    def loss_of(net, x, y):
        return F.cross_entropy(net(x), y)

    def step():
        indices = sampler.next_indices()
        x, y = data.x_train[indices], data.y_train[indices]
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, x, y).backward()
        optimizer.step()
        return x, y

    probes = {}
    for name in SWITCHES:
        log = OmegaConf.merge(cfg.log, {switch: switch == name for switch in SWITCHES})
        log.images = False  # the plot is drawn twice a run at most; it is not part of a step's cost
        log.signal_prop_over_training = True  # measure it at every call, not only at step 0
        probes[name] = StepProbes(model, log, cfg.train.steps)
    times: dict[str, list[float]] = {"train step": [], **{name: [] for name in SWITCHES}}
    for repeat in range(repeats + 1):  # the first is a warm-up
        order = list(SWITCHES) if repeat % 2 == 0 else list(reversed(SWITCHES))
        start = time.perf_counter()
        for _ in range(STEPS_PER_REPEAT):
            step()
        step_seconds = (time.perf_counter() - start) / STEPS_PER_REPEAT
        x, y = step()  # the probes read the gradients of a finished backward pass
        for name in order:
            start = time.perf_counter()
            probes[name].measure(1, optimizer, loss_of, x, y)
            if repeat:
                times[name].append(time.perf_counter() - start)
        if repeat:
            times["train step"].append(step_seconds)
    step_ms = statistics.median(times["train step"]) * 1e3
    print(f"{' '.join(argv) or 'defaults'}: {cfg.model.name} depth {cfg.model.depth} width {cfg.model.width}, "
          f"batch {cfg.data.batch_size}, norm {cfg.norm.name}; median of {repeats}; "
          f"added to a run measured every log.every={cfg.log.every} steps")
    print(f"  {'train step':<16} {step_ms:8.2f} ms")
    for name in SWITCHES:
        ms = statistics.median(times[name]) * 1e3
        print(f"  {name:<16} {ms:8.2f} ms  = {ms / step_ms:5.1f} steps  +{ms / (cfg.log.every * step_ms):6.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
