"""Atomic checkpoints and the random-number state that makes a resume exact.

A checkpoint is written to a temporary file in the same directory, flushed to
disk, then renamed over the old one (`bnlab.train.files`): a kill at any moment
leaves either the previous complete checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from bnlab.errors import RunFileError
from bnlab.train.files import write_atomically

CHECKPOINT_NAME = "checkpoint.pt"


def save(path: Path, state: dict) -> None:
    write_atomically(Path(path), lambda handle: torch.save(state, handle), "checkpoint", size=_nbytes(state))


def _nbytes(value) -> int:
    """The bytes of every tensor in a (nested) checkpoint state: about its size on disk."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"no checkpoint at {path}; the run has nothing to resume from (start it anew)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for a damaged zip/pickle
        raise RunFileError(
            f"checkpoint {path} is damaged or truncated ({type(error).__name__}: {error}); "
            "remove it to restart the run from step 0, or restore it from a copy"
        ) from error
    if not isinstance(state, dict) or "step" not in state:
        raise RunFileError(f"checkpoint {path} is not a bnlab checkpoint (no 'step' entry)")
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
