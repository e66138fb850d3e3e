"""The paper's two further experiments: composing editors (A.7) and training-sample efficiency (section 5).

* :func:`run_composition` -- a data-minimisation editor followed by a pruning editor,
  ``dm_editor.then(prune_editor).edit(model)``, against a data-minimisation baseline followed by pruning
  baselines (default FS & Retrain, then SNIP -- the paper's A.7 comparison -- and, beside it, FS & Retrain
  then magnitude pruning). The baseline keeps, *per model*, exactly as many features as the DM editor kept
  for that model, so both compositions are compared at the same number of kept features; the pruning
  strengths are swept. Reported per point: kept features, fraction of
  weights kept, JSD to the original model and accuracy (test split of the zoo, test data of the task).
* :func:`train_fraction_editors` / :func:`run_sample_efficiency` -- pruning editors trained on 10 / 25 /
  50 / 75 / 100 % of the zoo's train split at a few lambdas, evaluated with the protocol of
  :mod:`hubedit.evaluation.protocol` against the pruning baselines.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..metrics.scores import jsd
from ..metrics.pareto import DEFAULT_REF, hypervolume, to_markdown
from .protocol import (
    ProtocolConfig,
    ProtocolResult,
    _subset,
    zoo_label,
    editor_runs,
    kept_features,
    machine_info,
    run_protocol,
    weights_kept,
    write_result_files,
)

__all__ = [
    "CompositionResult",
    "run_composition",
    "FRACTIONS",
    "load_or_train_editor",
    "EditorJob",
    "load_or_train_editors",
    "fraction_editor_jobs",
    "fraction_editors_from",
    "train_fraction_editors",
    "SampleEfficiencyResult",
    "run_sample_efficiency",
]

FRACTIONS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)

_DM_BASELINES = {"fs": "FS", "fs-retrain": "FS & Retrain"}
_PRUNE_BASELINES = {"random": "Random", "magnitude": "Magnitude", "grad": "Grad Importance", "snip": "SNIP",
                    "lottery-ticket": "Lottery Ticket"}


# ==================================================================================================
# composition (A.7)
# ==================================================================================================
@dataclass
class CompositionResult:
    """Points of the composition experiment; ``rows`` hold one dict per (method, DM strength, prune strength)
    with the means over the evaluated models: ``kept_features``, ``weights_kept``, ``jsd``, ``accuracy``, and
    the DM step alone (``dm_kept_features``, ``dm_weights_kept``, ``dm_jsd``, ``dm_accuracy``)."""

    task: str
    n_features: int
    rows: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def groups(self, with_features: bool = True) -> dict[str, np.ndarray]:
        """``{"<method> | DM <dm strength> (k.k features)": (weights_kept, jsd) points}``, one per DM level (without
        the mean kept features when not ``with_features``: the same key in every seed)."""
        out: dict[str, list] = {}
        for r in self.rows:
            key = f"{r['method']} | DM {r['dm']}" + (f" ({r['dm_kept_features']:.1f} feat.)" if with_features else "")
            out.setdefault(key, []).append((r["weights_kept"], r["jsd"]))
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    @property
    def prune_baselines(self) -> list[str]:
        """Display names of the pruning baselines composed after the DM baseline (older results: the one)."""
        names = self.info.get("prune_baselines")
        if names is None:
            names = [self.info["prune_baseline"]] if self.info.get("prune_baseline") else []
        return list(names)

    @property
    def common_x(self) -> float:
        """Smallest mean fraction of weights kept among the baseline points (0 without baselines): the left end
        of the baselines' range."""
        base_x = [r["weights_kept"] for r in self.rows if r["kind"] == "baseline"]
        return float(min(base_x)) if base_x else 0.0

    def hypervolume_table(self) -> pd.DataFrame:
        """Per (method, DM level): mean kept features and the hypervolume of its (weights kept, JSD) points
        (reference point (1, ln 2)); also on the baselines' range only (points below :attr:`common_x`, the
        smallest fraction of weights a baseline keeps, moved up to it, as in
        :meth:`ProtocolResult.common_hypervolume`)."""
        x_lo = self.common_x
        rows = []
        seen = set()
        for r in self.rows:
            key = (r["method"], r["dm"])
            if key in seen:
                continue
            seen.add(key)
            pts = np.asarray([(q["weights_kept"], q["jsd"]) for q in self.rows if (q["method"], q["dm"]) == key])
            clipped = pts.copy()
            clipped[:, 0] = np.maximum(clipped[:, 0], x_lo)
            rows.append({
                "method": r["method"], "DM strength": r["dm"], "kept features": r["dm_kept_features"],
                "hypervolume (weights kept, JSD)": hypervolume(pts, ref=DEFAULT_REF),
                "HV on baselines' range": hypervolume(clipped, ref=DEFAULT_REF),
                "points": len(pts),
            })
        return pd.DataFrame(rows).set_index("method") if rows else pd.DataFrame()

    def checks(self) -> dict[str, bool]:
        """Sanity of the editor composition: dropped features stay dropped (composed kept <= DM kept for every
        model) and the composition keeps fewer weights than the DM step alone (mean)."""
        ed = [r for r in self.rows if r["kind"] == "editor"]
        return {
            "dropped_features_stay_dropped": all(r["dropped_stay_dropped"] for r in ed),
            "fewer_weights_after_pruning": all(r["weights_kept"] <= r["dm_weights_kept"] + 1e-12 for r in ed),
        }

    def plot(self, path: str | os.PathLike) -> Path:
        from ..metrics.plots import pareto_plot

        return pareto_plot(self.groups(), path, xlabel="fraction of weights kept", ylabel="mean JSD (test)",
                           title=f"Data minimisation then pruning on {self.task.capitalize()}")

    def report_markdown(self, *, heading_level: int = 2, plot_path: str | None = "composition.png") -> str:
        h = "#" * heading_level
        i = self.info
        lines = [f"{h} Composition: data minimisation, then pruning ({self.task.capitalize()}, paper A.7)", ""]
        lines.append(
            f"{i.get('n_models', '?')} {i.get('split', 'test')} models of {i.get('zoo', '?')} on the task's "
            f"{i.get('data_split', 'test')} split. Editors: `dm_editor.then(prune_editor).edit(model)`. Baselines: "
            f"{i.get('dm_baseline', '?')} keeping, per model, as many features as the DM editor kept, then "
            f"{' / '.join(self.prune_baselines) or '?'} at keep in {i.get('prune_keeps', '?')}."
        )
        c = self.checks()
        lines.append(f"Checks: dropped features stay dropped: {c['dropped_features_stay_dropped']}; composition keeps "
                     f"fewer weights than the DM step: {c['fewer_weights_after_pruning']}.")
        lines.append("")
        if plot_path:
            lines += [f"![composition]({plot_path})", ""]
        hv = self.hypervolume_table()
        if len(hv):
            lines += [f"{h}# Hypervolume per DM level (x = weights kept, y = JSD)", "",
                      f"`HV on baselines' range`: every point below weights kept = {self.common_x:.3g} (the fewest "
                      "weights a baseline keeps) moved up to it.", "", to_markdown(hv), ""]
        df = self.frame()
        if len(df):
            cols = ["method", "dm", "prune", "kept_features", "weights_kept", "jsd", "accuracy", "dm_kept_features",
                    "dm_weights_kept", "dm_jsd", "dm_accuracy"]
            lines += [f"{h}# All points", "", to_markdown(df[cols].set_index("method")), ""]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"format": "hubedit.composition-result", "task": self.task, "n_features": self.n_features,
                "rows": self.rows, "info": self.info, "checks": self.checks()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompositionResult":
        return cls(d["task"], int(d["n_features"]), list(d["rows"]), dict(d.get("info", {})))

    def save(self, out: str | os.PathLike, *, prefix: str = "composition") -> dict[str, Path]:
        return write_result_files(out, f"{prefix}.png", f"{prefix}.md", f"{prefix}.json", plot=self.plot,
                                  report=self.report_markdown, data=self.to_dict())


