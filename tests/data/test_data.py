"""Tests for bnlab.data.datasets and bnlab.data.downloads: offline data sets, file readers, downloads, sampler."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.data import datasets as data
from bnlab.data import downloads
from bnlab.data.datasets import DATASETS, BatchSampler, Dataset, load_dataset
from bnlab.errors import ConfigError, DataError

OFFLINE = {"digits": (1, 8, 8), "mnist1d": (40,), "synthetic": (64,)}


# ---------------------------------------------------------------- offline data sets


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_dataset_shapes_dtypes_and_standardization(name):
    ds = load_dataset(name, seed=0)
    assert ds.name == name and ds.num_classes == 10
    assert ds.input_shape == OFFLINE[name] and ds.is_image == (len(OFFLINE[name]) == 3)
    assert ds.x_train.shape[1:] == ds.x_test.shape[1:] == OFFLINE[name]
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    total = len(ds.y_train) + len(ds.y_test)
    assert len(ds.y_test) == round(0.2 * total)
    assert set(ds.y_train.tolist()) == set(range(10)), "every class appears in training"
    # Standardized per channel (images) or per feature (vectors), with training statistics only.
    dims = (0, 2, 3) if ds.is_image else (0,)
    mean, std = ds.x_train.mean(dims), ds.x_train.std(dims, correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    assert ds.x_test.mean().abs() < 0.2 and (ds.x_test.std() - 1).abs() < 0.2  # same statistics, held out


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_dataset_deterministic_for_a_seed_and_different_for_another(name):
    a, b, c = load_dataset(name, seed=3), load_dataset(name, seed=3), load_dataset(name, seed=4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.y_test, c.y_test) or not torch.equal(a.x_test, c.x_test)


def test_synthetic_dimension_and_size_follow_the_arguments():
    ds = load_dataset("synthetic", synthetic_dim=7, synthetic_samples=500, test_fraction=0.1)
    assert ds.input_shape == (7,) and len(ds.y_train) == 450 and len(ds.y_test) == 50


def _digits_raw_rows() -> list[tuple[int, ...]]:
    table = np.loadtxt(data.DIGITS_FILE, delimiter=",", dtype=np.int64)  # (1797, 65)
    return sorted(map(tuple, table.tolist()))


def test_digits_split_is_a_partition_of_the_embedded_file():
    ds = load_dataset("digits", seed=0)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    x = torch.cat([ds.x_train, ds.x_test]).flatten(1)  # (1797, 64)
    # One affine map per channel, so the 17 standardized levels are the pixel counts 0..16 in order.
    levels, counts = torch.unique(x, return_inverse=True)
    assert len(levels) == 17
    rows = torch.cat([counts, torch.cat([ds.y_train, ds.y_test])[:, None]], dim=1)  # (1797, 65)
    # Same multiset of (image, label) rows: nothing duplicated across train/test, nothing lost.
    assert sorted(map(tuple, rows.tolist())) == _digits_raw_rows()


def test_split_is_disjoint_and_complete_and_seeded():
    req = data.Request("data", False, 5, 64, 4096, 0.25)
    idx = torch.arange(40)
    x_train, _, x_test, _ = data._split(idx, idx, req)
    assert len(x_test) == 10 and set(x_train.tolist()).isdisjoint(x_test.tolist())
    assert sorted(x_train.tolist() + x_test.tolist()) == list(range(40))


def test_embedded_digits_file_matches_the_recorded_provenance():
    import importlib.util

    script = Path(__file__).parents[2] / "scripts" / "make_digits.py"
    spec = importlib.util.spec_from_file_location("make_digits", script)
    make_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_digits)
    payload = data.DIGITS_FILE.read_bytes()
    assert hashlib.sha256(payload).hexdigest() == make_digits.EXPECTED_SHA256
    make_digits.check(payload)


def test_mnist1d_classes_carry_learnable_signal():
    ds = load_dataset("mnist1d", seed=0)
    assert len(ds.y_train) + len(ds.y_test) == 4000
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(ds.x_train), ds.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    # Greydanus (2020) reports ~32% for logistic regression: hard for linear models, far above 10% chance.
    assert accuracy > 0.25


def test_flatten_gives_vectors_with_the_same_values():
    image, flat = load_dataset("digits", seed=1), load_dataset("digits", seed=1, flatten=True)
    assert flat.input_shape == (64,) and not flat.is_image and flat.x_train.shape == (len(flat.y_train), 64)
    assert torch.equal(flat.x_train, image.x_train.flatten(1))
    assert load_dataset("mnist1d", flatten=True).input_shape == (40,)


def test_to_moves_every_tensor_and_keeps_the_rest():
    ds = load_dataset("synthetic", synthetic_dim=4, synthetic_samples=50).to("meta")
    assert isinstance(ds, Dataset) and ds.input_shape == (4,) and ds.num_classes == 10
    assert all(getattr(ds, f).device.type == "meta" for f in ("x_train", "y_train", "x_test", "y_test"))


def test_unknown_name_lists_valid_names_with_a_close_match():
    with pytest.raises(ConfigError) as info:
        load_dataset("fashion-mnst")
    message = str(info.value)
    assert "fashion-mnst" in message and "Did you mean 'fashion_mnist'" in message
    assert all(name in message for name in DATASETS)


def test_bad_test_fraction_is_a_config_error():
    with pytest.raises(ConfigError, match="test_fraction=1.0"):
        load_dataset("digits", test_fraction=1.0)


# ---------------------------------------------------------------- IDX files (mnist, fashion_mnist)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _tiny_idx(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10,
    }
    return {name: _idx_bytes(a) for name, a in arrays.items()}


def test_idx_reader_loads_gz_and_raw_files_in_official_order(tmp_path):
    files = _tiny_idx()
    folder = tmp_path / "mnist"
    folder.mkdir()
    for i, (name, payload) in enumerate(files.items()):  # alternate .gz and uncompressed names
        if i % 2 == 0:
            (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    ds = load_dataset("mnist", root=str(tmp_path))
    assert ds.input_shape == (1, 28, 28) and ds.is_image
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4, 5] and ds.y_test.tolist() == [3, 4, 5, 6]
    raw = torch.frombuffer(bytearray(files["train-images-idx3-ubyte"][16:]), dtype=torch.uint8).float()
    expected = (raw - raw.mean()) / raw.std(correction=0)  # one channel: one mean, one std
    torch.testing.assert_close(ds.x_train.flatten(), expected)


def test_fashion_mnist_reads_torchvision_layout(tmp_path):
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for name, payload in _tiny_idx(seed=1).items():
        (folder / name).write_bytes(payload)
    assert load_dataset("fashion_mnist", root=str(tmp_path)).x_test.shape == (4, 1, 28, 28)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad magic number"),
        (lambda b: b[:-10], "truncated"),
        (lambda b: gzip.compress(b)[:40], "cannot read"),
    ],
)
def test_corrupt_idx_file_names_the_file(tmp_path, damage, reason):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, payload in _tiny_idx().items():
        (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
    bad = folder / "t10k-images-idx3-ubyte.gz"
    payload = gzip.decompress(bad.read_bytes())
    damaged = damage(payload)
    bad.write_bytes(damaged if reason == "cannot read" else gzip.compress(damaged))
    with pytest.raises(DataError, match=reason) as info:
        load_dataset("mnist", root=str(tmp_path))
    assert str(bad) in str(info.value)


def test_missing_idx_files_say_where_to_put_which_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str((tmp_path / "nowhere" / "mnist").resolve()) in message
    assert all(name + ".gz" in message for name in downloads.IDX_FILES)
    assert "data.download=true" in message


# ---------------------------------------------------------------- CIFAR-10 pickles


def _cifar_batch(n: int, offset: int) -> bytes:
    pixels = (np.arange(n * 3072) + offset) % 251  # (n * 3072,) distinct-ish values per position
    # Like the official Python 2 pickles: bytes keys, a (N, 3072) uint8 array, a list of labels.
    labels = [(offset + i) % 10 for i in range(n)]
    batch = {b"data": pixels.astype(np.uint8).reshape(n, 3072), b"labels": labels}
    return pickle.dumps(batch, protocol=2)


def _cifar_files(n: int = 3) -> dict[str, bytes]:
    return {name: _cifar_batch(n, 7 * i) for i, name in enumerate(downloads.CIFAR_BATCHES)}


def test_cifar_reader_from_extracted_folder(tmp_path):
    folder = tmp_path / "cifar10" / downloads.CIFAR_FOLDER
    folder.mkdir(parents=True)
    for name, payload in _cifar_files().items():
        (folder / name).write_bytes(payload)
    x_train, y_train, x_test, y_test = downloads.read_cifar(downloads.cifar_source(tmp_path, download=False))
    assert x_train.shape == (15, 3, 32, 32) and x_test.shape == (3, 3, 32, 32)
    assert x_train.dtype == torch.uint8
    assert y_train.tolist()[:3] == [0, 1, 2] and y_test.tolist() == [5, 6, 7]
    # The row layout is 1024 red, 1024 green, 1024 blue values, each image row-major.
    assert x_train[0, 1, 0, 0] == 1024 % 251 and x_train[0, 2, 1, 3] == (2048 + 32 + 3) % 251
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.input_shape == (3, 32, 32) and ds.x_train.shape == (15, 3, 32, 32)
    assert load_dataset("cifar10", root=str(tmp_path), flatten=True).input_shape == (3072,)


def test_cifar_reader_from_archive_in_root(tmp_path):
    with tarfile.open(tmp_path / downloads.CIFAR_ARCHIVE, "w:gz") as archive:
        for name, payload in _cifar_files(2).items():
            info = tarfile.TarInfo(f"{downloads.CIFAR_FOLDER}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.y_test.tolist() == [5, 6]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


UNSAFE = pickle.dumps({b"data": _Exploit(), b"labels": [0]})


@pytest.mark.parametrize("payload", [b"\x80\x02}q\x00(X", UNSAFE], ids=["truncated", "unsafe"])
def test_corrupt_or_unsafe_cifar_batch_names_the_file(tmp_path, payload):
    folder = tmp_path / downloads.CIFAR_FOLDER
    folder.mkdir()
    for name, good in _cifar_files().items():
        (folder / name).write_bytes(payload if name == "data_batch_3" else good)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=str(tmp_path))
    assert str(folder / "data_batch_3") in str(info.value)


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(info.value)
    assert downloads.CIFAR_ARCHIVE in message and str((tmp_path / "cifar10").resolve()) in message
    assert "data.download=true" in message


# ---------------------------------------------------------------- downloads from a local mirror


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tiny mnist .gz files laid out as <mirror>/mnist/<file>."""
    served = tmp_path / "served"
    (served / "mnist").mkdir(parents=True)
    checksums = {}
    for name, payload in _tiny_idx().items():
        gz = gzip.compress(payload)
        (served / "mnist" / (name + ".gz")).write_bytes(gz)
        checksums[name + ".gz"] = hashlib.md5(gz).hexdigest()
    handler = functools.partial(_QuietHandler, directory=served)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv(downloads.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setitem(downloads.MIRRORS, "mnist", [])  # never reach the internet from a test
    monkeypatch.setitem(downloads.CHECKSUMS, "mnist", checksums)
    yield checksums
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_fetches_verifies_and_loads(tmp_path, mirror):
    root = tmp_path / "data"
    ds = load_dataset("mnist", root=str(root), download=True)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.y_test.tolist() == [3, 4, 5, 6]
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(mirror)  # no .part files left
    assert all(downloads.md5sum(root / "mnist" / name) == md5 for name, md5 in mirror.items())


def test_checksum_mismatch_names_the_file_and_keeps_nothing(tmp_path, mirror):
    mirror["t10k-labels-idx1-ubyte.gz"] = "0" * 32
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=str(root), download=True)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "0" * 32 in message
    actual = hashlib.md5(gzip.compress(_tiny_idx()["t10k-labels-idx1-ubyte"])).hexdigest()
    assert actual in message and downloads.MIRROR_ENV in message  # expected, actual, and a fix
    assert not any("t10k-labels" in p.name for p in (root / "mnist").iterdir())


