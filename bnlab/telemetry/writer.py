"""The TensorBoard writer of a run: tags in, event records out.

It does not know how the numbers were computed. Scalars of one step go out as one
event (one protobuf with many values) rather than one event per tag, its histograms as another; both are
encoded from arrays (`bnlab.telemetry.records`); histograms are binned on the device
(`bnlab.telemetry.statistics`) and cross to the host in one transfer. The HParams records go
into the run's own directory, not the extra sub-run `SummaryWriter.add_hparams`
creates, so TensorBoard's HParams view lines up a sweep's runs directly.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from bnlab.telemetry import checksums, records
from bnlab.telemetry.figures import PROFILE_TAGS

LAYER_TAG = re.compile(r"^(?P<family>.+)/layer\d+$")
PROFILE_CATEGORY = "vanishing gradient: one line per run"
# The run-level profile charts (bnlab.telemetry.figures.PROFILE_TAGS), titled by what a reader looks for.
PROFILE_CHARTS = dict(zip(PROFILE_TAGS, (
    "log10 of the first/last hidden-layer gradient ratio (0: no vanishing; -6: a millionth reaches the input)",
    "gradient growth per layer toward the input (1: level; below 1: vanishing; above 1: exploding)"),
    strict=True))
# The HParams columns TensorBoard shows by default (its first five flagged ones): what the claim varies.
SHOWN_FIRST = ("model.activation", "model.depth", "model.init", "norm.name", "train.seed")
# Custom-scalars categories in this order (any other just before `act`): the decade-spanning families on a log10 scale
# first, where 20 layers over 17 orders of magnitude still read as 20 lines.
CATEGORY_ORDER = (PROFILE_CATEGORY, "log10", "grad_norm", "update_ratio", "weight_norm", "preact", "act")


def as_logged(values: dict[str, float]) -> dict[str, float]:
    """Each value as the event file holds it (a TensorBoard scalar is a float32): what summary.json reports, so
    that the two agree to the last bit."""
    return {tag: float(np.float32(value)) for tag, value in values.items()}


class RunWriter:
    """Writes a run's scalars, histograms, text, images, layout and hparams to `run_dir`."""

    def __init__(self, run_dir: str, purge_step: int | None = None):
        # purge_step: on resume, TensorBoard drops records at steps >= purge_step written after the
        # last checkpoint by the interrupted process, so no step appears twice.
        # A deep queue: at one event per step the writer thread must never make training wait for the disk.
        checksums.install()  # TensorBoard's pure-Python record checksum would cost more than the statistics
        _after_existing_files(run_dir)
        self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=10, max_queue=1000)
        self._events = self._writer._get_file_writer()

    def records(self, step: int, values: dict[str, float], histogram_tags: list[str] = (),
                histogram_rows: torch.Tensor | np.ndarray | None = None) -> None:
        """A step's scalars, and its histograms already binned by `bnlab.telemetry.statistics.histogram_rows`
        (one row per tag), in one event."""
        if len(histogram_tags):
            histogram_tags, histogram_rows = _binned(histogram_tags, histogram_rows)
        if values or len(histogram_tags):
            self._events.add_summary(records.summary(values, histogram_tags, histogram_rows), step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.records(step, values)

    def histogram_rows(self, step: int, tags: list[str], rows: torch.Tensor | np.ndarray | None) -> None:
        self.records(step, {}, tags, rows)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        self._writer.add_text(tag, markdown, step)

    def image_png(self, tag: str, png: bytes, step: int, width: int, height: int) -> None:
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self._events.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def layout(self, tags: list[str]) -> None:
        """The custom-scalars layout: the run-level profile figures first (one line per run, so a sweep reads
        at a glance), then a chart per telemetry family, each drawing all layers of that family; the
        log10 families before the linear ones, the activations last."""
        charts: dict[str, dict[str, list]] = defaultdict(dict)
        for tag, title in PROFILE_CHARTS.items():
            if tag in tags:
                charts[PROFILE_CATEGORY][title] = ["Multiline", [rf"^{re.escape(tag)}$"]]
        families = sorted({match["family"] for tag in tags if (match := LAYER_TAG.match(tag))})
        for family in families:
            charts[family.split("/")[0]][family] = ["Multiline", [rf"^{re.escape(family)}/layer\d+$"]]
        order = {name: index for index, name in enumerate(CATEGORY_ORDER)}
        unknown = order["act"] - 0.5
        categories = sorted(charts, key=lambda name: (order.get(name, unknown), name))
        self._writer.add_custom_scalars({name: charts[name] for name in categories})

    def bands_layout(self, category: str, charts: dict[str, tuple[str, str, str]]) -> None:
        """A custom-scalars margin chart per title: the line `mean` inside the band from `low` to `high`, one band
        per run that writes those tags (TensorBoard has no band chart of its own for seeds)."""
        self._writer.add_custom_scalars({category: {title: ["Margin", list(tags)] for title, tags in charts.items()}})

    def hparams_start(self, config: dict, metric_tags: list[str]) -> None:
        """Declare the run's hyperparameters (`config`, flattened to `section.key`) and its metric tags.

        Every run declares the same columns in the same order: TensorBoard's HParams view takes its columns
        from one run's declaration, so runs that declared different ones changed the table between launches.
        Integers are written as text ('64', not TensorBoard's '64.000'), booleans as booleans, None as 'none'.
        The claim's axes (`SHOWN_FIRST`) are flagged `differs` in every run alike: TensorBoard puts flagged
        columns first and shows the first five by default, which would otherwise be data.batch_size ... data.root.
        """
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        infos, values = [], {}
        for name, value in sorted(flatten(config).items()):
            kind, values[name] = _hparam_value(value)
            info = api_pb2.HParamInfo(name=name, type=kind, differs=name in SHOWN_FIRST)
            if kind == api_pb2.DATA_TYPE_BOOL:
                info.domain_discrete.extend([False, True])
            infos.append(info)
        metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags]
        experiment = plugin_data_pb2.HParamsPluginData(
            experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics),
            version=metadata.PLUGIN_DATA_VERSION)
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in values.items():
            start.hparams[name].CopyFrom(value)
        session = plugin_data_pb2.HParamsPluginData(session_start_info=start, version=metadata.PLUGIN_DATA_VERSION)
        self._events.add_summary(_plugin_summary(metadata.EXPERIMENT_TAG, experiment))
        self._events.add_summary(_plugin_summary(metadata.SESSION_START_INFO_TAG, session))

    def hparams_end(self, status: str) -> None:
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        session_end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS if status == "completed" else api_pb2.STATUS_FAILURE)
        content = plugin_data_pb2.HParamsPluginData(session_end_info=session_end,
                                                    version=metadata.PLUGIN_DATA_VERSION)
        self._events.add_summary(_plugin_summary(metadata.SESSION_END_INFO_TAG, content))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()



