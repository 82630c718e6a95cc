"""Reading runs back: a run directory's event files and summary.json in, plain numbers out.

The event files are read by TensorBoard's own `EventAccumulator`, so a report sees
exactly what the TensorBoard UI shows. A resumed run's writer marks the point it
continued from (`purge_step`); the accumulator drops the stale records after it, and
on top of that every tag keeps only the last write of a step, so no step appears twice.

Scalars come back as the event files hold them, in float32 (summary.json keeps the run's
float64 values); the vanishing-gradient figures come from summary.json once the run has
written them, else they are recomputed from the event files.

Damage is found with TensorBoard's record reader (length and CRC of every record).
A cut-off last record is normal for a run that is still writing and only noted; any
other damage raises RunFileError naming the file. `load_runs` turns that into a
warning and goes on with the other runs.

Example::

    runs, warnings = load_runs(["runs/sweep/2026-11-26_12-00-00_abc123"])
    for run in runs:
        print(run.label, run.status, run.last("acc/test"), run.figures["growth_factor/final"])
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from bnlab.analysis.runs import RunInfo, find_runs
from bnlab.errors import BnlabError, RunFileError
from bnlab.telemetry import checksums, figures
from bnlab.train import summary

EVENT_GLOB = "events.out.tfevents.*"
TEXT_SUFFIX = "/text_summary"  # torch's add_text stores tag T as T/text_summary
FIGURE_NAMES = ("grad_ratio_first_last/init", "grad_ratio_first_last/final", "growth_factor/init",
                "growth_factor/final")


@dataclass
class Image:
    step: int
    png: bytes
    width: int
    height: int


@dataclass
class RunData:
    """One run as read back: summary.json plus every scalar series, text and (optionally) image."""

    path: Path
    summary: dict
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # tag -> [(step, value)]
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    images: dict[str, list[Image]] = field(default_factory=dict)  # only with load_run(..., images=True)
    hparams: dict = field(default_factory=dict)  # {"hparams": {name: value}, "metrics": [tag, ...]}
    warnings: list[str] = field(default_factory=list)

    # --- what the run is

    @property
    def status(self) -> str:
        return self.summary.get("status", "running")

    @property
    def overrides(self) -> list[str]:
        return list(self.summary.get("overrides", []))

    @property
    def label(self) -> str:
        """The configuration: the overrides without the seed (see `RunInfo.label`)."""
        return RunInfo(self.path, self.summary).label

    @property
    def config(self) -> dict:
        return self.summary.get("config", {})

    @property
    def seed(self):
        return self.summary.get("seed")

    # --- scalar series

    def series(self, tag: str) -> list[tuple[int, float]]:
        """[(step, value)] of `tag` in step order; [] when the run never wrote it."""
        return self.scalars.get(tag, [])

    def at_step(self, tag: str, step: int) -> float | None:
        return dict(self.series(tag)).get(step)

    def first(self, tag: str) -> float | None:
        points = self.series(tag)
        return points[0][1] if points else None

    def last(self, tag: str) -> float | None:
        points = self.series(tag)
        return points[-1][1] if points else None

    def values_at(self, step: int) -> dict[str, float]:
        """Every tag written at `step`."""
        found = {tag: dict(points).get(step) for tag, points in self.scalars.items()}
        return {tag: value for tag, value in found.items() if value is not None}

    @property
    def last_step(self) -> int | None:
        """The last step with a record: how far a run got, also while summary.json still says 0 steps."""
        return max((points[-1][0] for points in self.scalars.values() if points), default=None)

    @property
    def initial(self) -> dict[str, float]:
        """The values at step 0: the network as initialized, before any update."""
        return self.values_at(0)

    @property
    def final(self) -> dict[str, float]:
        """The last value of every tag (what summary.json's `metrics` holds for a finished run)."""
        return {tag: points[-1][1] for tag, points in self.scalars.items() if points}

    @property
    def hidden_layers(self) -> list[str]:
        return figures.hidden_layers(self.scalars)

    def profile(self, family: str, step: int | None = None) -> list[float]:
        """`family` (e.g. grad_norm/output) of each hidden layer at `step` (None: the end), NaN if absent."""
        values = self.final if step is None else self.values_at(step)
        return [values.get(f"{family}/{layer}", math.nan) for layer in self.hidden_layers]

    @property
    def figures(self) -> dict[str, float]:
        """The vanishing-gradient figures, keyed as in summary.json (null there reads NaN here).

        summary.json's once the run has written them (computed by the run from float64 values); for a run
        still going, recomputed from the event files (float32 records) with bnlab.telemetry.figures.
        """
        recorded = self.summary.get("figures") or {}
        if all(name in recorded for name in FIGURE_NAMES):
            return {name: math.nan if recorded[name] is None else float(recorded[name])
                    for name in FIGURE_NAMES}
        return figures.gradient_figures(self.initial, self.final)

    def text(self, tag: str) -> str | None:
        """The last text written under `tag` (e.g. run_card), or None."""
        entries = self.texts.get(tag)
        return entries[-1][1] if entries else None


def event_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob(EVENT_GLOB))


