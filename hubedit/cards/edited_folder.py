"""An edited model's folder: written, its card rendered, and published to the Hub in one commit.

This is the code behind ``EditedMLP.save_pretrained`` / ``EditedMLP.push_to_hub`` (and, re-exported, behind
:mod:`hubedit.publish`). It sits below :mod:`hubedit.editor` -- as ``huggingface_hub``'s ``ModelHubMixin`` sits
below the models that use it -- and never imports it: it works through what the edited model exposes
(``record``, ``kept_features``, ``config``, ``save``, ``evaluate``, and its class's ``wrap``).

:func:`save_edited` writes, in this order (weights first, so that nothing later can lose them)::

    model.safetensors   the edited weights (safetensors; the edit record in its metadata)
    config.json         MLP config + edit record + task schema
    metrics.json        the report: before / after on the test split, Pareto position, ONNX figures, versions
    model.onnx          export_onnx(kept_features=...) verified against onnxruntime; provenance + metrics in metadata
    pareto.png          this model's point among the editor's validation front and the baselines' points
    README.md           the generated model card (YAML checked locally)

:func:`push_edited` prepares that folder FIRST (a temporary one unless ``folder`` is given), validates the card
with the endpoint's ``/api/validate-yaml``, and only then publishes it with :func:`hubedit.hub.publish_folder`
as ONE commit: an upload either lands whole or leaves the Hub as it was (a repo or branch the push created is
removed again). When anything fails, the folder is kept and the error says where it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, HubeditError
from ..mlp import MLP

__all__ = [
    "PublishError",
    "SavedEdited",
    "evaluate_edit",
    "build_report",
    "save_edited",
    "render_card",
    "push_edited",
    "publish_edited_folder",
    "FILES",
]

CONFIG_FORMAT = "hubedit.edited-mlp"
CONFIG_VERSION = 1
REPORT_FORMAT = "hubedit.edited-report"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
FILES = (WEIGHTS_FILE, "config.json", "metrics.json", ONNX_FILE, "pareto.png", "README.md")


class PublishError(HubeditError, RuntimeError):
    """Saving or publishing an edited model failed; ``folder`` holds what was written (weights first)."""

    def __init__(self, message: str, folder: Path | None = None):
        super().__init__(message)
        self.folder = folder


@dataclass
class SavedEdited:
    """What :func:`save_edited` wrote."""

    folder: Path
    files: list[str]
    report: dict
    config: dict
    onnx: Any = None  # hubedit.export.OnnxExport
    card: Any = None  # huggingface_hub.ModelCard
    seconds: dict[str, float] = field(default_factory=dict)


# --- evaluation ------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


def _check_edited(edited, caller: str) -> None:
    """``edited`` must be an edited model: an MLP whose class has ``kept_features`` and can ``wrap`` a plain
    MLP with an edit record (``hubedit.EditedMLP``; this module does not import it)."""
    cls = type(edited)
    if not (isinstance(edited, MLP) and callable(getattr(cls, "wrap", None)) and hasattr(cls, "kept_features")):
        raise TypeError(f"{caller} expects an EditedMLP (what Editor.edit returns), got {type(edited).__name__}")


def _zeros(model) -> tuple[int, int]:
    zeros = sum(int((m.weight == 0).sum()) for m in [*model.layers, *model.skips.values()])
    return zeros, int(model.n_weights)


@torch.no_grad()
def _evaluate_one(model, edited_type: type, task, split: str, kept: list[int] | None, reference=None) -> dict:
    """Metrics of one model (``EditedMLP.evaluate``) with group rates keyed by group name; a plain MLP (the
    original) is evaluated through ``edited_type.wrap``."""
    wrapped = model if isinstance(model, edited_type) else edited_type.wrap(model, {"kept_features": kept})
    ev = wrapped.evaluate(task, split=split, reference=reference)
    names = list(task.sensitive_groups)
    zeros, total = _zeros(model)
    out = {
        "accuracy": ev["accuracy"],
        "eod": ev["eod"],
        "group_rates": {names[int(g)] if int(g) < len(names) else str(g): r for g, r in ev["group_rates"].items()},
        "weights_kept": ev["weights_kept"],
        "sparsity": zeros / total if total else 0.0,
        "n_zero_weights": zeros,
        "n_weights": total,
        "kept_features": list(ev["kept_features"]),
        "kept_feature_names": [task.feature_names[i] for i in ev["kept_features"]],
        "n_features": int(model.config.in_features),
    }
    if reference is not None:
        out["jsd"] = ev["jsd"]
    return out


def evaluate_edit(edited, task, reference=None, *, split: str = "test") -> dict:
    """``{"split", "n_points", "before", "after"}``: the original (``reference``) and the edited model on
    ``split`` -- accuracy, JSD to the original (after), EOD with per-group rates, kept features, sparsity."""
    _check_edited(edited, "evaluate_edit")
    X, _, _ = task.split(split)
    after = _evaluate_one(edited, type(edited), task, split, edited.kept_features, reference)
    before = _evaluate_one(reference, type(edited), task, split, None) if reference is not None else None
    return {"split": split, "n_points": int(len(X)), "before": before, "after": after}


def build_report(edited, task, reference=None, *, editor=None, editor_settings: Mapping | None = None,
                 baseline_fronts: Mapping[str, list] | None = None, split: str = "test",
                 compute_baselines: bool = True) -> dict:
    """The data behind the card (``metrics.json``): :func:`evaluate_edit` plus the Pareto position.

    The editor's validation front comes from ``editor.settings`` (or ``editor_settings``); baselines are
    ``baseline_fronts`` (``{name: [[metric, jsd], ...]}``) or, when not given and ``compute_baselines``,
    computed cheaply on ``reference`` (:func:`hubedit.cards.baseline_fronts`).
    """
    from .edited_card import EDITOR_FRONT, editor_front, pareto_position, requirement_metric
    from .edited_card import baseline_fronts as compute_fronts
    from .sections import framework_versions

    record = edited.record
    requirement = record["requirement"]
    report: dict[str, Any] = {"format": REPORT_FORMAT, "version": 1, "task": task.name,
                              "requirement": requirement, **evaluate_edit(edited, task, reference, split=split)}
    report["pareto"] = None
    if reference is not None:
        fronts: dict[str, list] = {}
        notes: dict[str, str] = {}
        settings = editor.settings if editor is not None else editor_settings
        ef = editor_front(settings)
        if ef:
            fronts[EDITOR_FRONT] = ef
            notes[EDITOR_FRONT] = "the editor's validation Pareto points (its config.json), mean over the zoo's validation models"
        if baseline_fronts is not None:
            fronts.update({str(k): v for k, v in baseline_fronts.items()})
            notes.update({str(k): "given by the caller" for k in baseline_fronts})
        elif compute_baselines:
            bf, bn = compute_fronts(reference, task, requirement, split=split)
            fronts.update(bf)
            notes.update(bn)
        after = report["after"]
        point = (requirement_metric(requirement, after), float(after["jsd"]))
        report["pareto"] = pareto_position(point, fronts, notes, requirement).to_dict()
    report["versions"] = framework_versions()
    return _jsonable(report)


# --- the folder ------------------------------------------------------------------------------------------
def _config(edited, task) -> dict:
    from ..version import __version__

    return {
        "format": CONFIG_FORMAT,
        "format_version": CONFIG_VERSION,
        "library_name": "hubedit",
        "model_type": "hubedit-mlp",
        "mlp_config": edited.config.to_dict(),
        "edit_record": _jsonable(edited.record),
        "task_schema": task.schema(),
        "weights": WEIGHTS_FILE,
        "onnx": ONNX_FILE,
        "hubedit_version": __version__,
    }


def _onnx_metadata(record: Mapping, report: Mapping) -> dict:
    after = dict(report["after"])
    compliance = {k: after[k] for k in ("accuracy", "jsd", "eod", "weights_kept", "sparsity", "group_rates")
                  if after.get(k) is not None}
    compliance["kept_feature_names"] = after["kept_feature_names"]
    meta = {
        "hubedit_edit_record": json.dumps(_jsonable(record), sort_keys=True),
        "requirement": str(record.get("requirement")),
        "lambda": record.get("lam"),
        "target": record.get("target"),
        "editor": record.get("editor") or {},
        "original": record.get("original") or {},
        "task": str(report.get("task")),
        "compliance_split": str(report.get("split")),
        "compliance_metrics": compliance,
    }
    if report.get("before"):
        b = report["before"]
        meta["original_metrics"] = {k: b[k] for k in ("accuracy", "eod", "weights_kept", "sparsity")}
    if report.get("pareto"):
        meta["pareto_dominated_by"] = report["pareto"]["dominated_by"]
    return meta


def render_card(folder: str | os.PathLike, *, repo_id: str | None = None, revision: str | None = None,
                license: str | None = None, model_name: str | None = None, plot: bool = True):
    """(Re)write ``README.md`` (and ``pareto.png``) of a saved folder from its ``config.json`` and
    ``metrics.json`` alone; the YAML is checked locally. Returns the ``ModelCard``."""
    from . import edited_card
    from .sections import validate_card

    folder = Path(folder)
    config, report = edited_card.load_folder(folder)
    plot_file = None
    if plot and report.get("pareto"):
        edited_card.write_pareto_plot(
            report["pareto"], folder / edited_card.PLOT_FILE,
            title=f"{config['edit_record'].get('requirement')} edit on {report.get('task')}: Pareto position")
        plot_file = edited_card.PLOT_FILE
    card = edited_card.edited_model_card(config, report, repo_id=repo_id, revision=revision, license=license,
                                         model_name=model_name, plot_file=plot_file)
    validate_card(card)
    card.save(folder / "README.md")
    return card


def save_edited(
    edited,
    folder: str | os.PathLike,
    *,
    task=None,
    reference=None,
    editor=None,
    baseline_fronts: Mapping[str, list] | None = None,
    split: str = "test",
    repo_id: str | None = None,
    revision: str | None = None,
    license: str | None = None,
    model_name: str | None = None,
    original: Mapping[str, Any] | None = None,
    compute_baselines: bool = True,
    onnx: bool = True,
) -> SavedEdited:
    """Write an edited model's folder (see the module docstring); weights and config first.

    ``task``: a :class:`~hubedit.Task` (default: the edit record's). ``reference``: the original model --
    without it the card has no *before* column, no JSD and no Pareto position. ``editor``: the editor that
    made the edit (its validation front goes into the Pareto position). ``baseline_fronts``: other methods'
    points ``{name: [[metric, jsd], ...]}`` (default: computed on ``reference``). ``original``: provenance
    of the original model, overriding ``edited.record["original"]``. ``repo_id`` / ``revision`` appear in
    the card's usage. Raises :class:`PublishError` (with ``folder``) when anything after the weights fails.
    """
    from ..tasks import load_task

    _check_edited(edited, "save_edited")
    record = dict(getattr(edited, "record", None) or {})
    if "requirement" not in record:
        raise ConfigError("the edited model's record has no 'requirement': was it made by an Editor?")
    if original is not None:
        record["original"] = dict(original)
    if task is None:
        if not record.get("task"):
            raise ConfigError("the edit record names no task: pass task=load_task(...)")
        task = load_task(record["task"])
    elif isinstance(task, str):
        task = load_task(task)
    if edited.config.in_features != task.n_features:
        raise ConfigError(f"the model takes {edited.config.in_features} features, task {task.name!r} has {task.n_features}")
    record.setdefault("task", task.name)
    edited = type(edited).wrap(edited, record)  # a copy carrying the (possibly completed) record
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES[2:]:  # files of an earlier save that this one may not rewrite (ONNX off, no Pareto plot)
        (folder / name).unlink(missing_ok=True)
    seconds: dict[str, float] = {}

    # 1. weights and config: nothing below may lose them
    t0 = time.perf_counter()
    edited.save(folder / WEIGHTS_FILE)
    config = _config(edited, task)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    seconds["weights"] = time.perf_counter() - t0
    written = [WEIGHTS_FILE, "config.json"]
    step = "the evaluation"
    try:
        t0 = time.perf_counter()
        report = build_report(edited, task, reference, editor=editor, baseline_fronts=baseline_fronts, split=split,
                              compute_baselines=compute_baselines)
        seconds["report"] = time.perf_counter() - t0
        info = None
        if onnx:
            step = "the ONNX export"
            t0 = time.perf_counter()
            from ..export import export_onnx

            kept = edited.kept_features
            if kept is not None and len(kept) == 0:
                kept = [0]  # a model that uses no feature: keep one (zero-weighted) input so the graph has one
            info = export_onnx(edited, folder / ONNX_FILE, kept_features=kept, feature_names=task.feature_names,
                               metadata=_onnx_metadata(record, report), verify_data=task.split(split)[0])
            report["onnx"] = {
                "file": ONNX_FILE, "inputs": list(info.input_names), "kept_features": list(info.kept_features),
                "max_abs_diff": info.max_abs_diff, "n_zero_weights": info.n_zero_weights,
                "n_weights": info.n_weights, "sparsity": info.sparsity, "opset": info.opset,
            }
            written.append(ONNX_FILE)
            seconds["onnx"] = time.perf_counter() - t0
        step = "the model card"
        t0 = time.perf_counter()
        (folder / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
        written.append("metrics.json")
        card = render_card(folder, repo_id=repo_id, revision=revision, license=license, model_name=model_name)
        if report.get("pareto"):
            written.append("pareto.png")
        written.append("README.md")
        seconds["card"] = time.perf_counter() - t0
    except HubeditError as exc:
        raise PublishError(f"{step} failed ({exc}); the weights and config are safe in {folder}", folder) from exc
    except Exception as exc:
        raise PublishError(
            f"{step} failed ({type(exc).__name__}: {exc}); the weights and config are safe in {folder}", folder
        ) from exc
    return SavedEdited(folder=folder, files=written, report=report, config=config, onnx=info, card=card,
                       seconds=seconds)


# --- the Hub -----------------------------------------------------------------------------------------------
def push_edited(
    edited,
    repo_id: str,
    *,
    task=None,
    reference=None,
    editor=None,
    baseline_fronts: Mapping[str, list] | None = None,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    folder: str | os.PathLike | None = None,
    validate_remote: bool = True,
    **save_kwargs,
):
    """Publish an edited model to a Hub model repo as ONE commit; return the ``CommitInfo``.

    The folder is prepared first (in a temporary folder, or ``folder``), and the card is validated with the
    endpoint (``validate_remote``), before any upload: a card or ONNX failure raises :class:`PublishError`
    without touching the Hub and keeps the folder (with the weights) at the path it names. ``revision``: the
    branch to commit to (created from main when missing). An upload failure commits nothing and removes the
    repo or branch this push created (:class:`hubedit.hub.HubError` says what state the Hub is in; the
    prepared folder is kept and named). A temporary folder is removed after a successful push.
    """
    from ..hub import check_repo_id

    check_repo_id(repo_id)  # before minutes of preparation
    own = folder is None
    where = Path(tempfile.mkdtemp(prefix="hubedit-edited-")) if own else Path(folder)
    save_edited(edited, where, task=task, reference=reference, editor=editor, baseline_fronts=baseline_fronts,
                repo_id=repo_id, revision=revision, **save_kwargs)
    info = publish_edited_folder(where, repo_id, revision=revision, private=private, token=token,
                                 commit_message=commit_message, validate_remote=validate_remote)
    if own:
        shutil.rmtree(where, ignore_errors=True)
    return info


def publish_edited_folder(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None,
                          private: bool | None = None, token: str | bool | None = None,
                          commit_message: str | None = None, validate_remote: bool = True):
    """Publish a folder written by :func:`save_edited` as ONE commit (card validated with the endpoint
    first, :func:`hubedit.hub.publish_folder` after); return the ``CommitInfo``. On failure the folder is left
    as it is and the error names it."""
    from huggingface_hub import ModelCard

    from ..hub import HubError, publish_folder, timeouts
    from .sections import validate_card

    where = Path(folder)
    missing = [f for f in (WEIGHTS_FILE, "config.json", "README.md") if not (where / f).is_file()]
    if missing:
        raise PublishError(f"{where} is not a complete edited-model folder: missing {missing}", where)
    card = ModelCard.load(where / "README.md")
    if validate_remote:
        try:
            with timeouts():
                validate_card(card, remote=True)
        except HubError as exc:  # the endpoint, not the card: say so, keep the folder
            raise type(exc)(f"{exc}; nothing was uploaded; the prepared folder (weights, ONNX, card) is kept at "
                            f"{where}") from exc
        except HubeditError as exc:
            raise PublishError(f"the card did not validate ({exc}); nothing was uploaded; the prepared folder is "
                               f"{where}", where) from exc
    record = json.loads((where / "config.json").read_text()).get("edit_record", {})
    message = commit_message or (
        f"Upload {record.get('requirement')}-edited {record.get('task')} MLP (lambda={record.get('lam')}) with hubedit"
    )
    try:
        return publish_folder(where, repo_id, repo_type="model", revision=revision, commit_message=message,
                              token=token, private=private, create_branch=revision is not None)
    except HubError as exc:
        raise type(exc)(f"{exc}; the prepared folder (weights, ONNX, card) is kept at {where}") from exc
