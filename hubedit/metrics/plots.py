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
    degenerate: np.ndarray | list | None = None,
    degenerate_label: str = "degenerate",
    hline: tuple[float, str] | None = None,
    vline: tuple[float, str] | None = None,
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
    if degenerate is not None:
        deg = np.asarray(degenerate, dtype=np.float64).reshape(-1, 2)
        deg = deg[np.isfinite(deg).all(1)]
        if len(deg):
            ax.plot(deg[:, 0], deg[:, 1], linestyle="none", marker="o", markersize=12, markerfacecolor="none",
                    markeredgecolor="red", markeredgewidth=1.5, zorder=9, label=degenerate_label)
    if hline is not None:
        ax.axhline(float(hline[0]), color="dimgray", linestyle="--", linewidth=1.0, label=hline[1])
    if vline is not None:
        ax.axvline(float(vline[0]), color="dimgray", linestyle=":", linewidth=1.0, label=vline[1])
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
    degenerate: np.ndarray | list | None = None,
    degenerate_label: str = "degenerate",
    hline: tuple[float, str] | None = None,
    vline: tuple[float, str] | None = None,
) -> Path:
    """Plot one line with markers per method (points sorted by x), a gold star at ``highlight``, legend and
    grid; write a PNG at 150 dpi to ``path`` (parent folders created) and return the path.

    ``degenerate``: (P, 2) points to circle in red (e.g. points no better than the majority class), labelled
    ``degenerate_label``; ``hline`` / ``vline``: ``(position, label)`` of a dashed / dotted reference line (e.g.
    the majority class's error)."""
    fig = pareto_figure(
        fronts, xlabel=xlabel, ylabel=ylabel, title=title, highlight=highlight, highlight_label=highlight_label,
        degenerate=degenerate, degenerate_label=degenerate_label, hline=hline, vline=vline,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    return path
