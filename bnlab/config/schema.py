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
from bnlab.nn.names import BATCH_NORMS, NORM_NAMES

MODELS = ("mlp", "cnn")
NORMS = NORM_NAMES  # declared in bnlab.nn.names, beside the layers; importing it does not import torch
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
    ghost_batch_size: int = 32  # ghost: samples per ghost batch (Hoffer et al. 2017); divides data.batch_size
    rmax: float = 3.0  # renorm: the clip on r after the warm-up (Ioffe 2017)
    dmax: float = 5.0  # renorm: the clip on d after the warm-up
    warmup_steps: int = 50  # renorm: plain BatchNorm (r = 1, d = 0) for this many steps, then r, d relaxed
    rmax_step: int = 400  # renorm: the step at which r's clip reaches rmax (the paper's 40k steps / 100)
    dmax_step: int = 250  # renorm: the step at which d's clip reaches dmax (the paper's 25k steps / 100)
    noise_mean: float = 0.5  # noisy: each step, each unit's mean moves by up to this (Santurkar et al. 2018)
    noise_std: float = 1.5  # noisy: ... and its standard deviation is scaled by a factor in [1/this, this]
    groups: int = 8  # group, torch_group: channel groups (Wu & He 2018); divides model.width
    # With train.nproc > 1: batch statistics over the global batch of all processes (bnlab.nn.sync),
    # so the N processes train as one process on the whole batch would. One process: no effect.
    sync: bool = False


@dataclass
class DataConfig:
    name: str = "digits"
    batch_size: int = 64
    root: str = "data"
    download: bool = False
    dim: int = 64  # synthetic only: input dimension
    samples: int = 4096  # synthetic only: train + test samples
    # Non-i.i.d. batches (Ioffe 2017): each batch holds batch_size / k samples of each of k classes; null: i.i.d.
    classes_per_batch: int | None = None


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    l1: float = 0.0
    grad_clip: float | None = None
    # Adaptive gradient clipping (Brock et al. 2021): each unit's gradient at most this times its weights' norm
    adaptive_clip: float | None = None


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
    # Processes that train together (torch.distributed.run, DistributedDataParallel), each on
    # data.batch_size / nproc of every global batch; with train.device=cuda, one GPU each.
    nproc: int = 1


