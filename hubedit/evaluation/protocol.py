"""The paper's evaluation protocol (section 5, A.4) for one setting (task, requirement).

For every method -- trained editors and the requirement's baselines -- and every strength of the method
(an editor's lambda, a pruning ``keep``, a number of kept features, a fairness tolerance ...), the protocol
computes the mean requirement metric, mean JSD to the original model, mean accuracy and mean label disagreement
with the original model (fraction of points whose predicted label differs from the original's)

* over the zoo's **validation** models, on the task's *evaluation* split (model selection), and
* over the zoo's **test** models, on the task's *test* split (what is reported).

Points are chosen on validation (the Pareto front of a method's validation points) and reported on test
(:func:`~hubedit.metrics.pareto.select_on_validation`); the chosen test points form the method's front.
Hypervolumes use the reference point ``(1, ln 2)`` with the requirement axis divided by the requirement's
``metric_scale`` (number of features for data minimisation, 1 otherwise). Fairness is also reported on two more
fronts (:data:`FRONT_AXES`): EOD against label disagreement and EOD against error = 1 - accuracy (every axis is
minimised; reference point (1, 1)), because the post-processors output labels, whose JSD to the original's soft
probabilities has a floor.

A point whose mean accuracy is at or below the majority-class accuracy of its split (recorded per split) is
*degenerate* -- a constant classifier does as well: marked in tables and plots; hypervolumes are reported with
and without degenerate points, and "best" claims use the latter. Points with a non-finite value are left out of
the fronts and counted per method and split in the report.

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

import functools
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

from ..metrics.scores import LN2, equalized_odds_difference, jsd
from ..metrics.pareto import DEFAULT_REF, dominance_table, hypervolume, pareto_front, to_markdown
from ..metrics.timing import TimingResult, time_per_model, timing_table

__all__ = [
    "SETTINGS",
    "BASELINES",
    "BASELINE_KEYS",
    "EDITOR_LABELS",
    "FRONT_AXES",
    "REQUIREMENT_AXES",
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
    "majority_accuracy",
    "axis_plot_name",
    "label_jsd",
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

    ``max_models`` caps the number of validation and of test models (a subset drawn with ``subset_seed``, for quick
    runs). ``subset_seed`` is apart from ``seed`` (which seeds the baselines: Random, SNIP, Lottery Ticket,
    FS & Retrain, permutation importance, the randomised post-processors' labels) so that runs with different
    ``seed`` evaluate the same models and their spread is that of the methods, not of which models were drawn;
    configurations written before it existed load with ``subset_seed=0`` (their models, drawn with ``seed``, are
    recorded in the result's ``val_model_ids`` / ``test_model_ids``). ``above_majority`` evaluates only the zoo's
    checkpoints whose own accuracy on the task's editing split beats that split's majority class (judged before
    any edit and on data apart from the reported splits; drawn before ``max_models``): on a zoo whose weak
    checkpoints pull the mean accuracy to a constant classifier's, the models worth editing.
    ``dm_n_keep`` (FS) defaults to all of ``1..F-1``; ``fs_retrain_n_keep`` (FS & Retrain) defaults to FS's counts
    (``dm_n_keep``), so that both baselines have a point at every feature count (give it to run fewer: retraining
    is the expensive baseline). ``fs_retrain_epochs`` is 100 as
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
    subset_seed: int = 0
    above_majority: bool = False

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProtocolConfig":
        """From :meth:`to_dict`; unknown keys are ignored and missing ones take their defaults (older JSON)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


def default_lambda_grid(lam_range: Sequence[float], n: int = 7) -> tuple[float, ...]:
    """``n`` log-spaced lambdas covering ``lam_range`` (ends included)."""
    lo, hi = math.log(float(lam_range[0])), math.log(float(lam_range[1]))
    return tuple(float(f"{math.exp(lo + (hi - lo) * k / (n - 1)):.6g}") for k in range(n)) if n > 1 else (float(lam_range[0]),)


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
#: Second axis of a front (the first is the requirement metric); every axis is minimised (as in
#: :mod:`hubedit.metrics.pareto`): name -> (label, y of the hypervolume's reference point).
FRONT_AXES: dict[str, tuple[str, float]] = {
    "jsd": ("mean JSD to the original's probabilities", LN2),
    "disagreement": ("label disagreement with the original", 1.0),
    "error": ("error (1 - accuracy)", 1.0),
}

#: Fronts each requirement is reported on (default: JSD only). Fairness post-processors output hard or
#: randomised labels, whose JSD to the original's soft probabilities has a floor; label disagreement and error
#: compare every method on its labels.
REQUIREMENT_AXES: dict[str, tuple[str, ...]] = {"fairness": ("jsd", "disagreement", "error")}

_SPLIT_KEYS = {"validation": "val", "val": "val", "test": "test"}


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1, 2) if len(x) else np.zeros((0, 2))


def _check_axis(axis: str) -> str:
    if axis not in FRONT_AXES:
        raise ValueError(f"unknown front axis {axis!r}; known: {', '.join(FRONT_AXES)}")
    return axis


def _split_key(split: str) -> str:
    if split not in _SPLIT_KEYS:
        raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
    return _SPLIT_KEYS[split]


def majority_accuracy(labels: Any) -> float:
    """Accuracy of the constant classifier that predicts the most frequent label of ``labels``."""
    y = np.asarray(labels).reshape(-1)
    if len(y) == 0:
        raise ValueError("majority_accuracy needs at least one label, got none")
    return float(np.unique(y, return_counts=True)[1].max() / len(y))


def label_jsd(probs: torch.Tensor) -> torch.Tensor:
    """Mean JSD (nats) between each model's probabilities ``probs`` (..., N, C) and its own hard labels (one-hot
    argmax), over the N points: shape ``probs.shape[:-2]``.

    For a binary task the JSD between ``p`` and a one-hot label is smallest for the label of ``p``'s argmax, so
    this is the floor of the JSD to ``p`` of any method that outputs labels (0/1 probabilities): the post-processing
    fairness baselines' deterministic rules sit on or above it."""
    p = probs.double()
    hard = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).double()
    return jsd(p, hard).mean(-1)


@functools.lru_cache(maxsize=None)
def _task_majority(task: str) -> tuple[float, float] | None:
    """(validation, test) majority-class accuracy of ``task``'s evaluation and test splits (results that did not
    record it); None when the task is not one hubedit ships."""
    from ..errors import UnknownTaskError
    from ..tasks import load_task

    try:
        t = load_task(task)
    except UnknownTaskError:
        return None
    return majority_accuracy(t.split("evaluation")[1].numpy()), majority_accuracy(t.split("test")[1].numpy())


