"""One name per normalization arm, so configs pick a layer by string: "none", "bnlab" or "torch".

"torch" is the reference arm (torch's own kernel); "bnlab" is the layer under study. A bad name or dim
raises ValueError listing what is valid (bnlab.nn imports nothing else of bnlab; callers map it).
"""

import difflib
from collections.abc import Callable

from torch import nn

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d

# name -> {dim -> layer class}; dim=1 normalizes (N, C) or (N, C, L), dim=2 normalizes (N, C, H, W).
NORMS: dict[str, dict[int, Callable[..., nn.Module]]] = {
    "none": {1: nn.Identity, 2: nn.Identity},
    "bnlab": {1: BatchNorm1d, 2: BatchNorm2d},
    "torch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d},
}


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