def _measure(models, originals_probs, X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        probs = torch.stack([m.predict_proba(X).double() for m in models])
    j = jsd(originals_probs, probs).mean(-1).numpy()
    acc = (probs.argmax(-1) == y).double().mean(-1).numpy()
    kf = np.asarray([kept_features(m) for m in models], dtype=np.float64)
    wk = np.asarray([weights_kept(m) for m in models], dtype=np.float64)
    return kf, wk, j, acc


def _used_features(model) -> set[int]:
    from ..baselines import input_weight_names

    params = dict(model.named_parameters())
    used = torch.zeros(model.config.in_features, dtype=torch.bool)
    for name in input_weight_names(model):
        used |= (params[name].detach() != 0).any(0)
    return set(torch.nonzero(used).flatten().tolist())


def run_composition(
    zoo,
    dm_editors,
    prune_editors,
    *,
    dm_lambdas: Sequence[float] | None = None,
    prune_lambdas: Sequence[float] | None = None,
    dm_baseline: str | None = "fs-retrain",
    prune_baseline: str | Sequence[str] | None = ("snip", "magnitude"),
    prune_keeps: Sequence[float] = (0.7, 0.5, 0.3, 0.2, 0.1, 0.05),
    fs_retrain_epochs: int = 100,
    pfi_repeats: int = 5,
    split: str = "test",
    max_models: int | None = None,
    seed: int = 0,
    progress: bool = True,
    subset_seed: int = 0,
) -> CompositionResult:
    """Data minimisation then pruning: editors composed with :meth:`Editor.then` against baselines.

    ``dm_editors`` / ``prune_editors``: editors (per-lambda and/or lambda-conditioned; conditioned ones are
    run at ``dm_lambdas`` / ``prune_lambdas``). Every DM run is composed with every pruning run. The baseline
    (``dm_baseline`` in ``"fs"``, ``"fs-retrain"``; ``prune_baseline`` one or several of random, magnitude,
    grad, snip, lottery-ticket, default SNIP (the paper's) and magnitude; None for none) keeps per model the
    number of features the DM editor kept for it, then prunes at every ``prune_keeps`` with each pruning
    baseline (one DM baseline model per model and feature count, shared by the pruning baselines). Data for the
    baselines: the task's editing split; ``seed`` seeds permutation importance, FS & Retrain, SNIP, Random and
    Lottery Ticket, ``subset_seed`` the subset of ``max_models`` models (apart, so that seeds share the models). Evaluated on the zoo's ``split`` models (``test``: task test data;
    ``validation``: task evaluation data).
    """
    from tqdm.auto import tqdm

    from .. import baselines

    t_start = time.perf_counter()
    task = zoo.task
    data_split = "test" if split == "test" else "evaluation"
    X, y, _ = task.split(data_split)
    Xe, ye, _ = task.split("editing")
    zs = zoo[split]
    idx = _subset(zs, max_models, subset_seed)
    models = [zs[i].to_module() for i in idx]
    if not models:
        raise ValueError(f"the zoo has no {split} models")
    with torch.no_grad():
        ref = torch.stack([m.predict_proba(X).double() for m in models])
    dm_runs = [r for rs in editor_runs(dm_editors, dm_lambdas).values() for r in rs]
    pr_runs = [r for rs in editor_runs(prune_editors, prune_lambdas).values() for r in rs]
    for r in dm_runs:
        if r.editor.settings["requirement"] != "minimise":
            raise ValueError(f"dm_editors must be data-minimisation editors, got {r.editor!r}")
    for r in pr_runs:
        if r.editor.settings["requirement"] != "prune":
            raise ValueError(f"prune_editors must be pruning editors, got {r.editor!r}")
    if dm_baseline is not None and dm_baseline not in _DM_BASELINES:
        raise ValueError(f"dm_baseline must be one of {list(_DM_BASELINES)} or None, got {dm_baseline!r}")
    prune_names = [] if prune_baseline is None else [prune_baseline] if isinstance(prune_baseline, str) else list(prune_baseline)
    for name in prune_names:
        if name not in _PRUNE_BASELINES:
            raise ValueError(f"prune_baseline must be one or several of {list(_PRUNE_BASELINES)}, or None; got {name!r}")
    if len(set(prune_names)) != len(prune_names):
        raise ValueError(f"prune_baseline lists a baseline twice: {prune_names}")

    rows: list[dict[str, Any]] = []
    importance: dict[int, torch.Tensor] = {}
    dm_cache: dict[tuple[int, int], Any] = {}
    total = len(dm_runs) * len(models) * (len(pr_runs) + (len(prune_keeps) * len(prune_names) if dm_baseline else 0))
    bar = tqdm(total=total, desc="composition", disable=not progress, leave=False, unit="model")

    def prune_b(prune_baseline, model, keep):
        if prune_baseline == "random":
            return baselines.random_prune(model, keep, seed=seed)
        if prune_baseline == "magnitude":
            return baselines.magnitude_prune(model, keep)
        if prune_baseline == "grad":
            return baselines.grad_prune(model, keep, Xe, ye)
        if prune_baseline == "snip":
            return baselines.snip_prune(model, keep, Xe, ye, seed=seed)
        return baselines.lottery_ticket_prune(model, keep, Xe, ye, seed=seed)

    for d in dm_runs:
        dm_edited = d.edit_many(models)
        dkf, dwk, dj, dacc = _measure(dm_edited, ref, X, y)
        dm_stats = {"dm_kept_features": float(dkf.mean()), "dm_weights_kept": float(dwk.mean()),
                    "dm_jsd": float(dj.mean()), "dm_accuracy": float(dacc.mean())}
        dm_used = [_used_features(m) for m in dm_edited]
        for p in pr_runs:
            composed = []
            for model in models:
                composed.append(d.editor.then(p.editor).edit(model, lams=[d.lam, p.lam]))
                bar.update(1)
            kf, wk, j, acc = _measure(composed, ref, X, y)
            stay = all(_used_features(c) <= u for c, u in zip(composed, dm_used))
            rows.append({"method": f"{d.method} → {p.method}", "kind": "editor", "dm": d.label, "prune": p.label,
                         "kept_features": float(kf.mean()), "weights_kept": float(wk.mean()), "jsd": float(j.mean()),
                         "accuracy": float(acc.mean()), "dropped_stay_dropped": bool(stay), **dm_stats})
        if dm_baseline is None or not prune_names:
            continue
        # baseline DM step at the editor's per-model feature count (cached across DM runs)
        base_dm = []
        for i, model in enumerate(models):
            k = int(dkf[i])
            if (i, k) not in dm_cache:
                if i not in importance:
                    importance[i] = baselines.permutation_importance(model, Xe, ye, n_repeats=pfi_repeats, seed=seed)
                if dm_baseline == "fs":
                    dm_cache[i, k] = baselines.feature_selection(model, None, None, k, importance=importance[i])[0]
                else:
                    dm_cache[i, k] = baselines.fs_retrain(model, Xe, k, importance=importance[i], epochs=fs_retrain_epochs,
                                                  seed=seed)[0]
            base_dm.append(dm_cache[i, k])
        bkf, bwk, bj, bacc = _measure(base_dm, ref, X, y)
        b_stats = {"dm_kept_features": float(bkf.mean()), "dm_weights_kept": float(bwk.mean()),
                   "dm_jsd": float(bj.mean()), "dm_accuracy": float(bacc.mean())}
        for prune_name in prune_names:
            name = f"{_DM_BASELINES[dm_baseline]} → {_PRUNE_BASELINES[prune_name]}"
            for keep in prune_keeps:
                pruned = []
                for m in base_dm:
                    pruned.append(prune_b(prune_name, m, float(keep)))
                    bar.update(1)
                kf, wk, j, acc = _measure(pruned, ref, X, y)
                rows.append({"method": name, "kind": "baseline", "dm": f"as {d.label}", "prune": f"keep={keep:g}",
                             "kept_features": float(kf.mean()), "weights_kept": float(wk.mean()), "jsd": float(j.mean()),
                             "accuracy": float(acc.mean()), "dropped_stay_dropped": True, **b_stats})
    bar.close()
    info = {
        "zoo": zoo_label(zoo), "split": split, "data_split": data_split, "n_models": len(models),
        "model_ids": [zs[i].model_id for i in idx],
        "dm_baseline": _DM_BASELINES.get(dm_baseline or "", None),
        "prune_baselines": [_PRUNE_BASELINES[n] for n in prune_names], "seed": seed, "subset_seed": subset_seed,
        "prune_keeps": [float(k) for k in prune_keeps], "fs_retrain_epochs": fs_retrain_epochs,
        "dm_runs": [{"method": r.method, "lam": r.effective_lam} for r in dm_runs],
        "prune_runs": [{"method": r.method, "lam": r.effective_lam} for r in pr_runs],
        "seconds": time.perf_counter() - t_start, "machine": machine_info(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return CompositionResult(task.name, task.n_features, rows, info)


# ==================================================================================================
# sample efficiency (section 5)
# ==================================================================================================
def _fraction_label(f: float) -> str:
    return f"GMN {f * 100:g}%"


def _saved_editor(requirement: str, folder: Path, *, variant: str | None, lam: float | None,
                  lam_range: Sequence[float] | None, train_kwargs: Mapping[str, Any]):
    """The editor in ``folder`` if it was trained with these settings; None when there is none or it was trained
    for fewer ``steps`` (to be trained on); ``ValueError`` when it was trained with other settings."""
    from ..editor import Editor

    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return None
    ed = Editor.from_pretrained(folder)
    have = ed.settings.get("training", {})
    wanted = {**train_kwargs, "lam": lam, "lam_range": None if lam_range is None else [float(v) for v in lam_range]}
    diff = {k: (have.get(k), v) for k, v in wanted.items() if k in have and have.get(k) != v}
    if ed.settings["requirement"] != requirement:
        diff["requirement"] = (ed.settings["requirement"], requirement)
    if variant is not None and ed.settings["variant"] != variant:
        diff["variant"] = (ed.settings["variant"], variant)
    if not diff:
        return ed
    if set(diff) != {"steps"} or diff["steps"][1] < diff["steps"][0]:
        raise ValueError(
            f"{folder} holds an editor trained with other settings ("
            + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()) + "); use another folder or delete it"
        )
    return None


def load_or_train_editor(zoo, requirement: str, folder: str | os.PathLike | None, *, variant: str | None = None,
                         lam: float | None = None, lam_range: Sequence[float] | None = None, progress: bool = True,
                         **train_kwargs: Any):
    """The editor saved in ``folder`` if it was trained with these settings, else train it there (resuming an
    interrupted run). An editor trained for fewer ``steps`` is trained on to the new number; any other
    difference in the training settings raises ``ValueError`` (use another folder)."""
    from ..editor import Editor
    from ..train import train_editor

    if folder is not None:
        folder = Path(folder)
        ed = _saved_editor(requirement, folder, variant=variant, lam=lam, lam_range=lam_range, train_kwargs=train_kwargs)
        if ed is not None:
            return ed
    ed = train_editor(zoo, requirement, variant=variant, lam=lam, lam_range=lam_range, out=folder,
                      resume=folder is not None, progress=progress, **train_kwargs)
    # reloaded, so that the editor records where it lives (reports, cache keys)
    return Editor.from_pretrained(folder) if folder is not None else ed


@dataclass
class EditorJob:
    """One editor for :func:`load_or_train_editors`: the arguments of :func:`load_or_train_editor` (``train``:
    its training keyword arguments, JSON data)."""

    requirement: str
    folder: str | os.PathLike
    variant: str | None = None
    lam: float | None = None
    lam_range: Sequence[float] | None = None
    train: dict[str, Any] = field(default_factory=dict)


def load_or_train_editors(zoo, jobs: Sequence[EditorJob], *, progress: bool = True, log=None) -> list:
    """:func:`load_or_train_editor` for every job, in order.

    Under a launched world (``torchrun`` / ``accelerate launch``, :func:`hubedit.distributed.world`), the jobs are
    shared out over the processes; a process trains each of its editors that needs training *alone*, in a child
    process outside the world (one-process training with this process's torch threads: the editor of a
    one-process run), then every process loads every editor. ``zoo`` must be saved (a folder or a Hub repo) for
    the children to open it. ``log(message)`` is told of each editor this process trained.
    """
    from .. import distributed
    from ..editor import Editor

    jobs = list(jobs)
    rank, size = distributed.world()
    if size == 1:
        out = []
        for j in jobs:
            done = (Path(j.folder) / "model.safetensors").is_file()
            t = time.perf_counter()
            out.append(load_or_train_editor(zoo, j.requirement, j.folder, variant=j.variant, lam=j.lam,
                                            lam_range=j.lam_range, progress=progress, **j.train))
            if log is not None and (not done or time.perf_counter() - t > 5):
                log(f"trained {_job_label(j)} in {time.perf_counter() - t:.1f} s -> {j.folder}")
        return out
    folders = list(dict.fromkeys(str(j.folder) for j in jobs))  # a folder listed twice is trained once
    first = {str(j.folder): j for j in reversed(jobs)}
    failures = []
    for k in distributed.share(len(folders), rank, size):
        j = first[folders[k]]
        try:
            if _saved_editor(j.requirement, Path(j.folder), variant=j.variant, lam=j.lam, lam_range=j.lam_range,
                             train_kwargs=j.train) is None:
                t = time.perf_counter()
                _train_alone(zoo, j)
                if log is not None:
                    log(f"trained {_job_label(j)} in {time.perf_counter() - t:.1f} s -> {j.folder} "
                        f"(process {rank} of {size})")
        except Exception as exc:  # every process raises, below, instead of leaving the others waiting
            failures.append(f"{j.folder}: {exc}")
    failures = [f for part in distributed.all_gather(failures) for f in part]
    if failures:
        raise ValueError("editors could not be loaded or trained: " + "; ".join(failures))
    return [Editor.from_pretrained(j.folder) for j in jobs]


def _job_label(job: EditorJob) -> str:
    what = f"lam={job.lam:g}" if job.lam is not None else f"lam_range={[float(v) for v in job.lam_range or ()]}"
    return f"{job.requirement}/{job.variant or 'default'} {what}"


def _train_alone(zoo, job: EditorJob) -> None:
    """Train ``job``'s editor in a child Python process outside any launched world (same torch threads)."""
    import json
    import subprocess
    import sys

    from .. import distributed

    source = dict(zoo.source)
    if "path" not in source and "repo_id" not in source:
        raise ValueError("training editors in several processes needs a saved zoo (a folder or a Hub repo); "
                         f"this zoo has source {source or 'none'}")
    spec = {"zoo": source, "threads": torch.get_num_threads(), "requirement": job.requirement,
            "folder": str(job.folder), "variant": job.variant, "lam": job.lam,
            "lam_range": None if job.lam_range is None else [float(v) for v in job.lam_range], "train": dict(job.train)}
    env = distributed.single_process_env()
    root = str(Path(__file__).resolve().parents[2])  # the checkout or site-packages holding hubedit
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", "from hubedit.evaluation.experiments import _train_alone_main; "
                           "_train_alone_main()"], input=json.dumps(spec), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:] or ["no output"]
        raise RuntimeError(f"training in a child process failed (exit code {proc.returncode}): " + " | ".join(tail))


