"""bnlab's own normalization layers and the registry that names them.

The layers load on first use (PEP 562), so that `bnlab.nn.names`, which the config schema reads when the
command line starts, comes without importing torch.
"""

import importlib

_HOMES = {
    "BatchNorm1d": "batchnorm", "BatchNorm2d": "batchnorm",
    "GhostBatchNorm1d": "ghost", "GhostBatchNorm2d": "ghost",
    "BatchRenorm1d": "renorm", "BatchRenorm2d": "renorm",
    "NoisyBatchNorm1d": "noisy", "NoisyBatchNorm2d": "noisy",
    "GroupNorm": "groupnorm", "LayerNorm": "groupnorm",
    "NORMS": "registry", "create_norm": "registry",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:  # submodules (functional, kernels, ...) import as usual after this
        raise AttributeError(f"module 'bnlab.nn' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bnlab.nn.{_HOMES[name]}"), name)
