"""bnlab's own normalization layers and the registry that names them."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d
from bnlab.nn.registry import NORMS, create_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "NORMS", "create_norm"]