def _train_alone_main() -> None:
    """Entry of :func:`_train_alone`'s child: the job as JSON on stdin."""
    import json
    import sys

    from ..zoo import Zoo

    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(int(spec["threads"]))
    src = spec["zoo"]
    zoo = Zoo.load(src["path"]) if "path" in src else Zoo.from_hub(src["repo_id"], revision=src.get("revision"))
    load_or_train_editor(zoo, spec["requirement"], spec["folder"], variant=spec["variant"], lam=spec["lam"],
                         lam_range=spec["lam_range"], progress=False, **spec["train"])


def fraction_editor_jobs(out: str | os.PathLike, *, fractions: Sequence[float] = FRACTIONS,
                         lambdas: Sequence[float] = (0.01, 0.1, 1.0), requirement: str = "prune",
                         variant: str | None = "prune-edit", **train_kwargs: Any) -> list[EditorJob]:
    """The :class:`EditorJob` of every (fraction, lambda) editor of :func:`train_fraction_editors`, fraction-major,
    in ``out/frac-<f>/lam-<lambda>``: jobs of several seeds (``seed=`` in ``train_kwargs``, one ``out`` each) can
    go to one :func:`load_or_train_editors` call, shared out together."""
    return [EditorJob(requirement, Path(out) / f"frac-{f:g}" / f"lam-{lam:g}", variant, float(lam), None,
                      {**train_kwargs, "zoo_fraction": float(f)}) for f in fractions for lam in lambdas]


