"""The figures, drawn once for both TensorBoard images (one run) and reports (several configurations).

matplotlib is imported inside the functions, and only its object API is used
(`Figure` on an Agg canvas, no pyplot): no global state, no display needed, and
`bnlab --help` never pays for the import. Each `*_figure` function returns a Figure;
`png` turns it into bytes for TensorBoard, `save` writes it for a report.

Gradient profiles use a log axis that spans at least four decades, so a level
profile looks level and a vanishing one looks steep, whatever the absolute scale.

One convention in every figure: step 0 (initialization) dashed, the end (or the current step)
solid. The solid line is broad and light, the dashed one thin and drawn on top, so where the two
coincide (BatchNorm keeps the profile where it started) both stay visible. A panel with nothing to
show (no saturated unit anywhere, no record) says so in its body.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

DPI = 100
MIN_DECADES = 4
BAND = {"p15": 0.15, "p50": 0.50, "p85": 0.85}
LAYER_AXIS = "hidden layer (input → output)"
BAND_KEY = "shaded: 15th–85th percentile · line: median"  # instead of a legend over the band


# The two line styles (matplotlib keyword arguments): step 0 thin dashes on top, the end broad and light beneath.
STEP0_STYLE = {"linestyle": "--", "linewidth": 1.4, "alpha": 1.0, "zorder": 3}
END_STYLE = {"linestyle": "-", "linewidth": 2.8, "alpha": 0.6, "zorder": 2}
STYLE_KEY = "dashed: step 0 · solid: end"


@dataclass
class ProfileLine:
    """One gradient profile across hidden layers, input side first; `initial`: at step 0 (drawn dashed)."""

    values: list[float]
    label: str | None
    color: str
    initial: bool = False
    marker: str = "o"


def line_style(initial: bool) -> dict:
    """The keyword arguments of a step-0 line (`initial`) or an end line, by the convention above."""
    return dict(STEP0_STYLE if initial else END_STYLE)


@dataclass
class Band:
    """Percentiles of one layer's preactivation over steps (Ioffe & Szegedy 2015, Figure 1)."""

    title: str
    steps: list[int]
    p15: list[float]
    p50: list[float]
    p85: list[float]


