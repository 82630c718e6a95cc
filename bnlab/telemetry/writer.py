"""The TensorBoard writer of a run: tags in, event records out.

It does not know how the numbers were computed. Scalars of one step go out as one
event (one protobuf with many values) rather than one event per tag; histograms are
binned on the device (`bnlab.telemetry.statistics`) and cross to the host in one transfer. The HParams records go
into the run's own directory, not the extra sub-run `SummaryWriter.add_hparams`
creates, so TensorBoard's HParams view lines up a sweep's runs directly.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from bnlab.telemetry import checksums
from bnlab.telemetry.statistics import HISTOGRAM_BINS, HISTOGRAM_HEAD

LAYER_TAG = re.compile(r"^(?P<family>.+)/layer\d+$")


class RunWriter:
    """Writes a run's scalars, histograms, text, images, layout and hparams to `run_dir`."""

    def __init__(self, run_dir: str, purge_step: int | None = None):
        # purge_step: on resume, TensorBoard drops records at steps >= purge_step written after the
        # last checkpoint by the interrupted process, so no step appears twice.
        # A deep queue: at one event per step the writer thread must never make training wait for the disk.
        checksums.install()  # TensorBoard's pure-Python record checksum would cost more than the statistics
        self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=10, max_queue=1000)
        self._events = self._writer._get_file_writer()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self._events.add_summary(summary, step)

    def histogram_rows(self, step: int, tags: list[str], rows: torch.Tensor | np.ndarray | None) -> None:
        """Histograms already binned by `bnlab.telemetry.statistics.histogram_rows`, one row per tag."""
        if not tags:
            return
        host = rows if isinstance(rows, np.ndarray) else rows.detach().to("cpu", torch.float64).numpy()
        values = []
        for tag, row in zip(tags, host.tolist(), strict=True):  # one host transfer
            low, high, count, total, total_sq = row[:HISTOGRAM_HEAD]
            buckets, limits = row[HISTOGRAM_HEAD:HISTOGRAM_HEAD + HISTOGRAM_BINS], row[HISTOGRAM_HEAD + HISTOGRAM_BINS:]
            proto = HistogramProto(min=low, max=high, num=count, sum=total, sum_squares=total_sq,
                                   bucket_limit=limits, bucket=buckets)
            values.append(Summary.Value(tag=tag, histo=proto))
        self._events.add_summary(Summary(value=values), step)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        self._writer.add_text(tag, markdown, step)

    def image_png(self, tag: str, png: bytes, step: int, width: int, height: int) -> None:
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self._events.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def layout(self, tags: list[str]) -> None:
        """A custom-scalars chart per telemetry family, each drawing all layers of that family."""
        families: dict[str, list[str]] = defaultdict(list)
        for tag in tags:
            match = LAYER_TAG.match(tag)
            if match:
                families[match["family"]].append(tag)
        categories: dict[str, dict] = defaultdict(dict)
        for family in sorted(families):
            category = family.split("/")[0]
            categories[category][family] = ["Multiline", [rf"^{re.escape(family)}/layer\d+$"]]
        self._writer.add_custom_scalars(dict(categories))

    def hparams_start(self, hparams: dict, metric_tags: list[str], varied: set[str] = frozenset()) -> None:
        """Declare the run's hyperparameters and which scalar tags are its metrics.

        `varied` (the keys the user overrode) are marked as differing and listed first: TensorBoard's
        HParams view shows the differing ones before the rest, so a sweep's table opens on what it swept.
        """
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2

        experiment, session_start, _ = hparams_summaries(hparams, dict.fromkeys(metric_tags, 0.0))
        value = experiment.value[0]
        content = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        infos = sorted(content.experiment.hparam_infos, key=lambda info: (info.name not in varied, info.name))
        for info in infos:
            info.differs = info.name in varied
        del content.experiment.hparam_infos[:]
        content.experiment.hparam_infos.extend(infos)
        content.version = metadata.PLUGIN_DATA_VERSION
        value.metadata.plugin_data.content = content.SerializeToString()
        self._events.add_summary(experiment)
        self._events.add_summary(session_start)

    def hparams_end(self, status: str) -> None:
        from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        session_end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS if status == "completed" else api_pb2.STATUS_FAILURE)
        content = plugin_data_pb2.HParamsPluginData(session_end_info=session_end,
                                                    version=metadata.PLUGIN_DATA_VERSION)
        plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
        value = Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=SummaryMetadata(plugin_data=plugin))
        self._events.add_summary(Summary(value=[value]))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

