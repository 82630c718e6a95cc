"""Tests for bnlab.telemetry.images and bnlab.train.card: the TensorBoard images, run card and HParams of a real run."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnlab.analysis.readback import event_files, load_run
from bnlab.config.launch import plan, run_hydra
from bnlab.telemetry.images import ImageLog, image_interval
from bnlab.train.card import config_text, run_card

STEPS = 50
IMAGE_TAGS = ("profile/gradients", "profile/activations", "figure1/last_hidden")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; fails on anything else."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "run"
    args = [f"train.steps={STEPS}", "model.depth=4", "model.width=16", "log.every=5", "log.hist_every=1000",
            "train.eval_every=25", f"hydra.run.dir={path}"]
    (result,) = run_hydra(plan(args))
    assert result.status == "completed"
    return path


def _cfg(steps: int, every: int, image_every=None):
    return OmegaConf.create({"model": {"name": "mlp", "depth": 5, "activation": "sigmoid"},
                             "norm": {"name": "none"}, "log": {"every": every, "image_every": image_every},
                             "train": {"steps": steps}})


def _image_steps(log: ImageLog, steps: int, every: int) -> list[int]:
    telemetry_steps = [s for s in range(steps) if s % every == 0 or s == steps - 1]
    return [s for s in telemetry_steps if log.due(s, steps)]


def test_images_are_pngs_at_step_0_the_last_step_and_about_ten_in_all(run_dir):
    run = load_run(run_dir, images=True)
    assert set(run.images) == set(IMAGE_TAGS)
    expected = _image_steps(ImageLog(_cfg(STEPS, 5)), STEPS, 5)
    assert expected[0] == 0 and expected[-1] == STEPS - 1 and 8 <= len(expected) <= 12
    for tag, images in run.images.items():
        assert [image.step for image in images] == expected, tag
        for image in images:
            width, height = png_size(image.png)
            assert (width, height) == (image.width, image.height) == (640, 400), tag
            assert len(image.png) > 5000, f"{tag} at {image.step}: a near-empty image"


def test_run_card_holds_the_numbers_of_summary_json_rounded(run_dir):
    record = json.loads((run_dir / "summary.json").read_text())
    card = load_run(run_dir).text("run_card")
    assert card is not None and card.startswith("**completed** after 50/50 steps")
    rows = dict(re.findall(r"^\| (loss/train|loss/test|acc/test) \| (\S+) \|$", card, re.M))
    assert rows == {tag: f"{record['metrics'][tag]:.4g}" for tag in ("loss/train", "loss/test", "acc/test")}
    assert all(len(text.replace("-", "").replace(".", "").lstrip("0")) <= 4 for text in rows.values()), rows
    ratio = re.search(r"^\| first-to-last hidden-layer gradient ratio \| (\S+) \| (\S+) \|$", card, re.M)
    growth = re.search(r"^\| per-layer growth factor toward the input \| (\S+) \| (\S+) \|$", card, re.M)
    figures = record["figures"]
    assert (ratio[1], ratio[2]) == (f"{figures['grad_ratio_first_last/init']:.3g}",
                                    f"{figures['grad_ratio_first_last/final']:.3g}")
    assert (growth[1], growth[2]) == (f"{figures['growth_factor/init']:.3g}", f"{figures['growth_factor/final']:.3g}")
    assert " ".join(record["overrides"]) in card
    assert card.index("| final metric |") < card.index("Overrides:"), "the outcome first, the long part last"


def test_hparams_and_their_metrics_are_in_the_runs_own_event_file(run_dir):
    assert [p.parent for p in event_files(run_dir)] == [run_dir]
    nested = [p for p in run_dir.rglob("events.out.tfevents.*") if p.parent != run_dir]
    assert not nested, "HParams go into the run's own event file, not a sub-run"
    run = load_run(run_dir)
    assert run.hparams["hparams"]["model.depth"] == "4" and run.hparams["hparams"]["norm.name"] == "bnlab"
    metrics = run.hparams["metrics"]
    assert metrics[:4] == ["figures/grad_ratio_first_last/init", "figures/grad_ratio_first_last/final",
                           "figures/growth_factor/init", "figures/growth_factor/final"]  # the claim's figures first
    assert "acc/test" in metrics
    for tag in metrics:
        assert run.series(tag), f"the hparams metric {tag} has no scalar to show"


@pytest.mark.parametrize(("steps", "every", "image_every", "expected"), [
    (1000, 10, None, [0, *range(110, 991, 110), 999]),
    (100, 10, None, [*range(0, 91, 10), 99]),
    (30, 10, None, [0, 10, 20, 29]),
    (100, 10, 25, [0, 30, 50, 80, 99]),  # the first telemetry step at or after each multiple of 25
])
def test_image_steps(steps, every, image_every, expected):
    assert _image_steps(ImageLog(_cfg(steps, every, image_every)), steps, every) == expected


def test_image_interval_gives_about_ten_images():
    for steps, every in ((1000, 10), (5000, 10), (200, 1), (10_000, 100)):
        interval = image_interval(steps, every)
        assert interval % every == 0 and 9 <= math.ceil((steps - 1) / interval) + 1 <= 12


def test_rendered_steps_survive_a_checkpoint():
    log = ImageLog(_cfg(100, 10))
    log.steps = [0, 10]
    restored = ImageLog(_cfg(100, 10))
    restored.load_state_dict(json.loads(json.dumps(log.state_dict())))
    assert restored.rendered(10) and not restored.rendered(20)


def test_run_card_says_what_went_wrong_and_writes_nan_as_n_a():
    card = run_card({"status": "diverged", "steps": 7, "total_steps": 30, "seed": 2,
                     "overrides": ["norm=none"], "metrics": {"loss/train": math.nan, "acc/test": 0.25},
                     "figures": {}, "diverged_at": 7, "error": None})
    assert card.startswith("**diverged** after 7/30 steps (seed 2)")
    assert "NaN/Inf at step 7" in card and "`norm=none`" in card
    assert "| loss/train | n/a |" in card and "| acc/test | 0.25 |" in card and "| loss/test | n/a |" in card
    assert "| acc/test | 0.3333 |" in run_card({"metrics": {"acc/test": 1 / 3}})  # rounded as people read it


def test_log_axes_over_many_decades_drop_minor_ticks_and_short_ones_keep_them():
    from bnlab.telemetry import plots

    for values, minor in (([1.0, 1e-7], False), ([1.0, 0.2], True)):
        figure = plots.gradient_figure([plots.ProfileLine(values, "now", "C0")],
                                       [plots.ProfileLine(values, "now", "C1")], "t")
        left = figure.axes[0]
        assert bool(left.yaxis.get_minorticklocs().size) == minor, values


def _values(depth: int, decay: float, scale: float, band: float) -> dict[str, float]:
    """Telemetry values of a `depth`-layer run: gradient norms falling by `decay` a layer, percentiles around 0."""
    values = {}
    for i in range(depth + 1):
        name = f"layer{i:02d}"
        values[f"grad_norm/output/{name}"] = scale * decay ** i
        values[f"grad_norm/weight/{name}"] = 2 * scale * decay ** i
        if i < depth:
            values |= {f"preact/mean/{name}": i / 20, f"preact/p15/{name}": -band - i / 10,
                       f"preact/p50/{name}": i / 20, f"preact/p85/{name}": band + i / 10,
                       f"act/saturated/{name}": i / (2 * depth)}
    return values


def test_an_image_drawn_on_the_previous_image_s_figure_equals_one_drawn_on_a_new_figure():
    import matplotlib.image

    from bnlab.telemetry import image_figures

    def draw(step, initial, current, history):
        return {tag: matplotlib.image.imread(__import__("io").BytesIO(png), format="png")
                for tag, _, (png, _, _) in image_figures.draw("mlp · test", step, initial, current, history)}

    first = _values(6, 1e-2, 1.0, 3.0)  # gradients over 12 decades: minor ticks dropped
    second = _values(4, 0.7, 1e-3, 0.5)  # fewer layers, 2 decades: minor ticks back; other limits
    history = [(0, {k: v for k, v in first.items() if k.endswith("layer05")})]
    second_history = [(0, {k: v for k, v in second.items() if k.endswith("layer03")}),
                      (10, {k: v * 2 for k, v in second.items() if k.endswith("layer03")})]
    image_figures._FIGURES.clear()
    before = draw(0, first, first, history)
    assert set(image_figures._FIGURES) == set(IMAGE_TAGS)
    x_range = image_figures._FIGURES["profile/activations"].axes[0].get_xlim()
    assert x_range[1] - x_range[0] > 5  # six layers drawn
    reused = draw(10, first, second, second_history)
    image_figures._FIGURES.clear()
    fresh = draw(10, first, second, second_history)
    for tag in IMAGE_TAGS:
        assert reused[tag].shape == fresh[tag].shape == (400, 640, 4)
        assert (reused[tag] == fresh[tag]).all(), tag
        assert (reused[tag] != before[tag]).any(), tag


def test_a_drawing_process_draws_its_tags_at_the_lowest_priority():
    import os

    from bnlab.telemetry.drawer import Drawer

    values = _values(3, 0.5, 1.0, 1.0)
    drawer = Drawer()
    try:
        drawer.submit("mlp · test", 4, values, values, [(0, values)], ("profile/activations",))
        ((tag, step, (png, width, height)),) = drawer.finished(wait=True)[0]
        assert (tag, step, png_size(png)) == ("profile/activations", 4, (width, height))
        # it never takes a core from the training loop
        assert os.getpriority(os.PRIO_PROCESS, drawer._process.pid) == 19
    finally:
        drawer._process.stdin.close()
        drawer._process.wait(timeout=30)


def test_config_text_is_the_whole_config_one_line_a_section():
    import yaml

    config = {"model": {"name": "mlp", "depth": 20, "init_std": 0.1}, "optim": {"grad_clip": None, "lr": 1e-05},
              "resume": None}
    text = config_text(config)
    assert text.startswith("```yaml\n") and text.endswith("```")
    body = text.removeprefix("```yaml\n").removesuffix("```")
    assert yaml.safe_load(body) == config and len(body.strip().splitlines()) == len(config)


def test_step_0_is_dashed_and_drawn_on_top_of_the_solid_end_in_every_profile_figure():
    from bnlab.telemetry import plots

    same = [1.0, 0.5, 0.25]  # BatchNorm's profile often ends where it began: the two lines coincide
    figures = [plots.profiles_figure([plots.ProfileLine(same, None, "C0", initial=True),
                                      plots.ProfileLine(same, "end", "C0")], "g", "t"),
               plots.gradient_figure([plots.ProfileLine(same, "step 0", "C0", initial=True),
                                      plots.ProfileLine(same, "step 9", "C0")],
                                     [plots.ProfileLine(same, "step 0", "C1", initial=True),
                                      plots.ProfileLine(same, "step 9", "C1")], "t")]
    for figure in figures:
        for ax in figure.axes:
            step0, end = ax.lines
            assert step0.get_linestyle() == "--" and end.get_linestyle() == "-"
            assert step0.get_zorder() > end.get_zorder()  # the dashes stay visible over the end line
            assert end.get_linewidth() > step0.get_linewidth()  # and the end line shows around them
            assert step0.get_color() == end.get_color()


def test_a_figure_with_nothing_to_show_says_so():
    from bnlab.telemetry import plots

    empty = plots.heatmaps_figure([("norm=bnlab", [0, 10], [[0.0, 0.0], [0.0, 0.0]]),
                                   ("norm=none", [0, 10], [[0.0, 0.5], [0.0, 0.0]])], "saturated", "t")
    texts = [[text.get_text() for text in ax.texts] for ax in empty.axes[:2]]
    assert any("no unit saturated" in text for text in texts[0]) and not texts[1]
    flat = plots.activation_figure([-1, -1], [0, 0], [1, 1], [0.0, 0.0], "t")
    assert any("no unit saturated" in text.get_text() for text in flat.axes[1].texts)
    some = plots.activation_figure([-1, -1], [0, 0], [1, 1], [0.0, 0.3], "t")
    assert not some.axes[1].texts
    band = plots.bands_figure([plots.Band("a", [], [], [], []), plots.Band("b", [0], [-1], [0], [1])], "t")
    assert any("no preactivation record" in text.get_text() for text in band.axes[0].texts)
    assert not band.axes[1].texts