def test_unreachable_file_is_a_data_error_listing_the_urls(tmp_path, mirror):
    (tmp_path / "served" / "mnist" / "train-images-idx3-ubyte.gz").unlink()  # the mirror answers 404
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz") as info:
        load_dataset("mnist", root=str(tmp_path / "data"), download=True)
    assert "127.0.0.1" in str(info.value)
    assert list((tmp_path / "data" / "mnist").glob("*.part")) == []


# ---------------------------------------------------------------- BatchSampler


def _take(sampler: BatchSampler, n: int) -> list[list[int]]:
    return [sampler.next_indices().tolist() for _ in range(n)]


def test_sampler_covers_each_index_once_per_epoch_and_drops_the_remainder():
    sampler = BatchSampler(num_samples=14, batch_size=4, seed=0)
    assert sampler.batches_per_epoch == 3
    for _ in range(3):  # three epochs
        batches = _take(sampler, 3)
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen)) == 12 and set(seen) <= set(range(14))
    batch = BatchSampler(10, 5, 0).next_indices()
    assert batch.dtype == torch.int64 and batch.shape == (5,)


def test_sampler_is_reproducible_and_reshuffles_each_epoch():
    a, b, c = BatchSampler(100, 10, 7), BatchSampler(100, 10, 7), BatchSampler(100, 10, 8)
    first, second = _take(a, 10), _take(a, 10)
    assert first == _take(b, 10) and first != _take(c, 10)
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(100))


def test_sampler_resume_continues_the_exact_sequence():
    reference = BatchSampler(50, 8, seed=3)
    expected = _take(reference, 40)
    interrupted = BatchSampler(50, 8, seed=3)
    _take(interrupted, 13)  # stop mid-epoch (6 batches per epoch)
    state = interrupted.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the state survives a checkpoint file
    resumed = BatchSampler(50, 8, seed=3)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert _take(resumed, 27) == expected[13:]


def test_sampler_rejects_bad_sizes_and_mismatched_state():
    with pytest.raises(ConfigError, match="batch_size=20"):
        BatchSampler(10, 20, 0)
    with pytest.raises(ConfigError, match="original data settings"):
        BatchSampler(10, 5, 0).load_state_dict(BatchSampler(10, 5, 1).state_dict())