@dataclass
class LogConfig:
    enabled: bool = True
    images: bool = True  # profile and Figure-1 images in TensorBoard
    every: int = 50  # a telemetry step costs several plain steps: every 50 keeps the default run within 5%
    hist_every: int = 100
    image_every: int | None = None  # None: about ten images per run
    # acc/train at every evaluation: eval mode on the whole training set, for the generalization gap
    train_accuracy: bool = False
    background: bool = True  # measure a step while the next one (if measured) trains, on a compiled thread
    # Opt-in probes at measured steps (bnlab/telemetry/step_probes.py), each extra passes on a copy of the model:
    landscape: bool = False  # loss and gradient along -grad (Santurkar et al. 2018, Figure 4)
    landscape_points: int = 5  # step sizes, doubling up to landscape_max_multiple * lr
    landscape_max_multiple: float = 4.0
    covariate_shift: bool = False  # ||G - G'|| and cos(G, G') per layer (Santurkar et al. 2018, Definition 2.1)
    signal_prop: bool = False  # per-block channel mean^2, variance, residual variance (Brock et al. 2021), step 0
    signal_prop_over_training: bool = False  # ... and at every measured step
    gradient_noise: bool = False  # gradient variance, SNR and noise scale across ghost batches
    gradient_noise_chunks: int = 4  # ghost batches per batch; must divide data.batch_size


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
    if norm.sync and norm.name != "bnlab":
        raise ConfigError(f"norm.sync=true synchronizes bnlab's BatchNorm (norm=bnlab) only, not norm={norm.name} "
                          "(torch's SyncBatchNorm does not run on the CPU); use norm=bnlab, or norm.sync=false")
    if norm.momentum is not None and not 0 <= norm.momentum <= 1:
        raise ConfigError(f"norm.momentum={norm.momentum} is out of range; expected 0..1 or null (cumulative)")
    _validate_norm_variants(norm, model, data)
    _choice("data.name", data.name, DATASETS)
    _positive("data.batch_size", data.batch_size)
    if norm.name in BATCH_NORMS and data.batch_size < 2:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is too small for BatchNorm in training: each channel needs more "
            "than one value to normalize; use data.batch_size=2 or more, or a norm without batch statistics: "
            "norm=none, layer or group"
        )
    if data.classes_per_batch is not None:
        _positive("data.classes_per_batch", data.classes_per_batch)
        if data.batch_size % data.classes_per_batch:
            raise ConfigError(
                f"data.batch_size={data.batch_size} is not a multiple of data.classes_per_batch="
                f"{data.classes_per_batch}: each batch holds an equal share of each class; use a batch size that "
                f"{data.classes_per_batch} divides, e.g. data.batch_size="
                f"{data.batch_size - data.batch_size % data.classes_per_batch or data.classes_per_batch}, "
                "or data.classes_per_batch=null for i.i.d. batches")
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
    if optim.adaptive_clip is not None and not optim.adaptive_clip > 0:
        raise ConfigError(f"optim.adaptive_clip={optim.adaptive_clip} is out of range; expected a clipping threshold "
                          "> 0 (lambda of Brock et al. 2021: a unit's gradient is clipped to lambda times its weights' "
                          "norm, e.g. 0.01), or null for no adaptive clipping")
    _positive("train.steps", train.steps)
    if not 0 <= train.seed < 2**32:  # what numpy's and torch's generators accept
        raise ConfigError(f"train.seed={train.seed} is out of range; expected 0 <= train.seed < 2**32")
    _positive("train.eval_every", train.eval_every)
    _positive("train.checkpoint_every", train.checkpoint_every)
    _positive("train.threads", train.threads, 0)
    _positive("train.nproc", train.nproc)
    if data.batch_size % train.nproc:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is not divisible by train.nproc={train.nproc}: data.batch_size is "
            f"the global batch and each process takes an equal share; use a multiple of {train.nproc}, e.g. "
            f"data.batch_size={data.batch_size - data.batch_size % train.nproc or train.nproc}")
    _choice("train.device", train.device, DEVICES)
    _choice("train.on_divergence", train.on_divergence, ON_DIVERGENCE)
    _positive("log.every", log.every)
    _positive("log.hist_every", log.hist_every)
    if log.image_every is not None:
        _positive("log.image_every", log.image_every)
    _positive("log.landscape_points", log.landscape_points)
    _positive("log.landscape_max_multiple", log.landscape_max_multiple, 0, strict=True)
    _positive("log.gradient_noise_chunks", log.gradient_noise_chunks, 2)
    if log.gradient_noise:
        chunks = log.gradient_noise_chunks
        if data.batch_size % chunks:
            divisors = [d for d in range(2, min(data.batch_size, 16) + 1) if data.batch_size % d == 0]
            hint = f"one of {', '.join(map(str, divisors))}" if divisors else "a divisor of data.batch_size"
            raise ConfigError(
                f"log.gradient_noise_chunks={chunks} does not divide data.batch_size={data.batch_size} into equal "
                f"ghost batches; use {hint}, or a data.batch_size that {chunks} divides"
            )
        if norm.name != "none" and data.batch_size // chunks < 2:
            raise ConfigError(
                f"log.gradient_noise_chunks={chunks} makes ghost batches of {data.batch_size // chunks} example, too "
                f"few for BatchNorm to normalize; use at most {data.batch_size // 2} chunks or a larger data.batch_size"
            )


def _at_least(key: str, value: float, minimum: float) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise ConfigError(f"{key}={value} is out of range; expected a finite value >= {minimum}")


def _validate_norm_variants(norm: Any, model: Any, data: Any) -> None:
    """The keys of ghost, renorm, noisy and group norm: each in range whichever norm runs, and the sizes
    that must fit together for the one that does."""
    _positive("norm.ghost_batch_size", norm.ghost_batch_size)
    _at_least("norm.rmax", norm.rmax, 1)
    _at_least("norm.dmax", norm.dmax, 0)
    _positive("norm.warmup_steps", norm.warmup_steps, 0)
    for key in ("rmax_step", "dmax_step"):
        if getattr(norm, key) < norm.warmup_steps:
            raise ConfigError(f"norm.{key}={getattr(norm, key)} comes before the warm-up ends (norm.warmup_steps="
                              f"{norm.warmup_steps}); expected norm.{key} >= {norm.warmup_steps}")
    _at_least("norm.noise_mean", norm.noise_mean, 0)
    _at_least("norm.noise_std", norm.noise_std, 1)
    _positive("norm.groups", norm.groups)
    size, batch = norm.ghost_batch_size, data.batch_size
    if norm.name == "ghost" and batch % size:
        raise ConfigError(f"data.batch_size={batch} is not a multiple of norm.ghost_batch_size={size}; "
                          f"use a batch size that is a multiple of {size}, or a ghost batch size that divides {batch}")
    if norm.name == "ghost" and model.name == "mlp" and size < 2:
        raise ConfigError("norm.ghost_batch_size=1 leaves one value per unit in each ghost batch of an MLP, "
                          "nothing to normalize with; use norm.ghost_batch_size=2 or more")
    if norm.name in ("group", "torch_group") and model.width % norm.groups:
        raise ConfigError(f"model.width={model.width} is not a multiple of norm.groups={norm.groups}; "
                          f"use a number of groups that divides {model.width}")
