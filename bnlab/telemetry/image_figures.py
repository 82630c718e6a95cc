"""The drawing of a run's TensorBoard images: the figures of one step, made in a drawing process.

`draw` is what `bnlab.telemetry.drawer` runs in its child process; `bnlab.telemetry.images` decides when.
"""

from __future__ import annotations

from bnlab.formatting import number
from bnlab.telemetry import figures, plots

OUTPUT, WEIGHT = "grad_norm/output", "grad_norm/weight"
IMAGE_TAGS = ("profile/gradients", "profile/activations", "figure1/last_hidden")


# tag -> the Figure its last image was drawn on: each image is drawn on the previous one's figure
# (`plots.reuse`), which halves the drawing time. Lives in the drawing process.
_FIGURES: dict[str, object] = {}


def draw(title: str, step: int, initial: dict[str, float], current: dict[str, float],
         history: list[tuple[int, dict[str, float]]],
         tags: tuple[str, ...] = IMAGE_TAGS) -> list[tuple[str, int, tuple[bytes, int, int]]]:
    """The images `tags` of `step` as (tag, step, (png, width, height)); runs in a drawing process."""
    makers = {
        "profile/gradients": lambda figure: gradients_figure(title, step, initial, current, figure),
        "profile/activations": lambda figure: activations_figure(title, step, current, figure),
        "figure1/last_hidden": lambda figure: figure1_figure(title, step, current, history, figure),
    }
    images = []
    for tag in tags:
        figure = _FIGURES[tag] = makers[tag](_FIGURES.get(tag))
        images.append((tag, step, plots.png(figure)))
    return images


def gradients_figure(title: str, step: int, initial: dict[str, float], current: dict[str, float],
                     figure=None):
    now_output, now_weight = figures.profile(current, OUTPUT), figures.profile(current, WEIGHT)
    init_output, init_weight = figures.profile(initial, OUTPUT), figures.profile(initial, WEIGHT)
    output = [plots.ProfileLine(init_output, "step 0", "C0", initial=True),
              plots.ProfileLine(now_output, f"step {step}", "C0")]
    weight = [plots.ProfileLine(init_weight, "step 0", "C1", initial=True),
              plots.ProfileLine(now_weight, f"step {step}", "C1")]
    note = (f"first/last: {number(figures.ratio_first_last(now_output), '.2e', 'n/a')}\n"
            f"×{number(figures.growth_factor(now_output), '.3g', 'n/a')} per layer")
    return plots.gradient_figure(output, weight, f"{title} · step {step}", note, figure)


def activations_figure(title: str, step: int, current: dict[str, float], figure=None):
    band = {name: figures.profile(current, f"preact/{name}") for name in plots.BAND}
    saturated = figures.profile(current, "act/saturated")
    return plots.activation_figure(band["p15"], band["p50"], band["p85"], saturated,
                                   f"{title} · step {step}", figure)


def figure1_figure(title: str, step: int, current: dict[str, float],
                   history: list[tuple[int, dict[str, float]]], figure=None):
    layers = figures.hidden_layers(current)
    layer = layers[-1] if layers else "?"
    points = [(s, values) for s, values in history if f"preact/p50/{layer}" in values]
    steps = [s for s, _ in points]
    band = {name: [values[f"preact/{name}/{layer}"] for _, values in points] for name in plots.BAND}
    title = f"{title}\n{layer} (last hidden layer): preactivation percentiles over steps 0–{step}"
    return plots.bands_figure([plots.Band("", steps, band["p15"], band["p50"], band["p85"])], title, figure)

