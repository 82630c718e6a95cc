"""The memory a configuration needs to train, estimated from the config alone before anything is built.

Without it, `model.depth=100000` spends minutes building layers and running step 0 before the
machine runs out of memory, with no word said. `check_fits` refuses such a config at once and
names the keys to change; a config that fits costs a few arithmetic operations to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from bnlab.data.datasets import NUM_CLASSES, data_shape
from bnlab.errors import ConfigError
from bnlab.formatting import byte_size

FLOAT_BYTES = 4  # float32 parameters, activations and data
LARGE_SHARE = 0.25  # a run that needs this share of the free memory or more is announced before it starts


@dataclass(frozen=True)
class Estimate:
    parameters: int
    parameter_bytes: int  # weights, gradients, optimizer state, telemetry's copies of the weights
    activation_bytes: int  # what one training step keeps for backward
    data_bytes: int  # the data set, held whole on the device

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes + self.data_bytes


def estimate(cfg) -> Estimate:
    """Parameters and bytes to train `cfg`: closed forms of bnlab.models.nets' MLP and CNN."""
    model, norm, data = cfg.model, cfg.norm, cfg.data
    samples, shape = data_shape(data.name, synthetic_dim=data.dim, synthetic_samples=data.samples)
    depth, width = model.depth, model.width
    # a norm layer right after the weight layer takes over its bias (nets._mlp, nets._cnn)
    per_block = (width if norm.name == "none" or norm.position == "after_act" else 0) + (
        2 * width if norm.name != "none" else 0)
    if model.name == "mlp":
        fan_in, kernel, pixels = math.prod(shape), 1, depth
    else:
        fan_in, kernel, pixels = shape[0], 9, _cnn_pixels(depth, shape[1], shape[2])
    parameters = (kernel * (fan_in * width + (depth - 1) * width * width) + depth * per_block
                  + width * NUM_CLASSES + NUM_CLASSES)
    slots = 2 if cfg.optim.name == "adam" else int(cfg.optim.momentum > 0)  # optimizer state per parameter
    copies = 2 if cfg.log.enabled else 0  # telemetry's weights before and after a measured step
    return Estimate(
        parameters=parameters,
        parameter_bytes=parameters * FLOAT_BYTES * (2 + slots + copies),  # weights, gradients, the rest
        activation_bytes=data.batch_size * width * pixels * FLOAT_BYTES * _saved_per_block(cfg),
        # the test split is at most a quarter of the training split's size (a fifth of the data)
        data_bytes=samples * 5 // 4 * math.prod(shape) * FLOAT_BYTES,
    )


def _saved_per_block(cfg) -> int:
    """Tensors of shape (batch, width[, H, W]) autograd keeps per hidden block for the backward pass: the
    block's output (also the next weight layer's input), the norm's input, GELU's input, a residual sum.
    tests/config/test_resources.py holds this to what torch.autograd.graph.saved_tensors_hooks sees."""
    return (1 + (cfg.norm.name != "none") + (cfg.model.activation == "gelu")
            + bool(cfg.model.residual))


def _cnn_pixels(depth: int, height: int, width: int) -> int:
    """Pixels per channel summed over the blocks' outputs: nets._cnn halves the image after a third and two
    thirds of the blocks while it is still 2 pixels or more. Arithmetic, not a loop: depth may be absurd."""
    pools = sorted({depth // 3 - 1, 2 * depth // 3 - 1} - {-1, depth - 1})
    total, done = 0, 0
    for last in [*pools, depth - 1]:  # blocks done..last share one resolution
        total += (last + 1 - done) * height * width
        done = last + 1
        if last != depth - 1 and height >= 2:
            height, width = height // 2, width // 2
    return total


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(free memory on `device` in bytes or None where unknown, what was measured)."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:  # a device torch cannot query: the run itself will tell
            return None, ""
        return free, f"free on {torch.cuda.get_device_name(device)}"
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None, ""
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    free = int(fields["MemAvailable"].split()[0]) * 1024 if "MemAvailable" in fields else None
    limit = _cgroup_limit()
    if free is not None and limit is not None and limit < free:
        return limit, "left under this process's memory limit (cgroup)"
    return free, "available RAM"


def _cgroup_limit() -> int | None:
    """Bytes still allowed by a cgroup v2 memory limit, if one applies (containers, batch jobs)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    return int(limit) - int(used) if limit.isdigit() and used.isdigit() else None


def check_fits(cfg, device: torch.device) -> str | None:
    """ConfigError when `cfg` clearly cannot fit the device's free memory; a note to show before a model that
    takes a large share of it (it will be slow to build and to step), else None."""
    need = estimate(cfg)
    free, what = available_bytes(device)
    if free is None:
        return None
    sizes = (f"about {need.parameters:.3g} parameters, and training needs about {byte_size(need.total_bytes)} "
             f"({byte_size(need.parameter_bytes)} for the weights, their gradients and copies, "
             f"{byte_size(need.activation_bytes)} activations per step)")
    if need.total_bytes > free:
        raise ConfigError(
            f"model.depth={cfg.model.depth} model.width={cfg.model.width} data.batch_size={cfg.data.batch_size}: "
            f"{sizes}, but {byte_size(free)} is {what}; reduce model.depth, model.width or data.batch_size")
    if need.total_bytes > LARGE_SHARE * free:
        return f"a large model: {sizes} of the {byte_size(free)} {what}; building it and its first steps take a while"
    return None
