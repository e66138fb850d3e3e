"""Results over several seeds: mean and standard deviation of the hypervolume tables, and plots of the spread.

A seed fixes everything random in one run of an experiment: the editors' training (initialisation, the zoo
models drawn each step, the zoo fraction of sample-efficiency editors) and the seeded baselines (Random, SNIP,
Lottery Ticket, FS & Retrain, permutation importance). The models evaluated are not the seed's: when a run caps
their number they are drawn with ``ProtocolConfig.subset_seed``, the same in every seed, so the spread is that of
the methods' randomness on fixed test models.
Each seed's results are kept as they are (:class:`~hubedit.evaluation.protocol.ProtocolResult`,
:class:`~hubedit.evaluation.experiments.CompositionResult`,
:class:`~hubedit.evaluation.experiments.SampleEfficiencyResult`, each with its JSON); the functions here only
read their tables, so the aggregate is recomputed from the per-seed JSON files at any time::

    runs = [ProtocolResult.load(p) for p in sorted(Path("results/small").glob("seed-*/prune-adult-results.json"))]
    print(protocol_seed_table(runs).markdown())

The standard deviation is the *sample* standard deviation (``ddof=1``: divided by n - 1, n the number of
seeds with a value); with a single seed it is undefined (NaN) and a formatted cell shows the value alone.

"Best" methods and editor-against-baseline differences use hypervolumes **without degenerate points** (points whose
accuracy is at or below the majority class's; :meth:`ProtocolResult.hypervolumes_for` with
``exclude_degenerate=True``), as :meth:`ProtocolResult.comparison` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..metrics.pareto import to_markdown

if TYPE_CHECKING:  # annotations only: the functions read the results' public tables
    from .experiments import CompositionResult, SampleEfficiencyResult
    from .protocol import ProtocolResult

__all__ = [
    "SeedTable",
    "format_mean_sd",
    "mean_sd",
    "protocol_seed_table",
    "composition_seed_table",
    "sample_efficiency_seed_table",
    "summary_seed_table",
    "summary_row_name",
    "SUMMARY_COLUMNS",
    "seed_fronts_plot",
    "sample_efficiency_seed_plot",
]

#: Aggregated columns of :meth:`ProtocolResult.hypervolume_table`, those present (results record more over time).
PROTOCOL_COLUMNS: tuple[str, ...] = ("hypervolume", "HV on baselines' range", "HV w/o degenerate",
                                     "HV w/o degenerate on baselines' range", "points", "degenerate")
COMPOSITION_COLUMNS: tuple[str, ...] = ("kept features", "hypervolume (weights kept, JSD)", "HV on baselines' range",
                                        "points")


def format_mean_sd(mean: float, sd: float, n: int, n_seeds: int | None = None, floatfmt: str = ".4f") -> str:
    """``"0.1234 ± 0.0012"``; the value alone when fewer than two seeds have one (``sd`` NaN); ``"–"`` when none.
    When only ``n`` of ``n_seeds`` seeds have a value, ``" (n of N seeds)"`` is added."""
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:{floatfmt}}"
    if n >= 2 and sd is not None and not math.isnan(sd):
        text += f" ± {sd:{floatfmt}}"
    if n_seeds is not None and n < n_seeds:
        text += f" ({n} of {n_seeds} seeds)"
    return text


@dataclass
class SeedTable:
    """Mean, sample standard deviation (ddof=1) and number of seeds of every cell of a table over seeds.

    ``mean`` / ``sd`` / ``n`` share index and columns (``sd`` is NaN where fewer than two seeds have a value,
    ``n`` counts the seeds with a value); ``labels`` holds columns shown as they are, before the aggregated ones
    (names of the best methods, a zoo fraction), indexed like ``mean``.
    """

    mean: pd.DataFrame
    sd: pd.DataFrame
    n: pd.DataFrame
    n_seeds: int
    labels: pd.DataFrame = field(default_factory=pd.DataFrame)
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec (default ".4f")

    def cell(self, row: Any, column: str, floatfmt: str | None = None) -> str:
        """One formatted cell, e.g. ``"0.1234 ± 0.0012"``."""
        fmt = floatfmt or self.formats.get(column, ".4f")
        return format_mean_sd(float(self.mean.loc[row, column]), float(self.sd.loc[row, column]),
                              int(self.n.loc[row, column]), self.n_seeds, fmt)

    def formatted(self) -> pd.DataFrame:
        """Labels, then one ``"mean ± sd"`` string per aggregated cell; inner index levels become columns."""
        body = pd.DataFrame(
            {c: [self.cell(r, c) for r in self.mean.index] for c in self.mean.columns}, index=self.mean.index,
        )
        if len(self.labels.columns):
            body = pd.concat([self.labels.reindex(self.mean.index), body], axis=1)
        if isinstance(body.index, pd.MultiIndex):
            body = body.reset_index(level=list(range(1, body.index.nlevels)))
        return body

    def markdown(self) -> str:
        return to_markdown(self.formatted()) if len(self.mean) else "(none)"

    def to_dict(self) -> dict[str, Any]:
        """JSON data: index (rows as lists for a multi-level index), columns, the three matrices and the label
        columns (NaN as None: strict JSON)."""
        def cell(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        def mat(df: pd.DataFrame) -> list[list]:
            return [[cell(v) for v in row] for row in df.astype(object).values.tolist()]

        idx = [list(i) if isinstance(i, tuple) else i for i in self.mean.index.tolist()]
        return {"n_seeds": self.n_seeds, "ddof": 1, "index_names": list(self.mean.index.names), "index": idx,
                "columns": list(self.mean.columns), "mean": mat(self.mean), "sd": mat(self.sd),
                "n": mat(self.n.astype(int)),
                "labels": {c: [cell(v) for v in self.labels[c].reindex(self.mean.index).astype(object).tolist()]
                           for c in self.labels.columns}}


def mean_sd(tables: Sequence[pd.DataFrame], columns: Sequence[str] | None = None) -> SeedTable:
    """Cell-wise mean and sample standard deviation (ddof=1) of per-seed tables (one per seed, unique index).

    Rows are matched by index (the union, in order of first appearance: a method missing from one seed's table
    counts in ``n`` only where present); ``columns`` default to the numeric columns of the first table. NaN
    cells are left out like missing rows.
    """
    tables = list(tables)
    if not tables:
        raise ValueError("mean_sd needs at least one table (one per seed), got none")
    for k, t in enumerate(tables):
        if not t.index.is_unique:
            raise ValueError(f"table {k} has a repeated row key: {t.index[t.index.duplicated()].tolist()[:3]}")
    if columns is None:
        columns = [c for c in tables[0].columns if pd.api.types.is_numeric_dtype(tables[0][c])]
    columns = list(columns)
    index = tables[0].index
    for t in tables[1:]:
        index = index.append(t.index[~t.index.isin(index)])
    cube = np.stack([t.reindex(index=index, columns=columns).apply(pd.to_numeric, errors="coerce")
                     .to_numpy(dtype=np.float64) for t in tables])
    present = ~np.isnan(cube)
    n = present.sum(0)
    total = np.where(present, cube, 0.0).sum(0)
    mean = np.divide(total, n, out=np.full(n.shape, np.nan), where=n > 0)
    sq = np.where(present, (cube - mean) ** 2, 0.0).sum(0)
    sd = np.divide(sq, n - 1, out=np.full(n.shape, np.nan), where=n > 1) ** 0.5
    frame = lambda a: pd.DataFrame(a, index=index, columns=columns)  # noqa: E731
    return SeedTable(frame(mean), frame(sd), frame(n.astype(int)), len(tables))


# --------------------------------------------------------------------------------------------------
# the experiments' tables
# --------------------------------------------------------------------------------------------------
def protocol_seed_table(results: Sequence["ProtocolResult"], axis: str = "jsd") -> SeedTable:
    """Hypervolumes (test) of every method on the ``axis`` front (``"jsd"``, ``"disagreement"``, ``"error"``;
    :data:`~hubedit.evaluation.protocol.FRONT_AXES`), over the seeds' results of one setting: the
    :data:`PROTOCOL_COLUMNS` of :meth:`ProtocolResult.hypervolume_table` (with and without degenerate points, full
    and on the baselines' range, front points and degenerate points) that the first seed's table has; ``kind``
    kept as a label."""
    results = list(results)
    if not results:
        raise ValueError("protocol_seed_table needs at least one result (one per seed), got none")
    tables = [r.hypervolume_table(axis) for r in results]
    out = mean_sd(tables, [c for c in PROTOCOL_COLUMNS if c in tables[0].columns])
    kinds = {}
    for t in tables:
        for name, kind in t["kind"].items():
            kinds.setdefault(name, kind)
    out.labels = pd.DataFrame({"kind": pd.Series(kinds)}).reindex(out.mean.index)
    out.formats = {"points": ".1f", "degenerate": ".1f"}
    return out


def composition_seed_table(results: Sequence["CompositionResult"]) -> SeedTable:
    """Per (method, DM strength): mean kept features and the hypervolumes of
    :meth:`CompositionResult.hypervolume_table`, over the seeds' composition results."""
    tables = []
    for r in results:
        t = r.hypervolume_table()
        tables.append(t.set_index("DM strength", append=True) if len(t) else t)
    out = mean_sd(tables, COMPOSITION_COLUMNS)
    out.formats = {"kept features": ".2f", "points": ".1f"}
    return out


def sample_efficiency_seed_table(results: Sequence["SampleEfficiencyResult"]) -> SeedTable:
    """Per method (one per zoo fraction, then the baselines): hypervolume with all points and without degenerate
    points, hypervolume on the baselines' range (without degenerate points) and the difference to the best
    baseline, over the seeds' sample-efficiency results. The best baseline is the one of largest mean hypervolume
    without degenerate points (among baselines with such a point); the difference, without degenerate points, is
    taken within each seed, then averaged (paired)."""
    results = list(results)
    if not results:
        raise ValueError("sample_efficiency_seed_table needs at least one result, got none")
    hv_means: dict[str, list[float]] = {}
    for r in results:
        p = r.protocol
        for b in p.baseline_methods:
            if len(p.front(b, exclude_degenerate=True)):
                hv_means.setdefault(b, []).append(p.hypervolume(b, exclude_degenerate=True))
    best = max(hv_means, key=lambda b: float(np.mean(hv_means[b]))) if hv_means else None
    vs = f"vs best baseline ({best}; w/o degenerate)"
    tables = []
    for r in results:
        p = r.protocol
        hvs, ok = p.hypervolumes, p.hypervolumes_for(exclude_degenerate=True)
        chv = p.common_hypervolumes_for(exclude_degenerate=True)
        rows = {}
        for name in [*r.fractions, *p.baseline_methods]:
            row = {"hypervolume": hvs[name], "HV w/o degenerate": ok[name], "HV w/o degenerate on baselines' range": chv[name]}
            if best is not None and name in r.fractions and best in ok:
                row[vs] = ok[name] - ok[best]
            rows[name] = row
        tables.append(pd.DataFrame.from_dict(rows, orient="index"))
    columns = ["hypervolume", "HV w/o degenerate", "HV w/o degenerate on baselines' range"] + ([vs] if best is not None else [])
    out = mean_sd(tables, columns)
    for frame in (out.mean, out.sd, out.n):
        frame.index.name = "method"
    fraction, train = {}, {}
    for r in results:
        for name, f in r.fractions.items():
            fraction.setdefault(name, f)
            train.setdefault(name, set()).add(r.train_models.get(name))
    out.labels = pd.DataFrame({
        "zoo fraction": pd.Series(fraction, dtype=object),
        "train models": pd.Series({k: ", ".join(str(v) for v in sorted(s, key=str)) for k, s in train.items()},
                                  dtype=object),
    }).reindex(out.mean.index)
    return out


#: Columns of :func:`summary_seed_table` (all without degenerate points but the last).
SUMMARY_COLUMNS: tuple[str, ...] = ("editor HV", "baseline HV", "HV difference", "HV difference on baselines' range",
                                    "share of best baseline's front dominated by the editor",
                                    "HV difference with degenerate points")


def summary_row_name(setting: str, axis: str) -> str:
    """Row of :func:`summary_seed_table` for ``setting``'s ``axis`` front: the setting alone for JSD."""
    return setting if axis == "jsd" else f"{setting} ({axis})"


def summary_seed_table(results: Mapping[str, Sequence["ProtocolResult"]],
                       axes: Sequence[str] | None = None) -> SeedTable:
    """One row per setting and front (:func:`summary_row_name`; fronts: ``axes``, default each setting's
    :attr:`ProtocolResult.axes`, i.e. JSD, and for fairness also label disagreement and error): the best editor
    against the best baseline, over seeds, **without degenerate points**.

    The best editor and best baseline are the methods of largest *mean* test hypervolume without degenerate points
    (and the best baseline on the baselines' range, of largest mean hypervolume there), among methods that have a
    non-degenerate point in some seed, the same methods in every seed; each seed gives the editor's and the
    baseline's hypervolume, their difference, the difference on the baselines' range, the share of the baseline's
    front the editor dominates, and the difference with degenerate points kept (what a table of all points would
    show); the table holds their mean and sd. ``editor ≥ every baseline`` counts the seeds where the editor's
    hypervolume is at least that of every baseline with a non-degenerate point. A setting where no editor or no
    baseline has a non-degenerate point gets a row without numbers that says so (no claim either way).
    """
    from .protocol import FRONT_AXES

    labels: dict[str, dict[str, str]] = {}
    n_seeds = max((len(v) for v in results.values()), default=0)
    per_seed: list[dict[str, dict[str, float]]] = [{} for _ in range(n_seeds)]
    for setting, runs in results.items():
        runs = list(runs)
        if not runs:
            continue
        for axis in (axes if axes is not None else runs[0].axes):
            row = summary_row_name(setting, axis)
            front = FRONT_AXES[axis][0]
            eds = _methods_with_front(runs, "editor", axis)
            bases = _methods_with_front(runs, "baseline", axis)
            if not eds or not bases:
                missing = " and no ".join(k for k, v in (("editor", eds), ("baseline", bases)) if not v)
                labels[row] = {"front": front, "best editor": eds[0] if len(eds) == 1 else "–",
                               "best baseline": bases[0] if len(bases) == 1 else "–",
                               "editor ≥ every baseline": f"no claim: no {missing} has a non-degenerate point"}
                for k in range(len(runs)):
                    per_seed[k][row] = {c: math.nan for c in SUMMARY_COLUMNS}
                continue

            def mean_hv(name: str, common: bool = False) -> float:
                vals = [(r.common_hypervolume if common else r.hypervolume)(name, axis, exclude_degenerate=True)
                        for r in runs if name in r.methods]
                return float(np.mean(vals)) if vals else -math.inf

            be, bb = max(eds, key=mean_hv), max(bases, key=mean_hv)
            bbc = max(bases, key=lambda b: mean_hv(b, True))
            wins = 0
            for k, r in enumerate(runs):
                if be not in r.methods:
                    continue
                hvs = r.hypervolumes_for(axis, exclude_degenerate=True)
                chv = r.common_hypervolumes_for(axis, exclude_degenerate=True)
                everything = r.hypervolumes_for(axis)
                own = [hvs[b] for b in r.baseline_methods if len(r.front(b, axis, exclude_degenerate=True))]
                wins += bool(own) and hvs[be] >= max(own)
                if bb not in r.methods:
                    continue
                per_seed[k][row] = {
                    "editor HV": hvs[be], "baseline HV": hvs[bb], "HV difference": hvs[be] - hvs[bb],
                    "HV difference on baselines' range": chv[be] - chv[bbc] if bbc in chv else math.nan,
                    "share of best baseline's front dominated by the editor":
                        float(r.dominance_table(axis, exclude_degenerate=True).loc[be, bb]),
                    "HV difference with degenerate points": everything[be] - everything[bb],
                }
            verdict = "yes" if wins == len(runs) else "NO"
            labels[row] = {"front": front, "best editor": be, "best baseline": bb,
                           "editor ≥ every baseline": verdict + (f" ({wins} of {len(runs)} seeds)" if len(runs) > 1 else "")}
    columns = list(SUMMARY_COLUMNS)
    tables = [pd.DataFrame.from_dict(s, orient="index", columns=columns) if s else pd.DataFrame(columns=columns)
              for s in per_seed] or [pd.DataFrame(columns=columns)]
    out = mean_sd(tables, columns)
    for frame in (out.mean, out.sd, out.n):
        frame.index.name = "setting"
    out.labels = pd.DataFrame.from_dict(labels, orient="index").reindex(out.mean.index)
    out.formats = {"share of best baseline's front dominated by the editor": ".2f"}
    return out


def _methods_with_front(runs: Sequence["ProtocolResult"], kind: str, axis: str = "jsd") -> list[str]:
    """Methods of ``kind`` with a non-degenerate point on their ``axis`` front in some seed, in order of appearance."""
    names: list[str] = []
    for r in runs:
        for name in (r.editor_methods if kind == "editor" else r.baseline_methods):
            if name not in names and len(r.front(name, axis, exclude_degenerate=True)):
                names.append(name)
    return names


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
_STYLES = ("-", "--", ":", "-.")


def _figure(figsize: tuple[float, float] = (7.0, 5.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    return path


def seed_fronts_plot(fronts_by_seed: Sequence[Mapping[str, np.ndarray]], path: str | os.PathLike, *, xlabel: str,
                     ylabel: str = "mean JSD (test)", title: str | None = None,
                     seeds: Sequence[int] | None = None) -> Path:
    """Every seed's fronts in one figure: one colour and marker per method, one line per seed (line style per
    seed), so the spread between seeds is visible; a PNG at 150 dpi."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    seeds = list(seeds) if seeds is not None else list(range(len(fronts_by_seed)))
    names: list[str] = []
    for fronts in fronts_by_seed:
        names += [n for n in fronts if n not in names]
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = _figure()
    ax = fig.add_subplot()
    for k, fronts in enumerate(fronts_by_seed):
        for name, pts in fronts.items():
            i = names.index(name)
            pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
            pts = pts[~np.isnan(pts).any(1)]
            if not len(pts):
                continue
            pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
            ax.plot(pts[:, 0], pts[:, 1], color=cmap(i % cmap.N), marker=_MARKERS[i % len(_MARKERS)], markersize=4,
                    linewidth=1.2, linestyle=_STYLES[k % len(_STYLES)], alpha=0.85)
    handles = [Line2D([], [], color=cmap(i % cmap.N), marker=_MARKERS[i % len(_MARKERS)], label=n)
               for i, n in enumerate(names)]
    if len(fronts_by_seed) > 1:
        handles += [Line2D([], [], color="grey", linestyle=_STYLES[k % len(_STYLES)], label=f"seed {s}")
                    for k, s in enumerate(seeds)]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if handles:
        ax.legend(handles=handles, frameon=False, fontsize="small")
    return _save(fig, path)


def sample_efficiency_seed_plot(results: Sequence["SampleEfficiencyResult"], path: str | os.PathLike, *,
                                seeds: Sequence[int] | None = None) -> Path:
    """Test hypervolume without degenerate points against the zoo fraction the editors were trained on: mean over
    seeds with error bars of one sample standard deviation and every seed's value as a dot; each baseline as a horizontal line at its mean
    with a band of one sd."""
    from matplotlib import colormaps

    results = list(results)
    table = sample_efficiency_seed_table(results)
    fractions = {name: f for r in results for name, f in r.fractions.items()}
    names = sorted(fractions, key=fractions.__getitem__)
    fig = _figure((6.5, 4.5))
    ax = fig.add_subplot()
    xs = np.asarray([fractions[n] for n in names], dtype=np.float64)
    col = "HV w/o degenerate"
    mean = table.mean.loc[names, col].to_numpy(dtype=np.float64)
    sd = np.nan_to_num(table.sd.loc[names, col].to_numpy(dtype=np.float64))
    ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=4, linewidth=1.5, color="black",
                label=f"editors (mean ± sd, {len(results)} seed{'s' if len(results) > 1 else ''})")
    if len(results) > 1:
        for r in results:
            hv = r.protocol.hypervolumes_for(exclude_degenerate=True)
            ax.plot([r.fractions[n] for n in r.fractions], [hv[n] for n in r.fractions], linestyle="none",
                    marker=".", color="grey", alpha=0.7)
    cmap = colormaps["tab10"]
    bases = [n for n in table.mean.index if n not in fractions]
    for i, b in enumerate(bases):
        m, s = float(table.mean.loc[b, col]), float(np.nan_to_num(table.sd.loc[b, col]))
        ax.axhline(m, color=cmap(i % cmap.N), linestyle="--", linewidth=1.0, label=b)
        if s > 0:
            ax.axhspan(m - s, m + s, color=cmap(i % cmap.N), alpha=0.12)
    ax.set_xlabel("fraction of the zoo's train split")
    ax.set_ylabel("hypervolume w/o degenerate points (test)")
    ax.set_title("Pruning editors by training fraction")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return _save(fig, path)
