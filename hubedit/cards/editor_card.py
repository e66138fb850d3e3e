"""The model card of an editor (``Editor.generate_model_card`` -> ``README.md`` of ``save_pretrained`` / ``push_to_hub``).

It documents the requirement, variant, lambda (or range), the task's feature schema, the zoo it was trained
on (repo and commit), its validation Pareto points (table and ``pareto.png``), the metanetwork and training
hyper-parameters, usage, limitations and the need for human review.

The plot travels with the card: :class:`EditorModelCard` is a ``ModelCard`` whose ``save(path)`` also
writes ``pareto.png`` next to ``path`` -- the mixin's ``save_pretrained`` calls exactly that, so the PNG
lands in the same folder (and the same single commit of ``push_to_hub``) as the README that links it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .sections import (
    Card,
    TASK_INFO,
    framework_versions_section,
    fmt,
    human_review_section,
    limitations_section,
    markdown_table,
    method_section,
    provenance_text,
    requirement_info,
    validate_card,
)

__all__ = ["EditorModelCard", "build_editor_card", "PLOT_FILE"]

PLOT_FILE = "pareto.png"


class EditorModelCard(ModelCard):
    """A ``ModelCard`` that carries extra files (the Pareto PNG) and writes them beside the README on ``save``."""

    def __init__(self, content: str, ignore_metadata_errors: bool = False, files: Mapping[str, bytes] | None = None):
        super().__init__(content, ignore_metadata_errors=ignore_metadata_errors)
        self.files: dict[str, bytes] = dict(files or {})

    def save(self, filepath: str | Path) -> None:
        filepath = Path(filepath)
        filepath.parent.mkdir(parents=True, exist_ok=True)
        for name, blob in self.files.items():
            (filepath.parent / name).write_bytes(blob)
        super().save(filepath)


def _front_png(points: list[dict], label: str, lam_range) -> bytes | None:
    from ..metrics.plots import pareto_figure

    pts = [[float(p["metric"]), float(p["jsd"])] for p in points
           if p.get("metric") is not None and p.get("jsd") is not None
           and math.isfinite(p["metric"]) and math.isfinite(p["jsd"])]
    if not pts:
        return None
    name = "editor, conditioned" if lam_range else "editor"
    fig = pareto_figure({name: pts}, xlabel=label, ylabel="mean JSD to the original",
                        title="Validation Pareto points")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=150, format="png")
    return buf.getvalue()


def build_editor_card(editor, *, repo_id: str | None = None, license: str | None = "apache-2.0",
                with_plot: bool = True, extra_sections: Mapping[str, str] | None = None, **_: Any) -> EditorModelCard:
    """The card of ``editor`` (an :class:`hubedit.Editor`); ``repo_id`` goes into the usage snippet;
    ``extra_sections`` (title -> markdown) are added after the usage, e.g. test results measured elsewhere."""
    s = editor.settings
    requirement, task_name = s["requirement"], s["task"]
    info = requirement_info(requirement)
    schema = s.get("feature_schema") or {}
    zoo = s.get("zoo") or {}
    training = s.get("training") or {}
    front = list(s.get("validation_front") or [])
    lam, lam_range, target_range = s.get("lam"), s.get("lam_range"), s.get("target_range")
    preference = s.get("preference")

    base = editor._hub_mixin_info.model_card_data  # shared by the class: copy, never change in place
    tags = list(dict.fromkeys([*(base.tags or []), info["tag"], task_name, "tabular-classification"]))
    datasets = [zoo["repo_id"]] if zoo.get("repo_id") else None
    eval_results = _eval_results(front, info, task_name, zoo)
    name = repo_id.split("/")[-1] if repo_id else f"{s['variant']}-{task_name}-editor"
    data = ModelCardData(library_name="hubedit", license=license or base.license, tags=tags, datasets=datasets,
                         model_name=name, eval_results=eval_results or None)

    if target_range is not None:
        target_name = editor.requirement.target_name
        trade = (f"target-conditioned: choose the {target_name} in [{fmt(target_range[0])}, {fmt(target_range[1])}] at "
                 "edit time, and every edited model meets it exactly")
    elif preference is not None:
        method = (s.get("training") or {}).get("scalarisation", "epo")
        trade = (f"trained by {'EPO search' if method == 'epo' else 'linear scalarisation'} for the preference "
                 f"(JSD, requirement) = ({fmt(preference[0])}, {fmt(preference[1])})")
    elif lam is not None:
        trade = f"trained for lambda = {fmt(lam)}"
    else:
        trade = f"lambda-conditioned over [{fmt(lam_range[0])}, {fmt(lam_range[1])}] (choose lambda at edit time)"
    intro = (
        f"A learned **editor** for **{info['title']}** on **{task_name}** models ({trade}). It reads the weights of "
        f"an MLP classifier of this task and, in one forward pass, writes edited weights. The edit {info['explain']}. "
        "The editor was trained to keep the model's function close to the original (small JSD)."
    )
    card = Card(metadata=data, title=name, intro=intro)
    card.add("Editor", markdown_table(["", ""], [
        ["requirement", f"{requirement} ({info['title']})"],
        ["variant", s.get("variant")],
        ["target range" if target_range is not None else "preference" if preference is not None else "lambda",
         f"{target_range} ({editor.requirement.target_name})" if target_range is not None
         else preference if preference is not None else lam if lam is not None else f"range {lam_range}"],
        ["requirement metric", info["metric_label"]],
        ["mask temperature", s.get("temperature")],
        ["refit after the edit", "none" if s.get("refit") is None else
         f"layer-wise ridge refit to the original on its {(s.get('metanet') or {}).get('calibration')} calibration "
         f"points, ridge {fmt(s['refit'])} (closed form; pruned weights and dropped features stay zero)"
         + ("; per model the better of the editor's mask and the same per-layer counts re-chosen for the refit "
            "(JSD on the calibration points)" if s.get("reselect") else "")
         + (f"; at up to {s['greedy_features']} kept features, the features are chosen one at a time by the refit's "
            "JSD to the original on the calibration points (greedy forward selection) instead of by the editor"
            if s.get("greedy_features") else "")],
        ["trained on zoo", provenance_text(zoo, repo_type="dataset", link=True)],
        ["hubedit version", s.get("hubedit_version")],
    ]))

    # task schema
    names = schema.get("feature_names") or []
    sens = schema.get("sensitive") or {}
    desc = TASK_INFO.get(task_name, {}).get("description", task_name)
    card.add("Task and feature schema", (
        f"{desc}. Models to edit must take **{schema.get('n_features', '?')} input features** in this order and give "
        f"{schema.get('n_classes', 2)} classes; anything else is refused with an error. Sensitive attribute: "
        f"`{sens.get('name', '?')}` (groups {', '.join(f'`{g}`' for g in sens.get('groups', []))}).\n\n"
        + markdown_table(["index", "feature"], list(enumerate(names)))
    ))

    # validation front
    files: dict[str, bytes] = {}
    if front:
        key = "target" if target_range is not None else "preference" if preference is not None else "lam"
        rows = [[p.get(key), p.get("metric"), p.get("jsd")] for p in front]
        table = markdown_table([{"lam": "lambda"}.get(key, key), info["metric_label"], "JSD"], rows)
        image = ""
        if with_plot:
            try:
                png = _front_png(front, info["metric_label"], lam_range or target_range)
            except Exception as exc:  # a plot must never cost the card (or the weights)
                png, image = None, f"(The plot could not be drawn: {exc}.)\n\n"
            if png:
                files[PLOT_FILE] = png
                image = f"![Validation Pareto points]({PLOT_FILE})\n\n"
        card.add("Validation Pareto points", (
            "Hard edits of the zoo's **validation** models, scored on the task's *evaluation* split (points the editor "
            f"never trained on): mean {info['metric_label']} (x) and mean JSD to the original models (y), both lower "
            f"is better. The editor was selected on these"
            + (" (recorded in training, before the refit this editor applies after every edit)" if s.get("refit") is not None else "")
            + f".\n\n{image}{table}"
        ))
    else:
        card.add("Validation Pareto points", "None recorded (the editor was not trained with hubedit's training loop).")

    # hyper-parameters
    net = s.get("metanet") or {}
    card.add("Metanetwork", markdown_table(["hyper-parameter", "value"], sorted((k, _plain(v)) for k, v in net.items())))
    keep = ("steps", "scalarisation", "preference", "models_per_step", "points_per_step", "lr", "lr_schedule", "warmup_steps", "weight_decay", "grad_clip", "hidden", "layers",
            "eval_every", "zoo_fraction", "seed", "best_step", "best_objective", "train_models", "processes", "seconds")
    train_rows = [(k, _plain(training[k])) for k in keep if k in training]
    if train_rows:
        objective = ("`JSD(f(x), f'(x))` at a target level drawn per model and met exactly (top-k masks with a "
                     "straight-through gradient)" if target_range is not None
                     else "`beta_1 JSD + beta_2 R(theta')` with per-step weights from the preference"
                     if preference is not None else "`JSD(f(x), f'(x)) + lambda * R(theta')`")
        card.add("Training", f"Objective: {objective} with points from the task's *editing* "
                 "split; best state chosen on the validation objective.\n\n"
                 + markdown_table(["setting", "value"], train_rows))

    # usage
    where = f'"{repo_id}"' if repo_id else '"path/to/this/folder"'
    zoo_ref = f'"{zoo["repo_id"]}"' if zoo.get("repo_id") else '"<zoo repo>"'
    if target_range is not None:
        mid = target_range[0] + (target_range[1] - target_range[0]) / 2
        lam_arg = f", target={fmt(mid, 3) if requirement == 'prune' else int(round(mid))}"
    else:
        lam_arg = "" if lam is not None or preference is not None else f", lam={fmt(math.sqrt(lam_range[0] * lam_range[1]), 3)}"
    card.add("Usage", f"""```python
from hubedit import Editor, Zoo, load_task
editor = Editor.from_pretrained({where})   # pin revision="<commit>" for reproducibility
model = Zoo.from_hub({zoo_ref})["test"][0].to_module()   # or MLP.from_torch(...) / MLP.load(...)
edited = editor.edit(model{lam_arg})   # one forward pass
report = edited.evaluate(load_task("{task_name}"), split="test", reference=model)
edited.push_to_hub("<your repo>", reference=model, editor=editor)   # weights + ONNX + generated card, one commit
```