def fraction_editors_from(editors: Sequence, fractions: Sequence[float], lambdas: Sequence[float]) -> dict[float, list]:
    """``{fraction: [editor per lambda]}`` from the editors of :func:`fraction_editor_jobs`' jobs, in job order."""
    editors = list(editors)
    if len(editors) != len(fractions) * len(lambdas):
        raise ValueError(f"expected {len(fractions)} fractions x {len(lambdas)} lambdas = "
                         f"{len(fractions) * len(lambdas)} editors, got {len(editors)}")
    it = iter(editors)
    return {float(f): [next(it) for _ in lambdas] for f in fractions}


def train_fraction_editors(
    zoo,
    *,
    fractions: Sequence[float] = FRACTIONS,
    lambdas: Sequence[float] = (0.01, 0.1, 1.0),
    requirement: str = "prune",
    variant: str | None = "prune-edit",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    **train_kwargs: Any,
) -> dict[float, list]:
    """Train one editor per (zoo fraction, lambda) with :func:`hubedit.train.train_editor` (``zoo_fraction``),
    every other hyper-parameter fixed. With ``out``, editors go to ``out/frac-<f>/lam-<lambda>`` and existing
    ones trained with the same settings are loaded instead of retrained (:func:`load_or_train_editors`; under a
    launcher the editors are shared out over the processes)."""
    if out is not None:  # shared out over the processes of a launched world (load_or_train_editors)
        jobs = fraction_editor_jobs(out, fractions=fractions, lambdas=lambdas, requirement=requirement,
                                    variant=variant, **train_kwargs)
        return fraction_editors_from(load_or_train_editors(zoo, jobs, progress=progress), fractions, lambdas)
    result: dict[float, list] = {}
    for f in fractions:
        result[float(f)] = [load_or_train_editor(zoo, requirement, None, variant=variant, lam=float(lam),
                                                 progress=progress, zoo_fraction=float(f), **train_kwargs)
                            for lam in lambdas]
    return result


