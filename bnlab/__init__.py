"""bnlab: a command-line laboratory for Batch Normalization and vanishing gradients.

Importing the package is cheap on purpose (no torch): `bnlab --help` must start fast.
"""

__version__ = "0.1.0"
