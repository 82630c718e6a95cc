"""The typed config schema and the checks that run before any work.

Config is data: the YAML groups in `configs/` fill in this schema, registered in
Hydra's ConfigStore so that a misspelled key or a wrong type fails at compose
time. `validate` adds the checks a type cannot express (ranges, choices that must
fit together) and names the key, the value, what is allowed and a close match.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from bnlab.errors import ConfigError

MODELS = ("mlp", "cnn")
NORMS = ("none", "bnlab", "torch")
NORM_POSITIONS = ("before_act", "after_act")
ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu", "linear")
INITS = ("default", "standard", "xavier", "kaiming", "orthogonal", "gaussian")
DATASETS = ("digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10")
IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
ON_DIVERGENCE = ("stop", "continue")


@dataclass
class ModelConfig:
    name: str = "mlp"
    depth: int = 20  # hidden layers (mlp) or conv blocks (cnn)
    width: int = 128  # units (mlp) or channels (cnn)
    activation: str = "sigmoid"
    init: str = "default"
    init_std: float = 0.1  # only for init=gaussian: N(0, init_std^2), Ioffe & Szegedy's "small Gaussian"
    residual: bool = False


@dataclass
class NormConfig:
    name: str = "bnlab"
    eps: float = 1e-5
    momentum: float | None = 0.1
    position: str = "before_act"


@dataclass
class DataConfig:
    name: str = "digits"
    batch_size: int = 64
    root: str = "data"
    download: bool = False
    dim: int = 64  # synthetic only: input dimension
    samples: int = 4096  # synthetic only: train + test samples


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    l1: float = 0.0
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    device: str = "auto"
    eval_every: int = 100
    checkpoint_every: int = 500
    on_divergence: str = "stop"
    # Flush float32 subnormals (< 1.2e-38) to zero on the CPU: a deep sigmoid network without BatchNorm
    # makes many of them, and each costs ~100x a normal multiply (measured: 385 ms vs 3.3 ms a step).
    flush_denormal: bool = True
    # CPU threads for torch while training (0: torch's default). One thread is as fast for these small
    # models and immune to the stalls two threads suffer when another process shares the cores
    # (measured: a 300-step depth-20 run took 3 s with one thread, 3 to 114 s with two on a busy machine).
    threads: int = 1
    # Image models keep weights and activations in channels-last (NHWC) memory order, where oneDNN's CPU
    # convolutions are faster (scripts/bench_channels_last.py: a default CNN step 11.5 ms instead of 15.1 ms).
    channels_last: bool = True


@dataclass
class LogConfig:
    enabled: bool = True
    images: bool = True  # profile and Figure-1 images in TensorBoard
    every: int = 50  # a telemetry step costs several plain steps: every 50 keeps the default run within 5%
    hist_every: int = 100
    image_every: int | None = None  # None: about ten images per run
    background: bool = True  # measure a step while the next one (if measured) trains, on a compiled thread


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    resume: str | None = None  # a run or sweep directory to continue


def register_schema() -> None:
    """Store the schema so `configs/train.yaml` can put it first in its defaults."""
    ConfigStore.instance().store(name="bnlab_schema", node=Config)


def close_match(value: str, choices: Any) -> str:
    """' (did you mean X?)' for the nearest valid choice, or '' when nothing is close."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(
            f"{key}={value!r} is not valid{close_match(value, choices)}; expected one of: {', '.join(choices)}"
        )


def _positive(key: str, value: Any, minimum: float = 1, *, strict: bool = False) -> None:
    bad = value <= minimum if strict else value < minimum
    if bad:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{key}={value} is out of range; expected a value {bound}")