def _binned(tags: list[str], rows: torch.Tensor | np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """The rows on the host, without those that binned nothing (log10 |g| of a gradient of exact zeros): no
    histogram to show."""
    host = rows if isinstance(rows, np.ndarray) else rows.detach().to("cpu", torch.float64).numpy()
    binned = host[:, 2] != 0
    if binned.all():
        return tuple(tags), host
    return tuple(tag for tag, keep in zip(tags, binned, strict=True) if keep), host[binned]


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as {"section.key": value}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hparam_value(value):
    """(TensorBoard data type, protobuf Value) of one hyperparameter."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL, struct_pb2.Value(bool_value=value)
    if isinstance(value, float):
        return api_pb2.DATA_TYPE_FLOAT64, struct_pb2.Value(number_value=value)
    text = "none" if value is None else str(value)  # integers too: TensorBoard writes numbers as 64.000
    return api_pb2.DATA_TYPE_STRING, struct_pb2.Value(string_value=text)


def _plugin_summary(tag: str, content) -> Summary:
    from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
    from tensorboard.plugins.hparams import metadata

    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])


def _after_existing_files(run_dir) -> None:
    """Wait (at most a second) until this file's name sorts after the directory's earlier event files.

    TensorBoard reads a directory's event files in name order, and a name starts with the second it was created
    in, then the host, the process and a counter: a resumed run's file made in the same second as the stopped
    run's could sort first (counter "10" before "9"), and TensorBoard would then read the stopped run's records
    after the resumed run's and drop them."""
    stamps = [int(match[1]) for path in Path(run_dir).glob("events.out.tfevents.*")
              if (match := re.match(r"events\.out\.tfevents\.(\d+)\.", path.name))]
    while stamps and time.time() < max(stamps) + 1:
        time.sleep(0.02)
