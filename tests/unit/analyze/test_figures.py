"""Figures a reader trusts: at 1 and at 18 strategies no tick label runs into another and no text leaves the saved
image; perplexity is drawn on its test's (log) scale in the recovery curves too."""
from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from orchestrator.analyze.formatting import figure_bytes  # noqa: E402
from orchestrator.analyze.plots import plot_recovery_curves, plot_strategy_comparison  # noqa: E402

NAMES = ["entropy", "magnitude", "gradient", "gradient (normalised per layer)", "hybrid", "iterative", "redundancy",
         "l0", "flap", "flap (compensated)", "wanda_sp", "taylor (vector)", "taylor (element)", "attention_drop",
         "dynamic", "gradient (uniform)", "entropy (per layer)", "ablation"]


def trials(labels: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"trial_id": f"{label}-{seed}", "model": "sentinel/smollm2-135m", "label": label, "strategy": label,
             "level": 0.3, "seed": seed, "status": "ok", "dense": 44.7, "pruned": float(np.exp(rng.normal(5, 2))),
             "recovered": float(np.exp(rng.normal(4, 1))), "metric_name": "perplexity", "metric_scale": "log",
             "higher_is_better": False, "reference": False, "protocol_label": "wikitext-2 eval split, 8 windows"}
            for label in labels for seed in range(5)]
    return pd.DataFrame(rows)


def renderer_of(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def text_boxes(fig, renderer) -> list:
    """The figure's title, and each panel's title, axis labels and strategy names: what a reader must see whole
    (tick labels of ticks outside the view are Text objects too, never drawn: not asked)."""
    texts = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label,
                                                              *ax.get_xticklabels())]
    return [t.get_window_extent(renderer) for t in texts if t is not None and t.get_visible() and t.get_text()]


@pytest.mark.parametrize("labels", [NAMES[:1], NAMES], ids=["one strategy", "eighteen strategies"])
def test_no_tick_label_overlaps_another_and_nothing_leaves_the_image(labels):
    fig = plot_strategy_comparison(trials(labels))
    renderer = renderer_of(fig)
    for ax in fig.axes:
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert len(ticks) == len(labels)
        assert not any(a.overlaps(b) for a, b in itertools.combinations(ticks, 2)), "tick labels collide"
    # the saved image holds every text: its size covers the union of their extents (in pixels at the saving dpi)
    image = imread(io.BytesIO(figure_bytes(fig, "png")))
    boxes = text_boxes(fig, renderer)
    scale = 120 / fig.dpi
    width = (max(b.x1 for b in boxes) - min(b.x0 for b in boxes)) * scale
    height = (max(b.y1 for b in boxes) - min(b.y0 for b in boxes)) * scale
    assert image.shape[1] >= width - 2 and image.shape[0] >= height - 2


def test_recovery_curves_of_perplexity_are_on_a_log_axis():
    rows = trials(NAMES[:3])
    curves = pd.concat([rows.assign(step=0, eval_metric=rows["pruned"]), rows.assign(step=3, eval_metric=rows["recovered"])])
    fig = plot_recovery_curves(curves)
    assert all(ax.get_yscale() == "log" for ax in fig.axes if ax.get_visible())