@dataclass
class MethodResult:
    """One method's runs (one per strength): validation and test points ``(metric, JSD)``, accuracies, label
    disagreement with the original model and the indices of the runs chosen on validation (JSD front).

    ``val_disagreement`` / ``test_disagreement`` (fraction of points whose predicted label differs from the
    original model's, mean over models) are None in results written before they were recorded.
    ``nonfinite_model_results``: ``{"validation": n, "test": n}``, the (run, model) results with a non-finite
    value (they make their run's mean non-finite; such points are left out of every front and counted in reports).
    """

    name: str
    kind: str  # "editor" or "baseline"
    strengths: list[str]
    val: np.ndarray  # (K, 2) mean metric, mean JSD on validation models / evaluation split
    test: np.ndarray  # (K, 2) same on test models / test split
    val_accuracy: np.ndarray  # (K,)
    test_accuracy: np.ndarray  # (K,)
    chosen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    notes: list[str] = field(default_factory=list)
    val_disagreement: np.ndarray | None = None  # (K,) or None (not recorded)
    test_disagreement: np.ndarray | None = None
    nonfinite_model_results: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.val, self.test = _arr(self.val), _arr(self.test)
        if len(self.val) != len(self.test):
            raise ValueError(f"{self.name}: val and test must describe the same runs, got {len(self.val)} and "
                             f"{len(self.test)} rows")
        self.val_accuracy = np.asarray(self.val_accuracy, dtype=np.float64).reshape(-1)
        self.test_accuracy = np.asarray(self.test_accuracy, dtype=np.float64).reshape(-1)
        for attr in ("val_disagreement", "test_disagreement"):
            v = getattr(self, attr)
            if v is not None:
                v = np.asarray(v, dtype=np.float64).reshape(-1)
                if len(v) != len(self.val):
                    raise ValueError(f"{self.name}: {attr} must have one value per run ({len(self.val)}), got {len(v)}")
                setattr(self, attr, v)
        if len(self.chosen) == 0 and len(self.val):
            self.chosen = self._validation_front("jsd", None)
        self.chosen = np.asarray(self.chosen, dtype=np.intp)
        self.nonfinite_model_results = {str(k): int(v) for k, v in dict(self.nonfinite_model_results).items()}

    @property
    def test_front(self) -> np.ndarray:
        """Test points of the runs on the validation Pareto front (ordered by validation metric)."""
        return self.test[self.chosen]

    @property
    def val_front(self) -> np.ndarray:
        return self.val[self.chosen]

    @property
    def has_disagreement(self) -> bool:
        """Whether label disagreement was recorded (results written before it was are loaded without it)."""
        return self.val_disagreement is not None and self.test_disagreement is not None

    def accuracy(self, split: str = "test") -> np.ndarray:
        """(K,) mean accuracy of every run on ``split`` ("validation" or "test")."""
        return self.val_accuracy if _split_key(split) == "val" else self.test_accuracy

    def points(self, axis: str = "jsd", split: str = "test") -> np.ndarray:
        """(K, 2) points ``(metric, y)`` of every run on ``split``; ``y`` is JSD, label disagreement (NaN where not
        recorded) or error = 1 - accuracy (:data:`FRONT_AXES`)."""
        key = _split_key(split)
        base = self.val if key == "val" else self.test
        if _check_axis(axis) == "jsd":
            return base.copy()
        if axis == "disagreement":
            y = getattr(self, f"{key}_disagreement")
            y = np.full(len(base), np.nan) if y is None else y
        else:
            y = 1.0 - self.accuracy(split)
        return np.column_stack([base[:, 0], y]) if len(base) else np.zeros((0, 2))

    def finite(self, axis: str = "jsd", split: str = "test") -> np.ndarray:
        """(K,) bool: runs whose ``(metric, y)`` point on ``split`` is finite."""
        return np.isfinite(self.points(axis, split)).all(1)

    def nonfinite_points(self, axis: str = "jsd") -> dict[str, int]:
        """``{"validation": n, "test": n}``: runs whose point is non-finite (left out of the fronts of ``axis``)."""
        return {s: int((~self.finite(axis, s)).sum()) for s in ("validation", "test")}

    def _validation_front(self, axis: str, eligible: np.ndarray | None) -> np.ndarray:
        val = self.points(axis, "validation")
        ok = np.isfinite(val).all(1)
        if eligible is not None:
            ok &= np.asarray(eligible, dtype=bool)
        val[~ok] = np.nan  # never on the front
        return pareto_front(val)

    def chosen_for(self, axis: str = "jsd", eligible: np.ndarray | None = None) -> np.ndarray:
        """Indices of the runs on the validation Pareto front of ``(metric, axis)`` among the runs with a finite
        validation point (and ``eligible[k]`` true, when given), ordered by validation metric. ``"jsd"`` without
        ``eligible`` is :attr:`chosen`."""
        if axis == "jsd" and eligible is None:
            return self.chosen
        return self._validation_front(axis, eligible)

    def to_dict(self) -> dict:
        def clean(a):
            return [None if (isinstance(v, float) and not math.isfinite(v)) else v for v in np.asarray(a).reshape(-1).tolist()]

        return {
            "name": self.name,
            "kind": self.kind,
            "strengths": list(self.strengths),
            "val": [clean(r) for r in self.val],
            "test": [clean(r) for r in self.test],
            "val_accuracy": clean(self.val_accuracy),
            "test_accuracy": clean(self.test_accuracy),
            "val_disagreement": None if self.val_disagreement is None else clean(self.val_disagreement),
            "test_disagreement": None if self.test_disagreement is None else clean(self.test_disagreement),
            "chosen": [int(i) for i in self.chosen],
            "notes": list(self.notes),
            "nonfinite_model_results": dict(self.nonfinite_model_results),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MethodResult":
        """From :meth:`to_dict` (also results written before disagreement and non-finite counts were recorded)."""
        def un(a):
            return np.asarray([np.nan if v is None else v for v in a], dtype=np.float64)

        def opt(key):
            return None if d.get(key) is None else un(d[key])

        return cls(
            name=d["name"], kind=d["kind"], strengths=list(d["strengths"]),
            val=np.asarray([un(r) for r in d["val"]]).reshape(-1, 2) if d["val"] else np.zeros((0, 2)),
            test=np.asarray([un(r) for r in d["test"]]).reshape(-1, 2) if d["test"] else np.zeros((0, 2)),
            val_accuracy=un(d["val_accuracy"]), test_accuracy=un(d["test_accuracy"]),
            chosen=np.asarray(d["chosen"], dtype=np.intp), notes=list(d.get("notes", [])),
            val_disagreement=opt("val_disagreement"), test_disagreement=opt("test_disagreement"),
            nonfinite_model_results=dict(d.get("nonfinite_model_results") or {}),
        )


def axis_plot_name(plot_name: str, axis: str) -> str:
    """File name of the plot of front ``axis`` next to the JSD plot ``plot_name``: ``pareto.png`` ->
    ``pareto-disagreement.png`` (the JSD plot keeps its name)."""
    if _check_axis(axis) == "jsd":
        return plot_name
    p = Path(plot_name)
    return str(p.with_name(f"{p.stem}-{axis}{p.suffix}"))


@dataclass
class ProtocolResult:
    """Everything the protocol measured for one setting; tables, plot and JSON from it.

    Fronts (:attr:`axes`): requirement metric against JSD to the original's probabilities (every setting) and, for
    fairness, against label disagreement with the original and against error (1 - accuracy); every axis is
    minimised. A point is *degenerate* when its mean accuracy is at or below the majority-class accuracy of its
    split (:attr:`majority_accuracy`): a constant classifier does as well. Hypervolumes are given with all points
    and without degenerate points (``exclude_degenerate=True``: runs chosen on validation among those not
    degenerate on validation, test points that are degenerate on test left out); "best" claims
    (:meth:`comparison`) use the latter. Non-finite points are left out of every front and counted
    (:meth:`nonfinite_table`).
    """

    task: str
    requirement: str
    metric_name: str
    metric_label: str
    x_scale: float
    methods: dict[str, MethodResult]
    timing: dict[str, TimingResult] = field(default_factory=dict)
    timing_notes: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    #: accuracy <= majority + this counts as "at or below" (float noise of a mean over models)
    DEGENERATE_TOLERANCE = 1e-9

    # --- derived tables -------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return f"{_SETTING_TITLES.get(self.requirement, self.requirement)} on {self.task.capitalize()}"

    @property
    def axes(self) -> tuple[str, ...]:
        """Second axes of the fronts this setting is reported on (:data:`REQUIREMENT_AXES`); ``"disagreement"``
        only where some method recorded it."""
        axes = REQUIREMENT_AXES.get(self.requirement, ("jsd",))
        if not any(m.has_disagreement for m in self.methods.values()):
            axes = tuple(a for a in axes if a != "disagreement")
        return axes

    @property
    def majority_accuracy(self) -> dict[str, float] | None:
        """``{"validation": a, "test": b}``: accuracy of the majority class of the task's labels on the data each
        zoo split is evaluated on (recorded by :func:`run_protocol`; for older results, computed from the shipped
        task data); None when unknown (then no point is marked degenerate)."""
        rec = self.info.get("majority_accuracy")
        if rec:
            return {"validation": float(rec["validation"]), "test": float(rec["test"])}
        computed = _task_majority(self.task)
        return None if computed is None else {"validation": computed[0], "test": computed[1]}

    def label_jsd_floor(self, split: str = "test", zoo: Any = None) -> float | None:
        """Mean over the ``split`` models of the JSD between the original model's probabilities and its own hard
        labels (:func:`label_jsd`): the floor of a label-outputting method's JSD. Recorded by :func:`run_protocol`;
        for older results computed from ``zoo`` (the models recorded in ``info``, on the data of ``split``) when
        given; else None."""
        key = _split_key(split)
        recorded = self.info.get("original", {}).get(f"{key}_label_jsd")
        if recorded is not None:
            return float(recorded)
        ids = self.info.get(f"{key}_model_ids")
        if zoo is None or not ids:
            return None
        from ..tasks import load_task

        wanted = set(ids)
        models = {c.model_id: c.to_module() for c in zoo["validation" if key == "val" else "test"] if c.model_id in wanted}
        missing = wanted - set(models)
        if missing:
            raise ValueError(f"the zoo has no {split} checkpoint(s) {sorted(missing)[:3]} of this result: a different "
                             f"zoo than the one evaluated ({self.info.get('zoo', '?')})")
        X = load_task(self.task).split("evaluation" if key == "val" else "test")[0]
        with torch.no_grad():
            probs = torch.stack([models[i].predict_proba(X) for i in ids])
        return float(label_jsd(probs).mean())

    def degenerate(self, name: str, split: str = "test") -> np.ndarray:
        """(K,) bool: runs of method ``name`` whose mean accuracy on ``split`` is at or below the majority-class
        accuracy (all False when that is unknown; a non-finite accuracy is not degenerate but non-finite)."""
        m = self.methods[name]
        acc = m.accuracy(split)
        maj = self.majority_accuracy
        if maj is None:
            return np.zeros(len(acc), dtype=bool)
        with np.errstate(invalid="ignore"):
            return acc <= maj["validation" if _split_key(split) == "val" else "test"] + self.DEGENERATE_TOLERANCE

    def degenerate_either(self, name: str) -> np.ndarray:
        """(K,) bool: runs of method ``name`` degenerate on validation or on test."""
        return self.degenerate(name, "validation") | self.degenerate(name, "test")

    def front_runs(self, name: str, axis: str = "jsd", *, exclude_degenerate: bool = False) -> np.ndarray:
        """Indices of the runs of method ``name`` on its test front of ``axis``: chosen on validation (among runs
        not degenerate on validation with ``exclude_degenerate``), then those with a non-finite test point (and,
        with ``exclude_degenerate``, those degenerate on test) left out."""
        m = self.methods[name]
        eligible = ~self.degenerate(name, "validation") if exclude_degenerate else None
        idx = m.chosen_for(axis, eligible)
        keep = m.finite(axis, "test")[idx]
        if exclude_degenerate:
            keep &= ~self.degenerate(name, "test")[idx]
        return idx[keep]

    def front(self, name: str, axis: str = "jsd", *, exclude_degenerate: bool = False) -> np.ndarray:
        """(P, 2) test points ``(metric, y)`` of :meth:`front_runs`."""
        return self.methods[name].points(axis, "test")[self.front_runs(name, axis, exclude_degenerate=exclude_degenerate)]

    def fronts_for(self, axis: str = "jsd", *, exclude_degenerate: bool = False) -> dict[str, np.ndarray]:
        """:meth:`front` of every method."""
        return {name: self.front(name, axis, exclude_degenerate=exclude_degenerate) for name in self.methods}

    @property
    def fronts(self) -> dict[str, np.ndarray]:
        """Chosen test points ``(metric, JSD)`` of every method (points chosen on validation, reported on test;
        non-finite points left out)."""
        return self.fronts_for("jsd")

    @property
    def editor_methods(self) -> list[str]:
        return [n for n, m in self.methods.items() if m.kind == "editor"]

    @property
    def baseline_methods(self) -> list[str]:
        return [n for n, m in self.methods.items() if m.kind == "baseline"]

    def reference(self, axis: str = "jsd") -> tuple[float, float]:
        """Hypervolume reference point of ``axis``: (1, ln 2) for JSD, (1, 1) for disagreement and error."""
        return (DEFAULT_REF[0], FRONT_AXES[_check_axis(axis)][1])

    def hypervolume(self, name: str, axis: str = "jsd", *, exclude_degenerate: bool = False) -> float:
        return hypervolume(self.front(name, axis, exclude_degenerate=exclude_degenerate), ref=self.reference(axis),
                           x_scale=self.x_scale)

    def hypervolumes_for(self, axis: str = "jsd", *, exclude_degenerate: bool = False) -> dict[str, float]:
        return {name: self.hypervolume(name, axis, exclude_degenerate=exclude_degenerate) for name in self.methods}

    @property
    def hypervolumes(self) -> dict[str, float]:
        """JSD-front hypervolume of every method, all points (:meth:`hypervolumes_for` for the other fronts and
        without degenerate points)."""
        return self.hypervolumes_for("jsd")

    def common_x_for(self, axis: str = "jsd", *, exclude_degenerate: bool = False) -> float:
        """Smallest requirement value (raw units) on some baseline's front of ``axis``, e.g. the smallest pruning
        ``keep`` or one kept feature: the left end of the range on which editors and baselines can be compared
        (every method's smallest value when no baseline has a point)."""
        fronts = self.fronts_for(axis, exclude_degenerate=exclude_degenerate)
        names = [n for n in self.baseline_methods if len(fronts[n])] or list(self.methods)
        lows = [float(fronts[n][:, 0].min()) for n in names if len(fronts[n])]
        return min(lows) if lows else 0.0

    @property
    def common_x(self) -> float:
        """:meth:`common_x_for` of the JSD fronts, all points."""
        return self.common_x_for("jsd")

    def common_hypervolume(self, name: str, axis: str = "jsd", *, exclude_degenerate: bool = False) -> float:
        """Hypervolume on the baselines' range only: front points below :meth:`common_x_for` are moved to it, so
        that an editor is not credited for the part of the requirement axis that no baseline is run at (an editor
        that drops every feature or weight, where the baselines stop at one feature / 5 % of the weights)."""
        pts = np.array(self.front(name, axis, exclude_degenerate=exclude_degenerate), dtype=np.float64, copy=True)
        if len(pts):
            pts[:, 0] = np.maximum(pts[:, 0], self.common_x_for(axis, exclude_degenerate=exclude_degenerate))
        return hypervolume(pts, ref=self.reference(axis), x_scale=self.x_scale)

    def common_hypervolumes_for(self, axis: str = "jsd", *, exclude_degenerate: bool = False) -> dict[str, float]:
        return {name: self.common_hypervolume(name, axis, exclude_degenerate=exclude_degenerate) for name in self.methods}

    @property
    def common_hypervolumes(self) -> dict[str, float]:
        return self.common_hypervolumes_for("jsd")

    def hypervolume_table(self, axis: str = "jsd") -> pd.DataFrame:
        """One row per method: hypervolume of the ``axis`` front with all points (``hypervolume``, ``normalized``
        by the reference box, ``HV on baselines' range``) and without degenerate points (``HV w/o degenerate``,
        ``HV w/o degenerate on baselines' range``: what "best" claims use), front ``points``, how many of them
        are ``degenerate``, and ``runs``."""
        ref = self.reference(axis)
        rows = []
        for name, m in self.methods.items():
            hv = self.hypervolume(name, axis)
            runs = self.front_runs(name, axis)
            rows.append({
                "method": name, "kind": m.kind, "hypervolume": hv, "normalized": hv / (ref[0] * ref[1]),
                "HV on baselines' range": self.common_hypervolume(name, axis),
                "HV w/o degenerate": self.hypervolume(name, axis, exclude_degenerate=True),
                "HV w/o degenerate on baselines' range": self.common_hypervolume(name, axis, exclude_degenerate=True),
                "points": len(runs), "degenerate": int(self.degenerate_either(name)[runs].sum()),
                "runs": len(m.strengths),
            })
        cols = ["method", "kind", "hypervolume", "normalized", "HV on baselines' range", "HV w/o degenerate",
                "HV w/o degenerate on baselines' range", "points", "degenerate", "runs"]
        return pd.DataFrame(rows, columns=cols).set_index("method")

    def dominance_table(self, axis: str = "jsd", *, exclude_degenerate: bool = False) -> pd.DataFrame:
        return dominance_table(self.fronts_for(axis, exclude_degenerate=exclude_degenerate))

    def comparison(self, axis: str = "jsd") -> list[dict[str, Any]]:
        """For each editor method: its hypervolume on the ``axis`` front against the best baseline's, and mutual
        dominance -- all **without degenerate points** (``editor_hv_all_points`` / ``best_baseline_hv_all_points``:
        with them). Empty when no baseline has a non-degenerate point."""
        hvs = self.hypervolumes_for(axis, exclude_degenerate=True)
        chv = self.common_hypervolumes_for(axis, exclude_degenerate=True)
        hv_all = self.hypervolumes_for(axis)
        fronts = self.fronts_for(axis, exclude_degenerate=True)
        base = [b for b in self.baseline_methods if len(fronts[b])]
        out = []
        if not base:
            return out
        best = max(base, key=lambda b: hvs[b])
        best_c = max(base, key=lambda b: chv[b])
        dom = dominance_table(fronts)
        for e in self.editor_methods:
            row = {
                "editor": e, "axis": axis, "degenerate_points_excluded": True,
                "editor_hv": hvs[e], "best_baseline": best, "best_baseline_hv": hvs[best],
                "hv_difference": hvs[e] - hvs[best],
                "hv_ratio": hvs[e] / hvs[best] if hvs[best] > 0 else math.inf,
                "dominates_all_baselines": all(hvs[e] >= hvs[b] for b in base),
                "editor_hv_all_points": hv_all[e], "best_baseline_hv_all_points": hv_all[best],
                "editor_degenerate_points": int(self.degenerate_either(e)[self.front_runs(e, axis)].sum()),
                "common_x": self.common_x_for(axis, exclude_degenerate=True),
                "editor_common_hv": chv[e], "best_baseline_common": best_c, "best_baseline_common_hv": chv[best_c],
                "common_hv_difference": chv[e] - chv[best_c],
                # fraction of baseline points dominated by the editor's front and vice versa (worst case over baselines)
                "baseline_points_dominated_by_editor": float(np.nanmin([dom.loc[e, b] for b in base])),
                "editor_points_dominated_by_a_baseline": float(np.nanmax([dom.loc[b, e] for b in base]))
                if len(fronts[e]) else math.nan,
            }
            out.append(row)
        return out

    def nonfinite_table(self) -> pd.DataFrame:
        """One row per method: runs, and per front axis how many validation and test points were non-finite (left
        out of that front; a run left out on validation cannot be chosen), and the (run, model) results with a
        non-finite value recorded by :func:`run_protocol` (``–`` when not recorded)."""
        rows = []
        for name, m in self.methods.items():
            row: dict[str, Any] = {"method": name, "runs": len(m.strengths)}
            for axis in self.axes:
                n = m.nonfinite_points(axis)
                row[f"{axis}: validation points left out"] = n["validation"]
                row[f"{axis}: test points left out"] = n["test"]
            rec = m.nonfinite_model_results
            row["non-finite model results (validation)"] = rec.get("validation")
            row["non-finite model results (test)"] = rec.get("test")
            rows.append(row)
        return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()

    @property
    def nonfinite_total(self) -> int:
        """Validation + test points left out as non-finite, summed over methods and axes."""
        return sum(sum(m.nonfinite_points(a).values()) for m in self.methods.values() for a in self.axes)

    def timing_markdown(self) -> str:
        if not self.timing:
            return "(no timing measured)"
        table = timing_table(self.timing)
        notes = [f"- {k}: {v}" for k, v in self.timing_notes.items() if k in self.timing]
        return table + ("\n\n" + "\n".join(notes) if notes else "")

    def points_table(self, which: str = "chosen", axis: str = "jsd") -> pd.DataFrame:
        """One row per run (``which="all"``) or per run chosen on validation for the ``axis`` front (``"chosen"``,
        all points): strength, validation and test metric / JSD / label disagreement (when recorded) / accuracy,
        and ``degenerate``: ``"val"``, ``"test"`` or ``"val, test"`` where the run's accuracy is at or below the
        majority-class accuracy of that split."""
        if which not in ("chosen", "all"):
            raise ValueError(f"which must be 'chosen' or 'all', got {which!r}")
        with_dis = any(m.has_disagreement for m in self.methods.values())
        rows = []
        for name, m in self.methods.items():
            chosen = m.chosen_for(axis)
            idx = chosen if which == "chosen" else range(len(m.strengths))
            deg_val, deg_test = self.degenerate(name, "validation"), self.degenerate(name, "test")
            for i in idx:
                row = {"method": name, "strength": m.strengths[i],
                       f"val {self.metric_name}": m.val[i, 0], "val JSD": m.val[i, 1]}
                if with_dis:
                    row["val disagreement"] = m.val_disagreement[i] if m.has_disagreement else math.nan
                row["val accuracy"] = m.val_accuracy[i]
                row.update({f"test {self.metric_name}": m.test[i, 0], "test JSD": m.test[i, 1]})
                if with_dis:
                    row["test disagreement"] = m.test_disagreement[i] if m.has_disagreement else math.nan
                row["test accuracy"] = m.test_accuracy[i]
                row["degenerate"] = ", ".join(s for s, d in (("val", deg_val[i]), ("test", deg_test[i])) if d)
                row["chosen"] = bool(i in set(chosen.tolist()))
                rows.append(row)
        df = pd.DataFrame(rows)
        if which == "chosen" and len(df):
            df = df.drop(columns="chosen")
        return df.set_index("method") if len(df) else df

    # --- outputs ----------------------------------------------------------------------------------------
    def plot(self, path: str | os.PathLike, axis: str = "jsd") -> Path:
        """The ``axis`` fronts (all points) as a PNG: degenerate points circled; on the error plot, the error of
        the majority class as a horizontal line."""
        from ..metrics.plots import pareto_plot

        fronts, degenerate = {}, []
        for name, m in self.methods.items():
            runs = self.front_runs(name, axis)
            if len(runs):
                fronts[name] = m.points(axis, "test")[runs]
                degenerate.append(fronts[name][self.degenerate(name, "test")[runs]])
        maj = self.majority_accuracy
        deg = np.concatenate(degenerate) if degenerate else np.zeros((0, 2))
        hline = None
        if axis == "error" and maj is not None:
            hline = (1.0 - maj["test"], f"majority class (error {1.0 - maj['test']:.4f})")
        label = (f"degenerate (accuracy ≤ majority class {maj['test']:.4f})" if maj is not None else "degenerate")
        return pareto_plot(
            fronts, path, xlabel=self.metric_label, ylabel=f"{FRONT_AXES[axis][0]} (test)",
            title=f"{self.title}\n(test; points chosen on validation)",
            degenerate=deg if len(deg) else None, degenerate_label=label, hline=hline,
        )

    def plot_all(self, path: str | os.PathLike) -> dict[str, Path]:
        """Plot every front of :attr:`axes`: the JSD front at ``path``, the others next to it
        (:func:`axis_plot_name`). Returns ``{axis: path}``."""
        path = Path(path)
        return {axis: self.plot(path.with_name(axis_plot_name(path.name, axis)), axis) for axis in self.axes}

    def _axis_section(self, axis: str, h: str, plot_path: str | None, include_all_points: bool) -> list[str]:
        lines: list[str] = []
        label = FRONT_AXES[axis][0]
        ref = self.reference(axis)
        if plot_path:
            lines += [f"![{self.title}: {self.metric_name} vs {label}]({axis_plot_name(plot_path, axis)})", ""]
        lines += [f"{h}# Hypervolume ({self.metric_name} vs {label}; test fronts, points chosen on validation; "
                  "larger is better)", "",
                  f"Reference point ({ref[0]:g}, {'ln 2' if axis == 'jsd' else f'{ref[1]:g}'}). "
                  f"`HV on baselines' range`: the same with every front point below {self.metric_name} = "
                  f"{self.common_x_for(axis):.3g} (the smallest value a baseline is run at) moved to it, so that no "
                  "method gains area where no baseline has a point. `HV w/o degenerate`: runs chosen on validation "
                  "among those not degenerate on validation, points degenerate on test left out (on the baselines' "
                  f"range: from {self.metric_name} = {self.common_x_for(axis, exclude_degenerate=True):.3g}); "
                  "`degenerate`: how many of the front's `points` are degenerate on validation or test.", "",
                  to_markdown(self.hypervolume_table(axis).drop(columns="kind")), ""]
        comp = self.comparison(axis)
        if comp:
            lines += [f"{h}# Editor against the best baseline ({label}; degenerate points excluded)", ""]
            for c in comp:
                verdict = "dominates every baseline in hypervolume" if c["dominates_all_baselines"] else (
                    f"does NOT dominate: {c['hv_difference']:+.4f} hypervolume vs {c['best_baseline']}")
                lines.append(
                    f"- **{c['editor']}**: HV {c['editor_hv']:.4f} vs best baseline {c['best_baseline']} "
                    f"{c['best_baseline_hv']:.4f} (difference {c['hv_difference']:+.4f}); {verdict}. "
                    f"With degenerate points: {c['editor_hv_all_points']:.4f} vs {c['best_baseline_hv_all_points']:.4f} "
                    f"({c['editor_degenerate_points']} of the editor's front points are degenerate on validation or test). "
                    f"On the baselines' range ({self.metric_name} >= {c['common_x']:.3g}): {c['editor_common_hv']:.4f} vs "
                    f"{c['best_baseline_common']} {c['best_baseline_common_hv']:.4f} ({c['common_hv_difference']:+.4f}). "
                    f"Fraction of each baseline's front dominated by it: at least {c['baseline_points_dominated_by_editor']:.2f}; "
                    + (f"fraction of its front dominated by some baseline: at most {c['editor_points_dominated_by_a_baseline']:.2f}."
                       if math.isfinite(c["editor_points_dominated_by_a_baseline"])
                       else "it has no non-degenerate front point that a baseline could dominate.")
                )
            lines.append("")
        elif self.editor_methods and self.baseline_methods:
            lines += ["No baseline has a non-degenerate point on this front: no editor-against-baseline claim.", ""]
        lines += [f"{h}# Dominance ({label}; fraction of the column method's test front dominated by the row "
                  "method's; degenerate points excluded)", "",
                  to_markdown(self.dominance_table(axis, exclude_degenerate=True), floatfmt=".2f"), ""]
        pts = self.points_table("all" if include_all_points else "chosen", axis)
        lines += [f"{h}# {'All runs' if include_all_points else 'Chosen runs'} ({label} front; validation and test)", "",
                  to_markdown(pts, floatfmt=".4f") if len(pts) else "(none)", ""]
        return lines

    def report_markdown(self, *, heading_level: int = 2, plot_path: str | None = "pareto.png",
                        include_all_points: bool = False) -> str:
        h = "#" * heading_level
        i = self.info
        lines = [f"{h} {self.title}", ""]
        lines.append(
            f"Requirement metric: {self.metric_label} (`{self.metric_name}`, hypervolume x-scale {self.x_scale:g}). "
            f"Zoo: {i.get('zoo', '?')}. Validation: {i.get('n_val_models', '?')} models on "
            f"the task's evaluation split ({i.get('n_val_points', '?')} points); test: {i.get('n_test_models', '?')} "
            f"models on the test split ({i.get('n_test_points', '?')} points). Baselines use the editing split "
            f"({i.get('n_editing_points', '?')} points)."
            + (" Only checkpoints whose accuracy on the editing split beats its majority class are evaluated "
               "(`above_majority`)." if (i.get("config") or {}).get("above_majority") else "")
        )
        if "baselines_from" in i:
            lines.append(f"The baselines' points are those of an earlier run (finished {i['baselines_from'].get('finished')}), "
                         "on the same zoo, models, seed and options (`--baselines-from`).")
        if "original" in i:
            o = i["original"]
            lines.append(
                f"Original models (test): mean accuracy {o['test_accuracy']:.4f}, mean {self.metric_name} "
                f"{o['test_metric']:.4f}; validation: accuracy {o['val_accuracy']:.4f}, {self.metric_name} {o['val_metric']:.4f}."
            )
        maj = self.majority_accuracy
        if maj is None:
            lines.append("Majority-class accuracy: unknown (no point is marked degenerate).")
        else:
            lines.append(
                f"Majority-class accuracy (a constant classifier): validation {maj['validation']:.4f}, test "
                f"{maj['test']:.4f}{'' if 'majority_accuracy' in i else ' (not recorded in this result; computed from the task data)'}. "
                "A point whose mean accuracy is at or below it is **degenerate**: marked in the tables and circled in "
                "the plots, left out of `HV w/o degenerate`, the dominance tables and every editor-against-baseline "
                "line."
            )
            o = i.get("original", {})
            below = [f"{split} {o[f'{key}_accuracy']:.4f} vs {maj[split]:.4f}" for split, key in (("validation", "val"), ("test", "test"))
                     if f"{key}_accuracy" in o and o[f"{key}_accuracy"] <= maj[split] + self.DEGENERATE_TOLERANCE]
            if below:
                lines.append(f"**The original models' mean accuracy is itself at or below the majority class** "
                             f"({'; '.join(below)}): on this setting accuracy does not separate the models from a "
                             "constant classifier.")
        if "seconds" in i:
            mach = i.get("machine", {})
            processes = i.get("processes", i.get("config", {}).get("workers", 1))
            lines.append(
                f"Evaluated in {i['seconds']:.1f} s, finished {i.get('finished', '?')}, on {mach.get('cpu_count', '?')} CPUs "
                f"(torch {mach.get('torch', '?')}, {mach.get('torch_threads', '?')} threads, CUDA: {mach.get('cuda') or 'none'}"
                f"{f', {processes} processes' if processes > 1 else ''})."
            )
        axes = self.axes
        if len(axes) > 1:
            lines.append(
                "Fronts: " + "; ".join(f"{self.metric_name} vs {FRONT_AXES[a][0]}" for a in axes) + " -- every axis "
                "minimised (accuracy enters as error = 1 - accuracy). Post-processors output hard or randomised labels, "
                "whose JSD to the original's soft probabilities has a floor; disagreement and error compare every "
                "method on its labels."
                + ("" if self.label_jsd_floor() is None else
                   f" The floor: a method that outputs the original's own labels has mean JSD "
                   f"{self.label_jsd_floor():.4f} to its probabilities on the test models; any method whose outputs are 0/1 "
                   "probabilities has at least that (randomised rules report other probabilities and can go below).")
            )
        lines.append("")
        nf = self.nonfinite_table()
        lines += [f"{h}# Non-finite results (left out of the fronts)", "",
                  ("Every point of every method is finite." if self.nonfinite_total == 0 else
                   f"{self.nonfinite_total} points (summed over methods, splits and fronts) are non-finite and left out."),
                  "", to_markdown(nf, floatfmt=".0f") if len(nf) else "(no methods)", ""]
        for axis in axes:
            sub = h
            if len(axes) > 1:
                lines += [f"{h}# Front: {self.metric_name} vs {FRONT_AXES[axis][0]}", ""]
                sub = h + "#"
            lines += self._axis_section(axis, sub, plot_path, include_all_points)
        lines += [f"{h}# Seconds to edit one model (same run, same machine)", "", self.timing_markdown(), ""]
        notes = [f"- {n}: {t}" for n, m in self.methods.items() for t in m.notes]
        if notes:
            lines += [f"{h}# Notes", "", *notes, ""]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data: the methods' runs and the run's info (what :meth:`from_dict` reads), and derived figures for
        readers of the JSON (``hypervolumes``, ``comparison``: JSD front; ``by_axis``: every front with and without
        degenerate points; ``nonfinite``)."""
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
            "majority_accuracy": self.majority_accuracy,
            "axes": list(self.axes),
            "by_axis": {
                axis: {
                    "hypervolumes": self.hypervolumes_for(axis),
                    "hypervolumes_without_degenerate": self.hypervolumes_for(axis, exclude_degenerate=True),
                    "common_hypervolumes_without_degenerate": self.common_hypervolumes_for(axis, exclude_degenerate=True),
                    "front_runs": {n: [int(k) for k in self.front_runs(n, axis)] for n in self.methods},
                    "comparison": self.comparison(axis),
                } for axis in self.axes
            },
            "nonfinite": {n: {axis: m.nonfinite_points(axis) for axis in self.axes} for n, m in self.methods.items()},
            "timing": {n: t.to_dict() for n, t in self.timing.items()},
            "timing_notes": dict(self.timing_notes),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProtocolResult":
        """From :meth:`to_dict`, also of results written before the disagreement / accuracy fronts, majority-class
        accuracy and non-finite counts were recorded (derived figures are recomputed, not read)."""
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
        """Write ``{prefix}report.md``, ``{prefix}results.json`` and ``{prefix}pareto.png`` (and, for settings with
        more fronts, ``{prefix}pareto-<axis>.png``) into ``out``; returns their paths (``plot``, ``report``,
        ``json``, ``plot_<axis>``)."""
        plots: dict[str, Path] = {}
        paths = write_result_files(out, f"{prefix}pareto.png", f"{prefix}report.md", f"{prefix}results.json",
                                   plot=lambda p: plots.update(self.plot_all(p)), report=self.report_markdown,
                                   data=self.to_dict())
        paths.update({f"plot_{axis}": p for axis, p in plots.items() if axis != "jsd"})
        return paths

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
    """One point of an editor method: an editor and the lambda to edit with (None for per-lambda editors), or the
    target of a target-conditioned editor."""

    method: str
    editor: Any
    lam: float | None
    target: float | None = None

    @property
    def effective_lam(self) -> float:
        """The lambda of this point (NaN for a target-conditioned editor, which has none)."""
        if self.target is not None:
            return math.nan
        lam = self.lam if self.lam is not None else self.editor.lam
        return math.nan if lam is None else float(lam)

    @property
    def order(self) -> float:
        return self.target if self.target is not None else self.effective_lam

    @property
    def label(self) -> str:
        if self.target is not None:
            return f"target={self.target:.4g}"
        settings = getattr(self.editor, "settings", None) or {}
        if self.lam is None and settings.get("preference") is not None:  # EPO / scalarised: no lambda
            return "pref=(" + ", ".join(f"{float(r):.4g}" for r in settings["preference"]) + ")"
        return f"lam={self.effective_lam:.4g}"

    def edit_many(self, models, batch_size: int = 64):
        return self.editor.edit_many(models, lam=self.lam, target=self.target, batch_size=batch_size)

    def edit(self, model):
        return self.editor.edit(model, lam=self.lam, target=self.target)


def editor_label(editor) -> str:
    s = editor.settings
    base = EDITOR_LABELS.get((s["requirement"], s["variant"]), f"GMN ({s['variant']})")
    return base + (" (λ-cond.)" if s.get("lam_range") is not None else
                   " (target-cond.)" if s.get("target_range") is not None else "")


def _target_grid(editors, requirement: str | None, cfg: ProtocolConfig) -> tuple[float, ...] | None:
    """Targets of target-conditioned editors: the levels the baselines run at (the protocol's keep fractions, or
    FS's feature counts), so that each editor point sits exactly on a baseline's level."""
    eds = list(editors.values()) if isinstance(editors, Mapping) else list(editors or [])
    eds = [e for v in eds for e in (v if isinstance(v, (list, tuple)) else [v])]
    targeted = [e for e in eds if getattr(e, "target_range", None) is not None]
    if not targeted:
        return None
    req = requirement or targeted[0].settings["requirement"]
    if req == "prune":
        return tuple(sorted(float(k) for k in cfg.prune_keeps))
    if cfg.dm_n_keep is not None:
        return tuple(float(k) for k in cfg.dm_n_keep)
    n_features = targeted[0].feature_schema["n_features"]
    return tuple(float(k) for k in range(1, n_features))


def editor_runs(editors, lambda_grid: Sequence[float] | None = None,
                target_grid: Sequence[float] | None = None) -> dict[str, list[EditorRun]]:
    """Group editors into methods: ``{method name: [EditorRun, ...]}`` ordered by lambda.

    ``editors``: a sequence of editors (per-lambda editors of one variant form one method named after the
    variant, e.g. "GMN - Prune & Edit"; a lambda-conditioned editor is a method of its own with one run per
    lambda of ``lambda_grid`` -- default :func:`default_lambda_grid` of its range -- clipped to its range; a
    target-conditioned editor likewise with one run per target of ``target_grid`` -- default its requirement's
    grid over its range -- clipped to its range), or a mapping ``{method name: editors}`` to name the methods
    yourself (e.g. one method per zoo fraction).
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
            if getattr(ed, "target_range", None) is not None:
                lo, hi = ed.target_range
                grid = target_grid if target_grid else ed.requirement.target_grid(ed.target_range, 7)
                inside = [float(t) for t in grid if lo <= float(t) <= hi]
                if not inside:
                    raise ValueError(f"no target of the grid {list(grid)} lies in {editor_label(ed)}'s range [{lo}, {hi}]")
                runs.extend(EditorRun(name, ed, None, t) for t in inside)
            elif ed.lam_range is None:
                runs.append(EditorRun(name, ed, None))
            else:
                lo, hi = ed.lam_range
                grid = lambda_grid if lambda_grid else default_lambda_grid(ed.lam_range)
                inside = [float(l) for l in grid if lo <= float(l) <= hi]
                if not inside:
                    raise ValueError(f"no lambda of the grid {list(grid)} lies in {editor_label(ed)}'s range [{lo}, {hi}]")
                runs.extend(EditorRun(name, ed, lam) for lam in inside)
        runs.sort(key=lambda r: r.order)
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


#: What one model's result holds, in this order (rows of a unit's ``values``).
_SCORES = ("metric", "jsd", "accuracy", "disagreement")


def _score_models(requirement: str, split: _Split, idx: Sequence[int],
                  edited: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-model (metric, JSD, accuracy, label disagreement with the original) of edited modules ``edited[k]`` of
    ``split.models[idx[k]]``."""
    with torch.no_grad():
        probs = torch.stack([e.predict_proba(split.X).double() for e in edited])  # (B, N, C)
    ref = split.ref[list(idx)].double()
    j = jsd(ref, probs).mean(-1)
    pred = probs.argmax(-1)
    acc = (pred == split.y).double().mean(-1)
    disagreement = (pred != ref.argmax(-1)).double().mean(-1)
    if requirement == "fairness":
        metric = equalized_odds_difference(pred.double(), split.y, split.s)
    elif requirement == "minimise":
        metric = torch.tensor([float(kept_features(e)) for e in edited], dtype=torch.float64)
    elif requirement == "prune":
        metric = torch.tensor([weights_kept(e) for e in edited], dtype=torch.float64)
    else:  # pragma: no cover - other requirements: their own hard metric is not readable off a module
        raise ValueError(f"the protocol does not know how to measure requirement {requirement!r}")
    return metric.numpy(), j.numpy(), acc.numpy(), disagreement.numpy()


def _score_outputs(split: _Split, i: int, probs: torch.Tensor,
                   preds: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(EOD, JSD, accuracy, label disagreement with the original's argmax) of K post-processed outputs of model
    ``i``: ``probs`` (K, N, 2), ``preds`` (K, N) (the labels the post-processor outputs, randomised ones sampled)."""
    ref = split.ref[i].double()
    j = jsd(ref.unsqueeze(0), probs.double()).mean(-1)
    acc = (preds == split.y).double().mean(-1)
    disagreement = (preds != ref.argmax(-1)).double().mean(-1)
    eod = equalized_odds_difference(preds.double(), split.y, split.s)
    return eod.numpy(), j.numpy(), acc.numpy(), disagreement.numpy()


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
        fsr_keep = list(cfg.fs_retrain_n_keep) if cfg.fs_retrain_n_keep is not None else list(fs_keep)

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
                         cfg: ProtocolConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(metric, JSD, accuracy, disagreement) of baseline ``b`` at every strength on model ``sp.models[local]``."""
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
    """``{"values": (4, n) metric / JSD / accuracy / disagreement (:data:`_SCORES`), "edit_seconds", "seconds"}`` of one unit; editor units: one
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
            arr = per.setdefault((u.method, u.split), np.full((len(work.runs[u.method]), len(_SCORES), M), np.nan))
            arr[u.run, :, u.lo:u.hi] = vals
            edit_s[u.method] += float(v["edit_seconds"])
            edit_n[u.method] += u.hi - u.lo
        else:
            arr = per.setdefault((u.method, u.split), np.full((len(_SCORES), len(work.baselines[u.method].values), M), np.nan))
            arr[:, :, u.lo] = vals
        seconds[u.method] += float(v["seconds"])
    methods: dict[str, MethodResult] = {}
    # per (method, split): (runs, scores, models); a run's point is the mean over models (NaN when one is NaN: the
    # point is then left out of the fronts and counted, see MethodResult.nonfinite_points)
    runs_first = {key: (arr if key[0] in work.runs else np.moveaxis(arr, 1, 0)) for key, arr in per.items()}
    for name in [*work.runs, *work.baselines]:
        n_runs = len(work.runs[name]) if name in work.runs else len(work.baselines[name].values)
        res, bad = {}, {}
        for sname, sp in work.splits.items():
            arr = runs_first.get((name, sname), np.full((n_runs, len(_SCORES), len(sp.models)), np.nan))
            with np.errstate(invalid="ignore"):
                res[sname] = arr.mean(-1)  # (runs, scores)
            bad[sname] = int((~np.isfinite(arr)).any(1).sum())  # (run, model) results with a non-finite value
        v, t = res["validation"], res["test"]
        if name in work.runs:
            kind, labels = "editor", [r.label for r in work.runs[name]]
        else:
            kind, labels = "baseline", list(work.baselines[name].labels)
        methods[name] = MethodResult(name, kind, labels, v[:, :2], t[:, :2], v[:, 2], t[:, 2],
                                     val_disagreement=v[:, 3], test_disagreement=t[:, 3],
                                     nonfinite_model_results={"validation": bad["validation"], "test": bad["test"]})
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
            runs[name].append({"editor": index[id(r.editor)], "lam": r.lam, "target": r.target})
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
    runs = {name: [EditorRun(name, editors[r["editor"]], r["lam"], r.get("target")) for r in rs]
            for name, rs in d["runs"].items()}
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
    """Indices of at most ``max_models`` models of ``split``, drawn with ``seed`` (every model when uncapped); the
    protocol, matched comparisons and the composition pass their ``subset_seed``."""
    n = len(split)
    if max_models is None or n <= max_models:
        return list(range(n))
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=g)[: int(max_models)].tolist())


def _above_majority(split, task) -> dict[int, Any]:
    """The checkpoints of ``split`` whose accuracy on the task's editing split beats its majority class, as
    ``{index: module}`` (the modules loaded for the check, so that they are not loaded again)."""
    x, y, _ = task.split("editing")
    bar = majority_accuracy(y.numpy())
    keep = {}
    with torch.no_grad():
        for i in range(len(split)):
            module = split[i].to_module()
            if float((module.predict_proba(x).argmax(-1) == y).double().mean()) > bar:
                keep[i] = module
    return keep


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
    runs = editor_runs(editors, cfg.lambda_grid, _target_grid(editors, requirement, cfg))
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
        loaded = _above_majority(zs, task) if cfg.above_majority else {}
        eligible = list(loaded) if cfg.above_majority else list(range(len(zs)))
        idx = [eligible[i] for i in _subset(eligible, cfg.max_models, cfg.subset_seed)]
        X, y, s = task.split(dname)
        modules = [loaded[i] if i in loaded else zs[i].to_module() for i in idx]
        splits[zname] = _Split(zname, modules, [zs[i].model_id for i in idx], X, y, s)
    if not splits["test"].models or not splits["validation"].models:
        raise ValueError(f"the zoo needs validation and test models; got {len(splits['validation'].models)} and "
                         f"{len(splits['test'].models)}"
                         + (" that beat the majority class on the editing split (above_majority)" if cfg.above_majority else ""))

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
            m, _, acc, _ = _score_models(requirement, sp, range(len(sp.models)), sp.models)
            original[f"{key}_metric"], original[f"{key}_accuracy"] = float(m.mean()), float(acc.mean())
            original[f"{key}_label_jsd"] = float(label_jsd(sp.ref).mean())

        info = {
            "zoo": zoo_label(zoo),
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
            "majority_accuracy": {"validation": majority_accuracy(splits["validation"].y.numpy()),
                                  "test": majority_accuracy(splits["test"].y.numpy())},
            "config": cfg.to_dict(),
            "editors": {name: [{"lam": None if math.isnan(r.effective_lam) else r.effective_lam, "target": r.target,
                                "preference": r.editor.settings.get("preference"),
                                "source": dict(r.editor.source) or None,
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


#: ProtocolConfig fields that do not change any baseline's result (how the work is run, what editors get).
RUN_ONLY_FIELDS = ("workers", "timing_models", "edit_batch_size", "lambda_grid")


def check_baselines_reusable(earlier: ProtocolResult, config: Mapping[str, Any], zoo: str | None) -> None:
    """Raise ``ValueError`` unless ``earlier``'s baselines were run on the zoo labelled ``zoo`` (:func:`zoo_label`)
    with the baseline options of ``config`` (a :meth:`ProtocolConfig.to_dict`; every field but
    :data:`RUN_ONLY_FIELDS`)."""
    if not earlier.baseline_methods:
        raise ValueError("the earlier run has no baselines to reuse")
    old = earlier.info.get("config") or {}
    differ = sorted(k for k in set(config) | set(old) if k not in RUN_ONLY_FIELDS and config.get(k) != old.get(k))
    if differ:
        raise ValueError("the earlier run's baselines were run with other options: "
                         + ", ".join(f"{k} {old.get(k)!r} there, {config.get(k)!r} here" for k in differ))
    if zoo != earlier.info.get("zoo"):
        raise ValueError(f"the earlier run evaluated zoo {earlier.info.get('zoo')!r}, this one {zoo!r}")


def with_baselines_of(result: ProtocolResult, earlier: ProtocolResult) -> ProtocolResult:
    """``result`` (a run of editors alone) with every baseline method of ``earlier``, an earlier run on the same zoo,
    requirement, models and baseline options (checked: zoo, model ids and every :class:`ProtocolConfig` field but
    :data:`RUN_ONLY_FIELDS`, the baselines' ``seed`` included). For evaluating a new editor against baselines that
    were already run, without running them again; ``info["baselines_from"]`` records where they came from, and
    their timing is the earlier run's."""
    if result.baseline_methods:
        raise ValueError(f"the run already has baselines ({', '.join(result.baseline_methods)}); run the editors alone")
    check_baselines_reusable(earlier, result.info.get("config") or {}, result.info.get("zoo"))
    merged = result.merged(earlier, earlier.baseline_methods)
    merged.info["baselines_from"] = {"finished": earlier.info.get("finished"), "seconds": earlier.info.get("seconds"),
                                     "methods": earlier.baseline_methods}
    return merged


def zoo_label(zoo) -> str:
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