@dataclass
class SampleEfficiencyResult:
    """The protocol's result with one editor method per zoo fraction (``fractions``: method -> fraction)."""

    protocol: ProtocolResult
    fractions: dict[str, float]
    train_models: dict[str, int | None]

    def table(self) -> pd.DataFrame:
        """Per fraction, then per baseline: test hypervolume with all points and without degenerate points
        (:meth:`ProtocolResult.hypervolume`), and the difference to the best baseline -- the one of largest
        hypervolume without degenerate points, among baselines that have such a point -- without them."""
        p = self.protocol
        hvs, ok = p.hypervolumes, p.hypervolumes_for(exclude_degenerate=True)
        base = p.baseline_methods
        fit = [b for b in base if len(p.front(b, exclude_degenerate=True))]
        best = max(fit, key=lambda b: ok[b]) if fit else None
        rows = []
        for name, f in self.fractions.items():
            row = {"method": name, "zoo fraction": f, "train models": self.train_models.get(name),
                   "hypervolume": hvs[name], "HV w/o degenerate": ok[name]}
            if best is not None:
                row[f"vs best baseline ({best}; w/o degenerate)"] = ok[name] - ok[best]
            rows.append(row)
        for b in base:
            rows.append({"method": b, "zoo fraction": math.nan, "train models": None, "hypervolume": hvs[b],
                         "HV w/o degenerate": ok[b]})
        df = pd.DataFrame(rows).set_index("method")
        df["train models"] = df["train models"].astype("Int64")
        return df

    def report_markdown(self, *, heading_level: int = 2, plot_path: str | None = "sample_efficiency.png") -> str:
        h = "#" * heading_level
        p = self.protocol
        lines = [f"{h} Sample efficiency: pruning editors trained on part of the zoo ({p.task.capitalize()})", "",
                 f"Editors trained on {', '.join(f'{f * 100:g} %' for f in self.fractions.values())} of the zoo's train "
                 f"split, all other hyper-parameters fixed; {p.info.get('n_test_models', '?')} test models, "
                 f"points chosen on validation ({p.info.get('n_val_models', '?')} models).", ""]
        if plot_path:
            lines += [f"![sample efficiency]({plot_path})", ""]
        lines += [f"{h}# Hypervolume by training fraction (test)", "", to_markdown(self.table()), ""]
        pts = p.points_table("chosen")
        if len(pts):
            lines += [f"{h}# Chosen runs", "", to_markdown(pts), ""]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"format": "hubedit.sample-efficiency-result", "protocol": self.protocol.to_dict(),
                "fractions": self.fractions, "train_models": self.train_models}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleEfficiencyResult":
        return cls(ProtocolResult.from_dict(d["protocol"]), dict(d["fractions"]), dict(d["train_models"]))

    def save(self, out: str | os.PathLike, *, prefix: str = "sample_efficiency") -> dict[str, Path]:
        return write_result_files(out, f"{prefix}.png", f"{prefix}.md", f"{prefix}.json", plot=self.protocol.plot,
                                  report=self.report_markdown, data=self.to_dict())


