"""``Editor``: a trained graph metanetwork for one requirement and task, with the Hub mixin contract.

``config.json`` (written by ``save_pretrained`` / ``push_to_hub``) carries everything needed to rebuild and
check the editor: requirement, variant, lambda (or lambda range), the task and its feature schema, the zoo
it was trained on, the metanetwork's hyper-parameters and the validation Pareto points. Weights are
``model.safetensors`` only, loaded with strict key checking; nothing is ever unpickled.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..version import __version__
from ..errors import ConfigError, CorruptFileError, FeatureMismatchError, UnsupportedArchitectureError
from ..graph import batch_to_mlps, mlps_to_batch
from ..metanet.model import GraphMetanetwork
from ..mlp import MLP
from ..mlp.module import check_header_tensors, read_safetensors_header
from ..requirements import Edit, get_requirement
from .editing import folded_values, greedy_input_masks, refit_edit, run_edit
from .edited import EditedMLP

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# safetensors metadata key holding the settings the weights were saved for (compared with config.json on load)
SAVED_SETTINGS_KEY = "hubedit_editor"
# the settings that decide what the weights compute: a config.json that changes any of them does not belong
# to the weights (zoo, validation front, training record and version are provenance)
WEIGHT_BOUND_SETTINGS = (
    "requirement", "variant", "task", "lam", "lam_range", "temperature", "feature_schema", "metanet", "target_range",
    "preference",
)


class Editor(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="hubedit",
    tags=["hubedit", "model-editing", "graph-metanetwork"],
    license="apache-2.0",
):
    """A learned editor. ``editor.edit(model)`` returns the edited model in one forward pass.

    Args:
        requirement: ``"minimise"``, ``"fairness"`` or ``"prune"``.
        task: task name (``"adult"``, ``"bank"``).
        variant: the requirement's variant (default: its first).
        lam: the trade-off weight it was trained for; or
        lam_range: ``[low, high]`` for a lambda-conditioned editor (pick lambda at edit time); or
        target_range: ``[low, high]`` for a target-conditioned editor: pick the requirement level at edit time
            (``edit(model, target=0.2)``: keep exactly 20 % of the weights; for data minimisation a number of
            kept features) and the edit meets it exactly on every model.
        feature_schema: the task's schema (``Task.schema()``); edits of models with another input size are refused.
        metanet: keyword arguments of :class:`GraphMetanetwork`.
        temperature: softmax temperature of the mask heads.
        zoo: the zoo it was trained on (``{"repo_id", "revision"}`` or ``{"path"}``).
        validation_front: validation Pareto points ``[{"lam", "metric", "jsd"}, ...]``.
        training: training hyper-parameters and figures (for provenance).
        refit: ridge of a layer-wise refit after each edit (:func:`hubedit.mlp.refit.refit`): the kept weights
            are re-solved in closed form to reproduce the original model's pre-activations on the editor's
            calibration batch. Needs ``metanet["calibration"]``; pruning and data minimisation only (a refit
            to the original would undo a fairness edit). Not bound to the weights: an edit-time setting.
        reselect: with ``refit``, pruning only: each model gets the better (JSD to the original on the calibration
            batch) of the refit of the editor's mask and of the refit of a mask with the editor's number of weights
            in every layer, re-chosen for the refit (:func:`hubedit.editor.editing.refit_edit`). An edit-time
            setting, like ``refit``.
        greedy_features: with ``refit``, data minimisation only: asked for at most this many features, the editor
            keeps the features chosen one at a time by the refit's JSD to the original on the calibration batch
            (:func:`hubedit.editor.editing.greedy_input_masks`) instead of its own; 0 (default) never. An
            edit-time setting, chosen on validation models (``scripts/select_refit.py --greedy``).
    """

    def __init__(
        self,
        *,
        requirement: str,
        task: str,
        variant: str | None = None,
        lam: float | None = None,
        lam_range: list[float] | None = None,
        feature_schema: dict | None = None,
        metanet: dict | None = None,
        temperature: float = 1.0,
        zoo: dict | None = None,
        validation_front: list[dict] | None = None,
        training: dict | None = None,
        hubedit_version: str = __version__,
        target_range: list[float] | None = None,
        preference: list[float] | None = None,
        refit: float | None = None,
        reselect: bool = False,
        greedy_features: int = 0,
    ):
        super().__init__()
        if sum(v is not None for v in (lam, lam_range, target_range, preference)) != 1:
            raise ConfigError(
                f"an editor needs exactly one of lam (a trained trade-off), lam_range (lambda-conditioned), "
                f"target_range (target-conditioned) or preference (trained by EPO / linear scalarisation for a "
                f"preference over (JSD, requirement)); got lam={lam!r}, lam_range={lam_range!r}, "
                f"target_range={target_range!r}, preference={preference!r}"
            )
        if preference is not None:
            if not (isinstance(preference, (list, tuple)) and len(preference) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                            for v in preference)):
                raise ConfigError(f"preference must be two positive finite numbers (r_jsd, r_requirement), got {preference!r}")
            preference = [float(v) for v in preference]
        if lam is not None and not (lam >= 0 and math.isfinite(lam)):
            raise ConfigError(f"lam must be a finite number >= 0, got {lam!r}")
        if lam_range is not None:
            if len(lam_range) != 2 or not (0 < lam_range[0] < lam_range[1] and math.isfinite(lam_range[1])):
                raise ConfigError(f"lam_range must be [low, high] with 0 < low < high, both finite, got {lam_range!r}")
            lam_range = [float(v) for v in lam_range]
        if not math.isfinite(temperature):
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.requirement = get_requirement(requirement, variant, temperature=temperature)
        from ..tasks import load_task

        schema = feature_schema or load_task(task).schema()
        if schema.get("task") != task:
            raise ConfigError(f"feature_schema is for task {schema.get('task')!r}, editor is for {task!r}")
        net_kwargs = dict(metanet or {})
        net_kwargs.setdefault("max_in", schema["n_features"])
        net_kwargs.setdefault("max_out", schema.get("n_classes", 2))
        if net_kwargs["max_in"] < schema["n_features"] or net_kwargs["max_out"] < schema.get("n_classes", 2):
            raise ConfigError(
                f"metanet max_in={net_kwargs['max_in']}, max_out={net_kwargs['max_out']} do not cover the task's "
                f"{schema['n_features']} features and {schema.get('n_classes', 2)} classes"
            )
        if target_range is not None:
            target_range = list(self.requirement.check_target_range(target_range, schema["n_features"]))
        if net_kwargs.get("calibration_rounds") and (requirement != "prune" or target_range is None):
            raise ConfigError("calibration_rounds (iterative saliency towards the kept fraction) is for target-"
                              f"conditioned pruning editors; got requirement {requirement!r}, target_range {target_range!r}")
        net_kwargs["cond_dim"] = 1 if lam_range is not None or target_range is not None else 0
        if refit is not None:
            if isinstance(refit, bool) or not (isinstance(refit, (int, float)) and math.isfinite(refit) and refit > 0):
                raise ConfigError(f"refit must be a finite ridge > 0 (e.g. 0.03), got {refit!r}")
            if requirement not in ("prune", "minimise"):
                raise ConfigError(f"refit is for pruning and data minimisation editors; a refit to the original "
                                  f"would undo a {requirement!r} edit")
            if not net_kwargs.get("calibration"):
                raise ConfigError("refit needs the editor's calibration batch: set metanet calibration (points)")
            refit = float(refit)
        if not isinstance(reselect, bool):
            raise ConfigError(f"reselect must be true or false, got {reselect!r}")
        if reselect and (refit is None or requirement != "prune"):
            raise ConfigError(f"reselect re-chooses a pruning mask for the refit: it needs requirement 'prune' and a "
                              f"refit, got requirement {requirement!r}, refit {refit!r}")
        if isinstance(greedy_features, bool) or not isinstance(greedy_features, int) or greedy_features < 0:
            raise ConfigError(f"greedy_features must be a whole number >= 0, got {greedy_features!r}")
        if greedy_features and (refit is None or requirement != "minimise" or target_range is None):
            raise ConfigError(f"greedy_features chooses input features by the refit: it needs requirement 'minimise', "
                              f"a refit and a target_range (a number of features to keep), got requirement "
                              f"{requirement!r}, refit {refit!r}, target_range {target_range!r}")
        self.metanet = GraphMetanetwork(**net_kwargs)
        if self.metanet.calibration_inputs is not None:  # a fixed, seeded draw from the task's editing split
            x_edit = load_task(task).split("editing")[0]
            n = self.metanet.calibration_inputs.shape[0]
            if n > x_edit.shape[0]:
                raise ConfigError(f"calibration={n} points, but the {task} editing split has {x_edit.shape[0]}")
            pick = torch.randperm(x_edit.shape[0], generator=torch.Generator().manual_seed(0))[:n]
            self.metanet.calibration_inputs[:, : x_edit.shape[1]] = x_edit[pick].to(self.metanet.calibration_inputs.dtype)
        self.settings: dict[str, Any] = {
            "requirement": requirement,
            "variant": self.requirement.variant,
            "task": task,
            "lam": None if lam is None else float(lam),
            "lam_range": lam_range,
            "target_range": target_range,
            "preference": preference,
            "refit": refit,
            "reselect": reselect,
            "greedy_features": greedy_features,
            "feature_schema": schema,
            "metanet": dict(self.metanet.config),
            "temperature": float(temperature),
            "zoo": dict(zoo or {}),
            "validation_front": list(validation_front or []),
            "training": dict(training or {}),
            "hubedit_version": hubedit_version,
        }
        self.source: dict[str, Any] = {}  # where from_pretrained found it: {"path"} or {"repo_id", "revision"}

    # --- properties -------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.settings["task"]

    @property
    def lam(self) -> float | None:
        return self.settings["lam"]

    @property
    def lam_range(self) -> tuple[float, float] | None:
        r = self.settings["lam_range"]
        return None if r is None else (r[0], r[1])

    @property
    def target_range(self) -> tuple[float, float] | None:
        r = self.settings.get("target_range")
        return None if r is None else (r[0], r[1])

    @property
    def feature_schema(self) -> dict:
        return self.settings["feature_schema"]

    def __repr__(self) -> str:
        s = self.settings
        trade = (f"lam={s['lam']}" if s["lam"] is not None else f"lam_range={s['lam_range']}" if s["lam_range"]
                 else f"target_range={s['target_range']}")
        return f"Editor(requirement={s['requirement']!r}, variant={s['variant']!r}, task={s['task']!r}, {trade})"

    # --- checks at the boundary ---------------------------------------------------------------------------
    def check_model(self, model: MLP) -> None:
        """Refuse a model this editor cannot edit, saying what was expected and what came."""
        if not isinstance(model, MLP):
            raise UnsupportedArchitectureError(
                f"expected a hubedit.MLP, got {type(model).__name__}; import with MLP.from_torch / MLP.from_sklearn"
            )
        schema = self.feature_schema
        c = model.config
        if c.in_features != schema["n_features"]:
            raise FeatureMismatchError(
                f"editor for task {self.task!r} expects models with {schema['n_features']} input features "
                f"({', '.join(schema['feature_names'])}), got a model with {c.in_features}"
            )
        if c.out_features != schema.get("n_classes", 2):
            raise FeatureMismatchError(
                f"editor for task {self.task!r} expects {schema.get('n_classes', 2)} output classes, got {c.out_features}"
            )
        if c.depth > self.metanet.max_depth:
            raise UnsupportedArchitectureError(
                f"editor supports up to {self.metanet.max_depth} hidden layers, got a model with {c.depth}"
            )
        model.check_finite()

    def _target_tensor(self, target: float | None, m: int) -> torch.Tensor | None:
        if self.target_range is None:
            if target is not None:
                raise ConfigError(f"this editor trades off with lambda (lam={self.lam}, lam_range={self.lam_range}); "
                                  "it takes no target: train one with target_range for that")
            return None
        lo, hi = self.target_range
        what = self.requirement.target_name
        if target is None:
            raise ConfigError(f"this editor is target-conditioned: pass target ({what}) in [{lo:g}, {hi:g}] to edit()")
        if not (isinstance(target, (int, float)) and lo <= float(target) <= hi):
            raise ConfigError(f"target={target!r} ({what}) is outside the range the editor was trained on, [{lo:g}, {hi:g}]")
        return torch.full((m,), float(target), dtype=torch.float64)

    def _lam_tensor(self, lam: float | None, m: int) -> torch.Tensor:
        if self.settings.get("preference") is not None:
            if lam is not None:
                raise ConfigError(f"this editor was trained for the preference {self.settings['preference']} over "
                                  "(JSD, requirement); it takes no lam")
            return torch.ones(m)
        if self.target_range is not None:
            if lam is not None:
                raise ConfigError("this editor is target-conditioned: pass target=..., not lam")
            return torch.ones(m)
        if self.lam_range is None:
            if lam is not None and float(lam) != self.lam:
                raise ConfigError(
                    f"this editor was trained for lam={self.lam}; it cannot edit at lam={lam} "
                    "(train a lambda-conditioned editor with lam_range for that)"
                )
            return torch.full((m,), float(self.lam))
        lo, hi = self.lam_range
        if lam is None:
            raise ConfigError(f"this editor is lambda-conditioned: pass lam in [{lo}, {hi}] to edit()")
        if not lo <= float(lam) <= hi:
            raise ConfigError(f"lam={lam} is outside the range the editor was trained on, [{lo}, {hi}]")
        return torch.full((m,), float(lam))

    def forward(self, data, cond: torch.Tensor | None = None, with_logits: bool = True,
                keep: torch.Tensor | None = None) -> dict:
        """The metanetwork's raw output for a parameter graph batch (what training differentiates), as a
        dict so that DistributedDataParallel can find the output tensors."""
        return vars(self.metanet(data, cond=cond, with_logits=with_logits, keep=keep))

    def with_refit(self, ridge: float | None, *, reselect: bool = False, greedy_features: int = 0) -> "Editor":
        """A copy of this editor (same weights) that refits every edit with ``ridge`` (see ``refit``,
        ``reselect`` and ``greedy_features`` in the class docstring; ``None``: no refit). The refit is an edit-time
        setting, so a trained editor can take one; ``scripts/select_refit.py`` picks it on validation models."""
        settings = {**self.settings, "refit": ridge, "reselect": reselect, "greedy_features": greedy_features}
        other = type(self)(**settings)
        other.load_state_dict(self.state_dict())
        other.source = dict(self.source)
        return other.to(next(self.parameters()).device).train(self.training)

    # --- editing ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, model: MLP, *, lam: float | None = None, target: float | None = None) -> EditedMLP:
        """Edit one model (graph build, one forward pass, write-back). Returns a new :class:`EditedMLP`.
        ``target`` is the requirement level of a target-conditioned editor (see ``target_range``)."""
        return self.edit_many([model], lam=lam, target=target, batch_size=1)[0]

    @torch.no_grad()
    def edit_many(
        self, models: Sequence[MLP], *, lam: float | None = None, batch_size: int = 64, accelerator=None,
        target: float | None = None,
    ) -> list[EditedMLP]:
        """Edit a list of models in batches of ``batch_size`` graphs. With an ``accelerate.Accelerator``
        (several processes), each process edits its share and the results are gathered on every process."""
        models = list(models)
        for mdl in models:
            self.check_model(mdl)
        self._target_tensor(target, 1)  # checked before any work
        self._lam_tensor(lam, 1)
        if accelerator is not None and accelerator.num_processes > 1:
            return self._edit_distributed(models, lam, batch_size, accelerator, target)
        if self.training:  # a walk over every submodule: only when needed
            self.eval()
        out: list[EditedMLP] = []
        for i in range(0, len(models), batch_size):
            out.extend(self._edit_batch(models[i : i + batch_size], lam, target))
        return out

    def _edit_batch(self, models: list[MLP], lam: float | None, target: float | None = None) -> list[EditedMLP]:
        start = time.perf_counter()
        device = next(self.parameters()).device
        batch = mlps_to_batch(models).to(device)
        m = len(models)
        lam_t = self._lam_tensor(lam, m).to(device)
        target_t = self._target_tensor(target, m)
        _, edit = run_edit(self.metanet, self.requirement, batch, lam=lam_t, lam_range=self.lam_range, hard=True,
                           target=None if target_t is None else target_t.to(device), target_range=self.target_range)
        if self.settings["refit"] is not None:
            n_in = models[0].config.in_features
            greedy = self.settings["greedy_features"]
            if greedy and target_t is not None and float(target_t.max()) <= greedy:
                counts = target_t.round().long().to(device)
                edit = Edit(edit.edge_values, edit.node_values, edit.edge_mask, greedy_input_masks(
                    batch, edit, self.metanet.calibration_inputs[:, :n_in], self.settings["refit"], counts))
            edit = refit_edit(batch, edit, self.metanet.calibration_inputs[:, :n_in], self.settings["refit"],
                              reselect=self.settings["reselect"])
        ev, nv = folded_values(batch, edit)
        written = batch_to_mlps(batch, ev, nv)
        seconds = (time.perf_counter() - start) / m
        results = []
        for k, (orig, new) in enumerate(zip(models, written)):
            kept = None
            if edit.input_mask is not None:
                kept = [int(i) for i in torch.nonzero(edit.input_mask[k] > 0.5).flatten().tolist()]
            record = {
                "requirement": self.settings["requirement"],
                "variant": self.settings["variant"],
                "lam": float(lam) if lam is not None else self.lam,
                "target": None if target is None else float(target),
                "task": self.task,
                "editor": dict(self.source) or {"settings": "unsaved editor"},
                "original": getattr(orig, "source", None),
                "kept_features": kept,
                "kept_feature_names": None if kept is None else [self.feature_schema["feature_names"][i] for i in kept],
                "edit_seconds": seconds,
                "hubedit_version": __version__,
            }
            on_cpu = all(t.device.type == "cpu" for t in (*new.parameters(), *new.buffers()))
            results.append(EditedMLP.wrap(new if on_cpu else new.cpu(), record, copy=False))  # written back here: ours
        return results

    def _edit_distributed(self, models, lam, batch_size, accelerator, target=None) -> list[EditedMLP]:
        from accelerate.utils import gather_object

        rank, world = accelerator.process_index, accelerator.num_processes
        mine = list(range(rank, len(models), world))
        edited = []
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            for idx, e in zip(chunk, self._edit_batch([models[j] for j in chunk], lam, target)):
                edited.append((idx, e.to_bytes()))
        gathered = gather_object(edited)
        by_index = dict(gathered)
        return [EditedMLP.from_bytes(by_index[i], source=f"edited model {i}") for i in range(len(models))]

    def then(self, *editors: "Editor") -> "EditorPipeline":
        """Compose: this editor first, then ``editors`` (e.g. data minimisation, then pruning; paper A.7)."""
        return EditorPipeline([self, *editors])

    # --- persistence --------------------------------------------------------------------------------------
    def generate_model_card(self, *args, **kwargs):
        """The editor's card (:func:`hubedit.cards.editor_card.build_editor_card`): requirement, variant, lambda,
        task schema, zoo provenance, validation Pareto points (table + ``pareto.png``, written beside the
        README by the card's ``save``), hyper-parameters, usage, limitations and human review.
        ``save_pretrained`` / ``push_to_hub`` call it after the weights are written; pass
        ``model_card_kwargs={"repo_id": ...}`` to name the repo in the usage snippet."""
        from ..cards.editor_card import build_editor_card

        return build_editor_card(self, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        branch: str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        config: dict | None = None,
        **unsupported: Any,
    ):
        """Publish the editor to the Hub model repo ``repo_id`` (created if needed), on ``branch`` (created from
        main if needed; default main), in ONE commit: what ``save_pretrained`` writes -- ``model.safetensors``,
        ``config.json``, the card ``README.md`` and its ``pareto.png``. Returns the ``CommitInfo``.

        It goes through :func:`hubedit.hub.publish_folder`: a failure is a :class:`hubedit.hub.HubError` naming
        the repo and endpoint and saying what state the Hub is in -- nothing committed, and a repo or branch this
        push created deleted again (one that existed before is never touched). ``model_card_kwargs`` go to the
        card (``{"repo_id": ...}`` names the repo in its usage snippet); ``config`` is what the mixin's
        ``save_pretrained(push_to_hub=True)`` passes on (an editor's ``config.json`` is always its settings)."""
        import tempfile

        from ..hub import publish_folder

        if unsupported:
            mixin_only = sorted(set(unsupported) & {"create_pr", "allow_patterns", "ignore_patterns",
                                                    "delete_patterns"})
            if mixin_only:
                raise ConfigError(
                    f"Editor.push_to_hub publishes every file of the editor in one commit to a branch; "
                    f"{', '.join(mixin_only)} {'is' if len(mixin_only) == 1 else 'are'} not supported"
                )
            raise TypeError(f"Editor.push_to_hub() got unexpected keyword arguments {sorted(unsupported)}")
        message = commit_message or (
            f"Upload {self.settings['requirement']} editor ({self.settings['variant']}) for {self.task} with hubedit"
        )
        with tempfile.TemporaryDirectory(prefix="hubedit-editor-push-") as tmp:
            self.save_pretrained(tmp, config=config, model_card_kwargs=model_card_kwargs)
            return publish_folder(tmp, repo_id, repo_type="model", revision=branch, commit_message=message,
                                  token=token, private=private, create_branch=branch is not None)

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's saving hook: ``model.safetensors`` (with the weight-bound settings in its metadata, so
        that a ``config.json`` changed later is caught on load) and ``config.json`` (the settings)."""
        from safetensors.torch import save_model

        saved = {k: self.settings[k] for k in WEIGHT_BOUND_SETTINGS}
        metadata = {"format": "pt", "library": "hubedit", SAVED_SETTINGS_KEY: json.dumps(saved, sort_keys=True)}
        save_model(self, str(Path(save_directory) / WEIGHTS_NAME), metadata=metadata)
        (Path(save_directory) / CONFIG_NAME).write_text(json.dumps(self.settings, indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "Editor":
        """Load from a local folder or a Hub repo id, with the mixin's arguments: ``revision`` (branch, tag or
        commit), ``cache_dir``, ``force_download``, ``local_files_only``, ``token`` and ``map_location`` (the
        device). Loading is always strict and safetensors-only; ``config.json`` is validated (unknown keys,
        types, finite lambda) and must match the weights. ``editor.source`` says where it came from:
        ``{"path"}`` or ``{"repo_id", "revision"}`` with the resolved commit sha.

        A mistyped local path, a missing repo or revision, or a file not in the cache with
        ``local_files_only=True`` is a :class:`hubedit.hub.HubError` naming the repo and endpoint; every Hub
        request is bounded by ``HUBEDIT_HUB_TIMEOUT`` (:func:`hubedit.hub.reading`), an unreachable endpoint
        falling back on the cache."""
        from ..hub import describe_repo, local_folder_or_repo_id, reading

        folder = local_folder_or_repo_id(pretrained_model_name_or_path, "editor", revision=revision)
        if folder is not None and revision is not None:
            raise ConfigError(
                f"revision={revision!r} applies to Hub repos, but {str(folder)!r} is a local folder; "
                "pass the repo id to load a revision"
            )
        name = str(folder if folder is not None else pretrained_model_name_or_path)
        if folder is None:
            # both files fetched here, every request bounded by hubedit's Hub timeout; the mixin and the loading
            # hook then find them in the cache at the commit the revision resolved to, without asking the Hub again
            revision = _fetch_editor_files(name, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                           local_files_only=local_files_only, token=token)
            force_download = False
        what = f"local folder {name!r}" if folder is not None else describe_repo(name, "model", revision)
        with reading(what, CONFIG_NAME):
            try:  # the mixin reads config.json itself before calling _from_pretrained
                return super().from_pretrained(
                    name, revision=revision, cache_dir=cache_dir, force_download=force_download,
                    local_files_only=local_files_only, token=token, map_location=map_location, strict=strict,
                    **model_kwargs,
                )
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CorruptFileError(f"{what}: {CONFIG_NAME} does not parse as JSON: {exc}") from exc
            except AttributeError as exc:  # the mixin iterates config.items(): a JSON list, string or number
                if getattr(exc, "name", None) != "items" or isinstance(getattr(exc, "obj", None), dict):
                    raise
                raise CorruptFileError(
                    f"{what}: {CONFIG_NAME} must hold a JSON object, got {type(exc.obj).__name__}"
                ) from exc

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "Editor":
        """The mixin's loading hook (see :meth:`from_pretrained`). ``model_kwargs`` are the ``__init__``
        arguments the mixin read from ``config.json``; they may not be overridden."""
        from ..hub import describe_repo

        if strict is not True:
            raise ConfigError("an editor is always loaded strictly (every tensor, nothing else); got strict=False")
        init_parameters = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(model_kwargs) - init_parameters)
        if unknown:
            raise ConfigError(f"Editor.from_pretrained got unknown arguments {unknown}")
        device = _usable_device(map_location)
        if os.path.isdir(model_id):
            folder = Path(model_id)
            config_path, weights_path, source = folder / CONFIG_NAME, folder / WEIGHTS_NAME, {"path": str(folder)}
            where = str(folder)
            if not config_path.is_file():
                raise CorruptFileError(f"{where}: no {CONFIG_NAME} (is this a hubedit editor?)")
            if not weights_path.is_file():
                raise CorruptFileError(f"{where}: no {WEIGHTS_NAME}; hubedit loads safetensors weights only")
        else:
            where = describe_repo(model_id, "model", revision)
            fetch = dict(repo_id=model_id, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
            # config.json first (from_pretrained fetched it already, force_download included): its snapshot folder
            # is named by the commit the revision resolved to; the weights are then fetched at that very commit
            config_path = _download(where, CONFIG_NAME, revision=revision, **fetch)
            sha = config_path.parent.name
            weights_path = _download(where, WEIGHTS_NAME, revision=sha, force_download=force_download, **fetch)
            source = {"repo_id": model_id, "revision": sha}
        settings = _read_settings(config_path, where)
        for key, value in model_kwargs.items():  # the mixin passes config.json's values; anything else is an override
            if key not in settings or settings[key] != value:
                raise ConfigError(
                    f"Editor.from_pretrained takes {key!r} from {CONFIG_NAME} ({settings.get(key)!r}); it cannot be "
                    f"overridden (got {value!r}): an editor's settings belong to its weights"
                )
        editor = _build_checked(cls, settings, weights_path, where)
        editor.source = source
        return editor.to(device).eval()


def _fetch_editor_files(repo_id: str, *, revision: str | None, cache_dir, force_download: bool,
                        local_files_only: bool, token: str | bool | None) -> str:
    """Download (or, offline, find in the cache) the ``config.json`` and weights of the editor repo ``repo_id`` at
    ``revision`` with :func:`hubedit.hub.snapshot` -- the revision resolved by one request bounded by hubedit's Hub
    timeout and not retried, an unreachable endpoint falling back on the cache -- and return the commit sha."""
    from huggingface_hub import constants

    from ..hub import describe_repo, snapshot

    folder, sha = snapshot(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], token=token,
                           cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        # not in the repo (a 404: CorruptFileError), or not in a cache the client could not check (HubError)
        fetch = dict(repo_id=repo_id, cache_dir=cache_dir, token=token,
                     local_files_only=local_files_only or constants.HF_HUB_OFFLINE)
        _download(describe_repo(repo_id, "model", revision), missing[0], revision=sha, **fetch)
    return sha


def _download(where: str, filename: str, **fetch: Any) -> Path:
    """``hf_hub_download`` of one file of an editor repo, bounded by hubedit's Hub timeout, its failures mapped
    by :func:`hubedit.hub.reading` -- but a file the repo does not have is a :class:`CorruptFileError`: the repo
    is not a (safetensors) hubedit editor."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from ..hub import reading

    with reading(where, filename) as seconds:
        limits = {"etag_timeout": seconds} if seconds is not None else {}  # the metadata (HEAD) request too
        try:
            return Path(hf_hub_download(filename=filename, library_name="hubedit", **limits, **fetch))
        except RemoteEntryNotFoundError as exc:
            hint = "hubedit loads safetensors weights only" if filename == WEIGHTS_NAME else "is this a hubedit editor?"
            raise CorruptFileError(f"{where}: no {filename} in the repo ({hint})") from exc