From a shell: `hubedit edit --editor {where.strip('"')} --model model.safetensors --out edited/ --push <your repo>`.""")
    for title, body in (extra_sections or {}).items():
        card.add(title, body)
    card.add("Method", method_section())
    card.add("Framework versions", framework_versions_section())
    card.add("Limitations", limitations_section(requirement, kind="editor"))
    card.add("Human review before deployment", human_review_section("editor"))
    out = EditorModelCard(card.render(), files=files)
    validate_card(out)  # local YAML check; a bad card raises here, after the weights were written
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "–"
    return v


def _eval_results(front: list[dict], info: dict, task_name: str, zoo: Mapping) -> list:
    from huggingface_hub import EvalResult

    out = []
    dataset_type = zoo.get("repo_id") or task_name
    dataset_name = f"{TASK_INFO.get(task_name, {}).get('dataset_name', task_name)} MLP zoo (validation models)"
    for p in front:
        if not all(isinstance(p.get(k), (int, float)) and math.isfinite(p[k]) for k in ("metric", "jsd")):
            continue
        common = dict(task_type="tabular-classification", dataset_type=dataset_type, dataset_name=dataset_name,
                      dataset_split="validation", dataset_revision=zoo.get("revision"),
                      metric_config=f"target={p['target']}" if "target" in p
                      else f"preference={p['preference']}" if "preference" in p else f"lambda={p.get('lam')}")
        out.append(EvalResult(metric_type=info["metric_type"], metric_name=f"mean {info['metric_label']}",
                              metric_value=float(p["metric"]), **common))
        out.append(EvalResult(metric_type="jsd", metric_name="mean JSD to the original models",
                              metric_value=float(p["jsd"]), **common))
    return out
