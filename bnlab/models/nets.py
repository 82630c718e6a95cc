"""Deep MLPs and plain CNNs, with or without a norm layer in every block.

Every block is `weight layer -> [norm] -> activation` (the paper's placement, or
`-> activation -> [norm]`). The model keeps its weight layers in input-to-output
order under the names `layer00, layer01, ...` (the classifier last) and its
activation modules aligned with the hidden layers, so probes can find them by hook
without the model knowing what is measured.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnlab.errors import ConfigError
from bnlab.nn import create_norm
from bnlab.nn.names import NORM_OPTIONS

ACTIVATION_MODULES = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}


class Block(nn.Module):
    """One hidden layer: `z = W x`, then `y = act(norm(z))` (or `norm(act(z))`), plus `x` if residual."""

    def __init__(self, weight: nn.Module, norm: nn.Module, activation: str, position: str, residual: bool):
        super().__init__()
        self.weight_layer = weight
        self.norm = norm
        self.act = ACTIVATION_MODULES[activation]()
        self.norm_first = position == "before_act"
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.weight_layer(x)
        y = self.act(self.norm(z)) if self.norm_first else self.norm(self.act(z))
        return x + y if self.residual else y


class DeepNet(nn.Module):
    """A stack of Blocks, optional pooling between them, and a linear classifier."""

    def __init__(self, blocks: list[Block], head: nn.Module, classifier: nn.Linear, activation: str,
                 pool_after: tuple[int, ...] = (), pool: type[nn.Module] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleDict({str(i): pool(2) for i in pool_after}) if pool else nn.ModuleDict()
        self.head = head  # what turns the last block's output into a vector (flatten or global pooling)
        self.classifier = classifier
        self.activation_name = activation

    @property
    def weight_layers(self) -> dict[str, nn.Module]:
        """Linear/Conv layers from the input side, classifier last: {'layer00': ..., ...}."""
        layers = [block.weight_layer for block in self.blocks] + [self.classifier]
        return {f"layer{i:02d}": layer for i, layer in enumerate(layers)}

    @property
    def activations(self) -> dict[str, nn.Module]:
        """The nonlinearity of each hidden layer, under its weight layer's name."""
        return {f"layer{i:02d}": block.act for i, block in enumerate(self.blocks)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if str(i) in self.pools:
                x = self.pools[str(i)](x)
        return self.classifier(self.head(x))


def build_model(model_cfg, norm_cfg, input_shape: tuple[int, ...], num_classes: int) -> DeepNet:
    """The network that `model_cfg` and `norm_cfg` describe, initialized per `model_cfg.init`."""
    if model_cfg.name == "mlp":
        net = _mlp(model_cfg, norm_cfg, math.prod(input_shape), num_classes)
    else:
        net = _cnn(model_cfg, norm_cfg, input_shape, num_classes)
    initialize(net, model_cfg.init, model_cfg.init_std)
    return net


def _norm(norm_cfg, num_features: int, dim: int, index: int) -> nn.Module:
    """The norm layer of hidden layer `index`, given the `norm.*` keys its constructor takes."""
    options = {key: getattr(norm_cfg, key) for key in NORM_OPTIONS.get(norm_cfg.name, ())}
    if norm_cfg.name == "noisy":
        # One noise stream per layer from the run's seed (train.seed, set before the model is built), read
        # without drawing from torch's generator so that the weights come out as in the other norm arms.
        options["seed"] = torch.initial_seed() + index
    try:
        return create_norm(norm_cfg.name, num_features, dim=dim, **options)
    except ValueError as error:  # bnlab.nn speaks plain Python errors; here it is a config problem
        raise ConfigError(f"norm={norm_cfg.name}: {error}") from error


def _mlp(model_cfg, norm_cfg, in_features: int, num_classes: int) -> DeepNet:
    # With norm right after the layer, its beta takes the role of the layer's bias (as in the paper; a batch
    # norm's mean subtraction would cancel the bias, and layer/group norm get the same weight layers).
    bias = norm_cfg.name == "none" or norm_cfg.position == "after_act"
    blocks = []
    for i in range(model_cfg.depth):
        fan_in = in_features if i == 0 else model_cfg.width
        blocks.append(Block(
            nn.Linear(fan_in, model_cfg.width, bias=bias),
            _norm(norm_cfg, model_cfg.width, dim=1, index=i),
            model_cfg.activation,
            norm_cfg.position,
            residual=model_cfg.residual and fan_in == model_cfg.width,
        ))
    classifier = nn.Linear(model_cfg.width, num_classes)
    return DeepNet(blocks, nn.Flatten(), classifier, model_cfg.activation)


def _cnn(model_cfg, norm_cfg, input_shape: tuple[int, ...], num_classes: int) -> DeepNet:
    channels, height, _ = input_shape
    bias = norm_cfg.name == "none" or norm_cfg.position == "after_act"
    depth = model_cfg.depth
    # Halve the resolution after a third and two thirds of the blocks, while the image is still >= 2 pixels.
    pool_after, size = [], height
    for i in sorted({depth // 3 - 1, 2 * depth // 3 - 1} - {-1, depth - 1}):
        if size >= 2:
            pool_after.append(i)
            size //= 2
    blocks = []
    for i in range(depth):
        in_channels = channels if i == 0 else model_cfg.width
        blocks.append(Block(
            nn.Conv2d(in_channels, model_cfg.width, kernel_size=3, padding=1, bias=bias),
            _norm(norm_cfg, model_cfg.width, dim=2, index=i),
            model_cfg.activation,
            norm_cfg.position,
            residual=model_cfg.residual and in_channels == model_cfg.width,
        ))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, C, H, W) -> (B, C)
    classifier = nn.Linear(model_cfg.width, num_classes)
    return DeepNet(blocks, head, classifier, model_cfg.activation, tuple(pool_after), nn.MaxPool2d)


def initialize(net: DeepNet, scheme: str, std: float = 0.1) -> None:
    """Re-initialize every weight layer. `default` keeps torch's own initialization.

    standard:   W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), b = 0   (Glorot & Bengio 2010, eq. 1)
    xavier:     W ~ U(+-sqrt(6 / (fan_in + fan_out))), b = 0    (their "normalized" initialization)
    kaiming:    W ~ N(0, 2 / fan_in), b = 0                     (He et al. 2015; Yang et al. 2019)
    orthogonal: W orthogonal (gain 1), b = 0
    gaussian:   W ~ N(0, std^2), b = 0                          (Ioffe & Szegedy's "small Gaussian")
    """
    if scheme == "default":
        return
    for layer in net.weight_layers.values():
        weight = layer.weight
        fan_in = weight[0].numel()
        with torch.no_grad():
            if scheme == "standard":
                bound = 1.0 / math.sqrt(fan_in)
                weight.uniform_(-bound, bound)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(weight)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
            elif scheme == "orthogonal":
                nn.init.orthogonal_(weight)
            elif scheme == "gaussian":
                weight.normal_(0.0, std)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            if layer.bias is not None:
                layer.bias.zero_()
