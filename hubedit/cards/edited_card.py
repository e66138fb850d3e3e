"""The model card of an edited model, and its Pareto position.

Two halves:

* computing: :func:`baseline_fronts` (cheap baselines on the ONE original model), :func:`pareto_position`
  (this model's point against the editor's validation front and the baselines, with the dominance sentence);
* rendering: :func:`edited_model_card` builds a ``huggingface_hub.ModelCard`` from plain data -- the
  folder's ``config.json`` (MLP config + edit record) and ``metrics.json`` (the report written by
  :func:`hubedit.publish.save_edited`) -- so ``hubedit card FOLDER`` can re-render a card without the
  original model. :func:`write_pareto_plot` draws ``pareto.png`` from the same data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .sections import (
    Card,
    CardError,
    TASK_INFO,
    framework_versions_section,
    fmt,
    human_review_section,
    limitations_section,
    markdown_table,
    method_section,
    provenance_text,
    requirement_info,
)

__all__ = [
    "ParetoPosition",
    "baseline_fronts",
    "editor_front",
    "pareto_position",
    "dominance_sentence",
    "requirement_metric",
    "edited_model_card",
    "write_pareto_plot",
    "PLOT_FILE",
]

PLOT_FILE = "pareto.png"
THIS_MODEL = "this model"
EDITOR_FRONT = "editor (validation)"
PRUNE_KEEPS = (0.9, 0.75, 0.5, 0.35, 0.2, 0.1, 0.05)


# --- the requirement metric --------------------------------------------------------------------------
def requirement_metric(requirement: str, evaluation: Mapping[str, Any]) -> float:
    """The x-coordinate of the Pareto plane for an evaluation (``kept_features`` count, ``weights_kept``
    fraction or ``eod``), as the editor's validation front measures it."""
    key = requirement_info(requirement)["metric"]
    if key == "kept_features":
        return float(len(evaluation["kept_features"]))
    return float(evaluation[key])


# --- Pareto position -----------------------------------------------------------------------------------
@dataclass
class ParetoPosition:
    """This model's point ``(requirement metric, JSD)`` among other methods' points (both minimised)."""

    requirement: str
    x_label: str
    point: tuple[float, float]
    fronts: dict[str, list[list[float]]] = field(default_factory=dict)  # method -> [[x, y], ...]
    notes: dict[str, str] = field(default_factory=dict)  # method -> how its points were obtained
    dominated_by: list[str] = field(default_factory=list)  # methods with a point that dominates this one
    sentence: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["point"] = list(self.point)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParetoPosition":
        d = dict(d)
        d["point"] = tuple(d["point"])
        return cls(**d)

    def rows(self) -> list[list[Any]]:
        """Table rows: method, requirement metric, JSD, whether that point dominates this model's."""
        px, py = self.point
        rows: list[list[Any]] = [[f"**{THIS_MODEL}**", px, py, "–"]]
        for name, pts in self.fronts.items():
            for x, y in sorted(pts):
                dom = x <= px and y <= py and (x < px or y < py)
                rows.append([name, x, y, "yes" if dom else "no"])
        return rows


def editor_front(settings: Mapping[str, Any] | None) -> list[list[float]]:
    """The editor's validation Pareto points ``[[metric, jsd], ...]`` from its settings (config.json)."""
    pts = []
    for p in (settings or {}).get("validation_front") or []:
        x, y = p.get("metric"), p.get("jsd")
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            pts.append([float(x), float(y)])
    return pts