def _usable_device(map_location: str | torch.device) -> torch.device:
    """``map_location`` as a device that can hold the editor's weights, or a :class:`ConfigError`."""
    try:
        device = torch.device(map_location)
        if device.type == "meta":
            raise ConfigError(
                "map_location='meta' would drop the editor's weights; give a device such as 'cpu' or 'cuda'"
            )
        torch.empty(0, device=device)
    except ConfigError:
        raise
    except (RuntimeError, AssertionError, TypeError, ValueError) as exc:
        raise ConfigError(f"map_location={map_location!r} is not a usable device here: {exc}") from exc
    return device


_NUMBER = (int, float)
_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "requirement": (str,),
    "task": (str,),
    "variant": (str, type(None)),
    "lam": (*_NUMBER, type(None)),
    "lam_range": (list, type(None)),
    "target_range": (list, type(None)),
    "preference": (list, type(None)),
    "refit": (*_NUMBER, type(None)),
    "reselect": (bool,),
    "greedy_features": (int,),
    "feature_schema": (dict, type(None)),
    "metanet": (dict, type(None)),
    "temperature": _NUMBER,
    "zoo": (dict, type(None)),
    "validation_front": (list, type(None)),
    "training": (dict, type(None)),
    "hubedit_version": (str,),
}
_METANET_TYPES: dict[str, tuple[type, ...]] = {
    "hidden": (int,), "layers": (int,), "max_in": (int,), "max_out": (int,), "max_depth": (int,),
    "edge_hidden": (int, type(None)), "activation": (str,), "mask_classes": (int,), "alpha_init": _NUMBER,
    "node_norm": (bool,), "edge_norm": (bool,), "cond_dim": (int,), "film": (bool,), "calibration": (int,), "calibration_rounds": (int,), "prior_masks": (bool,), "feature_importance": (bool,),
}


