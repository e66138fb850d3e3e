"""Editors against a baseline at the *same* requirement level, model by model.

A Pareto front compares methods at the strengths each happens to reach; the question a user asks is
sharper: "at the sparsity (number of kept features) the editor reached on *this* model, would the
baseline have done better?" For every editor run (a per-lambda editor, or a lambda-conditioned editor at
one lambda) and every zoo model:

* ``prune`` -- the editor's edited model keeps ``k`` of the ``n`` prunable weights (non-zeros, biases
  excluded); the baseline is **magnitude pruning of the original model to exactly ``k`` weights**;
* ``minimise`` -- the edited model reads ``k`` input features; the baseline is **FS: the ``k`` features of
  highest permutation importance** (computed on the task's editing split), the others masked.

Both are scored on the same data (zoo test models on the task's test split, or validation models on the
evaluation split): mean JSD to the original model, mean accuracy and the share of models where the
editor's JSD is lower. Levels are matched exactly per model, so the JSDs are directly comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..metrics.scores import jsd
from ..metrics.pareto import to_markdown
from .protocol import _subset, editor_runs, kept_features, nonzero_weights

__all__ = ["MatchedResult", "matched_comparison", "MATCHED_BASELINES"]

#: requirement -> display name of the baseline matched at the editor's level
MATCHED_BASELINES = {"prune": "Magnitude", "minimise": "FS (PFI)"}


@dataclass
class MatchedResult:
    """Rows of :func:`matched_comparison`, one per editor run, with tables for reports."""

    requirement: str
    baseline: str
    split: str
    n_models: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def level_name(self) -> str:
        return "weights kept" if self.requirement == "prune" else "kept features"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def wins(self) -> int:
        """Runs where the editor's mean JSD is below the baseline's (runs that change nothing excluded)."""
        return sum(r["editor_jsd"] < r["baseline_jsd"] for r in self.informative_rows())

    def informative_rows(self) -> list[dict[str, Any]]:
        """Rows where the editor removed something and left something (the comparison says nothing otherwise)."""
        return [r for r in self.rows if r["informative"]]

    def report_markdown(self) -> str:
        df = self.to_frame()
        if df.empty:
            return "(no editor runs)"
        show = df[["method", "lambda", "level", "editor_jsd", "baseline_jsd", "jsd_ratio", "editor_better_share",
                   "editor_accuracy", "baseline_accuracy", "original_accuracy"]].rename(columns={
            "level": f"mean {self.level_name}", "editor_jsd": "editor JSD", "baseline_jsd": f"{self.baseline} JSD",
            "jsd_ratio": f"{self.baseline} / editor JSD", "editor_better_share": "models where editor JSD lower",
            "editor_accuracy": "editor acc.", "baseline_accuracy": f"{self.baseline} acc.",
            "original_accuracy": "original acc.",
        })
        inf = self.informative_rows()
        return (to_markdown(show.set_index("method"), floatfmt=".4g") + "\n\n"
                f"Editor runs that removed something and kept something: {len(inf)}; the editor's mean JSD is lower "
                f"in {self.wins()} of them ({self.n_models} {self.split} models, levels matched per model).")

    def to_dict(self) -> dict:
        return {"requirement": self.requirement, "baseline": self.baseline, "split": self.split,
                "n_models": self.n_models, "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict) -> "MatchedResult":
        return cls(d["requirement"], d["baseline"], d["split"], int(d["n_models"]), list(d["rows"]))


def matched_comparison(
    zoo,
    editors,
    requirement: str,
    *,
    lambda_grid: Sequence[float] | None = None,
    split: str = "test",
    max_models: int | None = None,
    pfi_repeats: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    subset_seed: int = 0,
) -> MatchedResult:
    """Compare every run of ``editors`` (see :func:`~hubedit.evaluation.protocol.editor_runs`) with the
    requirement's matched baseline on ``zoo[split]`` (at most ``max_models``, drawn with ``subset_seed`` as the
    protocol draws them; ``seed`` seeds permutation importance)."""
    from .. import baselines

    if requirement not in MATCHED_BASELINES:
        raise ValueError(f"matched comparisons exist for {sorted(MATCHED_BASELINES)}, got {requirement!r}")
    task = zoo.task
    X, y, _ = task.split("test" if split == "test" else "evaluation")
    Xe, ye, _ = task.split("editing")
    zs = zoo[split]
    models = [zs[i].to_module() for i in _subset(zs, max_models, subset_seed)]
    if not models:
        raise ValueError(f"the zoo has no {split} models")
    with torch.no_grad():
        ref = torch.stack([m.predict_proba(X).double() for m in models])
    orig_acc = float((ref.argmax(-1) == y).double().mean())
    importance: dict[int, torch.Tensor] = {}
    baseline_cache: dict[tuple[int, int], np.ndarray] = {}  # (model, level) -> (jsd, acc)
    rows = []
    for method, runs in editor_runs(editors, lambda_grid).items():
        for run in runs:
            if run.editor.settings["requirement"] != requirement:
                raise ValueError(f"{method} is a {run.editor.settings['requirement']} editor, not {requirement}")
            edited = run.edit_many(models, batch_size=batch_size)
            with torch.no_grad():
                probs = torch.stack([m.predict_proba(X).double() for m in edited])
            e_jsd = jsd(ref, probs).mean(-1).numpy()
            e_acc = (probs.argmax(-1) == y).double().mean(-1).numpy()
            b_jsd, b_acc, levels, full = [], [], [], []
            for i, (orig, ed) in enumerate(zip(models, edited)):
                if requirement == "prune":
                    k, n = nonzero_weights(ed), orig.n_weights
                    levels.append(k / n)
                else:
                    k, n = kept_features(ed), orig.config.in_features
                    levels.append(float(k))
                full.append((k == 0, k >= n))
                if (i, k) not in baseline_cache:
                    if requirement == "prune":
                        base = baselines.magnitude_prune(orig, n_keep=k)
                    else:
                        if i not in importance:
                            importance[i] = baselines.permutation_importance(orig, Xe, ye, n_repeats=pfi_repeats, seed=seed)
                        base = baselines.mask_input_features(orig, baselines.select_features(importance[i], k)) if k < n else orig
                    with torch.no_grad():
                        p = base.predict_proba(X).double()
                    baseline_cache[i, k] = np.asarray([float(jsd(ref[i], p).mean()), float((p.argmax(-1) == y).double().mean())])
                bj, ba = baseline_cache[i, k]
                b_jsd.append(bj)
                b_acc.append(ba)
            b_jsd_a = np.asarray(b_jsd)
            rows.append({
                "method": method, "lambda": None if run.target is not None else run.effective_lam,
                "target": run.target, "level": float(np.mean(levels)),
                "editor_jsd": float(e_jsd.mean()), "baseline_jsd": float(b_jsd_a.mean()),
                "jsd_ratio": float(b_jsd_a.mean() / e_jsd.mean()) if e_jsd.mean() > 0 else float("nan"),
                "editor_better_share": float((e_jsd < b_jsd_a).mean()),
                "editor_accuracy": float(e_acc.mean()), "baseline_accuracy": float(np.mean(b_acc)),
                "original_accuracy": orig_acc,
                # something removed on some model and something kept on some model
                "informative": bool(not all(f[1] for f in full) and not all(f[0] for f in full)),
            })
    return MatchedResult(requirement, MATCHED_BASELINES[requirement], split, len(models), rows)
