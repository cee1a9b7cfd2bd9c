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


def _png(figure: Figure, description: str | None = None) -> bytes:
    """The figure as PNG; ``description`` (what it shows, in words) goes in the PNG's
    Description text chunk, for screen readers and for scripts that check a picture."""
    out = io.BytesIO()
    metadata = {"Description": description} if description else None
    figure.savefig(out, format="png", dpi=100, bbox_inches="tight", metadata=metadata)
    return out.getvalue()


def sample_rows(n: int, size: int = PLOT_SAMPLE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted indices of a seeded random sample of at most ``size`` of ``n`` rows."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def cluster_label(cluster: int, names: dict[str, str] | None, size: int | None = None) -> str:
    """How a cluster is called in a picture: ``2 bargain hunters (n=40)``."""
    name = (names or {}).get(str(cluster))
    return f"{cluster}" + (f" {name}" if name else "") + (f" (n={size})" if size is not None else "")


def model_png(
    model: dict[str, Any], features: np.ndarray, labels: np.ndarray, centers: np.ndarray, columns: list[str],
    space: str | None = None,
) -> bytes:
    """Training rows (already sampled; in original units, or in the model's ``space``, e.g.
    "standardized") coloured by cluster and semi-transparent, the centers on top as white-edged
    markers of their cluster's colour, a legend of each cluster's number, name and size; the first
    two principal components (with the share of variance each explains) when there are more than
    two features."""
    if features.shape[1] > 2:
        points, marks, explained = engine.project_2d(features, centers)
        of = f" of {space} features" if space and space != "normalised" else ""
        xlabel, ylabel = (f"PC{i + 1} ({explained[i]:.0%} of variance{of})" for i in range(2))
    elif features.shape[1] == 2:
        points, marks = features, centers
        xlabel, ylabel = columns[0], columns[1]
    else:
        points = np.column_stack([features[:, 0], np.zeros(len(features))])
        marks = np.column_stack([centers[:, 0], np.zeros(len(centers))])
        xlabel, ylabel = columns[0], ""
    figure = _figure(figsize=(7.6, 4.8))
    axes = figure.add_subplot()
    k = len(centers)
    from matplotlib import colormaps

    palette = colormaps["tab10" if k <= 10 else "tab20"]
    sizes = model.get("cluster_sizes") or [int((labels == c).sum()) for c in range(k)]
    names = model.get("cluster_names") or {}
    entries = []
    for c in range(k):
        colour = palette(c % palette.N)
        mine = labels == c
        # Points under, semi-transparent: where clusters overlap both stay visible.
        axes.scatter(points[mine, 0], points[mine, 1], color=colour, s=12, alpha=0.45, linewidths=0, zorder=1)
        entries.append(cluster_label(c, names, sizes[c] if c < len(sizes) else None))
    # Centers on top, large and white-edged in their cluster's colour: never lost among the points.
    axes.scatter(marks[:, 0], marks[:, 1], c=[palette(c % palette.N) for c in range(k)], marker="X", s=220,
                 edgecolors="white", linewidths=1.8, zorder=3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", markersize=7, color=palette(c % palette.N)) for c in range(k)]
    # The legend's center: hollow, so that it is no cluster's colour (tab10's 7th is grey).
    handles.append(Line2D([], [], linestyle="", marker="X", markersize=11, markerfacecolor="white",
                          markeredgecolor="black"))
    axes.legend(handles, [*entries, "centers"], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                title="cluster", ncol=1 if k <= 16 else 2, frameon=False)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    shown = (
        f"{len(points)} rows" if len(points) == model["rows"] else f"a sample of {len(points)} of {model['rows']} rows"
    )
    title = f"model {model['id']}: k={k}, {shown}"
    axes.set_title(title)
    description = f"{title}; x: {xlabel}; y: {ylabel or '-'}; clusters: " + "; ".join(entries)
    return _png(figure, description)


HEATMAP_COLUMNS = 30  # columns drawn at most: the ones that set some cluster apart the most
ANNOTATE_CELLS = 400  # cells written out as numbers up to this many
HEATMAP_LIMIT = 3.0  # standard deviations at the ends of the colour scale


def profile_png(doc: dict[str, Any]) -> bytes:
    """The profile's standardized differences as a heatmap, clusters x features."""
    from kmeans import insight

    matrix, columns, total = insight.heatmap_matrix(doc, HEATMAP_COLUMNS)
    k = len(doc["clusters"])
    rows = [f"{cluster_label(c['cluster'], {str(c['cluster']): c['name']} if c['name'] else None)}"
            f" ({c['share']:.0%})" for c in doc["clusters"]]
    width = min(4.0 + 0.45 * len(columns), 18.0)
    height = min(2.0 + 0.4 * k, 14.0)
    figure = _figure(figsize=(width, height))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-HEATMAP_LIMIT, vmax=HEATMAP_LIMIT,
                        aspect="auto")
    axes.set_xticks(range(len(columns)), labels=columns, rotation=45, ha="right", fontsize="small")
    axes.set_yticks(range(k), labels=rows, fontsize="small")
    if matrix.size <= ANNOTATE_CELLS:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                axes.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize="x-small",
                          color="white" if abs(value) > HEATMAP_LIMIT * 0.6 else "black")
    figure.colorbar(image, ax=axes, label="difference from all rows (sd)", shrink=0.8)
    shown = f"{len(columns)} features" if total == len(columns) else f"the top {len(columns)} of {total} features"
    title = f"model {doc['model_id']}: profiles of {k} clusters, {shown}"
    axes.set_title(title)
    description = f"{title}; rows: " + "; ".join(rows) + "; columns: " + ", ".join(columns)
    return _png(figure, description)


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
    best, runner_up = sweep.get("recommended_k"), sweep.get("runner_up")
    rule = sweep.get("rule") or "the rule"
    marks = []
    if best is not None:
        marks.append((best, f"{rule}'s choice k={best}", "red", "--", "*", 16))
    if best is not None and runner_up is not None:
        marks.append((runner_up, f"runner-up k={runner_up}", "dimgrey", ":", "D", 8))
    for axes, (key, title), colour in zip(axes_grid.flat, metrics, ("C0", "C1", "C2", "C3"), strict=True):
        values = [np.nan if r.get(key) is None else r[key] for r in results]
        axes.plot(ks, values, marker="o", color=colour)
        axes.set_title(title)
        for k, label, mark_colour, style, marker, size in marks:
            axes.axvline(k, color=mark_colour, linestyle=style, label=label, zorder=1)
            # The chosen k's own value, ringed on the curve: which point the choice is.
            if k in ks and np.isfinite(values[ks.index(k)]):
                axes.plot([k], [values[ks.index(k)]], linestyle="", marker=marker, markersize=size, color=mark_colour,
                          markeredgecolor="white", zorder=3)
        if marks:
            axes.legend(loc="best", fontsize="small")
        axes.set_xlabel("k")
    title = f"sweep {sweep['id']}: k {sweep['k_min']}..{sweep['k_max']} ({sweep.get('rule') or sweep['status']})"
    figure.suptitle(title)
    description = title + "".join(f"; {label}" for _, label, *_ in marks)
    return _png(figure, description)
