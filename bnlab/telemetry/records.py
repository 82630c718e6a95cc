"""A measured step's TensorBoard Summary, encoded from its arrays in a few numpy operations.

Building a `Summary` field by field takes Python calls for each scalar and each histogram; with every
statistic logged at every step (hundreds of scalars, dozens of histograms) they show in the step time
(docs/performance.md). Here the Summary's bytes come from a template of the tags, made once per set of tags,
with the numbers copied into their places; `Summary.FromString` turns them into the message the writer takes.
The encoding is protobuf's wire format of `tensorboard/compat/proto/summary.proto`:

    Summary         value: repeated Value = 1
    Summary.Value   tag: string = 1, simple_value: float = 2, histo: HistogramProto = 5
    HistogramProto  min = 1, max = 2, num = 3, sum = 4, sum_squares = 5: double;
                    bucket_limit = 6, bucket = 7: packed repeated double

(tests/telemetry/test_records.py compares each against the message built field by field).
"""

from __future__ import annotations

import functools

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary

from bnlab.telemetry.statistics import HISTOGRAM_HEAD

_LENGTH_DELIMITED, _FIXED64, _FIXED32 = 2, 1, 5  # wire types
HISTOGRAM_FIELDS = ("min", "max", "num", "sum", "sum_squares")  # HistogramProto's fields 1-5: a row's head


def summary(values: dict[str, float], histogram_tags: tuple[str, ...] = (), rows: np.ndarray | None = None) -> Summary:
    """The Summary of each of `values` as a scalar (a float32, as TensorBoard's scalars are) and of histogram row i
    (`bnlab.telemetry.statistics.histogram_rows`: min, max, count, sum, sum of squares, then the bin counts, then
    their right edges) as histogram `histogram_tags[i]`. (Two encoded Summaries, one after the other, are the
    encoding of the one Summary holding the values of both.)"""
    data = _scalars(tuple(values), list(values.values())) if values else b""
    if histogram_tags:
        data += _histograms(tuple(histogram_tags), rows)
    return Summary.FromString(data)


def _scalars(tags: tuple[str, ...], values: list[float]) -> bytes:
    template, places = _scalar_template(tags)
    data = template.copy()
    with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as protobuf casts it
        data[places] = np.asarray(values, dtype=np.float64).astype("<f4").view(np.uint8)
    return data.tobytes()


def _histograms(tags: tuple[str, ...], rows: np.ndarray) -> bytes:
    bins = (rows.shape[1] - HISTOGRAM_HEAD) // 2
    histogram = np.repeat(_histogram_template(bins)[None], len(tags))
    for column, name in enumerate(HISTOGRAM_FIELDS):
        histogram[name] = rows[:, column]
    histogram["bucket"] = rows[:, HISTOGRAM_HEAD:HISTOGRAM_HEAD + bins]
    histogram["bucket_limit"] = rows[:, HISTOGRAM_HEAD + bins:]
    data, size = memoryview(histogram.view(np.uint8)), histogram.itemsize
    heads = _histogram_heads(tags, size)
    return b"".join(piece for i, head in enumerate(heads) for piece in (head, data[i * size:(i + 1) * size]))


@functools.lru_cache(maxsize=32)
def _scalar_template(tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The Summary's bytes with zeros for the values, and where value i's four bytes go."""
    pieces, places, size = [], [], 0
    for tag in tags:
        value = _field(1, _LENGTH_DELIMITED, _bytes(tag.encode())) + _field(2, _FIXED32, b"")
        piece = _field(1, _LENGTH_DELIMITED, _varint(len(value) + 4)) + value
        places.append(size + len(piece))
        pieces.append(piece + bytes(4))
        size += len(piece) + 4
    return _array(pieces), (np.array(places, dtype=np.int64)[:, None] + np.arange(4)).reshape(-1)


@functools.lru_cache(maxsize=8)
def _histogram_template(bins: int) -> np.ndarray:
    """A HistogramProto's bytes as a numpy record: each field's key, then its value (zero here)."""
    packed = _varint(8 * bins)
    keys = {number: _field(number, _FIXED64, b"") for number in range(1, len(HISTOGRAM_FIELDS) + 1)}
    keys |= {6: _field(6, _LENGTH_DELIMITED, packed), 7: _field(7, _LENGTH_DELIMITED, packed)}
    values = [(name, "<f8") for name in HISTOGRAM_FIELDS] + [("bucket_limit", "<f8", (bins,)),
                                                             ("bucket", "<f8", (bins,))]
    layout = [field for number, value in enumerate(values, 1) for field in ((f"key{number}", f"V{len(keys[number])}"),
                                                                           value)]
    template = np.zeros((), dtype=np.dtype(layout))
    for number, key in keys.items():
        template[f"key{number}"] = key
    return template


@functools.lru_cache(maxsize=32)
def _histogram_heads(tags: tuple[str, ...], histogram_size: int) -> list[bytes]:
    """What comes before each tag's HistogramProto: the Value's key and length, its tag, the histogram's key and
    length."""
    heads = []
    for tag in tags:
        value = _field(1, _LENGTH_DELIMITED, _bytes(tag.encode())) + _field(5, _LENGTH_DELIMITED,
                                                                            _varint(histogram_size))
        heads.append(_field(1, _LENGTH_DELIMITED, _varint(len(value) + histogram_size)) + value)
    return heads


def _array(pieces: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(pieces), dtype=np.uint8)


def _field(number: int, wire_type: int, rest: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + rest


def _bytes(data: bytes) -> bytes:
    return _varint(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)
