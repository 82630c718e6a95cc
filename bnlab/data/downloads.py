"""The official files of mnist, fashion_mnist and cifar10: find them, fetch them, read them.

Files are looked for under ``root/<name>/``. With ``download=True`` the missing ones are
fetched with urllib (no extra dependency), their md5 checked against the published value
(the same values torchvision uses), and moved into place atomically, so an interrupted or
corrupt download never leaves a file that looks complete.

A mirror is a copy of a data root served over HTTP: ``<mirror>/<name>/<file>``. Mirrors
named in the environment variable ``BNLAB_DATA_MIRROR`` (comma-separated) are tried before
the official ones in ``MIRRORS``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bnlab.errors import DataError

if TYPE_CHECKING:
    import torch

MIRROR_ENV = "BNLAB_DATA_MIRROR"

# Order matters: train images, train labels, test images, test labels.
IDX_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

# md5 of the official downloads, per data set and file name.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a"},
}

# Official base URLs; the file name is appended (no <name>/ level: these are not bnlab mirrors).
MIRRORS: dict[str, list[str]] = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def candidate_urls(name: str, filename: str) -> list[str]:
    """Environment mirrors first (laid out like a data root), then the official ones."""
    user = [m.strip().rstrip("/") for m in os.environ.get(MIRROR_ENV, "").split(",") if m.strip()]
    return [f"{m}/{name}/{filename}" for m in user] + [m.rstrip("/") + "/" + filename for m in MIRRORS[name]]


def fetch(name: str, filename: str, folder: Path, timeout: float = 60.0) -> Path:
    """Download `filename` of data set `name` into `folder`, verify its md5, move it into place."""
    expected = CHECKSUMS[name][filename]
    target = folder / filename
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in candidate_urls(name, filename):
        # The temporary file lives next to the target so that os.replace is an atomic rename.
        handle, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if actual != expected:
                raise DataError(
                    f"checksum mismatch for {filename} downloaded from {url}: expected md5 {expected}, "
                    f"got {actual}. The download is corrupt or the mirror serves a different file; "
                    f"nothing was kept. Retry, set {MIRROR_ENV} to another mirror, or place the official "
                    f"file at {target} yourself."
                )
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError) as error:
            failures.append(f"{url} ({error})")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {filename} for {name}; tried: " + "; ".join(failures)
        + f". Check the network, set {MIRROR_ENV} to a reachable mirror, or place the file at {target}."
    )


def _folders(root: Path, name: str) -> list[Path]:
    # Also accept torchvision's layout, so data that torchvision already fetched is reused.
    torchvision_name = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}.get(name, name)
    return [root / name, root / name / "raw", root / torchvision_name / "raw"]


def idx_files(name: str, root: str | Path, download: bool) -> tuple[Path, ...]:
    """The four IDX files of mnist or fashion_mnist, .gz or uncompressed, fetching missing ones."""
    root = Path(root).expanduser()
    found: list[Path | None] = []
    for base in IDX_FILES:
        hits = [f / n for f in _folders(root, name) for n in (base + ".gz", base) if (f / n).is_file()]
        found.append(hits[0] if hits else None)
    missing = [base + ".gz" for base, path in zip(IDX_FILES, found, strict=True) if path is None]
    if missing and not download:
        raise DataError(
            f"{name} files not found: put {', '.join(missing)} in {(root / name).resolve()}/ "
            f"(the uncompressed names without .gz work too), or set data.download=true to fetch them "
            f"(checksums verified)."
        )
    pairs = zip(IDX_FILES, found, strict=True)
    return tuple(path or fetch(name, base + ".gz", root / name) for base, path in pairs)


def cifar_source(root: str | Path, download: bool) -> Path:
    """The extracted cifar-10-batches-py folder if present, else the .tar.gz archive."""
    root = Path(root).expanduser()
    for folder in (root / "cifar10", root):
        if (folder / CIFAR_FOLDER / CIFAR_BATCHES[0]).is_file():
            return folder / CIFAR_FOLDER
        if (folder / CIFAR_ARCHIVE).is_file():
            return folder / CIFAR_ARCHIVE
    if download:
        return fetch("cifar10", CIFAR_ARCHIVE, root / "cifar10")
    raise DataError(
        f"cifar10 files not found: put {CIFAR_ARCHIVE}, or the folder {CIFAR_FOLDER}/ extracted from it "
        f"(data_batch_1..5 and test_batch), in {(root / 'cifar10').resolve()}/, or set data.download=true "
        f"to fetch it (checksum verified)."
    )


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes (LeCun's MNIST format) as a uint8 tensor of its stored shape."""
    import torch  # here, not at the top: checking for files (`check_available`) must not pay for torch

    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"cannot read {path}: {error}. Delete it and fetch it again (data.download=true)."
        ) from error
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the rank, then the sizes (big-endian int32).
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != ndim:
        raise DataError(
            f"{path} is not an IDX file of rank {ndim} (bad magic number {data[:4].hex() or 'empty'}, "
            f"expected 000008{ndim:02x}). Delete it and fetch it again (data.download=true)."
        )
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(data) < header or len(data) != expected:
        raise DataError(
            f"{path} is truncated or damaged: {len(data)} bytes, expected {expected} for shape {shape}. "
            f"Delete it and fetch it again (data.download=true)."
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers: a downloaded pickle must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        import numpy

        if module.startswith("numpy.core") and hasattr(numpy, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 renamed the private module
        return super().find_class(module, name)


def _read_batch(f: IO[bytes], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    try:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
        data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
        x = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, C, H, W)
        y = torch.as_tensor(labels, dtype=torch.int64)  # (N,)
    except Exception as error:  # a damaged pickle can raise almost anything
        raise DataError(
            f"cannot read the CIFAR-10 batch {where}: {type(error).__name__}: {error}. "
            f"Delete it and fetch it again (data.download=true)."
        ) from error
    if len(x) != len(y):
        raise DataError(f"CIFAR-10 batch {where} holds {len(x)} images but {len(y)} labels; it is damaged.")
    return x, y


def read_cifar(source: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) from a cifar-10-batches-py folder or the .tar.gz archive."""
    import torch

    batches = []
    if source.is_dir():
        for batch in CIFAR_BATCHES:
            path = source / batch
            if not path.is_file():
                raise DataError(f"{path} is missing; {source} must hold {', '.join(CIFAR_BATCHES)}.")
            with open(path, "rb") as f:
                batches.append(_read_batch(f, str(path)))
    else:
        try:
            with tarfile.open(source, "r:gz") as archive:
                for batch in CIFAR_BATCHES:
                    member = archive.extractfile(f"{CIFAR_FOLDER}/{batch}")
                    if member is None:
                        raise KeyError(f"{CIFAR_FOLDER}/{batch} is not a file")
                    batches.append(_read_batch(member, f"{source}:{CIFAR_FOLDER}/{batch}"))
        except (tarfile.TarError, KeyError, OSError, EOFError, zlib.error) as error:
            raise DataError(
                f"cannot read the CIFAR-10 archive {source}: {error}. Delete it and fetch it again "
                f"(data.download=true)."
            ) from error
    train, test = batches[:-1], batches[-1]
    return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test[0], test[1]


def check_available(name: str, *, root: str, download: bool) -> None:
    """Raise DataError now, before any work, if a file-based data set is missing and may not be fetched."""
    if download:
        return
    if name in ("mnist", "fashion_mnist"):
        idx_files(name, root, download=False)
    elif name == "cifar10":
        cifar_source(root, download=False)