def _type_names(types: tuple[type, ...]) -> str:
    """JSON's names of ``types``: ``(int, float, NoneType)`` is "number or null"."""
    names = {int: "integer", float: "number", str: "string", list: "list", dict: "object", bool: "true/false",
             type(None): "null"}
    shown = [names[t] for t in types if not (t is int and float in types)]
    return " or ".join(shown)


def _check_types(values: dict, types: dict[str, tuple[type, ...]], where: str, what: str) -> None:
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"{where}: unknown {what} keys {unknown}; expected a subset of {sorted(types)}")
    for key, value in values.items():
        allowed = types[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ConfigError(f"{where}: {what} {key!r} must be {_type_names(allowed)}, got {value!r}")


def _check_settings(config: Any, where: str) -> dict:
    """Validate an editor config (what ``config.json`` holds) before anything is built: a JSON object with
    known keys of the right types, ``requirement`` and ``task`` present, lambdas finite, the metanetwork's
    sizes positive integers, the training record (if any) agreeing with the top-level settings."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: an editor config must be a JSON object, got {type(config).__name__}")
    for key in ("requirement", "task"):
        if key not in config:
            raise ConfigError(f"{where} has no {key!r}: not a hubedit editor config")
    _check_types(config, _SETTING_TYPES, where, "config")
    for key in ("lam", "temperature"):
        if config.get(key) is not None and not math.isfinite(config[key]):
            raise ConfigError(f"{where}: {key} must be finite, got {config[key]!r}")
    lam_range = config.get("lam_range")
    if lam_range is not None and not (
        len(lam_range) == 2 and all(isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)
                                    for v in lam_range)
    ):
        raise ConfigError(f"{where}: lam_range must be [low, high] (two finite numbers), got {lam_range!r}")
    target_range = config.get("target_range")
    if target_range is not None and not (
        len(target_range) == 2 and all(isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)
                                       for v in target_range)
    ):
        raise ConfigError(f"{where}: target_range must be [low, high] (two finite numbers), got {target_range!r}")
    net = config.get("metanet") or {}
    _check_types(net, _METANET_TYPES, where, "metanet")
    least = {"hidden": 1, "layers": 1, "max_in": 1, "max_out": 2, "max_depth": 1, "edge_hidden": 1, "mask_classes": 2,
             "cond_dim": 0}
    small = {k: v for k, v in net.items() if k in least and v is not None and v < least[k]}
    if small:
        raise ConfigError(f"{where}: metanet sizes too small: {small}; the least values are {least}")
    schema = config.get("feature_schema")
    if schema is not None:
        n = schema.get("n_features")
        names = schema.get("feature_names")
        classes = schema.get("n_classes", 2)
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1 and isinstance(names, list)
                and len(names) == n and all(isinstance(f, str) for f in names)
                and isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2):
            raise ConfigError(
                f"{where}: feature_schema must give n_features >= 1, that many feature_names and n_classes >= 2; "
                f"got n_features={n!r}, {len(names) if isinstance(names, list) else names!r} names, "
                f"n_classes={classes!r}"
            )
    training = config.get("training") or {}
    recorded = {"requirement": training.get("requirement"), "variant": training.get("variant"),
                "lam": training.get("lam"), "lam_range": training.get("lam_range"),
                "target_range": training.get("target_range")}
    for key, value in recorded.items():
        if value is not None and config.get(key) is not None and _canonical(value) != _canonical(config[key]):
            raise ConfigError(
                f"{where}: {key} is {config[key]!r}, but the editor was trained with {key}={value!r} "
                "(its training record); the config does not describe these weights"
            )
    return config


def _canonical(value: Any) -> Any:
    """JSON's view of a value (tuples are lists, ints and floats compare by value)."""
    return json.loads(json.dumps(value))


def _read_settings(config_path: Path, where: str) -> dict:
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{where}: {CONFIG_NAME} does not parse as JSON: {exc}") from exc
    return _check_settings(config, f"{where}: {CONFIG_NAME}")


def _build_checked(cls: type[Editor], settings: dict, weights_path: Path, where: str) -> Editor:
    """Build the editor ``settings`` describe and load ``weights_path`` into it, checking the weights'
    header (tensor names, shapes, dtypes, saved settings) against the settings *before* allocating anything."""
    entries, metadata = read_safetensors_header(weights_path, f"{where}: {WEIGHTS_NAME}")
    layers = (settings.get("metanet") or {}).get("layers", 1)
    if layers > len(entries):  # bounds the layout built below by the size of the weights' header
        raise CorruptFileError(
            f"{where}: {CONFIG_NAME} asks for a metanetwork of {layers} layers; {WEIGHTS_NAME} holds "
            f"{len(entries)} tensors in all"
        )
    with torch.device("meta"):  # the layout the settings imply, without allocating it
        layout = cls(**settings)
    check_header_tensors(_layout(layout), entries, f"{where}: {WEIGHTS_NAME}",
                         f"the editor described by its {CONFIG_NAME}")
    _check_saved_settings(layout.settings, metadata, where)
    editor = cls(**settings)
    _load_strict(editor, weights_path, header_checked=True)
    return editor


def _layout(editor: Editor) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(t.shape), t.dtype) for name, t in editor.state_dict().items()}


