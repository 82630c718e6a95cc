"""The Summary encoded from arrays (`bnlab.telemetry.records`) against the one protobuf builds field by field."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

from bnlab.telemetry import records
from bnlab.telemetry.statistics import HISTOGRAM_HEAD


def _scalars_by_fields(tags, values) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in zip(tags, values, strict=True)])


def _histograms_by_fields(tags, rows) -> Summary:
    bins = (rows.shape[1] - HISTOGRAM_HEAD) // 2
    values = []
    for tag, row in zip(tags, rows.tolist(), strict=True):
        low, high, count, total, squares = row[:HISTOGRAM_HEAD]
        histogram = HistogramProto(min=low, max=high, num=count, sum=total, sum_squares=squares,
                                   bucket=row[HISTOGRAM_HEAD:HISTOGRAM_HEAD + bins],
                                   bucket_limit=row[HISTOGRAM_HEAD + bins:])
        values.append(Summary.Value(tag=tag, histo=histogram))
    return Summary(value=values)


# tags of every length class a varint spells differently (1 and 2 bytes), non-ASCII ones, and messages longer
# than 127 bytes; values that round, overflow float32, are signed zeros, NaN and infinities
TAGS = ("a", "grad_norm/weight/layer00", "ü/ß/layer1", "x" * 127, "y" * 128, "z" * 300)
VALUES = (0.1, -0.0, 3.4e38 * 10, float("nan"), float("-inf"), 1e-46)


def test_scalars_equal_the_summary_built_field_by_field():
    summary = records.summary(dict(zip(TAGS, VALUES, strict=True)))
    expected = _scalars_by_fields(TAGS, VALUES)
    assert [value.tag for value in summary.value] == list(TAGS)
    got = np.array([value.simple_value for value in summary.value], dtype=np.float32)
    want = np.array([value.simple_value for value in expected.value], dtype=np.float32)
    assert got.tobytes() == want.tobytes()  # to the bit: NaN, -0.0 and the float32 rounding included
    assert all(value.WhichOneof("value") == "simple_value" and not value.HasField("metadata")
               for value in summary.value)


@pytest.mark.parametrize("bins", [1, 3, 16, 30])
def test_histograms_equal_the_summary_built_field_by_field(bins):
    rng = np.random.default_rng(bins)
    rows = rng.normal(size=(len(TAGS), HISTOGRAM_HEAD + 2 * bins)) * 10.0 ** rng.integers(-30, 30, size=(1,))
    rows[0, :HISTOGRAM_HEAD] = 0.0  # zeros, which protobuf leaves out of its bytes
    rows[1, 0], rows[1, 1], rows[2, 3] = -np.inf, np.inf, -0.0
    summary = records.summary({}, TAGS, rows)
    assert summary == _histograms_by_fields(TAGS, rows)
    assert [value.tag for value in summary.value] == list(TAGS)
    got = np.array([[*[getattr(v.histo, f) for f in ("min", "max", "num", "sum", "sum_squares")],
                     *v.histo.bucket, *v.histo.bucket_limit] for v in summary.value])
    assert got.tobytes() == rows.tobytes()  # every double to the bit, -0.0 included


def test_a_histogram_holding_nan_keeps_it():
    bins = 4
    rows = np.arange(2 * (HISTOGRAM_HEAD + 2 * bins), dtype=np.float64).reshape(2, -1)
    rows[1, 0] = rows[1, 1] = np.nan
    histogram = records.summary({}, ("a", "b"), rows).value[1].histo
    assert np.isnan(histogram.min) and np.isnan(histogram.max)
    assert list(histogram.bucket) == rows[1, HISTOGRAM_HEAD:HISTOGRAM_HEAD + bins].tolist()


def test_the_template_is_made_once_per_set_of_tags():
    records.summary({"t/once": 1.0})
    hits = records._scalar_template.cache_info().hits
    records.summary({"t/once": 2.0})
    assert records._scalar_template.cache_info().hits == hits + 1
    assert records.summary({"t/once": 2.0}).value[0].simple_value == 2.0  # the template itself is not written


def test_scalars_and_histograms_together_are_one_summary_of_both():
    rows = np.random.default_rng(0).normal(size=(2, HISTOGRAM_HEAD + 2 * 3))
    values = {"loss/train": 0.5, "lr": 0.125}
    expected = _scalars_by_fields(list(values), list(values.values()))
    expected.value.extend(_histograms_by_fields(("h/a", "h/b"), rows).value)
    assert records.summary(values, ("h/a", "h/b"), rows) == expected
