"""A training step of the default CNN in contiguous (NCHW) and channels-last (NHWC) memory order.

Usage: .venv/bin/python scripts/bench_channels_last.py [--repeats 7] [--steps 50]
Interleaved, median of repeats, one torch thread (bnlab's default): the measurement behind the
default `train.channels_last=true`.
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

from bnlab.bench.targets import interleaved, machine
from bnlab.config.launch import compose_config
from bnlab.models.nets import build_model


def step_function(channels_last: bool):
    cfg = compose_config(["model=cnn"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.norm, (1, 8, 8), 10)
    x, y = torch.randn(cfg.data.batch_size, 1, 8, 8), torch.randint(0, 10, (cfg.data.batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = {name: step_function(name == "channels_last") for name in ("contiguous", "channels_last")}

    def arm(step):
        return lambda: [step() for _ in range(args.steps)]

    times = interleaved({name: arm(step) for name, step in steps.items()}, args.repeats)
    ms = {name: statistics.median(t) / args.steps * 1e3 for name, t in times.items()}
    print(machine())
    print(f"default CNN step: contiguous {ms['contiguous']:.2f} ms, channels-last {ms['channels_last']:.2f} ms, "
          f"ratio {ms['channels_last'] / ms['contiguous']:.3f}")


if __name__ == "__main__":
    main()
