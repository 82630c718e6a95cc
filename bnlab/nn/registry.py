"""One name per normalization arm, so configs pick a layer by string (the names: bnlab.nn.names).

"bnlab" is the layer under study and "torch" its reference arm (torch's own kernel); "ghost", "renorm"
and "noisy" are BatchNorm variants, "layer" and "group" normalize without batch statistics, and
"torch_layer" / "torch_group" are torch's layers for those two. A bad name or dim raises ValueError
listing what is valid (bnlab.nn imports nothing else of bnlab; callers map it).
"""

import difflib
from collections.abc import Callable

from torch import nn

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d
from bnlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d
from bnlab.nn.groupnorm import GroupNorm, LayerNorm
from bnlab.nn.names import NORM_NAMES
from bnlab.nn.noisy import NoisyBatchNorm1d, NoisyBatchNorm2d
from bnlab.nn.renorm import BatchRenorm1d, BatchRenorm2d


def _torch_group(num_features: int, groups: int = 8, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(groups, num_features, eps)


def _torch_layer_2d(num_features: int, eps: float = 1e-5) -> nn.GroupNorm:
    # torch's LayerNorm would need (C, H, W) at build time and learn gamma per position; normalizing over
    # (C, H, W) with per-channel gamma and beta, as bnlab's LayerNorm does, is torch's GroupNorm(1, C).
    return nn.GroupNorm(1, num_features, eps)


# name -> {dim -> layer class}; dim=1 normalizes (N, C) or (N, C, L), dim=2 normalizes (N, C, H, W).
NORMS: dict[str, dict[int, Callable[..., nn.Module]]] = {
    "none": {1: nn.Identity, 2: nn.Identity},
    "bnlab": {1: BatchNorm1d, 2: BatchNorm2d},
    "torch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d},
    "ghost": {1: GhostBatchNorm1d, 2: GhostBatchNorm2d},
    "renorm": {1: BatchRenorm1d, 2: BatchRenorm2d},
    "noisy": {1: NoisyBatchNorm1d, 2: NoisyBatchNorm2d},
    "layer": {1: LayerNorm, 2: LayerNorm},
    "group": {1: GroupNorm, 2: GroupNorm},
    "torch_layer": {1: nn.LayerNorm, 2: _torch_layer_2d},
    "torch_group": {1: _torch_group, 2: _torch_group},
}
if tuple(NORMS) != NORM_NAMES:  # one list of names: bnlab.nn.names, read by the config schema without torch
    raise ImportError(f"bnlab.nn.registry names {tuple(NORMS)}, bnlab.nn.names {NORM_NAMES}: make them agree")


def create_norm(name: str, num_features: int, *, dim: int = 1, **kwargs) -> nn.Module:
    """Build the normalization layer `name` for `num_features` channels; kwargs go to its constructor."""
    if name not in NORMS:
        close = difflib.get_close_matches(str(name), NORMS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown norm {name!r}; valid names are {', '.join(sorted(NORMS))}{hint}")
    if dim not in NORMS[name]:
        raise ValueError(f"norm dim must be 1 (BatchNorm1d: (N, C) or (N, C, L)) or 2 "
                          f"(BatchNorm2d: (N, C, H, W)), got dim={dim!r}")
    if name == "none":
        return nn.Identity()
    return NORMS[name][dim](num_features, **kwargs)
