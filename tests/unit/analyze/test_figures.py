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


@pytest.mark.parametrize("n_cells", [1, 3, 12])
def test_the_generation_panel_keeps_its_width_beside_its_legend(n_cells):
    """Five long legend entries in a row inside the panel made constrained layout shrink the axes to a sliver (the
    zero-shot run's generation.png); beside the panel, the axes keep most of the figure and nothing collapses."""
    import warnings

    from orchestrator.analyze.plots import plot_generation

    row = {"model": "sentinel/smollm2-135m", "level": 0.3, "kv_cache": 0.7, "batch_size": 8}
    for kind in ("prefill", "decode", "decode_batch"):
        row.update({kind: 1.1, f"{kind}_min": 0.9, f"{kind}_max": 1.9, f"{kind}_ideal": 1.07})
    table = pd.DataFrame([{**row, "label": f"strategy {i} (compensated)"} for i in range(n_cells)])
    fig = plot_generation(table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "axes sizes collapsed to zero" is a warning
        renderer = renderer_of(fig)
    box = fig.axes[0].get_position()
    assert box.width > 0.45
    assert all(b.x0 >= -1 and b.x1 <= fig.bbox.width + 1 for b in text_boxes(fig, renderer))
