"""TensorBoard images of one run: the gradient and activation profiles across depth, and Figure 1.

Telemetry asks `due` at its own steps and calls `render` when it says yes; the
images show what the scalar charts cannot: the whole depth profile at one step.

- profile/gradients: ‖∂L/∂(layer output)‖ and ‖∂L/∂W‖ against layer index (log axis),
  the step-0 profile dashed over the current one: vanishing reads as a steep line.
- profile/activations: the preactivation p15/p50/p85 band and the saturated fraction.
- figure1/last_hidden: the last hidden layer's preactivation percentiles over the
  steps so far, as in Ioffe & Szegedy (2015), Figure 1.

By default about ten images a run (step 0, the last step, and evenly in between);
`log.image_every` sets the interval in steps instead.

Drawing three figures costs ~0.2 s of CPU, as much as dozens of training steps. So the
figures are drawn in child processes (no torch there, and no shared GIL with the
training loop) while training goes on; the finished PNGs are written by the run's own
writer as they come back, and `close` waits for the last ones before the writer closes.
Two children share the figures (`DRAWERS`): at the end of a run, when training waits for
the last images, both cores draw, and the wait is about half as long.
"""

from __future__ import annotations

from bnlab.telemetry import plots
from bnlab.telemetry.image_figures import draw

IMAGES_PER_RUN = 10
# The tags each drawing process draws: the gradient profile (two log axes) takes as long as the other two.
DRAWERS = (("profile/gradients",), ("profile/activations", "figure1/last_hidden"))


def image_interval(total_steps: int, log_every: int, images: int = IMAGES_PER_RUN) -> int:
    """Steps between images for about `images` a run (steps 0 and last included), a multiple of log_every."""
    between = max(images - 1, 1)
    return log_every * max(1, round((total_steps - 1) / between / log_every))


class ImageLog:
    """Renders a run's profile and Figure-1 images at image steps, and remembers which steps it rendered."""

    def __init__(self, cfg, background: bool = True):
        self.every = int(cfg.log.every)
        self.interval = int(cfg.log.image_every or image_interval(cfg.train.steps, self.every))
        self.title = plots.run_title(cfg.model.name, cfg.norm.name, cfg.model.activation, cfg.model.depth)
        self.steps: list[int] = []
        self.background = background
        self._drawers = []  # bnlab.telemetry.drawer.Drawer for each of DRAWERS, started at the first image

    def due(self, step: int, total_steps: int) -> bool:
        """Step 0, the last step, and the first telemetry step at or after each multiple of the interval."""
        if step == 0 or step == total_steps - 1:
            return True
        # Telemetry steps are `every` apart: image if a multiple of the interval lies in (previous, step].
        return step // self.interval > (step - self.every) // self.interval

    def rendered(self, step: int) -> bool:
        return step in self.steps

    def render(self, writer, step: int, initial: dict[str, float], current: dict[str, float],
               history: list[tuple[int, dict[str, float]]]) -> None:
        """Draw the three images for `step` (in the background) and hand them to `writer`."""
        job = (self.title, step, initial, current, history)
        if self.background:
            if not self._drawers:
                from bnlab.telemetry.drawer import shared_drawers

                self._drawers = shared_drawers(len(DRAWERS))
            for drawer, tags in zip(self._drawers, DRAWERS, strict=True):
                for images in drawer.finished(wait=False):
                    _write(writer, images)
                drawer.submit(*job, tags)
        else:
            _write(writer, draw(*job))
        self.steps.append(step)

    def close(self, writer) -> None:
        """Write every image still being drawn (the drawing processes stay for the next run)."""
        drawers, self._drawers = self._drawers, []
        for drawer in drawers:
            for images in drawer.finished(wait=True):
                _write(writer, images)

    def state_dict(self) -> dict:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state.get("steps", []))


def _write(writer, images) -> None:
    for tag, step, (data, width, height) in images:
        writer.image_png(tag, data, step, width, height)
