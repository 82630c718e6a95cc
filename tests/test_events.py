"""bnlab's compiled Summary encoder (csrc/events.cpp) against protobuf's own encoding, byte for byte."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

from bnlab import native

# Edge cases of the float32 rounding and of proto3's "a zero double is not written": +0 and -0 (written),
# NaN, infinities, a double too large for a float (inf), one rounding to float's largest, denormals.
SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e300, -1e300, 3.4028235e38, 3.40282357e38, 1e-40,
           1e-45, 1e-50, -1e-50, 5e-324, 1.0, -2.5, 0.1]


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.delenv("BNLAB_NATIVE", raising=False)
    assert native.library() is not None, "the compiled loops did not build (see the log's warning)"


def _tags(count: int, rng) -> list[str]:
    """Tags of every length class: short, over 127 bytes (a two-byte length), non-ASCII, empty."""
    tags = [f"preact/p15/layer{i:02d}" for i in range(count)]
    tags[1] = "grad_norm/weight/" + "x" * 200
    tags[2] = "unicode/µ∂/layer01"
    tags = [tag + "y" * int(rng.integers(0, 3)) for tag in tags]
    tags[0] = ""  # proto3 leaves an empty string out
    return tags


def test_scalar_summaries_are_protobufs_own_bytes():
    rng = np.random.default_rng(0)
    values = np.concatenate([SPECIAL, rng.standard_normal(40) * 10.0 ** rng.integers(-30, 30, 40)])
    tags = _tags(len(values), rng)
    expected = Summary(value=[Summary.Value(tag=tag, simple_value=value)
                              for tag, value in zip(tags, values, strict=True)])
    assert native.scalar_summary(native.Tags(tags), values) == expected.SerializeToString()
    assert native.scalar_summary(native.Tags([]), np.empty(0)) == b""


def test_a_value_whose_message_needs_a_two_byte_length():
    tags = ["t" * 130]  # the Value's length (1 + 2 + 130 + 5) takes two bytes too
    expected = Summary(value=[Summary.Value(tag=tags[0], simple_value=2.0)])
    assert native.scalar_summary(native.Tags(tags), np.array([2.0])) == expected.SerializeToString()


@pytest.mark.parametrize("bins", [0, 1, 30, 256])
def test_histogram_summaries_are_protobufs_own_bytes(bins):
    rng = np.random.default_rng(bins)
    count = 24
    rows = rng.standard_normal((count, 5 + 2 * bins)) * 1e3
    rows[:len(SPECIAL), 0] = SPECIAL  # min
    rows[1, 1:5] = [-0.0, 0.0, math.nan, 0.0]  # max -0 written, num and sum_squares 0 left out
    rows[2, 5:] = 0.0  # empty bins are still written (a packed field is written unless it has no values)
    tags = _tags(count, rng)
    expected = Summary(value=[
        Summary.Value(tag=tag, histo=HistogramProto(min=row[0], max=row[1], num=row[2], sum=row[3], sum_squares=row[4],
                                                    bucket=row[5:5 + bins], bucket_limit=row[5 + bins:]))
        for tag, row in zip(tags, rows, strict=True)])
    assert native.histogram_summary(native.Tags(tags), rows) == expected.SerializeToString()


def test_bad_shapes_name_what_was_given():
    with pytest.raises(ValueError, match=r"2 tags but values of shape \(3,\)"):
        native.scalar_summary(native.Tags(["a", "b"]), np.zeros(3))
    with pytest.raises(ValueError, match=r"got shape \(2, 6\)"):
        native.histogram_summary(native.Tags(["a", "b"]), np.zeros((2, 6)))