def _check_saved_settings(settings: dict, metadata: dict[str, str], where: str) -> None:
    """Compare the settings recorded in the weights' metadata at save time with the config's (files saved
    before they were recorded have none: their shapes were checked)."""
    if SAVED_SETTINGS_KEY not in metadata:
        return
    try:
        saved = json.loads(metadata[SAVED_SETTINGS_KEY])
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{where}: {WEIGHTS_NAME} metadata {SAVED_SETTINGS_KEY!r} is not JSON: {exc}") from exc
    if not isinstance(saved, dict):
        raise CorruptFileError(f"{where}: {WEIGHTS_NAME} metadata {SAVED_SETTINGS_KEY!r} is not a JSON object")
    differ = [k for k in WEIGHT_BOUND_SETTINGS if k in saved and _canonical(settings[k]) != _canonical(saved[k])]
    if differ:
        detail = "; ".join(f"{k}: {CONFIG_NAME} says {settings[k]!r}, the weights were saved with {saved[k]!r}"
                           for k in differ)
        raise ConfigError(f"{where}: {CONFIG_NAME} does not belong to {WEIGHTS_NAME} ({detail})")


def _load_strict(editor: Editor, path: Path, *, header_checked: bool = False) -> None:
    """Load ``path`` into ``editor``: exactly its tensors, with its shapes and dtypes, all finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not header_checked:
        entries, _ = read_safetensors_header(path)
        check_header_tensors(_layout(editor), entries, str(path), "the editor described by its config.json")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a valid safetensors file: {exc}") from exc
    for k, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CorruptFileError(f"{path}: tensor {k!r} holds NaN/Inf")
    editor.load_state_dict(state, strict=True)


class EditorPipeline:
    """Editors applied one after the other. Later editors keep earlier guarantees: features dropped by a
    data-minimisation editor stay dropped (their weights are re-zeroed after each later edit)."""

    def __init__(self, editors: list[Editor]):
        tasks = {e.task for e in editors}
        if len(tasks) != 1:
            raise ConfigError(f"composed editors must share one task, got {sorted(tasks)}")
        self.editors = editors

    @torch.no_grad()
    def edit(self, model: MLP, *, lams: Sequence[float | None] | None = None,
             targets: Sequence[float | None] | None = None) -> EditedMLP:
        """Edit ``model`` with each editor in turn; ``lams`` / ``targets`` give each editor its lambda (lambda-
        conditioned editors) or target (target-conditioned ones), None where an editor takes none."""
        lams = list(lams) if lams is not None else [None] * len(self.editors)
        targets = list(targets) if targets is not None else [None] * len(self.editors)
        if len(lams) != len(self.editors) or len(targets) != len(self.editors):
            raise ConfigError(f"expected {len(self.editors)} lambdas and targets (one per editor, None where an "
                              f"editor takes none), got {len(lams)} and {len(targets)}")
        current: MLP = model
        kept: list[int] | None = None
        steps = []
        for editor, lam, target in zip(self.editors, lams, targets):
            current = editor.edit(current, lam=lam, target=target)
            if current.kept_features is not None:
                kept = current.kept_features if kept is None else sorted(set(kept) & set(current.kept_features))
            if kept is not None:
                _zero_dropped_inputs(current, kept)
            steps.append(current.record)
        record = dict(steps[-1])
        record["composed"] = steps
        record["kept_features"] = kept
        record["requirement"] = "+".join(s["requirement"] for s in steps)
        return EditedMLP.wrap(current, record, copy=False)  # the last editor's fresh output


def _zero_dropped_inputs(model: MLP, kept: list[int]) -> None:
    dropped = sorted(set(range(model.config.in_features)) - set(kept))
    if not dropped:
        return
    model.layers[0].weight[:, dropped] = 0
    for s, d in model.config.skips:
        if s == 0:
            model.skips[f"{s}_{d}"].weight[:, dropped] = 0