def baseline_fronts(reference, task, requirement: str, *, split: str = "test", fit_split: str = "editing",
                    seed: int = 0) -> tuple[dict[str, list[list[float]]], dict[str, str]]:
    """Cheap baselines applied to the ONE original model ``reference``, scored on ``split``.

    Pruning: magnitude and random global pruning at :data:`PRUNE_KEEPS`. Data minimisation: FS
    (permutation importance on ``fit_split``) at every number of kept features. Fairness: ThresholdOpt
    (fairlearn) and CalEqOdds fitted on ``fit_split``. Returns ``(fronts, notes)``.
    """
    import torch

    from ..metrics.scores import equalized_odds_difference, jsd

    key = requirement_info(requirement)["metric"]
    X, y, s = task.split(split)
    with torch.no_grad():
        ref = reference.predict_proba(X).double()

    def j(probs) -> float:
        return float(jsd(ref, torch.as_tensor(probs).double()).mean())

    fronts: dict[str, list[list[float]]] = {}
    notes: dict[str, str] = {}
    if key == "weights_kept":
        from ..baselines import magnitude_prune, random_prune, sparsity

        for name, fn in (("Magnitude", magnitude_prune), ("Random", lambda m, k: random_prune(m, k, seed=seed))):
            pts = []
            for keep in PRUNE_KEEPS:
                pruned = fn(reference, keep).eval()
                with torch.no_grad():
                    pts.append([1.0 - float(sparsity(pruned)), j(pruned.predict_proba(X))])
            fronts[name] = pts
        notes["Magnitude"] = f"global magnitude pruning of the original, keep fractions {list(PRUNE_KEEPS)}"
        notes["Random"] = f"global random pruning of the original (seed {seed}), same keep fractions"
    elif key == "kept_features":
        from ..baselines import feature_selection, permutation_importance

        Xf, yf, _ = task.split(fit_split)
        imp = permutation_importance(reference, Xf, yf, n_repeats=3, seed=seed)
        pts = []
        for k in range(1, reference.config.in_features):
            masked, _ = feature_selection(reference, None, None, k, importance=imp)
            with torch.no_grad():
                pts.append([float(k), j(masked.eval().predict_proba(X))])
        fronts["FS"] = pts
        notes["FS"] = (f"feature selection by permutation importance on the {fit_split} split (3 repeats), "
                       f"k = 1..{reference.config.in_features - 1} kept features")
    elif key == "eod":
        from ..baselines import CalEqOdds, ThresholdOpt

        Xf, yf, sf = task.split(fit_split)
        for name, post in (("ThresholdOpt", ThresholdOpt(reference)), ("CalEqOdds", CalEqOdds(reference))):
            post.fit(Xf, yf, sf)
            p1 = np.asarray(post.positive_probability(X, s), dtype=np.float64)
            pred = torch.as_tensor(post.predict(X, s, seed=seed)).double().reshape(-1)
            probs = torch.stack([torch.as_tensor(1.0 - p1), torch.as_tensor(p1)], dim=-1)
            fronts[name] = [[float(equalized_odds_difference(pred, y, s)), j(probs)]]
        notes["ThresholdOpt"] = f"fairlearn ThresholdOptimizer (equalized_odds) on the original's scores, fit on {fit_split}"
        notes["CalEqOdds"] = f"calibrated equalised odds post-processing of the original, fit on {fit_split}"
    else:  # pragma: no cover - requirement_info already refused
        raise CardError(f"no baselines for requirement {requirement!r}")
    return fronts, notes


def dominance_sentence(dominated_by: list[str], requirement: str) -> str:
    label = requirement_info(requirement)["metric_label"]
    if not dominated_by:
        return (f"No other method's point dominates this model's: none is at least as good on both {label} "
                "and JSD to the original while better on one.")
    names = ", ".join(f"**{n}**" for n in dominated_by[:-1])
    names = f"{names} and **{dominated_by[-1]}**" if names else f"**{dominated_by[-1]}**"
    verb = "dominate" if len(dominated_by) > 1 else "dominates"
    return (f"Points of {names} {verb} this model's: at least as good on both {label} and JSD to the original, "
            "and better on one.")


