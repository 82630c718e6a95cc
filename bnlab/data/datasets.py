"""Datasets as tensors on the training device, batched by index (no DataLoader).

Every data set here is small enough to sit in device memory whole, so a batch is one
indexing operation, `x_train[sampler.next_indices()]`, and the data order is a pure
function of (seed, epoch, position): a resumed run sees exactly the batches it would have.

Inputs are standardized with statistics of the training split only (per feature for
vector data, per channel for images), so a test example never leaks into training.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bnlab.data import downloads
from bnlab.errors import ConfigError, DataError

# scikit-learn's copy of the UCI handwritten digits (BSD-3-Clause); see scripts/make_digits.py.
DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, *input_shape) float32, standardized
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor  # (M, *input_shape) float32, standardized with the training statistics
    y_test: torch.Tensor  # (M,) int64
    num_classes: int
    input_shape: tuple[int, ...]  # (D,) for vector data, (C, H, W) for images

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def to(self, device: torch.device | str) -> Dataset:
        move = {f: getattr(self, f).to(device) for f in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, **move)

    def to_memory_format(self, memory_format: torch.memory_format) -> Dataset:
        """The same images in another memory order (e.g. channels-last), values unchanged."""
        return dataclasses.replace(self, x_train=self.x_train.contiguous(memory_format=memory_format),
                                   x_test=self.x_test.contiguous(memory_format=memory_format))


@dataclasses.dataclass(frozen=True)
class Request:
    """The arguments of load_dataset that loaders may use (hashable, so results can be cached)."""

    root: str
    download: bool
    seed: int
    synthetic_dim: int
    synthetic_samples: int
    test_fraction: float


# A loader returns unstandardized (x_train, y_train, x_test, y_test): x of shape (N, C, H, W) or (N, D).
Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _split(x: torch.Tensor, y: torch.Tensor, req: Request) -> Splits:
    """A random train/test split fixed by the seed, for data sets without an official one."""
    n_test = round(len(y) * req.test_fraction)
    if not 0 < n_test < len(y):
        raise ConfigError(
            f"test_fraction={req.test_fraction} leaves {n_test} of {len(y)} samples for testing; "
            f"expected a value that keeps both splits non-empty, e.g. 0.2."
        )
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(req.seed))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with gzip.open(DIGITS_FILE, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (1797, 65): 64 pixels, label
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"the embedded file {DIGITS_FILE} is damaged ({error}); reinstall bnlab.") from error
    x = torch.from_numpy(table[:, :64]).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8), pixel counts 0..16
    return x, torch.from_numpy(table[:, 64]).long()


def load_digits(req: Request) -> Splits:
    return _split(*_digits_arrays(), req)


# MNIST-1D templates (Greydanus 2020, github.com/greydanus/mnist1d): one 12-point pattern per digit.
_MNIST1D_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])
MNIST1D_SAMPLES_PER_CLASS = 400
MNIST1D_LENGTH = 40


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of a signal onto n evenly spaced points over the same span."""
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _smooth(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian filter with reflected edges (scipy.ndimage.gaussian_filter1d's default), without scipy."""
    radius = int(4 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.convolve(np.pad(x, radius, mode="symmetric"), kernel / kernel.sum(), mode="valid")


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference generator's transforms and defaults, drawn from a numpy Generator seeded by `seed`."""
    rng = np.random.default_rng(seed)
    templates = _MNIST1D_TEMPLATES - _MNIST1D_TEMPLATES.mean(1, keepdims=True)
    templates /= templates.std(1, keepdims=True)
    templates = (templates - templates[:, :1]) / 6  # every pattern starts (and ends) at 0
    width = 12 + 60  # template length + largest padding
    xs, ys = [], []
    for label, template in enumerate(templates):
        for _ in range(MNIST1D_SAMPLES_PER_CLASS):
            # The tiny offset marks the pattern as nonzero so that only the padding gets correlated noise.
            x = np.concatenate([template + 1e-8, np.zeros(rng.integers(36, 61))])  # pad to the right
            x = _resample(x, width)  # stretch to a common length: the padding sets the pattern's width
            x = x * (1 + 0.4 * (rng.random() - 0.5))  # scale
            x = np.roll(x, rng.integers(48))  # shift
            x = np.where(x != 0, x, _smooth(0.25 * rng.standard_normal(width)))  # correlated background
            x = x + 0.02 * rng.standard_normal(width)  # iid noise
            x = x - 0.75 * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, width)  # shear
            xs.append(_resample(x, MNIST1D_LENGTH))
            ys.append(label)
    x = torch.from_numpy(np.stack(xs)).float()  # (10 * samples_per_class, 40)
    return x, torch.tensor(ys, dtype=torch.int64)


def load_mnist1d(req: Request) -> Splits:
    return _split(*_mnist1d_arrays(req.seed), req)


def load_synthetic(req: Request, num_classes: int = 10) -> Splits:
    """Gaussian inputs labelled by a random 2-layer tanh teacher: a task a student net can learn exactly."""
    if req.synthetic_dim < 1 or req.synthetic_samples < 2:
        raise ConfigError(
            f"synthetic data needs dim >= 1 and samples >= 2, got dim={req.synthetic_dim}, "
            f"samples={req.synthetic_samples}; set data.dim and data.samples to positive sizes."
        )
    g = torch.Generator().manual_seed(req.seed)
    d, hidden = req.synthetic_dim, 2 * req.synthetic_dim
    x = torch.randn(req.synthetic_samples, d, generator=g)  # (N, D)
    w1 = torch.randn(d, hidden, generator=g) * (2.0 / d**0.5)  # gain 2: tanh units that bend, not linear
    w2 = torch.randn(hidden, num_classes, generator=g) / hidden**0.5
    logits = torch.tanh(x @ w1) @ w2  # (N, num_classes)
    # Centring each class's logit keeps a random teacher from sending most inputs to one class.
    y = (logits - logits.mean(0)).argmax(1)  # (N,)
    return _split(x, y, req)


@functools.lru_cache(maxsize=2)
def _idx_arrays(paths: tuple[Path, ...]) -> Splits:
    images = [downloads.read_idx(p, ndim=3) for p in paths[::2]]  # train, test: (N, 28, 28) uint8
    labels = [downloads.read_idx(p, ndim=1) for p in paths[1::2]]  # train, test: (N,) uint8
    for image, label, path in zip(images, labels, paths[::2], strict=True):
        if len(image) != len(label):
            raise DataError(f"{path} holds {len(image)} images but its label file {len(label)} labels.")
    x_train, x_test = (i.unsqueeze(1) for i in images)  # (N, 28, 28) -> (N, 1, 28, 28)
    return x_train, labels[0].long(), x_test, labels[1].long()


def load_mnist(req: Request) -> Splits:
    return _idx_arrays(downloads.idx_files("mnist", req.root, req.download))


def load_fashion_mnist(req: Request) -> Splits:
    return _idx_arrays(downloads.idx_files("fashion_mnist", req.root, req.download))


@functools.lru_cache(maxsize=1)
def _cifar_arrays(source: Path) -> Splits:
    return downloads.read_cifar(source)


def load_cifar10(req: Request) -> Splits:
    return _cifar_arrays(downloads.cifar_source(req.root, req.download))


DATASETS: dict[str, Callable[[Request], Splits]] = {
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "synthetic": load_synthetic,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}
NUM_CLASSES = 10  # every data set above has ten classes


def standardize(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit variance per feature (N, D) or per channel (N, C, H, W), from training data only."""
    x_train, x_test = x_train.float(), x_test.float()
    dims = (0,) if x_train.dim() == 2 else (0, 2, 3)
    var, mean = torch.var_mean(x_train, dim=dims, correction=0, keepdim=True)  # (1, D) or (1, C, 1, 1)
    std = var.sqrt().clamp_min(1e-6)  # a constant feature becomes 0 instead of NaN
    return (x_train - mean) / std, (x_test - mean) / std


def load_dataset(
    name: str,
    *,
    root: str = "data",
    download: bool = False,
    seed: int = 0,
    synthetic_dim: int = 64,
    synthetic_samples: int = 4096,
    test_fraction: float = 0.2,
    flatten: bool = False,
) -> Dataset:
    """Load a data set by name as standardized CPU tensors; `flatten=True` gives (N, D) images for an MLP."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown dataset '{name}'.{hint} Valid names: {', '.join(sorted(DATASETS))}.")
    req = Request(str(root), download, seed, synthetic_dim, synthetic_samples, test_fraction)
    x_train, y_train, x_test, y_test = DATASETS[name](req)
    x_train, x_test = standardize(x_train, x_test)
    if flatten:
        x_train, x_test = x_train.flatten(1), x_test.flatten(1)  # (N, C, H, W) -> (N, C*H*W)
    # Labels are cloned because loaders may cache them: editing one load must not alter the next.
    y_train, y_test = y_train.clone(), y_test.clone()
    return Dataset(name, x_train, y_train, x_test, y_test, NUM_CLASSES, tuple(x_train.shape[1:]))


# What each data set holds, known without loading it, so a batch size or a model's memory is checked before
# any work: (samples in its full set, or training samples of an official split, input shape). Sizes of the
# sets split here (digits, mnist1d, synthetic) count both splits; tests compare this with the loaders.
_OFFICIAL_SPLIT = ("mnist", "fashion_mnist", "cifar10")


def data_shape(name: str, *, synthetic_dim: int = 64, synthetic_samples: int = 4096,
               test_fraction: float = 0.2) -> tuple[int, tuple[int, ...]]:
    """(training samples, input shape) of data set `name` as load_dataset will return it (unflattened)."""
    samples, shape = {
        "digits": (1797, (1, 8, 8)),
        "mnist1d": (10 * MNIST1D_SAMPLES_PER_CLASS, (MNIST1D_LENGTH,)),
        "synthetic": (synthetic_samples, (synthetic_dim,)),
        "mnist": (60000, (1, 28, 28)),
        "fashion_mnist": (60000, (1, 28, 28)),
        "cifar10": (50000, (3, 32, 32)),
    }[name]
    if name not in _OFFICIAL_SPLIT:
        samples -= round(samples * test_fraction)
    return samples, shape


def check_batch_size(name: str, batch_size: int, *, synthetic_samples: int = 4096,
                     classes_per_batch: int | None = None) -> None:
    """ConfigError now, before any work, if a batch is larger than the training set or asks for more classes
    than the data set has."""
    samples, _ = data_shape(name, synthetic_samples=synthetic_samples)
    if batch_size > samples:
        raise ConfigError(f"data.batch_size={batch_size} is larger than the {samples} training samples of "
                          f"data={name}; use data.batch_size={samples} or less")
    if classes_per_batch is not None and classes_per_batch > NUM_CLASSES:
        raise ConfigError(f"data.classes_per_batch={classes_per_batch} is more than the {NUM_CLASSES} classes of "
                          f"data={name}; use data.classes_per_batch={NUM_CLASSES} or less, or null for i.i.d. batches")


def check_classes_per_batch(classes_per_batch: int, batch_size: int, class_counts: list[int]) -> None:
    """ConfigError unless batches of `batch_size` can hold `classes_per_batch` classes in equal shares, given
    how many training samples each class has (`class_counts`)."""
    if not 1 <= classes_per_batch <= batch_size or batch_size % classes_per_batch:
        raise ConfigError(f"data.batch_size={batch_size} cannot hold data.classes_per_batch={classes_per_batch} "
                          f"classes in equal shares; use a number of classes that divides {batch_size}")
    share = batch_size // classes_per_batch
    enough = sum(count >= share for count in class_counts)
    if enough < classes_per_batch:
        raise ConfigError(f"data.classes_per_batch={classes_per_batch} with data.batch_size={batch_size} needs "
                          f"{classes_per_batch} classes of at least {share} training samples each, but only "
                          f"{enough} of the data set's {len(class_counts)} classes have that many; use "
                          f"data.classes_per_batch={max(enough, 1)} or less, or a smaller data.batch_size")


class BatchSampler:
    """Random batches of indices, an independent order per epoch; the last incomplete batch is dropped.

    With `classes_per_batch` = k (and the training `labels`), every batch holds batch_size / k samples of
    each of k distinct classes (Ioffe 2017, §4.4's non-i.i.d. minibatches: 16 labels, 2 images each): an
    epoch cuts each class, in a random order, into runs of batch_size / k samples, and each batch draws k
    classes with probability proportional to the runs they have left, then shuffles its samples. Without it
    (None), an epoch is one permutation of all samples.

    Epoch e's order is a function of (seed, e) (and the labels), so the state is a few integers and
    `load_state_dict` continues exactly where `state_dict` was taken.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, *, classes_per_batch: int | None = None,
                 labels: torch.Tensor | None = None) -> None:
        if not 1 <= batch_size <= num_samples:
            raise ConfigError(
                f"batch_size={batch_size} does not fit {num_samples} training samples; "
                f"expected 1 <= data.batch_size <= {num_samples}."
            )
        if classes_per_batch is not None:
            if labels is None or len(labels) != num_samples:
                raise ValueError(f"classes_per_batch needs the {num_samples} training labels, got "
                                 f"{None if labels is None else len(labels)}")
            check_classes_per_batch(classes_per_batch, batch_size, torch.bincount(labels.cpu()).tolist())
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.classes_per_batch = classes_per_batch
        self.labels = None if labels is None else labels.cpu()
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _generator(self, epoch: int) -> torch.Generator:
        # SeedSequence mixes (seed, epoch) into a well-spread seed: nearby pairs give unrelated orders.
        words = np.random.SeedSequence([self.seed % 2**64, epoch]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(words.view(np.uint64)[0]))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's indices, one batch after another: (num_samples,) or, by classes, (batches * batch_size,)."""
        generator = self._generator(epoch)
        order = torch.randperm(self.num_samples, generator=generator)  # (N,)
        if self.classes_per_batch is None:
            return order
        k, run = self.classes_per_batch, self.batch_size // self.classes_per_batch
        by_class = order[torch.sort(self.labels[order], stable=True).indices]  # (N,) grouped, each class shuffled
        runs = [list(samples.split(run))[:len(samples) // run]  # a class's remainder sits this epoch out
                for samples in by_class.split(torch.bincount(self.labels).tolist())]  # class -> its (run,) runs
        left = torch.tensor([len(class_runs) for class_runs in runs], dtype=torch.float64)  # (classes,)
        batches = []
        while int((left > 0).sum()) >= k:
            classes = torch.multinomial(left, k, replacement=False, generator=generator).tolist()  # k distinct
            batch = torch.cat([runs[c].pop() for c in classes])  # (batch_size,) class by class
            batches.append(batch[torch.randperm(self.batch_size, generator=generator)])
            left[classes] -= 1
        return torch.cat(batches)  # (batches * batch_size,)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order) // self.batch_size

    def next_indices(self) -> torch.Tensor:
        if self.position + self.batch_size > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        batch = self._order[self.position : self.position + self.batch_size].clone()  # (batch_size,) int64
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "seed": self.seed,
                "classes_per_batch": self.classes_per_batch, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        keys = ("num_samples", "batch_size", "seed", "classes_per_batch")
        saved = tuple(state.get(key) for key in keys)  # a checkpoint older than classes_per_batch: None
        mine = tuple(getattr(self, key) for key in keys)
        if saved != mine:
            raise ConfigError(
                f"the saved data order is for ({', '.join(keys)})={saved}, this run has {mine}; resume with the "
                "original data settings."
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