def _known_keys(cfg: Any, schema: type | None = None, prefix: str = "") -> None:
    """Every key is one of the schema's: a key added with `+` (`+model.dept=30`) is a typo, not a new knob."""
    schema = schema or Config
    hints = typing.get_type_hints(schema)
    for key in cfg:
        if not prefix and key == "hydra":
            continue
        if key not in hints:
            where = prefix.rstrip(".") or "the config"
            valid = sorted(hints)
            match = close_match(key, valid).replace("'", "'" + prefix, 1)
            raise ConfigError(f"unknown key {prefix + key!r}: {where} has no {key!r}{match}; "
                              f"valid keys: {', '.join(prefix + name for name in valid)}")
        if dataclasses.is_dataclass(hints[key]):
            _known_keys(cfg[key], hints[key], f"{prefix}{key}.")


def _finite(cfg: Any, schema: type | None = None, prefix: str = "") -> None:
    """Every float is finite: NaN passes any `value < minimum` test, and inf is no learning rate."""
    schema = schema or Config
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            _finite(cfg[name], hint, f"{prefix}{name}.")
        elif isinstance(cfg[name], float) and not math.isfinite(cfg[name]):
            default = next(f.default for f in dataclasses.fields(schema) if f.name == name)
            raise ConfigError(f"{prefix}{name}={cfg[name]} is not a finite number; expected a finite value"
                              + (f" (the default is {default})" if default is not None else " or null"))


def validate(cfg: Any) -> None:
    """Check every value a type cannot check. Raises ConfigError naming the key."""
    _known_keys(cfg)
    _finite(cfg)
    model, norm, data, optim, train, log = cfg.model, cfg.norm, cfg.data, cfg.optim, cfg.train, cfg.log
    _choice("model.name", model.name, MODELS)
    _choice("model.activation", model.activation, ACTIVATIONS)
    _choice("model.init", model.init, INITS)
    _positive("model.depth", model.depth)
    _positive("model.width", model.width)
    _positive("model.init_std", model.init_std, 0, strict=True)
    _choice("norm.name", norm.name, NORMS)
    _choice("norm.position", norm.position, NORM_POSITIONS)
    _positive("norm.eps", norm.eps, 0, strict=True)
    if norm.momentum is not None and not 0 <= norm.momentum <= 1:
        raise ConfigError(f"norm.momentum={norm.momentum} is out of range; expected 0..1 or null (cumulative)")
    _choice("data.name", data.name, DATASETS)
    _positive("data.batch_size", data.batch_size)
    if norm.name != "none" and data.batch_size < 2:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is too small for BatchNorm in training: each channel needs more "
            "than one value to normalize; use data.batch_size=2 or more, or norm=none"
        )
    _positive("data.dim", data.dim)
    _positive("data.samples", data.samples, 20)
    if model.name == "cnn" and data.name not in IMAGE_DATASETS:
        raise ConfigError(
            f"model=cnn needs images, but data={data.name} has no image shape; "
            f"use model=mlp or one of data={'|'.join(IMAGE_DATASETS)}"
        )
    _choice("optim.name", optim.name, OPTIMIZERS)
    _positive("optim.lr", optim.lr, 0, strict=True)
    _positive("optim.momentum", optim.momentum, 0)
    _positive("optim.weight_decay", optim.weight_decay, 0)
    _positive("optim.l1", optim.l1, 0)
    if optim.grad_clip is not None:
        _positive("optim.grad_clip", optim.grad_clip, 0, strict=True)
    _positive("train.steps", train.steps)
    if not 0 <= train.seed < 2**32:  # what numpy's and torch's generators accept
        raise ConfigError(f"train.seed={train.seed} is out of range; expected 0 <= train.seed < 2**32")
    _positive("train.eval_every", train.eval_every)
    _positive("train.checkpoint_every", train.checkpoint_every)
    _positive("train.threads", train.threads, 0)
    _choice("train.device", train.device, DEVICES)
    _choice("train.on_divergence", train.on_divergence, ON_DIVERGENCE)
    _positive("log.every", log.every)
    _positive("log.hist_every", log.hist_every)
    if log.image_every is not None:
        _positive("log.image_every", log.image_every)