def pareto_position(point: tuple[float, float], fronts: Mapping[str, list], notes: Mapping[str, str] | None,
                    requirement: str) -> ParetoPosition:
    """Place ``point`` among ``fronts`` and say which methods dominate it (:func:`hubedit.metrics.dominance_table`)."""
    from ..metrics.pareto import dominance_table

    clean = {str(k): [[float(x), float(y)] for x, y in np.asarray(v, dtype=np.float64).reshape(-1, 2).tolist()]
             for k, v in fronts.items()}
    table = dominance_table({THIS_MODEL: [list(point)], **clean}) if clean else None
    dominated_by = []
    if table is not None:
        for name in clean:
            value = table.loc[name, THIS_MODEL]
            if value == value and value > 0:  # NaN-safe
                dominated_by.append(name)
    info = requirement_info(requirement)
    return ParetoPosition(
        requirement=requirement, x_label=info["metric_label"], point=(float(point[0]), float(point[1])),
        fronts=clean, notes=dict(notes or {}), dominated_by=dominated_by,
        sentence=dominance_sentence(dominated_by, requirement),
    )


def write_pareto_plot(position: ParetoPosition | Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """``pareto.png``: each method's points, this model's point as a gold star."""
    from ..metrics.plots import pareto_plot

    pos = position if isinstance(position, ParetoPosition) else ParetoPosition.from_dict(position)
    return pareto_plot(pos.fronts, path, xlabel=pos.x_label, ylabel="JSD to the original (mean)", title=title,
                       highlight=pos.point, highlight_label=f"{THIS_MODEL} (test)")


# --- rendering -----------------------------------------------------------------------------------------
def _group_rate_rows(before: Mapping | None, after: Mapping) -> list[list[Any]]:
    rows = []
    for group, a in after.get("group_rates", {}).items():
        b = (before or {}).get("group_rates", {}).get(group, {}) if before else {}
        rows.append([group, a.get("n"), b.get("tpr"), a.get("tpr"), b.get("fpr"), a.get("fpr"),
                     b.get("selection_rate"), a.get("selection_rate"), b.get("accuracy"), a.get("accuracy")])
    return rows


def _feature_list(names: list[str] | None, limit: int = 40) -> str:
    if names is None:
        return "–"
    if not names:
        return "none"
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _metrics_rows(before: Mapping | None, after: Mapping) -> list[list[Any]]:
    b = before or {}
    n_feat = after.get("n_features")
    return [
        ["accuracy", b.get("accuracy"), after.get("accuracy")],
        ["JSD to the original (mean over points)", 0.0 if before else None, after.get("jsd")],
        ["equalised-odds difference", b.get("eod"), after.get("eod")],
        ["kept input features", f"{len(b['kept_features'])} of {n_feat}" if before else None,
         f"{len(after['kept_features'])} of {n_feat}"],
        ["fraction of weights kept", b.get("weights_kept"), after.get("weights_kept")],
        ["weight sparsity (exact zeros)", b.get("sparsity"), after.get("sparsity")],
        ["zero weights / weights", f"{b['n_zero_weights']} / {b['n_weights']}" if before else None,
         f"{after['n_zero_weights']} / {after['n_weights']}"],
    ]


def _eval_results(record: Mapping, report: Mapping, task_name: str):
    from huggingface_hub import EvalResult

    after = report["after"]
    info = requirement_info(record["requirement"])
    dataset_name = TASK_INFO.get(task_name, {}).get("dataset_name", task_name)
    common = dict(task_type="tabular-classification", task_name="Tabular classification", dataset_type=task_name,
                  dataset_name=dataset_name, dataset_split=report.get("split", "test"))
    out = [EvalResult(metric_type="accuracy", metric_name="Accuracy", metric_value=float(after["accuracy"]), **common)]
    if after.get("jsd") is not None:
        out.append(EvalResult(metric_type="jsd", metric_name="JSD to the original model (mean, nats)",
                              metric_value=float(after["jsd"]), **common))
    out.append(EvalResult(metric_type=info["metric_type"], metric_name=info["metric_name"],
                          metric_value=requirement_metric(record["requirement"], after), **common))
    if info["metric"] != "eod":
        out.append(EvalResult(metric_type="equalized_odds_difference", metric_name="Equalised-odds difference",
                              metric_value=float(after["eod"]), **common))
    return out


def _hub_source(source: Mapping | None) -> str | None:
    if source and source.get("repo_id") and source.get("repo_type", "model") == "model" and not source.get("model_id"):
        return str(source["repo_id"])
    return None


def _usage(repo_id: str | None, revision: str | None, n_features: int, kept: list[int], kept_names: list[str],
           task_name: str, onnx_file: str | None) -> str:
    if repo_id:
        rev = f', revision="{revision}"' if revision else ""
        fetch = ("from huggingface_hub import hf_hub_download\n"
                 f'weights = hf_hub_download("{repo_id}", "model.safetensors"{rev})')
        fetch_onnx = f'from huggingface_hub import hf_hub_download\npath = hf_hub_download("{repo_id}", "{onnx_file}"{rev})'
    else:
        fetch = 'weights = "model.safetensors"                  # in this folder'
        fetch_onnx = f'path = "{onnx_file}"                        # in this folder'
    torch_part = f"""With PyTorch and hubedit:

```python
from hubedit import EditedMLP, load_task
{fetch}
model = EditedMLP.from_bytes(open(weights, "rb").read())   # or hubedit.MLP.load(weights): same weights, no record
model.record                                               # requirement, lambda, editor, original, kept features
X, y, sensitive = load_task("{task_name}").split("test")    # float32 ({n_features} pre-processed features)
probabilities = model.predict_proba(X)
```
"""
    if onnx_file is None:
        return torch_part
    idx = ", ".join(str(i) for i in kept)
    minimised = len(kept) < n_features
    if minimised:
        feed = (f"kept = [{idx}]   # the kept columns of the task's feature matrix, in the graph's order\n"
                'logits, probabilities = session.run(["logits", "probabilities"], {"features": X[:, kept].astype(np.float32)})')
    else:
        feed = 'logits, probabilities = session.run(["logits", "probabilities"], {"features": X.astype(np.float32)})'
    note = (f"The ONNX graph takes only the {len(kept)} kept features (data minimisation), in this order: "
            f"{', '.join(f'`{n}`' for n in kept_names)}. Send it nothing else."
            if minimised else f"The ONNX graph takes all {n_features} features in the task's order.")
    if not kept_names:
        note = ("The model uses none of the features; its ONNX graph still takes one column (zero-weighted, ignored) "
                "so that it has an input.")
    onnx_part = f"""With onnxruntime only (no torch needed). {note}

```python
import numpy as np
import onnxruntime as ort
{fetch_onnx}
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
# X: float32 array (n, {n_features}) of the task's pre-processed features, e.g. load_task("{task_name}").split("test")[0].numpy()
{feed}
```

Input `features`: float32 `(batch, {len(kept)})`; outputs `logits` and `probabilities` (softmax), float32
`(batch, 2)`. Provenance and the compliance metrics of this card are also in the file's `metadata_props`
(`hubedit.export.load_onnx_metadata`).
"""
    return torch_part + "\n" + onnx_part


def edited_model_card(config: Mapping[str, Any], report: Mapping[str, Any], *, repo_id: str | None = None,
                      revision: str | None = None, license: str | None = None, model_name: str | None = None,
                      plot_file: str | None = PLOT_FILE, versions: Mapping[str, str] | None = None):
    """The ``huggingface_hub.ModelCard`` of an edited model from its ``config.json`` and ``metrics.json``.

    ``repo_id`` / ``revision`` appear in the usage snippets (else local file names); ``plot_file`` is the
    Pareto PNG linked relatively (``None``: no image).
    """
    from huggingface_hub import ModelCard, ModelCardData

    record = dict(config["edit_record"])
    schema = config.get("task_schema") or {}
    task_name = record.get("task") or schema.get("task")
    if not task_name:
        raise CardError("the edit record names no task")
    requirement = record["requirement"]
    info = requirement_info(requirement)
    after, before = report["after"], report.get("before")
    n_features = int(after["n_features"])
    feature_names = list(schema.get("feature_names") or [str(i) for i in range(n_features)])
    kept = list(after["kept_features"])
    kept_names = [feature_names[i] for i in kept]
    dropped_names = [n for i, n in enumerate(feature_names) if i not in set(kept)]
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"{task_name}-mlp-{info['tag']}")
    lam = record.get("lam")
    steps = record.get("composed") or [record]

    tags = ["hubedit", "model-editing", "edited-model", "tabular-classification", "onnx", "safetensors", task_name]
    for step in steps:
        t = requirement_info(step["requirement"])["tag"]
        if t not in tags:
            tags.append(t)
    data = ModelCardData(
        library_name="hubedit", license=license, tags=tags, pipeline_tag="tabular-classification",
        model_name=name, base_model=_hub_source(record.get("original")),
        eval_results=_eval_results(record, report, task_name),
    )
    task_desc = TASK_INFO.get(task_name, {}).get("description", task_name)
    split = report.get("split", "test")
    n_points = report.get("n_points")
    target = record.get("target")
    if target is not None:
        what = "fraction of weights kept" if record.get("requirement") == "prune" else "kept input features"
        trade = f"target = {fmt(target)} ({what}, met exactly)"
    else:
        trade = f"lambda = {fmt(lam)}" if lam is not None else "lambda not recorded"
    intro = (
        f"An MLP classifier for **{task_name}** ({task_desc}) edited for **{info['title']}** "
        f"({trade}) by a learned hubedit editor in one forward pass. The edit {info['explain']}.\n\n"
        f"Original model: {provenance_text(record.get('original'), link=True)}. Editor: "
        f"{provenance_text(record.get('editor'), link=True)}."
    )
    card = Card(metadata=data, title=name, intro=intro)

    # --- the edit
    edit_rows = []
    for k, step in enumerate(steps):
        prefix = f"step {k + 1}: " if len(steps) > 1 else ""
        edit_rows += [
            [prefix + "requirement", f"{step['requirement']} ({requirement_info(step['requirement'])['title']})"],
            [prefix + "variant", step.get("variant")],
            [prefix + ("target" if step.get("target") is not None else "lambda"),
             step.get("target") if step.get("target") is not None else step.get("lam")],
            [prefix + "editor", provenance_text(step.get("editor"))],
        ]
    edit_rows += [
        ["original model", provenance_text(record.get("original"))],
        ["task", f"{task_name} ({n_features} features, {config.get('mlp_config', {}).get('out_features', 2)} classes)"],
        ["architecture", _arch(config.get("mlp_config") or {})],
        ["edit time", f"{record['edit_seconds'] * 1000:.1f} ms" if record.get("edit_seconds") is not None else None],
        ["hubedit version", record.get("hubedit_version")],
    ]
    card.add("The edit", markdown_table(["", ""], edit_rows))

    # --- compliance metrics
    where = f"the {task_name} **{split}** split" + (f" ({n_points} points)" if n_points else "")
    if before:
        head = f"Measured on {where}; *before* is the original model, *after* this edited model."
    else:
        head = (f"Measured on {where}. The original model was not given when this card was made, so *before* "
                "and the JSD to the original are missing.")
    metrics = markdown_table(["metric", "before", "after"], _metrics_rows(before, after))
    features = (f"Kept features ({len(kept)}): {_feature_list(kept_names)}.\n\n"
                f"Dropped features ({len(dropped_names)}): {_feature_list(dropped_names)}."
                if dropped_names else f"All {n_features} input features are kept.")
    sens = schema.get("sensitive") or {}
    rates = markdown_table(
        ["group", "n", "TPR before", "TPR after", "FPR before", "FPR after", "selection before", "selection after",
         "accuracy before", "accuracy after"],
        _group_rate_rows(before, after),
    )
    eod_text = (f"Equalised-odds difference = max(|TPR gap|, |FPR gap|) between the groups of "
                f"`{sens.get('name', 'the sensitive attribute')}` (equal to fairlearn's "
                "`equalized_odds_difference`), from these per-group rates:")
    card.add("Compliance metrics", f"{head}\n\n{metrics}\n\n{features}\n\n{eod_text}\n\n{rates}")

    # --- Pareto position
    pos = report.get("pareto")
    if pos:
        p = ParetoPosition.from_dict(pos)
        image = f"![Pareto position of this model]({plot_file})\n\n" if plot_file else ""
        notes = "\n".join(f"- **{k}**: {v}" for k, v in p.notes.items())
        body = (
            f"x = {p.x_label}, y = mean JSD to the original (both lower is better). The star is this model on the "
            f"{split} split. The editor's front is its validation Pareto points (mean over the zoo's validation "
            f"models, on the task's evaluation split); the baselines were applied to this model's original and "
            f"scored on the same {split} split.\n\n{image}**{p.sentence}**\n\n"
            + (f"{notes}\n\n" if notes else "")
            + markdown_table([
                "method", p.x_label, "JSD", "dominates this model"], p.rows())
        )
        card.add("Pareto position", body)
    else:
        card.add("Pareto position", "Not computed: the original model was not given, so this model's JSD to it "
                 "is unknown.")

    # --- files, usage, versions, limitations, review
    onnx = report.get("onnx") or {}
    files = [["model.safetensors", "weights (safetensors; the edit record in its metadata)"],
             ["config.json", "MLP configuration, edit record, task schema"],
             ["metrics.json", "everything in this card as data (before / after, Pareto position)"]]
    if onnx:
        files.insert(1, [onnx.get("file", "model.onnx"),
                         f"ONNX (opset {onnx.get('opset')}), verified against onnxruntime (max abs diff "
                         f"{fmt(onnx.get('max_abs_diff'), 2)}); {onnx.get('n_zero_weights')} of "
                         f"{onnx.get('n_weights')} weight entries are zero"])
    if plot_file and pos:
        files.append([plot_file, "the Pareto position plot"])
    card.add("Files", markdown_table(["file", "content"], files))
    onnx_kept = list((report.get("onnx") or {}).get("kept_features") or kept)
    card.add("Usage", _usage(repo_id, revision, n_features, onnx_kept, kept_names, task_name,
                             onnx.get("file") if onnx else None))
    card.add("Method", method_section())
    card.add("Framework versions", framework_versions_section(versions or report.get("versions")))
    card.add("Limitations", limitations_section(requirement))
    card.add("Human review before deployment", human_review_section("edited model"))
    return ModelCard(card.render())


def _arch(cfg: Mapping[str, Any]) -> str:
    if not cfg:
        return "–"
    widths = " -> ".join(str(w) for w in (cfg.get("in_features"), *cfg.get("hidden", ()), cfg.get("out_features")))
    skips = cfg.get("skips") or []
    return (f"MLP {widths}, {cfg.get('activation')}, norm {cfg.get('norm')}, dropout {cfg.get('dropout', 0)}"
            + (f", skips {[tuple(s) for s in skips]}" if skips else ""))


def load_folder(folder: str | Path) -> tuple[dict, dict]:
    """``(config, report)`` of a saved edited-model folder (``config.json`` and ``metrics.json``)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        report = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError as exc:
        raise CardError(f"{folder} is not a saved edited model: {exc.filename} is missing") from exc
    except json.JSONDecodeError as exc:
        raise CardError(f"{folder}: cannot parse {exc.doc[:40]!r}...: {exc}") from exc
    return config, report
