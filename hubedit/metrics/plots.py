"""Pareto-front figures with matplotlib's Agg canvas (no pyplot: the user's global backend is untouched)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["pareto_figure", "pareto_plot"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def pareto_figure(
    fronts: Mapping[str, np.ndarray | list],
    *,
    xlabel: str,
    ylabel: str = "mean JSD",
    title: str | None = None,
    highlight: tuple[float, float] | None = None,
    highlight_label: str | None = None,
    figsize: tuple[float, float] = (6.0, 4.5),
):
    """Build the figure of :func:`pareto_plot` and return it (a ``matplotlib.figure.Figure`` on an Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (name, pts) in enumerate(fronts.items()):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        pts = pts[~np.isnan(pts).any(1)]
        pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
        ax.plot(pts[:, 0], pts[:, 1], marker=_MARKERS[k % len(_MARKERS)], markersize=5, linewidth=1.5, label=str(name))
    if highlight is not None:
        hx, hy = float(highlight[0]), float(highlight[1])
        ax.plot(
            [hx], [hy], linestyle="none", marker="*", markersize=18, color="gold", markeredgecolor="black",
            markeredgewidth=1.0, zorder=10, label=highlight_label if highlight_label is not None else "selected",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)
    return fig


def pareto_plot(
    fronts: Mapping[str, np.ndarray | list],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str = "mean JSD",
    title: str | None = None,
    highlight: tuple[float, float] | None = None,
    highlight_label: str | None = None,
) -> Path:
    """Plot one line with markers per method (points sorted by x), a gold star at ``highlight``, legend and
    grid; write a PNG at 150 dpi to ``path`` (parent folders created) and return the path."""
    fig = pareto_figure(
        fronts, xlabel=xlabel, ylabel=ylabel, title=title, highlight=highlight, highlight_label=highlight_label
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    return path
