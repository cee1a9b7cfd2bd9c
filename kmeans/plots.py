"""PNG pictures of models and sweeps, drawn with matplotlib's Agg backend (no display).

Figures are made with the object API (``Figure``), never ``pyplot``: no global state, so
requests in several threads can draw at once.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans import engine
from kmeans.errors import Conflict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_SAMPLE = 5000  # training rows drawn at most (a seeded random sample)
SAMPLE_SEED = 0


def _figure(**options: Any) -> Figure:
    """A new figure on an Agg canvas (matplotlib is imported on first use: servers that never
    draw never load it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def sample_rows(n: int, size: int = PLOT_SAMPLE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted indices of a seeded random sample of at most ``size`` of ``n`` rows."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def model_png(
    model: dict[str, Any], features: np.ndarray, labels: np.ndarray, centers: np.ndarray, columns: list[str]
) -> bytes:
    """Training rows (already sampled, in original units) coloured by cluster, centers as
    black crosses; the first two principal components when there are more than two features."""
    if features.shape[1] > 2:
        points, marks = engine.project_2d(features, centers)
        xlabel, ylabel = "PC1", "PC2"
    elif features.shape[1] == 2:
        points, marks = features, centers
        xlabel, ylabel = columns[0], columns[1]
    else:
        points = np.column_stack([features[:, 0], np.zeros(len(features))])
        marks = np.column_stack([centers[:, 0], np.zeros(len(centers))])
        xlabel, ylabel = columns[0], ""
    figure = _figure(figsize=(6.4, 4.8))
    axes = figure.add_subplot()
    k = len(centers)
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10" if k <= 10 else "tab20", s=12, alpha=0.8)
    scatter.set_clim(-0.5, max(k, 10 if k <= 10 else 20) - 0.5)
    axes.scatter(marks[:, 0], marks[:, 1], c="black", marker="X", s=120, label="centers")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    shown = (
        f"{len(points)} rows" if len(points) == model["rows"] else f"a sample of {len(points)} of {model['rows']} rows"
    )
    axes.set_title(f"model {model['id']}: k={k}, {shown}")
    axes.legend(loc="best")
    return _png(figure)


def sweep_png(sweep: dict[str, Any]) -> bytes:
    """Inertia, silhouette, Davies-Bouldin and Calinski-Harabasz over k; the rule's choice and the runner-up marked."""
    results = sweep.get("results") or []
    if not results:
        raise Conflict(f"sweep {sweep['id']} is {sweep['status']} and has no results to plot yet")
    ks = [r["k"] for r in results]
    metrics = [
        ("inertia", "inertia (lower is better)"),
        ("silhouette", "silhouette (higher is better)"),
        ("davies_bouldin", "Davies-Bouldin (lower is better)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher is better)"),
    ]
    figure = _figure(figsize=(9, 6.5))
    axes_grid = figure.subplots(2, 2, sharex=True)
    best = sweep.get("recommended_k")
    for axes, (key, title), colour in zip(axes_grid.flat, metrics, ("C0", "C1", "C2", "C3"), strict=True):
        values = [np.nan if r.get(key) is None else r[key] for r in results]
        axes.plot(ks, values, marker="o", color=colour)
        axes.set_title(title)
        if best is not None:
            axes.axvline(best, color="red", linestyle="--", label=f"recommended k={best}")
            if sweep.get("runner_up") is not None:
                axes.axvline(sweep["runner_up"], color="grey", linestyle=":", label=f"runner-up k={sweep['runner_up']}")
            axes.legend(loc="best")
        axes.set_xlabel("k")
    figure.suptitle(
        f"sweep {sweep['id']}: k {sweep['k_min']}..{sweep['k_max']} ({sweep.get('rule') or sweep['status']})"
    )
    return _png(figure)