def new_figure(width_px: int = 640, height_px: int = 400, nrows: int = 1, ncols: int = 1,
               margins: dict | None = None, **kwargs):
    """A Figure of the given pixel size at `DPI`, and its axes (always a 2-D array when squeeze=False).

    `margins` (subplots_adjust arguments) fix the layout; without them matplotlib's constrained layout
    places everything, which is about half the cost of a render: TensorBoard images, drawn during
    training, use fixed margins; report figures, drawn once with any number of panels, do not.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = None if margins else "constrained"
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout=layout)
    if margins:
        figure.subplots_adjust(**margins)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, **kwargs)
    return figure, axes


def reuse(figure):
    """`figure` emptied of what was drawn on it (lines, fills, texts, legends) but not of its axes.

    Drawing the next image of the same kind on it skips matplotlib's costliest work, building
    axes and their ticks: half the time of a TensorBoard image. The axes' limits are recomputed
    from what is drawn next, as on a new figure."""
    for ax in figure.axes:
        for artist in [*ax.lines, *ax.collections, *ax.texts, *ax.patches]:
            artist.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.relim()
        ax.set_autoscale_on(True)
    return figure


def png(figure) -> tuple[bytes, int, int]:
    """The figure as PNG bytes, with its width and height in pixels."""
    buffer = io.BytesIO()
    # zlib level 1: a third of the encoding time of the default level 6, for files about a fifth larger
    figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    width, height = figure.canvas.get_width_height()
    return buffer.getvalue(), width, height


def save(figure, path) -> None:
    figure.savefig(path, format="png", dpi=DPI)


def run_title(model: str, norm: str, activation: str, depth: int) -> str:
    """E.g. 'mlp · no BatchNorm · sigmoid · 20 hidden layers'."""
    norm_text = "no BatchNorm" if norm == "none" else f"BatchNorm ({norm})"
    return f"{model} · {norm_text} · {activation} · {depth} hidden layers"


def positive(values) -> list[float]:
    """NaN for values a log axis cannot show."""
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def draw_profiles(ax, lines: list[ProfileLine], ylabel: str) -> None:
    """Lines of a quantity against hidden-layer index on a log axis of at least MIN_DECADES decades."""
    for line in lines:
        ax.plot(range(len(line.values)), positive(line.values), color=line.color, label=line.label,
                marker=line.marker, markersize=3, **line_style(line.initial))
    ax.set_yscale("log")
    _span_decades(ax, [v for line in lines for v in positive(line.values) if not math.isnan(v)])
    ax.set_xlabel(LAYER_AXIS)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, which="major", alpha=0.3)


def draw_band(ax, x, p15, p50, p85, color: str = "C0") -> None:
    """The 15th-85th percentile band with the median line."""
    ax.fill_between(x, p15, p85, color=color, alpha=0.25, linewidth=0, label="p15–p85")
    ax.plot(x, p50, color=color, linewidth=1.8, label="p50", marker="o", markersize=2)
    ax.plot(x, p15, color=color, linewidth=0.7)
    ax.plot(x, p85, color=color, linewidth=0.7)


def gradient_figure(output: list[ProfileLine], weight: list[ProfileLine], title: str, note: str = "",
                    figure=None):
    """profile/gradients: ‖∂L/∂(layer output)‖ and ‖∂L/∂W‖ across depth, with `note` boxed in the first panel.

    TensorBoard shows images at about half size, so the type is larger than a report figure's.
    `figure`: one this function drew before, to draw on again (see `reuse`).
    """
    if figure is None:
        margins = {"left": 0.12, "right": 0.985, "bottom": 0.12, "top": 0.87, "wspace": 0.38}
        figure, (left, right) = new_figure(640, 400, 1, 2, margins, sharey=False)
    else:
        left, right = reuse(figure).axes
    draw_profiles(left, output, "‖∂L/∂(layer output)‖")
    draw_profiles(right, weight, "‖∂L/∂W‖")
    left.set_title("back-propagated gradient", fontsize=11, y=1.0)  # a fixed title position skips a costly layout pass
    right.set_title("weight gradient", fontsize=11, y=1.0)
    left.legend(fontsize=9, loc="upper left")
    if note:
        box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "linewidth": 0.5}
        left.text(0.97, 0.04, note, transform=left.transAxes, ha="right", va="bottom", fontsize=10,
                  fontweight="bold", bbox=box)
    for ax in (left, right):
        _larger_type(ax)
    figure.suptitle(title, fontsize=11)
    return figure


def profiles_figure(lines: list[ProfileLine], ylabel: str, title: str):
    """Several configurations' profiles across depth on one log axis (a report's gradient-by-depth figure)."""
    figure, ax = new_figure(800, 500)
    draw_profiles(ax, lines, ylabel)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    return figure


def activation_figure(p15: list[float], p50: list[float], p85: list[float], saturated: list[float],
                      title: str, figure=None):
    """profile/activations: the preactivation percentile band and the saturated fraction across depth.

    `figure`: one this function drew before, to draw on again (see `reuse`)."""
    if figure is None:
        margins = {"left": 0.13, "right": 0.975, "bottom": 0.12, "top": 0.89, "hspace": 0.15}
        figure, (top, bottom) = new_figure(640, 400, 2, 1, margins, sharex=True, height_ratios=[3, 2])
    else:
        top, bottom = reuse(figure).axes
    layers = list(range(len(p50)))
    draw_band(top, layers, p15, p50, p85, color="C0")
    top.set_ylabel("preactivation")
    top.set_title(BAND_KEY, fontsize=9, loc="right", y=1.0)
    top.grid(True, alpha=0.3)
    bottom.fill_between(layers, 0, saturated, color="C3", alpha=0.3, linewidth=0)
    bottom.plot(layers, saturated, color="C3", marker="o", markersize=3)
    if nothing_saturated(saturated):
        say_empty(bottom, "no unit saturated in any layer (all 0)")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("saturated\nfraction")
    bottom.set_xlabel(LAYER_AXIS)
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.grid(True, alpha=0.3)
    for ax in (top, bottom):
        _larger_type(ax)
    figure.suptitle(title, fontsize=11)
    return figure


def bands_figure(bands: list[Band], title: str, figure=None):
    """Figure-1 panels: one layer's preactivation percentiles over training, one panel per band.

    `figure`: one this function drew before with as many bands, to draw on again (see `reuse`)."""
    nrows, ncols = _grid(len(bands))
    if figure is None:
        margins = {"left": 0.11, "right": 0.975, "bottom": 0.12, "top": 0.84} if len(bands) == 1 else None
        figure, axes = new_figure(*_panels_size(len(bands)), nrows, ncols, margins, squeeze=False, sharey=True)
    else:
        import numpy as np

        axes = np.array(reuse(figure).axes).reshape(nrows, ncols)
    for ax, band in zip(axes.flat, bands, strict=False):
        draw_band(ax, band.steps, band.p15, band.p50, band.p85)
        if not band.steps:
            say_empty(ax, "no preactivation record of this layer")
        if band.title:
            ax.set_title(_wrap(band.title), fontsize=8)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("preactivation")
    if len(bands) == 1:  # a TensorBoard image, shown at about half size
        _larger_type(axes.flat[0])
        axes.flat[0].set_title(BAND_KEY, fontsize=9, loc="right", y=1.0)
    else:
        title = f"{title}\n{BAND_KEY}"
    for ax in list(axes.flat)[len(bands):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=11 if len(bands) == 1 else 9)
    return figure


def lines_figure(lines: list[tuple[str, list[int], list[float]]], ylabel: str, title: str):
    """A quantity over steps, one line per configuration (e.g. test accuracy)."""
    figure, ax = new_figure(800, 450)
    for index, (label, steps, values) in enumerate(lines):
        ax.plot(steps, values, color=f"C{index % 10}", marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if lines:  # (a legend of nothing only warns)
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    return figure


def heatmaps_figure(panels: list[tuple[str, list[int], list[list[float]]]], colorbar: str, title: str):
    """One heatmap per configuration: rows are hidden layers (input side at the bottom), columns are steps."""
    import numpy as np

    nrows, ncols = _grid(len(panels))
    figure, axes = new_figure(*_panels_size(len(panels)), nrows, ncols, squeeze=False)
    image = None
    for ax, (label, steps, matrix) in zip(axes.flat, panels, strict=False):
        data = np.array(matrix, dtype=float)  # (layers, steps)
        edges = _edges(steps)
        # A light colour for 0, so "nothing saturated" does not read as "no data".
        image = ax.pcolormesh(edges, np.arange(data.shape[0] + 1) - 0.5, data, vmin=0, vmax=1, cmap="YlOrRd")
        ax.set_title(_wrap(label), fontsize=8)
        if nothing_saturated(data.ravel().tolist()):
            say_empty(ax, "no unit saturated in any layer\nat any step (all 0)")
        ax.set_xlabel("step")
        ax.set_ylabel("hidden layer")
        ax.yaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=axes, label=colorbar, shrink=0.9)
    figure.suptitle(title, fontsize=9)
    return figure


def nothing_saturated(values) -> bool:
    """Whether a saturation record is all 0 (or empty): a map or curve of it would be a flat field."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return not any(finite)


