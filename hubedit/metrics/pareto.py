"""Pareto fronts, the validation-selects / test-reports protocol, hypervolume and comparison tables (numpy).

Points are ``(x, y)`` = (mean requirement metric, mean JSD), both minimised. ``a`` dominates ``b`` when
``a <= b`` on both axes and ``a < b`` on at least one (paper, section 5). Rows holding NaN are ignored
everywhere (a failed run is no trade-off).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .scores import LN2

__all__ = [
    "pareto_front",
    "select_on_validation",
    "hypervolume",
    "dominance_table",
    "hypervolume_table",
    "to_markdown",
    "DEFAULT_REF",
]

#: Reference point of the hypervolume: requirement axis normalised to [0, 1], JSD bounded by ln 2.
DEFAULT_REF: tuple[float, float] = (1.0, LN2)


def _points(points: np.ndarray | list, name: str = "points") -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (K, 2) (x = requirement, y = JSD), got {pts.shape}")
    return pts


def pareto_front(points: np.ndarray | list) -> np.ndarray:
    """Indices of the non-dominated points of ``points`` (K, 2), sorted by x (then y).

    Both axes are minimised. Identical points do not dominate each other, so duplicates on the front
    are all returned. Rows with NaN are never on the front. O(K log K) sweep.
    """
    pts = _points(points)
    valid = np.flatnonzero(~np.isnan(pts).any(axis=1))
    order = valid[np.lexsort((pts[valid, 1], pts[valid, 0]))]
    keep: list[int] = []
    best_y = np.inf  # min y over all points strictly before the current run of identical points
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and np.array_equal(pts[order[j]], pts[order[i]]):
            j += 1
        # every earlier point has x' <= x, and y' <= y with (x', y') != (x, y) would dominate
        y = pts[order[i], 1]
        if y < best_y:
            keep.extend(order[i:j].tolist())
            best_y = y
        i = j
    return np.asarray(keep, dtype=np.intp)


def select_on_validation(
    val_points: np.ndarray | list, test_points: np.ndarray | list, *, return_indices: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The paper's protocol: choose the runs on the *validation* Pareto front, report their *test* points.

    Row ``k`` of both arrays is the same run (e.g. one lambda / hyperparameter setting). Returns
    ``test_points[front]`` ordered by validation x (and the indices ``front`` with ``return_indices``).
    The returned test points need not be mutually non-dominated.
    """
    val, test = _points(val_points, "val_points"), _points(test_points, "test_points")
    if len(val) != len(test):
        raise ValueError(f"val_points and test_points must describe the same runs, got {len(val)} and {len(test)} rows")
    idx = pareto_front(val)
    return (test[idx], idx) if return_indices else test[idx]


def hypervolume(
    points: np.ndarray | list,
    ref: tuple[float, float] = DEFAULT_REF,
    x_scale: float | None = None,
    *,
    normalize: bool = False,
) -> float:
    """Area dominated by ``points`` and bounded by the reference point ``ref`` (2-D hypervolume, exact).

    ``x`` is divided by ``x_scale`` first (e.g. the number of features when x counts features; ``None`` or
    1 when x already is a fraction or an EOD), so that the requirement axis lies in [0, 1]. Points not
    strictly better than ``ref`` on both axes contribute nothing. With ``normalize``, the result is
    divided by ``ref_x * ref_y`` (the fraction of the box ``[0, ref_x] x [0, ref_y]``). Larger is better.
    """
    pts = _points(points).copy()
    if x_scale is not None:
        if not x_scale > 0:
            raise ValueError(f"x_scale must be positive, got {x_scale}")
        pts[:, 0] /= x_scale
    rx, ry = float(ref[0]), float(ref[1])
    pts = pts[(pts[:, 0] < rx) & (pts[:, 1] < ry)]  # NaN compares False: dropped too
    if len(pts) == 0:
        return 0.0
    front = pts[pareto_front(pts)]  # x ascending, y strictly descending (up to duplicates)
    widths = np.diff(np.append(front[:, 0], rx))
    hv = float(np.sum(widths * (ry - front[:, 1])))
    return hv / (rx * ry) if normalize else hv


def _dominated_by(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean (len(b),): is ``b[j]`` dominated by some row of ``a``?"""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(len(b), dtype=bool)
    le = (a[:, None, :] <= b[None, :, :]).all(-1)
    lt = (a[:, None, :] < b[None, :, :]).any(-1)
    return (le & lt).any(0)


def dominance_table(fronts: Mapping[str, np.ndarray | list]) -> pd.DataFrame:
    """Pairwise coverage: ``df.loc[A, B]`` = fraction of B's points dominated by some point of A's.

    Rows ("dominating") and columns ("dominated") follow the order of ``fronts``. The points are used as
    given (pass fronts, e.g. from :func:`select_on_validation`). The diagonal and columns of methods
    without points are NaN.
    """
    names = list(fronts)
    pts = {k: _points(v, f"fronts[{k!r}]") for k, v in fronts.items()}
    pts = {k: v[~np.isnan(v).any(1)] for k, v in pts.items()}
    table = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j and len(pts[b]):
                table[i, j] = float(_dominated_by(pts[a], pts[b]).mean())
    df = pd.DataFrame(table, index=pd.Index(names, name="dominating"), columns=pd.Index(names, name="dominated"))
    return df


def hypervolume_table(
    fronts: Mapping[str, np.ndarray | list],
    ref: tuple[float, float] = DEFAULT_REF,
    x_scale: float | None = None,
) -> pd.DataFrame:
    """One row per method: ``hypervolume`` (as :func:`hypervolume`), ``normalized`` (fraction of the
    reference box) and ``points`` (number of points given), in the order of ``fronts``."""
    rows = []
    for name, pts in fronts.items():
        hv = hypervolume(pts, ref=ref, x_scale=x_scale)
        rows.append({"method": name, "hypervolume": hv, "normalized": hv / (ref[0] * ref[1]), "points": len(_points(pts))})
    return pd.DataFrame(rows, columns=["method", "hypervolume", "normalized", "points"]).set_index("method")


def to_markdown(df: pd.DataFrame, *, floatfmt: str = ".4f", missingval: str = "–") -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (index included; NaN shown as ``missingval``)."""
    from tabulate import tabulate

    body = df.astype(object).where(df.notna(), None)
    index_name = df.index.name or ""
    return tabulate(
        body, headers=[index_name, *map(str, df.columns)], tablefmt="github", floatfmt=floatfmt, missingval=missingval
    )
