"""The paper's evaluation protocol (section 5, A.4) for one setting (task, requirement).

For every method -- trained editors and the requirement's baselines -- and every strength of the method
(an editor's lambda, a pruning ``keep``, a number of kept features, a fairness tolerance ...), the protocol
computes the mean requirement metric, mean JSD to the original model and mean accuracy

* over the zoo's **validation** models, on the task's *evaluation* split (model selection), and
* over the zoo's **test** models, on the task's *test* split (what is reported).

Points are chosen on validation (the Pareto front of a method's validation points) and reported on test
(:func:`~hubedit.metrics.pareto.select_on_validation`); the chosen test points form the method's front.
Hypervolumes use the reference point ``(1, ln 2)`` with the requirement axis divided by the requirement's
``metric_scale`` (number of features for data minimisation, 1 otherwise).

Requirement metrics are *hard* and read off the edited model itself, the same way for editors and baselines:

* ``minimise``: number of input features read by some weight (a column of ``layers.0.weight`` or of a skip
  map out of the input layer with a non-zero entry);
* ``prune``: fraction of weights (linear and skip matrices, biases excluded) that are non-zero;
* ``fairness``: equalised-odds difference of the hard predictions (argmax for models; for the randomised
  post-processors, predictions sampled with a seeded generator, while the JSD is taken between the original
  softmax and the post-processor's ``predict_proba``).

Baselines that need data (PFI, gradients, retraining, fitting a post-processor) use the task's *editing*
split, never the data they are evaluated on. Timing (paper Table 1): seconds per model for every method,
measured in the same run on the same models (:mod:`hubedit.metrics.timing`).

Processes: the work is a list of independent units (an editor run on a batch of models, a baseline at
every strength on one model), shared out over the processes of a ``torch.distributed`` world -- launched
(``torchrun --nproc_per_node N``, ``accelerate launch --multi_gpu --num_processes N [--num_machines M ...]``)
or started locally with ``workers=N`` -- and gathered in order, so the numbers are those of one process
(:mod:`hubedit.distributed`).

Entry point: :func:`run_protocol` -> :class:`ProtocolResult` (``report_markdown()``, ``plot()``,
``save()`` writing ``report.md``, ``results.json`` and ``pareto.png``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..metrics.scores import equalized_odds_difference, jsd
from ..metrics.pareto import DEFAULT_REF, dominance_table, hypervolume, select_on_validation, to_markdown
from ..metrics.timing import TimingResult, time_per_model, timing_table

__all__ = [
    "SETTINGS",
    "BASELINES",
    "BASELINE_KEYS",
    "EDITOR_LABELS",
    "ProtocolConfig",
    "MethodResult",
    "ProtocolResult",
    "EditorRun",
    "editor_runs",
    "run_protocol",
    "kept_features",
    "weights_kept",
    "nonzero_weights",
    "default_lambda_grid",
    "write_result_files",
]

#: The paper's five settings: name -> (task, requirement).
SETTINGS: dict[str, tuple[str, str]] = {
    "dm-adult": ("adult", "minimise"),
    "dm-bank": ("bank", "minimise"),
    "fairness-adult": ("adult", "fairness"),
    "prune-adult": ("adult", "prune"),
    "prune-bank": ("bank", "prune"),
}

#: Baselines of each requirement, in the paper's order (display names).
BASELINES: dict[str, tuple[str, ...]] = {
    "minimise": ("FS", "FS & Retrain"),
    "fairness": ("ThresholdOpt", "CalEqOdds", "RejectOption", "FairCls"),
    "prune": ("Random", "Magnitude", "Grad Importance", "SNIP", "Lottery Ticket"),
}

#: Short keys (CLI) -> display names.
BASELINE_KEYS: dict[str, str] = {
    "fs": "FS",
    "fs-retrain": "FS & Retrain",
    "threshold-opt": "ThresholdOpt",
    "cal-eq-odds": "CalEqOdds",
    "reject-option": "RejectOption",
    "fair-cls": "FairCls",
    "random": "Random",
    "magnitude": "Magnitude",
    "grad": "Grad Importance",
    "snip": "SNIP",
    "lottery-ticket": "Lottery Ticket",
}

#: Display names of editors by (requirement, variant), as in the paper's figures.
EDITOR_LABELS: dict[tuple[str, str], str] = {
    ("minimise", "gmn"): "GMN",
    ("minimise", "fs-gmn"): "FS (GMN)",
    ("fairness", "gmn"): "GMN",
    ("prune", "prune-edit"): "GMN - Prune & Edit",
    ("prune", "prune"): "GMN - Prune",
}

_SETTING_TITLES = {"minimise": "Data minimisation", "fairness": "Fairness (equalised odds)", "prune": "Weight pruning"}


# ==================================================================================================
# options
# ==================================================================================================
@dataclass
class ProtocolConfig:
    """Options of :func:`run_protocol` (every field has the paper's / hubedit/DESIGN.md's default).

    ``max_models`` caps the number of validation and of test models (a seeded subset, for quick runs).
    ``dm_n_keep`` (FS) and ``fs_retrain_n_keep`` (FS & Retrain) default to all of ``1..F-1`` and to six
    geometrically spaced values of it (retraining is the expensive baseline). ``fs_retrain_epochs`` is 100 as
    in the paper (A.4.1); smaller for quick runs. ``lambda_grid`` is used for lambda-conditioned editors
    (default: :func:`default_lambda_grid` of the editor's range). ``timing_models`` models are timed per
    method (0: no timing). ``workers`` > 1 evaluates editors and baselines in that many local processes (this
    one and helpers with as many torch threads as this one -- set 1 thread to use one core per process -- in a
    ``torch.distributed`` gloo group; results are identical to ``workers=1``); timing always runs in the calling
    process. Under a launcher (``torchrun``, ``accelerate launch``) keep ``workers=1``: the launched processes
    share the work.
    """

    prune_keeps: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)
    dm_n_keep: tuple[int, ...] | None = None
    fs_retrain_n_keep: tuple[int, ...] | None = None
    fs_retrain_epochs: int = 100
    pfi_repeats: int = 5
    snip_iterations: int = 5
    lottery_iterations: int = 3
    lottery_epochs: int = 5
    cal_eq_odds_constraints: tuple[str, ...] = ("fpr", "fnr", "weighted")
    reject_option_bounds: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)
    fair_cls_alphas: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
    lambda_grid: tuple[float, ...] | None = None
    max_models: int | None = None
    timing_models: int = 5
    edit_batch_size: int = 64
    workers: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProtocolConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


def default_lambda_grid(lam_range: Sequence[float], n: int = 7) -> tuple[float, ...]:
    """``n`` log-spaced lambdas covering ``lam_range`` (ends included)."""
    lo, hi = math.log(float(lam_range[0])), math.log(float(lam_range[1]))
    return tuple(float(f"{math.exp(lo + (hi - lo) * k / (n - 1)):.6g}") for k in range(n)) if n > 1 else (float(lam_range[0]),)


def _geometric_ints(lo: int, hi: int, n: int) -> tuple[int, ...]:
    if hi < lo:
        return ()
    vals = np.unique(np.round(np.geomspace(lo, hi, n)).astype(int))
    return tuple(int(v) for v in vals)


# ==================================================================================================
# hard metrics of an edited model
# ==================================================================================================
def kept_features(model) -> int:
    """Number of input features that some weight still reads (first layer and skip maps out of the input)."""
    from ..baselines import input_weight_names

    params = dict(model.named_parameters())
    used = torch.zeros(model.config.in_features, dtype=torch.bool)
    for name in input_weight_names(model):
        used |= (params[name].detach() != 0).any(0)
    return int(used.sum())


def nonzero_weights(model) -> int:
    """Number of non-zero weights (linear and skip matrices; biases and norms excluded)."""
    from ..baselines import masks_of

    return sum(int(m.sum()) for m in masks_of(model).values())


def weights_kept(model) -> float:
    """Fraction of non-zero weights (:func:`nonzero_weights` over ``model.n_weights``)."""
    return nonzero_weights(model) / model.n_weights


# ==================================================================================================
# results
# ==================================================================================================
def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1, 2) if len(x) else np.zeros((0, 2))


@dataclass
class MethodResult:
    """One method's runs (one per strength): validation and test points ``(metric, JSD)``, accuracies and
    the indices of the runs chosen on validation."""

    name: str
    kind: str  # "editor" or "baseline"
    strengths: list[str]
    val: np.ndarray  # (K, 2) mean metric, mean JSD on validation models / evaluation split
    test: np.ndarray  # (K, 2) same on test models / test split
    val_accuracy: np.ndarray  # (K,)
    test_accuracy: np.ndarray  # (K,)
    chosen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.val, self.test = _arr(self.val), _arr(self.test)
        self.val_accuracy = np.asarray(self.val_accuracy, dtype=np.float64).reshape(-1)
        self.test_accuracy = np.asarray(self.test_accuracy, dtype=np.float64).reshape(-1)
        if len(self.chosen) == 0 and len(self.val):
            _, self.chosen = select_on_validation(self.val, self.test, return_indices=True)
        self.chosen = np.asarray(self.chosen, dtype=np.intp)

    @property
    def test_front(self) -> np.ndarray:
        """Test points of the runs on the validation Pareto front (ordered by validation metric)."""
        return self.test[self.chosen]

    @property
    def val_front(self) -> np.ndarray:
        return self.val[self.chosen]

    def to_dict(self) -> dict:
        def clean(a):
            return [None if (isinstance(v, float) and math.isnan(v)) else v for v in np.asarray(a).reshape(-1).tolist()]

        return {
            "name": self.name,
            "kind": self.kind,
            "strengths": list(self.strengths),
            "val": [clean(r) for r in self.val],
            "test": [clean(r) for r in self.test],
            "val_accuracy": clean(self.val_accuracy),
            "test_accuracy": clean(self.test_accuracy),
            "chosen": [int(i) for i in self.chosen],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MethodResult":
        def un(a):
            return np.asarray([np.nan if v is None else v for v in a], dtype=np.float64)

        return cls(
            name=d["name"], kind=d["kind"], strengths=list(d["strengths"]),
            val=np.asarray([un(r) for r in d["val"]]).reshape(-1, 2) if d["val"] else np.zeros((0, 2)),
            test=np.asarray([un(r) for r in d["test"]]).reshape(-1, 2) if d["test"] else np.zeros((0, 2)),
            val_accuracy=un(d["val_accuracy"]), test_accuracy=un(d["test_accuracy"]),
            chosen=np.asarray(d["chosen"], dtype=np.intp), notes=list(d.get("notes", [])),
        )


@dataclass
class ProtocolResult:
    """Everything the protocol measured for one setting; tables, plot and JSON from it."""

    task: str
    requirement: str
    metric_name: str
    metric_label: str
    x_scale: float
    methods: dict[str, MethodResult]
    timing: dict[str, TimingResult] = field(default_factory=dict)
    timing_notes: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # --- derived tables -------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return f"{_SETTING_TITLES.get(self.requirement, self.requirement)} on {self.task.capitalize()}"

    @property
    def fronts(self) -> dict[str, np.ndarray]:
        """Chosen test points of every method (points chosen on validation, reported on test)."""
        return {name: m.test_front for name, m in self.methods.items()}

    @property
    def editor_methods(self) -> list[str]:
        return [n for n, m in self.methods.items() if m.kind == "editor"]

    @property
    def baseline_methods(self) -> list[str]:
        return [n for n, m in self.methods.items() if m.kind == "baseline"]

    def hypervolume(self, name: str) -> float:
        return hypervolume(self.methods[name].test_front, ref=DEFAULT_REF, x_scale=self.x_scale)

    @property
    def hypervolumes(self) -> dict[str, float]:
        return {name: self.hypervolume(name) for name in self.methods}

    @property
    def common_x(self) -> float:
        """Smallest requirement value (raw units) that some baseline reaches, e.g. the smallest pruning ``keep`` or
        one kept feature: the left end of the range on which editors and baselines can be compared (every method's
        smallest value when there are no baselines)."""
        names = [n for n in self.baseline_methods if len(self.methods[n].test_front)] or list(self.methods)
        lows = [float(np.nanmin(self.methods[n].test_front[:, 0])) for n in names
                if len(self.methods[n].test_front) and not np.isnan(self.methods[n].test_front[:, 0]).all()]
        return min(lows) if lows else 0.0

    def common_hypervolume(self, name: str) -> float:
        """Hypervolume on the baselines' range only: front points below :attr:`common_x` are moved to it, so that
        an editor is not credited for the part of the requirement axis that no baseline is run at (an editor that
        drops every feature or weight, where the baselines stop at one feature / 5 % of the weights)."""
        pts = np.array(self.methods[name].test_front, dtype=np.float64, copy=True)
        if len(pts):
            pts[:, 0] = np.maximum(pts[:, 0], self.common_x)
        return hypervolume(pts, ref=DEFAULT_REF, x_scale=self.x_scale)

    @property
    def common_hypervolumes(self) -> dict[str, float]:
        return {name: self.common_hypervolume(name) for name in self.methods}

    def hypervolume_table(self) -> pd.DataFrame:
        rows = []
        for name, m in self.methods.items():
            hv = self.hypervolume(name)
            rows.append({
                "method": name, "kind": m.kind, "hypervolume": hv, "normalized": hv / (DEFAULT_REF[0] * DEFAULT_REF[1]),
                "HV on baselines' range": self.common_hypervolume(name),
                "points": len(m.test_front), "runs": len(m.strengths),
            })
        cols = ["method", "kind", "hypervolume", "normalized", "HV on baselines' range", "points", "runs"]
        return pd.DataFrame(rows, columns=cols).set_index("method")

    def dominance_table(self) -> pd.DataFrame:
        return dominance_table(self.fronts)

    def comparison(self) -> list[dict[str, Any]]:
        """For each editor method: its hypervolume against the best baseline's, and mutual dominance."""
        hvs, chv = self.hypervolumes, self.common_hypervolumes
        base = [b for b in self.baseline_methods if len(self.methods[b].test_front)]
        out = []
        if not base:
            return out
        best = max(base, key=lambda b: hvs[b])
        best_c = max(base, key=lambda b: chv[b])
        dom = self.dominance_table()
        for e in self.editor_methods:
            row = {
                "editor": e, "editor_hv": hvs[e], "best_baseline": best, "best_baseline_hv": hvs[best],
                "hv_difference": hvs[e] - hvs[best],
                "hv_ratio": hvs[e] / hvs[best] if hvs[best] > 0 else math.inf,
                "dominates_all_baselines": all(hvs[e] >= hvs[b] for b in base),
                "common_x": self.common_x,
                "editor_common_hv": chv[e], "best_baseline_common": best_c, "best_baseline_common_hv": chv[best_c],
                "common_hv_difference": chv[e] - chv[best_c],
                # fraction of baseline points dominated by the editor's front and vice versa (worst case over baselines)
                "baseline_points_dominated_by_editor": float(np.nanmin([dom.loc[e, b] for b in base])) if base else math.nan,
                "editor_points_dominated_by_a_baseline": float(np.nanmax([dom.loc[b, e] for b in base]))
                if len(self.methods[e].test_front) else math.nan,
            }
            out.append(row)
        return out

    def timing_markdown(self) -> str:
        if not self.timing:
            return "(no timing measured)"
        table = timing_table(self.timing)
        notes = [f"- {k}: {v}" for k, v in self.timing_notes.items() if k in self.timing]
        return table + ("\n\n" + "\n".join(notes) if notes else "")

    def points_table(self, which: str = "chosen") -> pd.DataFrame:
        """One row per run (``which="all"``) or per chosen run (``"chosen"``): strength, validation and
        test metric / JSD, test accuracy."""
        rows = []
        for name, m in self.methods.items():
            idx = m.chosen if which == "chosen" else range(len(m.strengths))
            for i in idx:
                rows.append({
                    "method": name, "strength": m.strengths[i],
                    f"val {self.metric_name}": m.val[i, 0], "val JSD": m.val[i, 1],
                    f"test {self.metric_name}": m.test[i, 0], "test JSD": m.test[i, 1],
                    "test accuracy": m.test_accuracy[i],
                    "chosen": bool(i in set(m.chosen.tolist())),
                })
        df = pd.DataFrame(rows)
        if which == "chosen" and len(df):
            df = df.drop(columns="chosen")
        return df.set_index("method") if len(df) else df

    # --- outputs ----------------------------------------------------------------------------------------
    def plot(self, path: str | os.PathLike) -> Path:
        from ..metrics.plots import pareto_plot

        return pareto_plot(
            {n: f for n, f in self.fronts.items() if len(f)}, path, xlabel=self.metric_label, ylabel="mean JSD (test)",
            title=f"{self.title} (test; points chosen on validation)",
        )

    def report_markdown(self, *, heading_level: int = 2, plot_path: str | None = "pareto.png",
                        include_all_points: bool = False) -> str:
        h = "#" * heading_level
        i = self.info
        lines = [f"{h} {self.title}", ""]
        lines.append(
            f"Requirement metric: {self.metric_label} (`{self.metric_name}`, hypervolume x-scale {self.x_scale:g}, "
            f"reference point (1, ln 2)). Zoo: {i.get('zoo', '?')}. Validation: {i.get('n_val_models', '?')} models on "
            f"the task's evaluation split ({i.get('n_val_points', '?')} points); test: {i.get('n_test_models', '?')} "
            f"models on the test split ({i.get('n_test_points', '?')} points). Baselines use the editing split "
            f"({i.get('n_editing_points', '?')} points)."
        )
        if "original" in i:
            o = i["original"]
            lines.append(
                f"Original models (test): mean accuracy {o['test_accuracy']:.4f}, mean {self.metric_name} "
                f"{o['test_metric']:.4f}; validation: accuracy {o['val_accuracy']:.4f}, {self.metric_name} {o['val_metric']:.4f}."
            )
        if "seconds" in i:
            mach = i.get("machine", {})
            processes = i.get("processes", i.get("config", {}).get("workers", 1))
            lines.append(
                f"Evaluated in {i['seconds']:.1f} s, finished {i.get('finished', '?')}, on {mach.get('cpu_count', '?')} CPUs "
                f"(torch {mach.get('torch', '?')}, {mach.get('torch_threads', '?')} threads, CUDA: {mach.get('cuda') or 'none'}"
                f"{f', {processes} processes' if processes > 1 else ''})."
            )
        lines.append("")
        if plot_path:
            lines += [f"![{self.title}]({plot_path})", ""]
        lines += [f"{h}# Hypervolume (test fronts, points chosen on validation; larger is better)", "",
                  f"`HV on baselines' range`: the same with every front point below {self.metric_name} = {self.common_x:.3g} "
                  "(the smallest value a baseline is run at) moved to it, so that no method gains area where no "
                  "baseline has a point.", "",
                  to_markdown(self.hypervolume_table().drop(columns="kind")), ""]
        comp = self.comparison()
        if comp:
            lines += [f"{h}# Editor against the best baseline", ""]
            for c in comp:
                verdict = "dominates every baseline in hypervolume" if c["dominates_all_baselines"] else (
                    f"does NOT dominate: {c['hv_difference']:+.4f} hypervolume vs {c['best_baseline']}")
                lines.append(
                    f"- **{c['editor']}**: HV {c['editor_hv']:.4f} vs best baseline {c['best_baseline']} "
                    f"{c['best_baseline_hv']:.4f} (difference {c['hv_difference']:+.4f}); {verdict}. "
                    f"On the baselines' range ({self.metric_name} >= {c['common_x']:.3g}): {c['editor_common_hv']:.4f} vs "
                    f"{c['best_baseline_common']} {c['best_baseline_common_hv']:.4f} ({c['common_hv_difference']:+.4f}). "
                    f"Fraction of each baseline's front dominated by it: at least {c['baseline_points_dominated_by_editor']:.2f}; "
                    f"fraction of its front dominated by some baseline: at most {c['editor_points_dominated_by_a_baseline']:.2f}."
                )
            lines.append("")
        lines += [f"{h}# Dominance (fraction of the column method's test front dominated by the row method's)", "",
                  to_markdown(self.dominance_table(), floatfmt=".2f"), ""]
        pts = self.points_table("all" if include_all_points else "chosen")
        lines += [f"{h}# {'All runs' if include_all_points else 'Chosen runs'} (validation and test)", "",
                  to_markdown(pts, floatfmt=".4f") if len(pts) else "(none)", ""]
        lines += [f"{h}# Seconds to edit one model (same run, same machine)", "", self.timing_markdown(), ""]
        notes = [f"- {n}: {t}" for n, m in self.methods.items() for t in m.notes]
        if notes:
            lines += [f"{h}# Notes", "", *notes, ""]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "format": "hubedit.protocol-result",
            "task": self.task,
            "requirement": self.requirement,
            "metric_name": self.metric_name,
            "metric_label": self.metric_label,
            "x_scale": self.x_scale,
            "methods": {n: m.to_dict() for n, m in self.methods.items()},
            "hypervolumes": self.hypervolumes,
            "common_x": self.common_x,
            "common_hypervolumes": self.common_hypervolumes,
            "comparison": self.comparison(),
            "timing": {n: t.to_dict() for n, t in self.timing.items()},
            "timing_notes": dict(self.timing_notes),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProtocolResult":
        return cls(
            task=d["task"], requirement=d["requirement"], metric_name=d["metric_name"],
            metric_label=d["metric_label"], x_scale=float(d["x_scale"]),
            methods={n: MethodResult.from_dict(m) for n, m in d["methods"].items()},
            timing={n: TimingResult(**t) for n, t in d.get("timing", {}).items()},
            timing_notes=dict(d.get("timing_notes", {})), info=dict(d.get("info", {})),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProtocolResult":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, out: str | os.PathLike, *, prefix: str = "") -> dict[str, Path]:
        """Write ``{prefix}report.md``, ``{prefix}results.json`` and ``{prefix}pareto.png`` into ``out``."""
        return write_result_files(out, f"{prefix}pareto.png", f"{prefix}report.md", f"{prefix}results.json",
                                  plot=self.plot, report=self.report_markdown, data=self.to_dict())

    def merged(self, other: "ProtocolResult", names: Sequence[str] | None = None) -> "ProtocolResult":
        """A copy with ``other``'s methods (``names``, default all) added; both must have evaluated the same
        task, requirement and models (checked on the recorded model ids)."""
        if (other.task, other.requirement) != (self.task, self.requirement):
            raise ValueError(f"cannot merge results of {other.task}/{other.requirement} into {self.task}/{self.requirement}")
        for key in ("val_model_ids", "test_model_ids"):
            if self.info.get(key) != other.info.get(key):
                raise ValueError(f"cannot merge results evaluated on different models ({key} differ)")
        methods = dict(self.methods)
        for n in names if names is not None else other.methods:
            methods[n] = other.methods[n]
        timing = dict(self.timing)
        timing.update({n: t for n, t in other.timing.items() if names is None or n in names})
        notes = dict(self.timing_notes)
        notes.update({n: t for n, t in other.timing_notes.items() if names is None or n in names})
        return ProtocolResult(self.task, self.requirement, self.metric_name, self.metric_label, self.x_scale, methods,
                              timing, notes, dict(self.info))


def write_result_files(out: str | os.PathLike, plot_name: str, report_name: str, json_name: str, *,
                       plot: Callable[[Path], Any], report: Callable[..., str], data: dict) -> dict[str, Path]:
    """Write a result's plot (``plot(path)``), Markdown report (``report(plot_path=...)``, linking the plot) and
    JSON ``data`` into ``out``; returns ``{"plot", "report", "json"}`` paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"plot": out / plot_name, "report": out / report_name, "json": out / json_name}
    plot(paths["plot"])
    paths["report"].write_text(report(plot_path=paths["plot"].name) + "\n")
    paths["json"].write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ==================================================================================================
# editors
# ==================================================================================================
@dataclass
class EditorRun:
    """One point of an editor method: an editor and the lambda to edit with (None for per-lambda editors)."""

    method: str
    editor: Any
    lam: float | None

    @property
    def effective_lam(self) -> float:
        return float(self.lam if self.lam is not None else self.editor.lam)

    @property
    def label(self) -> str:
        return f"lam={self.effective_lam:.4g}"

    def edit_many(self, models, batch_size: int = 64):
        return self.editor.edit_many(models, lam=self.lam, batch_size=batch_size)

    def edit(self, model):
        return self.editor.edit(model, lam=self.lam)


def editor_label(editor) -> str:
    s = editor.settings
    base = EDITOR_LABELS.get((s["requirement"], s["variant"]), f"GMN ({s['variant']})")
    return base + (" (λ-cond.)" if s.get("lam_range") is not None else "")


def editor_runs(editors, lambda_grid: Sequence[float] | None = None) -> dict[str, list[EditorRun]]:
    """Group editors into methods: ``{method name: [EditorRun, ...]}`` ordered by lambda.

    ``editors``: a sequence of editors (per-lambda editors of one variant form one method named after the
    variant, e.g. "GMN - Prune & Edit"; a lambda-conditioned editor is a method of its own with one run per
    lambda of ``lambda_grid`` -- default :func:`default_lambda_grid` of its range -- clipped to its range), or a
    mapping ``{method name: editors}`` to name the methods yourself (e.g. one method per zoo fraction).
    """
    if editors is None:
        return {}
    groups: dict[str, list] = {}
    if isinstance(editors, Mapping):
        for name, eds in editors.items():
            groups.setdefault(str(name), []).extend([eds] if not isinstance(eds, (list, tuple)) else eds)
    else:
        for ed in editors:
            groups.setdefault(editor_label(ed), []).append(ed)
    out: dict[str, list[EditorRun]] = {}
    for name, eds in groups.items():
        runs: list[EditorRun] = []
        for ed in eds:
            if ed.lam_range is None:
                runs.append(EditorRun(name, ed, None))
            else:
                lo, hi = ed.lam_range
                grid = lambda_grid if lambda_grid else default_lambda_grid(ed.lam_range)
                inside = [float(l) for l in grid if lo <= float(l) <= hi]
                if not inside:
                    raise ValueError(f"no lambda of the grid {list(grid)} lies in {editor_label(ed)}'s range [{lo}, {hi}]")
                runs.extend(EditorRun(name, ed, lam) for lam in inside)
        runs.sort(key=lambda r: r.effective_lam)
        out[name] = runs
    return out


# ==================================================================================================
# evaluation contexts
# ==================================================================================================
@dataclass
class _Split:
    """Models of one zoo split and the task data they are evaluated on, with the originals' outputs."""

    name: str
    models: list
    model_ids: list[str]
    X: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor
    ref: torch.Tensor = None  # (M, N, C) original softmax (float32 storage; metrics in float64)

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.ref = torch.stack([m.predict_proba(self.X) for m in self.models]) if self.models else None


def _score_models(requirement: str, split: _Split, idx: Sequence[int], edited: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-model (metric, JSD, accuracy) of edited modules ``edited[k]`` of ``split.models[idx[k]]``."""
    with torch.no_grad():
        probs = torch.stack([e.predict_proba(split.X).double() for e in edited])  # (B, N, C)
    ref = split.ref[list(idx)].double()
    j = jsd(ref, probs).mean(-1)
    pred = probs.argmax(-1)
    acc = (pred == split.y).double().mean(-1)
    if requirement == "fairness":
        metric = equalized_odds_difference(pred.double(), split.y, split.s)
    elif requirement == "minimise":
        metric = torch.tensor([float(kept_features(e)) for e in edited], dtype=torch.float64)
    elif requirement == "prune":
        metric = torch.tensor([weights_kept(e) for e in edited], dtype=torch.float64)
    else:  # pragma: no cover - other requirements: their own hard metric is not readable off a module
        raise ValueError(f"the protocol does not know how to measure requirement {requirement!r}")
    return metric.numpy(), j.numpy(), acc.numpy()


def _score_outputs(split: _Split, i: int, probs: torch.Tensor, preds: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(EOD, JSD, accuracy) of K post-processed outputs of model ``i``: ``probs`` (K, N, 2), ``preds`` (K, N)."""
    j = jsd(split.ref[i].unsqueeze(0).double(), probs.double()).mean(-1)
    acc = (preds == split.y).double().mean(-1)
    eod = equalized_odds_difference(preds.double(), split.y, split.s)
    return eod.numpy(), j.numpy(), acc.numpy()


# ==================================================================================================
# baselines
# ==================================================================================================
@dataclass
class _Baseline:
    """A baseline swept over ``values``. ``prepare(model)`` is per-model state shared by all strengths (e.g. PFI
    importances); ``apply(model, state, value)`` returns the edited module (or, with ``post=True``, a fitted
    post-processor). ``timing_value`` is the strength timed; ``timing_note`` describes what is timed."""

    name: str
    values: list
    labels: list[str]
    apply: Callable
    prepare: Callable | None = None
    post: bool = False
    timing_value: Any = None
    timing_note: str = ""


def _baselines(requirement: str, names: Sequence[str], task, cfg: ProtocolConfig) -> list[_Baseline]:
    from .. import baselines

    Xe, ye, se = task.split("editing")
    F = task.n_features
    seed = cfg.seed
    out: list[_Baseline] = []

    def mid(vals):
        return vals[len(vals) // 2]

    if requirement == "prune":
        keeps = [float(k) for k in cfg.prune_keeps]
        labels = [f"keep={k:g}" for k in keeps]
        tv = min(keeps, key=lambda k: abs(k - 0.3)) if keeps else None
        table = {
            "Random": lambda m, st, k: baselines.random_prune(m, k, seed=seed),
            "Magnitude": lambda m, st, k: baselines.magnitude_prune(m, k),
            "Grad Importance": lambda m, st, k: baselines.grad_prune(m, k, Xe, ye),
            "SNIP": lambda m, st, k: baselines.snip_prune(m, k, Xe, ye, iterations=cfg.snip_iterations, seed=seed),
            "Lottery Ticket": lambda m, st, k: baselines.lottery_ticket_prune(
                m, k, Xe, ye, iterations=cfg.lottery_iterations, epochs_per_iteration=cfg.lottery_epochs, seed=seed),
        }
        notes = {
            "Grad Importance": "one gradient of the cross-entropy on the editing split, then global top-k",
            "SNIP": f"{cfg.snip_iterations} SNIP rounds on the editing split",
            "Lottery Ticket": f"{cfg.lottery_iterations} rounds x {cfg.lottery_epochs} epochs of masked retraining on the editing split",
        }
        for n in names:
            out.append(_Baseline(n, keeps, labels, table[n], timing_value=tv,
                                 timing_note=f"keep={tv:g}" + (f"; {notes[n]}" if n in notes else "")))
    elif requirement == "minimise":
        fs_keep = list(cfg.dm_n_keep) if cfg.dm_n_keep is not None else list(range(1, F))
        fsr_keep = list(cfg.fs_retrain_n_keep) if cfg.fs_retrain_n_keep is not None else list(_geometric_ints(1, F - 1, 6))

        def pfi(m):
            return baselines.permutation_importance(m, Xe, ye, n_repeats=cfg.pfi_repeats, seed=seed)

        for n in names:
            if n == "FS":
                out.append(_Baseline(
                    n, fs_keep, [f"n_keep={k}" for k in fs_keep], prepare=pfi,
                    apply=lambda m, imp, k: baselines.feature_selection(m, None, None, int(k), importance=imp)[0],
                    timing_value=mid(fs_keep) if fs_keep else None,
                    timing_note=f"PFI ({cfg.pfi_repeats} repeats on the editing split) + masking"))
            elif n == "FS & Retrain":
                out.append(_Baseline(
                    n, fsr_keep, [f"n_keep={k}" for k in fsr_keep], prepare=pfi,
                    apply=lambda m, imp, k: baselines.fs_retrain(m, Xe, int(k), importance=imp, epochs=cfg.fs_retrain_epochs,
                                                         seed=seed)[0],
                    timing_value=mid(fsr_keep) if fsr_keep else None,
                    timing_note=f"PFI + distillation for {cfg.fs_retrain_epochs} epochs on the editing split"
                    + ("" if cfg.fs_retrain_epochs == 100 else " (the paper: 100 epochs)")))
            else:  # pragma: no cover
                raise ValueError(n)
    elif requirement == "fairness":
        def scores(m):
            with torch.no_grad():
                return m.predict_proba(Xe)[:, 1].double()

        def fit(cls, kw):
            def f(m, s_edit, v):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return cls(None, **kw(v)).fit(None, ye, se, scores=s_edit)
            return f

        for n in names:
            if n == "ThresholdOpt":
                b = _Baseline(n, ["equalized_odds"], ["equalized_odds"], fit(baselines.ThresholdOpt, lambda v: {}), prepare=scores,
                              post=True, timing_value="equalized_odds")
            elif n == "CalEqOdds":
                vals = list(cfg.cal_eq_odds_constraints)
                b = _Baseline(n, vals, [f"cost={v}" for v in vals], fit(baselines.CalEqOdds, lambda v: {"cost_constraint": v}),
                              prepare=scores, post=True, timing_value="weighted" if "weighted" in vals else (vals[0] if vals else None))
            elif n == "RejectOption":
                vals = [float(v) for v in cfg.reject_option_bounds]
                b = _Baseline(n, vals, [f"bound={v:g}" for v in vals], fit(baselines.RejectOption, lambda v: {"bound": v}),
                              prepare=scores, post=True, timing_value=mid(vals) if vals else None)
            elif n == "FairCls":
                vals = [float(v) for v in cfg.fair_cls_alphas]
                b = _Baseline(n, vals, [f"alpha={v:g}" for v in vals], fit(baselines.FairCls, lambda v: {"alpha": v}),
                              prepare=scores, post=True, timing_value=mid(vals) if vals else None)
            else:  # pragma: no cover
                raise ValueError(n)
            b.timing_note = (f"{b.timing_value}: the model's scores on the editing split + fitting the post-processor "
                             "(predictions are not timed)")
            out.append(b)
    return out


def _eval_baseline_model(b: _Baseline, requirement: str, sp: _Split, local: int, seed_index: int,
                         cfg: ProtocolConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(metric, JSD, accuracy) of baseline ``b`` at every strength on model ``sp.models[local]``."""
    model = sp.models[local]
    state = b.prepare(model) if b.prepare is not None else None
    if b.post:
        with torch.no_grad():
            s_split = model.predict_proba(sp.X)[:, 1].double()
        probs, preds = [], []
        for v in b.values:
            pp = b.apply(model, state, v)
            probs.append(pp.predict_proba(None, sp.s, scores=s_split))
            preds.append(pp.predict(None, sp.s, scores=s_split, seed=cfg.seed * 100_003 + seed_index))
        return _score_outputs(sp, local, torch.stack(probs), torch.stack(preds))
    edited = [b.apply(model, state, v) for v in b.values]
    return _score_models(requirement, sp, [local] * len(b.values), edited)


# ==================================================================================================
# units of work: what one process evaluates (spread over processes, results gathered in unit order)
# ==================================================================================================
@dataclass(frozen=True)
class _Unit:
    """An independent piece of the protocol: an editor run on a batch of one split's models (``kind="editor"``,
    run ``run`` of ``method``, models ``lo:hi``; the batches of a one-process run), or a baseline at every
    strength on one model (``kind="baseline"``, model ``lo``)."""

    kind: str
    method: str
    split: str
    run: int
    lo: int
    hi: int


@dataclass
class _Work:
    """Everything a process needs to evaluate units; built the same way on every process."""

    requirement: str
    task_name: str
    runs: dict[str, list[EditorRun]]
    baselines: dict[str, _Baseline]
    splits: dict[str, _Split]
    data_splits: dict[str, str]  # zoo split -> task split its models are evaluated on
    cfg: ProtocolConfig
    units: list[_Unit] = field(default_factory=list)

    def __post_init__(self) -> None:
        bs = max(1, int(self.cfg.edit_batch_size))
        units = []
        for name, rs in self.runs.items():
            for sname, sp in self.splits.items():
                for k in range(len(rs)):
                    for lo in range(0, len(sp.models), bs):
                        units.append(_Unit("editor", name, sname, k, lo, min(len(sp.models), lo + bs)))
        for name in self.baselines:
            for sname, sp in self.splits.items():
                units.extend(_Unit("baseline", name, sname, 0, i, i + 1) for i in range(len(sp.models)))
        self.units = units


def _evaluate_unit(work: _Work, unit: _Unit) -> dict[str, Any]:
    """``{"values": (3, n) metric / JSD / accuracy, "edit_seconds", "seconds"}`` of one unit; editor units: one
    column per model of the batch; baseline units: one column per strength."""
    t0 = time.perf_counter()
    sp = work.splits[unit.split]
    edit_seconds = 0.0
    if unit.kind == "editor":
        run = work.runs[unit.method][unit.run]
        chunk = list(range(unit.lo, unit.hi))
        te = time.perf_counter()
        edited = run.edit_many([sp.models[i] for i in chunk], batch_size=max(1, int(work.cfg.edit_batch_size)))
        edit_seconds = time.perf_counter() - te
        values = _score_models(work.requirement, sp, chunk, edited)
    else:
        values = _eval_baseline_model(work.baselines[unit.method], work.requirement, sp, unit.lo, unit.lo, work.cfg)
    return {"values": np.stack(values).tolist(), "edit_seconds": edit_seconds, "seconds": time.perf_counter() - t0}


def _evaluate_share(work: _Work, progress: bool) -> list[dict[str, Any]]:
    """Rank code: this process's share of ``work.units`` (:func:`hubedit.distributed.share`), then every
    process's results gathered; returns the results of all units in unit order (on every process). A unit
    that fails on one process fails every process (:func:`hubedit.distributed.all_succeed`)."""
    from .. import distributed

    rank, size = distributed.world()
    mine = distributed.share(len(work.units), rank, size)
    bar = _bar(sum(work.units[k].hi - work.units[k].lo for k in mine), "protocol", progress and rank == 0)
    done = []
    try:
        with distributed.all_succeed("evaluation protocol"):
            for k in mine:
                u = work.units[k]
                bar.set_description(f"{u.method} [{u.split}]", refresh=False)
                done.append((k, _evaluate_unit(work, u)))
                bar.update(u.hi - u.lo)
    finally:
        bar.close()
    if size == 1:
        return [v for _, v in done]
    by_unit = {k: v for part in distributed.all_gather(done) for k, v in part}
    missing = [k for k in range(len(work.units)) if k not in by_unit]
    if missing:  # pragma: no cover - every unit is some rank's share
        raise RuntimeError(f"units {missing[:5]} of the protocol were evaluated by no process")
    return [by_unit[k] for k in range(len(work.units))]


def _collect(work: _Work, values: Sequence[Mapping[str, Any]]) -> tuple[dict[str, MethodResult], dict[str, float], dict[str, float]]:
    """Method results (editors, then baselines, in the order of a one-process run) from the units' results;
    compute seconds per method (summed over units) and editors' batched edit seconds per model."""
    per: dict[tuple[str, str], np.ndarray] = {}
    seconds = {name: 0.0 for name in [*work.runs, *work.baselines]}
    edit_s = {name: 0.0 for name in work.runs}
    edit_n = {name: 0 for name in work.runs}
    for u, v in zip(work.units, values):
        vals = np.asarray(v["values"], dtype=np.float64)
        M = len(work.splits[u.split].models)
        if u.kind == "editor":
            arr = per.setdefault((u.method, u.split), np.full((len(work.runs[u.method]), 3, M), np.nan))
            arr[u.run, :, u.lo:u.hi] = vals
            edit_s[u.method] += float(v["edit_seconds"])
            edit_n[u.method] += u.hi - u.lo
        else:
            arr = per.setdefault((u.method, u.split), np.full((3, len(work.baselines[u.method].values), M), np.nan))
            arr[:, :, u.lo] = vals
        seconds[u.method] += float(v["seconds"])
    methods: dict[str, MethodResult] = {}
    for name, rs in work.runs.items():
        res = {}
        for sname in work.splits:
            arr = per.get((name, sname))
            runs = [] if arr is None else list(arr)
            res[sname] = ([(r[0].mean(), r[1].mean()) for r in runs], [r[2].mean() for r in runs])
        methods[name] = MethodResult(name, "editor", [r.label for r in rs], res["validation"][0], res["test"][0],
                                     res["validation"][1], res["test"][1])
    for name, b in work.baselines.items():
        res = {}
        for sname in work.splits:
            out = per[(name, sname)]
            res[sname] = (np.stack([out[0].mean(1), out[1].mean(1)], 1), out[2].mean(1))
        methods[name] = MethodResult(name, "baseline", list(b.labels), res["validation"][0], res["test"][0],
                                     res["validation"][1], res["test"][1])
    batched = {name: edit_s[name] / max(edit_n[name], 1) for name in work.runs}
    return methods, seconds, batched


def _editor_to_plain(editor) -> dict[str, Any]:
    """An editor as plain data (settings JSON, safetensors bytes) for a helper process."""
    from safetensors.torch import save

    from ..editor import Editor

    if not isinstance(editor, Editor):
        raise TypeError(f"workers > 1 evaluates hubedit Editor objects only (they are sent to the helper processes "
                        f"as settings and safetensors); got {type(editor).__name__}")
    weights = {k: v.detach().contiguous().clone() for k, v in editor.state_dict().items()}
    return {"settings": json.dumps(editor.settings, default=str), "weights": save(weights),
            "source": json.dumps(dict(editor.source), default=str)}


def _editor_from_plain(d: Mapping[str, Any]):
    from safetensors.torch import load

    from ..editor import Editor

    editor = Editor(**json.loads(d["settings"]))
    editor.load_state_dict(load(d["weights"]), strict=True)
    editor.source = json.loads(d["source"])
    return editor.eval()


def _work_to_plain(work: _Work) -> dict[str, Any]:
    """``work`` as plain data (strings, numbers, bytes) for :func:`_protocol_helper`: models as safetensors bytes,
    editors as settings + safetensors, task data reloaded by name."""
    editors: list = []
    index: dict[int, int] = {}
    runs = {}
    for name, rs in work.runs.items():
        runs[name] = []
        for r in rs:
            if id(r.editor) not in index:
                index[id(r.editor)] = len(editors)
                editors.append(_editor_to_plain(r.editor))
            runs[name].append({"editor": index[id(r.editor)], "lam": r.lam})
    return {
        "requirement": work.requirement, "task": work.task_name, "config": work.cfg.to_dict(),
        "baselines": list(work.baselines), "editors": editors, "runs": runs,
        "splits": {s: {"data": work.data_splits[s], "model_ids": list(sp.model_ids),
                       "models": [m.to_bytes() for m in sp.models]} for s, sp in work.splits.items()},
    }


def _work_from_plain(d: Mapping[str, Any]) -> _Work:
    from ..mlp import MLP
    from ..tasks import load_task

    task = load_task(d["task"])
    cfg = ProtocolConfig.from_dict(d["config"])
    editors = [_editor_from_plain(e) for e in d["editors"]]
    runs = {name: [EditorRun(name, editors[r["editor"]], r["lam"]) for r in rs] for name, rs in d["runs"].items()}
    baselines = {b.name: b for b in _baselines(d["requirement"], d["baselines"], task, cfg)}
    splits, data_splits = {}, {}
    for sname, s in d["splits"].items():
        X, y, sens = task.split(s["data"])
        models = [MLP.from_bytes(blob, source=f"{sname} model {i}") for i, blob in enumerate(s["models"])]
        splits[sname] = _Split(sname, models, list(s["model_ids"]), X, y, sens)
        data_splits[sname] = s["data"]
    return _Work(d["requirement"], d["task"], runs, baselines, splits, data_splits, cfg)


def _protocol_helper(plain: Mapping[str, Any]) -> None:
    """Helper process of ``workers > 1`` (:func:`hubedit.distributed.local_processes`): the same rank code as
    every other process, on ``work`` rebuilt from plain data."""
    warnings.simplefilter("ignore")
    _evaluate_share(_work_from_plain(plain), progress=False)


def _resolve_baselines(requirement: str, baselines) -> list[str]:
    known = BASELINES.get(requirement, ())
    if baselines is None or baselines == "all":
        return list(known)
    out = []
    for b in baselines:
        name = BASELINE_KEYS.get(str(b).lower(), str(b))
        if name not in known:
            raise ValueError(
                f"unknown baseline {b!r} for requirement {requirement!r}; known: "
                + ", ".join(f"{k} ({v})" for k, v in BASELINE_KEYS.items() if v in known)
            )
        if name not in out:
            out.append(name)
    return [n for n in known if n in out]  # the paper's order, whatever order they were given in


# ==================================================================================================
# the protocol
# ==================================================================================================
def _subset(split, max_models: int | None, seed: int) -> list[int]:
    n = len(split)
    if max_models is None or n <= max_models:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=g)[: int(max_models)].tolist())


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="model")


def run_protocol(
    zoo,
    requirement: str | None = None,
    editors=None,
    *,
    baselines: Sequence[str] | str | None = "all",
    config: ProtocolConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> ProtocolResult:
    """Evaluate ``editors`` and the requirement's ``baselines`` on ``zoo`` (see the module docstring).

    Args:
        zoo: a :class:`~hubedit.zoo.Zoo` (its validation and test splits are used).
        requirement: ``"minimise"``, ``"fairness"`` or ``"prune"``; default: the editors' requirement.
        editors: editors (per-lambda and/or lambda-conditioned), or ``{method name: [editors]}``; see
            :func:`editor_runs`.
        baselines: ``"all"`` (default), None (same), ``[]`` (none), or names / keys (:data:`BASELINE_KEYS`).
        config: a :class:`ProtocolConfig`; ``**options`` override its fields (e.g. ``max_models=10``).
        progress: tqdm progress bars (rank 0 only).

    Processes: under ``torchrun`` / ``accelerate launch --multi_gpu --num_processes N [--num_machines M ...]``
    every process calls this with the same arguments; the units (an editor run on a batch of models, a
    baseline on one model) are shared out round-robin, gathered, and every process returns the same result,
    identical (numbers and order) to a one-process run with the same torch threads per process (training
    baselines round differently on different numbers of threads; launchers set ``OMP_NUM_THREADS=1``).
    ``config.workers = N`` runs the same rank code in N local processes (this one and N - 1 helpers with this
    one's torch threads). Timing runs in rank 0 alone, after the units, while the other processes wait.
    Writing files is the caller's, on rank 0 (:func:`hubedit.distributed.is_main_process`).
    """
    from .. import distributed
    from ..requirements import get_requirement

    cfg = config or ProtocolConfig()
    if options:
        unknown = set(options) - set(ProtocolConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown protocol options {sorted(unknown)}")
        cfg = ProtocolConfig.from_dict({**cfg.to_dict(), **options})
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise ValueError(f"workers must be a whole number of processes >= 1, got {cfg.workers!r}")
    runs = editor_runs(editors, cfg.lambda_grid)
    reqs = {r.editor.settings["requirement"] for rs in runs.values() for r in rs}
    if requirement is None:
        if len(reqs) != 1:
            raise ValueError(f"give requirement= (the editors have requirements {sorted(reqs) or 'none'})")
        requirement = reqs.pop()
    elif reqs - {requirement}:
        raise ValueError(f"editors for {sorted(reqs)} cannot be evaluated for requirement {requirement!r}")
    tasks = {r.editor.task for rs in runs.values() for r in rs}
    if tasks - {zoo.task_name}:
        raise ValueError(f"editors for task(s) {sorted(tasks)} cannot edit the {zoo.task_name!r} zoo")
    req = get_requirement(requirement)
    task = zoo.task
    x_scale = float(req.metric_scale(task.n_features))
    base_names = _resolve_baselines(requirement, baselines)
    t_start = time.perf_counter()

    splits = {}
    for zname, dname in (("validation", "evaluation"), ("test", "test")):
        zs = zoo[zname]
        idx = _subset(zs, cfg.max_models, cfg.seed)
        X, y, s = task.split(dname)
        splits[zname] = _Split(zname, [zs[i].to_module() for i in idx], [zs[i].model_id for i in idx], X, y, s)
    if not splits["test"].models or not splits["validation"].models:
        raise ValueError(f"the zoo needs validation and test models; got {len(splits['validation'].models)} and "
                         f"{len(splits['test'].models)}")

    data_splits = {"validation": "evaluation", "test": "test"}
    work = _Work(requirement, task.name, runs, {b.name: b for b in _baselines(requirement, base_names, task, cfg)},
                 splits, data_splits, cfg)

    # --- editors (batches of models) and baselines (one model each): units spread over the processes ---------
    workers = int(cfg.workers)
    if workers > 1 and distributed.launched_world_size() > 1:  # checked before joining the launched world
        raise ValueError(f"workers={workers} under a launcher of {distributed.launched_world_size()} processes: the "
                         "launched processes already share the work; use workers=1 there (or run without the launcher)")
    rank, size = distributed.world()
    if workers > 1 and size > 1:
        raise ValueError(f"workers={workers} inside a torch.distributed group of {size} processes: they already share "
                         "the work; use workers=1 there")
    if workers > 1 and len(work.units) > 1:
        # helpers get this process's torch threads: trained baselines (Lottery Ticket) round differently on
        # different numbers of threads, and the numbers must be those of workers=1
        with distributed.local_processes(workers, _protocol_helper, (_work_to_plain(work),),
                                         threads=torch.get_num_threads()):
            values = _evaluate_share(work, progress)
    else:
        values = _evaluate_share(work, progress)
    methods, seconds, batched = _collect(work, values)
    processes = size if size > 1 else (workers if len(work.units) > 1 else 1)

    # --- rank 0 alone: timing (seconds to edit one model, every method; the other processes wait, so the machine
    # is as quiet as in a one-process run), the originals' scores and the run's info; then sent to every rank ----
    tail = None
    if rank == 0:
        timing: dict[str, TimingResult] = {}
        timing_notes: dict[str, str] = {}
        timed = splits["test"].models[: max(0, int(cfg.timing_models))]
        if timed:
            for name, rs in runs.items():
                r = rs[len(rs) // 2]
                timing[name] = time_per_model(r.edit, timed, warmup=1)
                timing_notes[name] = (f"{r.label}: Editor.edit of one model (graph build, forward pass, write-back); "
                                      f"in batches of {cfg.edit_batch_size} (edit_many): {batched[name]:.2e} s/model")
            for b in work.baselines.values():
                if b.timing_value is None:
                    continue

                def fn(model, b=b):
                    state = b.prepare(model) if b.prepare is not None else None
                    return b.apply(model, state, b.timing_value)

                timing[b.name] = time_per_model(fn, timed, warmup=1)
                timing_notes[b.name] = b.timing_note or str(b.timing_value)

        original = {}
        for sname, key in (("validation", "val"), ("test", "test")):
            sp = splits[sname]
            m, _, acc = _score_models(requirement, sp, range(len(sp.models)), sp.models)
            original[f"{key}_metric"], original[f"{key}_accuracy"] = float(m.mean()), float(acc.mean())

        info = {
            "zoo": _zoo_label(zoo),
            "zoo_source": dict(zoo.source),
            "zoo_info": {k: zoo.info.get(k) for k in ("preset", "seed", "n_configs") if k in zoo.info},
            "n_val_models": len(splits["validation"].models),
            "n_test_models": len(splits["test"].models),
            "n_val_points": int(len(splits["validation"].y)),
            "n_test_points": int(len(splits["test"].y)),
            "n_editing_points": int(len(task.split("editing")[1])),
            "val_model_ids": splits["validation"].model_ids,
            "test_model_ids": splits["test"].model_ids,
            "original": original,
            "config": cfg.to_dict(),
            "editors": {name: [{"lam": r.effective_lam, "source": dict(r.editor.source) or None,
                                "variant": r.editor.settings["variant"],
                                "lam_range": r.editor.settings.get("lam_range")} for r in rs] for name, rs in runs.items()},
            "processes": processes,
            "method_seconds": seconds,
            "editor_batched_seconds_per_model": batched,
            "seconds": time.perf_counter() - t_start,
            "machine": machine_info(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        tail = {"timing": {n: t.to_dict() for n, t in timing.items()}, "timing_notes": timing_notes, "info": info}
    if size > 1:
        tail = distributed.broadcast(tail)
    return ProtocolResult(task.name, requirement, req.metric_name, req.metric_label, x_scale, methods,
                          {n: TimingResult(**t) for n, t in tail["timing"].items()}, tail["timing_notes"], tail["info"])


def _zoo_label(zoo) -> str:
    src = zoo.source or {}
    if "repo_id" in src:
        return f"{src['repo_id']}@{str(src.get('revision', ''))[:10]}"
    if "path" in src:
        return str(src["path"])
    return f"{zoo.task_name} zoo"


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch version and device (for reports)."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        from ..version import __version__

        info["hubedit"] = __version__
    except Exception:  # pragma: no cover
        pass
    return info