def say_empty(ax, text: str) -> None:
    """Write why a panel shows nothing, in its middle."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "linewidth": 0.5})


def _larger_type(ax, size: int = 11) -> None:
    ax.tick_params(labelsize=size - 1)
    ax.xaxis.label.set_fontsize(size)
    ax.yaxis.label.set_fontsize(size)


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _grid(count: int) -> tuple[int, int]:
    ncols = 2 if count == 4 else min(3, max(count, 1))
    return math.ceil(max(count, 1) / ncols), ncols


def _panels_size(count: int) -> tuple[int, int]:
    """640x400 for one panel (a TensorBoard image); 420x300 a panel for a report's grid."""
    if count == 1:
        return 640, 400
    nrows, ncols = _grid(count)
    return 420 * ncols, 300 * nrows + 40


def _edges(steps: list[int]) -> list[float]:
    """Cell edges halfway between steps, so a heatmap column is centred on its step."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    middles = [(a + b) / 2 for a, b in zip(steps, steps[1:], strict=False)]
    return [2 * steps[0] - middles[0], *middles, 2 * steps[-1] - middles[-1]]


MINOR_TICKS_DECADES = 4  # a log axis spanning more decades shows no minor ticks


def _span_decades(ax, values: list[float]) -> None:
    """Widen a log axis around the data's geometric centre to at least MIN_DECADES decades."""
    if not values:
        return
    low, high = math.log10(min(values)), math.log10(max(values))
    if high - low < MIN_DECADES:
        centre = (low + high) / 2
        low, high = centre - MIN_DECADES / 2, centre + MIN_DECADES / 2
    else:
        low, high = low - 0.1, high + 0.1
    ax.set_ylim(10**low, 10**high)
    # Tick labels as plain text (1e-06) rather than mathtext (10^-6): parsing mathtext was a fifth of the
    # time of drawing a profile image.
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    if high - low > MINOR_TICKS_DECADES:
        # Over many decades the minor ticks are a dense grey smear, and each is a costly matplotlib
        # object: 140 of them made up ~0.3 s of the 0.35 s of drawing a profile/gradients image.
        from matplotlib.ticker import NullLocator

        ax.yaxis.set_minor_locator(NullLocator())