def run_sample_efficiency(
    zoo,
    editors_by_fraction: Mapping[float, Sequence],
    *,
    baselines: Sequence[str] | str | None = "all",
    baseline_result: ProtocolResult | None = None,
    requirement: str = "prune",
    config: ProtocolConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> SampleEfficiencyResult:
    """Evaluate editors trained on fractions of the zoo (``{fraction: [editors]}``, e.g. from
    :func:`train_fraction_editors`) with :func:`run_protocol`, one method per fraction ("GMN 25%").

    ``baseline_result``: an earlier protocol result on the *same* models (same zoo, ``max_models`` and seed),
    e.g. the pruning setting's; its baseline methods are reused instead of recomputed (timing is not
    measured again). Otherwise ``baselines`` are run.
    """
    named = {_fraction_label(f): list(eds) for f, eds in sorted(editors_by_fraction.items())}
    if baseline_result is not None:
        res = run_protocol(zoo, requirement, named, baselines=[], config=config, progress=progress,
                           **{**options, "timing_models": 0})
        res = res.merged(baseline_result, baseline_result.baseline_methods)
    else:
        res = run_protocol(zoo, requirement, named, baselines=baselines, config=config, progress=progress, **options)
    fractions = {_fraction_label(f): float(f) for f in sorted(editors_by_fraction)}
    train_models = {}
    for f, eds in editors_by_fraction.items():
        n = [e.settings.get("training", {}).get("train_models") for e in eds]
        train_models[_fraction_label(f)] = n[0] if n and n[0] is not None else None
    return SampleEfficiencyResult(res, fractions, train_models)
