"""The C checksum bnlab hands TensorBoard against TensorBoard's own pure-Python one."""

from __future__ import annotations

import random

from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

from bnlab.telemetry import checksums

PURE_PYTHON = pywrap_tensorflow.masked_crc32c  # captured before any install() in this process can replace it


def test_the_c_checksum_equals_tensorboards_on_random_records():
    rng = random.Random(0)
    assert PURE_PYTHON.__module__.endswith("pywrap_tensorflow")  # TensorBoard's own, not ours
    for size in (0, 1, 7, 8, 9, 100, 4096, 10_000):
        data = bytes(rng.getrandbits(8) for _ in range(size))
        assert checksums.masked_crc32c(data) == PURE_PYTHON(data), size
    assert checksums.masked_crc32c(bytearray(b"abc")) == PURE_PYTHON(b"abc")


def test_install_points_writer_and_reader_at_it_and_event_files_read_back(tmp_path):
    from conftest import scalars

    from bnlab.telemetry.writer import RunWriter

    assert checksums.install()
    assert record_writer.masked_crc32c is checksums.masked_crc32c
    assert pywrap_tensorflow.masked_crc32c is checksums.masked_crc32c
    writer = RunWriter(str(tmp_path))
    writer.scalars(3, {"a/b": 1.5})
    writer.close()
    assert scalars(tmp_path) == {"a/b": [(3, 1.5)]}  # TensorBoard's reader checks every record's checksum
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    data = event_file.read_bytes()
    length = int.from_bytes(data[:8], "little")  # the first record: length, crc(length), data, crc(data)
    assert int.from_bytes(data[8:12], "little") == PURE_PYTHON(data[:8])
    assert int.from_bytes(data[12 + length:16 + length], "little") == PURE_PYTHON(data[12:12 + length])