def load_run(path, images: bool = False) -> RunData:
    """Read the run in directory `path`. Raises RunFileError for a damaged summary.json or event file."""
    run_dir = Path(path)
    record = summary.read(run_dir)
    run = RunData(run_dir, record)
    files = event_files(run_dir)
    for file in files:
        try:
            problem = _record_damage(file)
        except OSError as error:
            raise RunFileError(f"cannot read event file {file}: {error.strerror or error}") from error
        if problem is None:
            continue
        if "truncated" in problem and (file != files[-1] or record["status"] in ("running", "failed")):
            # a process that was killed or ran out of disk mid-record; a resume went on in a newer file
            why = "the run is still writing" if file == files[-1] and record["status"] == "running" else (
                "its process stopped while writing it")
            run.warnings.append(f"{file}: the last record is incomplete ({why}); read up to it")
        else:
            raise RunFileError(f"event file {file} is damaged ({problem}); its later records are lost. "
                               "If it was copied from elsewhere, copy it again; otherwise rerun the run")
    if files:
        _read_events(run, images)
    return run


def load_runs(paths, images: bool = False) -> tuple[list[RunData], list[str]]:
    """Every run at or under `paths` (run or sweep directories, in any mix), and a warning per damaged run.

    Raises RunFileError when a path does not exist or none of them holds a run; a damaged run is
    skipped with a warning so the others are still read.
    """
    runs, warnings = [], []
    for info in find_runs(*[Path(p) for p in paths]):
        if info.error is not None:
            warnings.append(f"skipped {info.path}: {info.error}")
            continue
        try:
            run = load_run(info.path, images=images)
        except BnlabError as error:
            warnings.append(f"skipped {info.path}: {error}")
            continue
        warnings.extend(run.warnings)
        runs.append(run)
    return runs, warnings


def _record_damage(file: Path) -> str | None:
    """What TensorBoard's record reader finds wrong with `file` (length or CRC), or None when intact."""
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    checksums.install()
    reader = pywrap_tensorflow.PyRecordReader_New(str(file).encode(), 0, b"")
    intact = 0
    try:
        while True:
            reader.GetNext()
            intact += 1
    except errors.OutOfRangeError:
        return None
    except errors.DataLossError as error:
        # "<file name> has truncated record in data", "<file name> failed event crc32 check", ...
        message = str(error.message)
        what = next((message[message.find(key):] for key in ("truncated", "failed") if key in message),
                    message)
        return f"{what} after {intact} intact records"
    finally:
        reader.file_handle.close()


def _read_events(run: RunData, images: bool) -> None:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    checksums.install()
    # 0 = keep every record; histograms are not needed here, so keep one of each.
    sizes = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0,
             event_accumulator.IMAGES: 0 if images else 1,
             event_accumulator.HISTOGRAMS: 1, event_accumulator.COMPRESSED_HISTOGRAMS: 1}
    accumulator = event_accumulator.EventAccumulator(str(run.path), size_guidance=sizes)
    try:
        with _quiet("tensorboard"):  # it logs a warning for every purge; for a resumed run that is expected
            accumulator.Reload()
    except Exception as error:  # the reader's own errors (protobuf, I/O): name the directory, keep one line
        raise RunFileError(f"cannot read the event files in {run.path}: {type(error).__name__}: "
                           f"{error}") from error
    tags = accumulator.Tags()
    for tag in tags[event_accumulator.SCALARS]:
        run.scalars[tag] = _last_write_per_step((e.step, e.value) for e in accumulator.Scalars(tag))
    for tag in tags[event_accumulator.TENSORS]:
        if tag.endswith(TEXT_SUFFIX):
            entries = [(e.step, _text(tensor_util.make_ndarray(e.tensor_proto)))
                       for e in accumulator.Tensors(tag)]
            run.texts[tag[: -len(TEXT_SUFFIX)]] = _last_write_per_step(entries)
    if images:
        for tag in tags[event_accumulator.IMAGES]:
            by_step = {e.step: Image(e.step, e.encoded_image_string, e.width, e.height)
                       for e in accumulator.Images(tag)}
            run.images[tag] = [by_step[step] for step in sorted(by_step)]
    _read_hparams(accumulator, run)


def _read_hparams(accumulator, run: RunData) -> None:
    """The HParams plugin's records: the run's hyperparameters and the metric tags it declared."""
    from tensorboard.plugins.hparams import metadata

    try:
        content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    except KeyError:  # the run wrote no hparams (it failed before the writer started)
        content = {}
    if metadata.SESSION_START_INFO_TAG in content:
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        run.hparams["hparams"] = {name: _value(v) for name, v in start.hparams.items()}
    if metadata.EXPERIMENT_TAG in content:
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        run.hparams["metrics"] = [info.name.tag for info in experiment.metric_infos]


def _last_write_per_step(points) -> list[tuple[int, object]]:
    """Points in file order -> one point per step, the last one written, in step order."""
    by_step = dict(points)
    return [(step, by_step[step]) for step in sorted(by_step)]


def _text(array) -> str:
    value = array.reshape(-1)[0] if array.size else b""
    return value.decode() if isinstance(value, bytes) else str(value)


def _value(proto):
    """A google.protobuf.Value (an hparam) as a Python value."""
    kind = proto.WhichOneof("kind")
    return None if kind in (None, "null_value") else getattr(proto, kind)


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
