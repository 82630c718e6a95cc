"""The experiments' figures follow the one line convention of bnlab.telemetry.plots: step 0 dashed and on top,
the end solid and broad beneath it, so coinciding lines of one colour both stay visible."""

from __future__ import annotations

from test_verdicts import geometric, make_run

from bnlab.experiments import vanishing


def _vanishing_runs():
    runs = []
    for depth in (2, 4):
        for norm, factor in (("none", 0.25), ("bnlab", 1.0)):
            runs.append(make_run({"model.depth": depth, "model.activation": "sigmoid", "norm.name": norm},
                                 geometric(depth, factor)))  # the end equals step 0: lines coincide
    return {"main": runs}


def test_vanishing_figures_draw_step_0_dashed_on_top_and_the_end_solid():
    (_, _, by_depth), (_, _, deepest), _ = vanishing.figures(_vanishing_runs())
    ratio_panel = by_depth.axes[0]
    for label_end, style in ((", init", "--"), (", end", "-")):
        lines = [line for line in ratio_panel.lines if line.get_label().endswith(label_end)]
        assert len(lines) == 2 and all(line.get_linestyle() == style for line in lines), label_end
    init = [line for line in ratio_panel.lines if line.get_label().endswith(", init")]
    end = [line for line in ratio_panel.lines if line.get_label().endswith(", end")]
    for first, last in zip(init, end, strict=True):
        assert first.get_color() == last.get_color() and first.get_zorder() > last.get_zorder()
    assert "dashed: initialization, solid: end" in by_depth.texts[0].get_text()
    styles = [(line.get_linestyle(), line.get_zorder()) for line in deepest.axes[0].lines]
    assert styles == [("--", 3), ("-", 2)] * 2
