"""``Editor``: a trained graph metanetwork for one requirement and task, with the Hub mixin contract.

``config.json`` (written by ``save_pretrained`` / ``push_to_hub``) carries everything needed to rebuild and
check the editor: requirement, variant, lambda (or lambda range), the task and its feature schema, the zoo
it was trained on, the metanetwork's hyper-parameters and the validation Pareto points. Weights are
``model.safetensors`` only, loaded with strict key checking; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .. import __version__
from ..errors import ConfigError, CorruptFileError, FeatureMismatchError, UnsupportedArchitectureError
from ..graph import batch_to_mlps, mlps_to_batch
from ..metanet.model import GraphMetanetwork
from ..mlp import MLP
from ..requirements import get_requirement
from .editing import folded_values, run_edit
from .edited import EditedMLP

WEIGHTS_NAME = "model.safetensors"


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
        lam_range: ``[low, high]`` for a lambda-conditioned editor (pick lambda at edit time).
        feature_schema: the task's schema (``Task.schema()``); edits of models with another input size are refused.
        metanet: keyword arguments of :class:`GraphMetanetwork`.
        temperature: softmax temperature of the mask heads.
        zoo: the zoo it was trained on (``{"repo_id", "revision"}`` or ``{"path"}``).
        validation_front: validation Pareto points ``[{"lam", "metric", "jsd"}, ...]``.
        training: training hyper-parameters and figures (for provenance).
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
    ):
        super().__init__()
        if (lam is None) == (lam_range is None):
            raise ConfigError(
                f"an editor needs exactly one of lam (a trained trade-off) or lam_range (lambda-conditioned); "
                f"got lam={lam!r}, lam_range={lam_range!r}"
            )
        if lam is not None and not lam >= 0:
            raise ConfigError(f"lam must be >= 0, got {lam!r}")
        if lam_range is not None:
            if len(lam_range) != 2 or not 0 < lam_range[0] < lam_range[1]:
                raise ConfigError(f"lam_range must be [low, high] with 0 < low < high, got {lam_range!r}")
            lam_range = [float(v) for v in lam_range]
        self.requirement = get_requirement(requirement, variant, temperature=temperature)
        from ..tasks import load_task

        schema = feature_schema or load_task(task).schema()
        if schema.get("task") != task:
            raise ConfigError(f"feature_schema is for task {schema.get('task')!r}, editor is for {task!r}")
        net_kwargs = dict(metanet or {})
        net_kwargs.setdefault("max_in", schema["n_features"])
        net_kwargs.setdefault("max_out", schema.get("n_classes", 2))
        net_kwargs["cond_dim"] = 1 if lam_range is not None else 0
        self.metanet = GraphMetanetwork(**net_kwargs)
        self.settings: dict[str, Any] = {
            "requirement": requirement,
            "variant": self.requirement.variant,
            "task": task,
            "lam": None if lam is None else float(lam),
            "lam_range": lam_range,
            "feature_schema": schema,
            "metanet": dict(self.metanet.config),
            "temperature": float(temperature),
            "zoo": dict(zoo or {}),
            "validation_front": list(validation_front or []),
            "training": dict(training or {}),
            "hubedit_version": hubedit_version,
        }
        self._hub_mixin_config = self.settings  # what save_pretrained writes as config.json
        self.source: dict[str, Any] = {}

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
    def feature_schema(self) -> dict:
        return self.settings["feature_schema"]

    def __repr__(self) -> str:
        s = self.settings
        trade = f"lam={s['lam']}" if s["lam"] is not None else f"lam_range={s['lam_range']}"
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

    def _lam_tensor(self, lam: float | None, m: int) -> torch.Tensor:
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

    def forward(self, data, cond: torch.Tensor | None = None, with_logits: bool = True) -> dict:
        """The metanetwork's raw output for a parameter graph batch (what training differentiates), as a
        dict so that DistributedDataParallel can find the output tensors."""
        return vars(self.metanet(data, cond=cond, with_logits=with_logits))

    # --- editing ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, model: MLP, *, lam: float | None = None) -> EditedMLP:
        """Edit one model (graph build, one forward pass, write-back). Returns a new :class:`EditedMLP`."""
        return self.edit_many([model], lam=lam, batch_size=1)[0]

    @torch.no_grad()
    def edit_many(
        self, models: Sequence[MLP], *, lam: float | None = None, batch_size: int = 64, accelerator=None
    ) -> list[EditedMLP]:
        """Edit a list of models in batches of ``batch_size`` graphs. With an ``accelerate.Accelerator``
        (several processes), each process edits its share and the results are gathered on every process."""
        models = list(models)
        for mdl in models:
            self.check_model(mdl)
        if accelerator is not None and accelerator.num_processes > 1:
            return self._edit_distributed(models, lam, batch_size, accelerator)
        self.eval()
        out: list[EditedMLP] = []
        for i in range(0, len(models), batch_size):
            out.extend(self._edit_batch(models[i : i + batch_size], lam))
        return out

    def _edit_batch(self, models: list[MLP], lam: float | None) -> list[EditedMLP]:
        start = time.perf_counter()
        device = next(self.parameters()).device
        batch = mlps_to_batch(models).to(device)
        m = len(models)
        lam_t = self._lam_tensor(lam, m).to(device)
        _, edit = run_edit(self.metanet, self.requirement, batch, lam=lam_t, lam_range=self.lam_range, hard=True)
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
                "task": self.task,
                "editor": dict(self.source) or {"settings": "unsaved editor"},
                "original": getattr(orig, "source", None),
                "kept_features": kept,
                "kept_feature_names": None if kept is None else [self.feature_schema["feature_names"][i] for i in kept],
                "edit_seconds": seconds,
                "hubedit_version": __version__,
            }
            results.append(EditedMLP.wrap(new.cpu(), record))
        return results

    def _edit_distributed(self, models, lam, batch_size, accelerator) -> list[EditedMLP]:
        from accelerate.utils import gather_object

        rank, world = accelerator.process_index, accelerator.num_processes
        mine = list(range(rank, len(models), world))
        edited = []
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            for idx, e in zip(chunk, self._edit_batch([models[j] for j in chunk], lam)):
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

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """The mixin's ``push_to_hub`` (weights, config and card in one commit), with Hub and connection
        failures raised as :class:`hubedit.hub.HubError` naming the repo and endpoint (the repo is unchanged)."""
        from ..hub import committing, describe_repo

        with committing(describe_repo(repo_id, "model", kwargs.get("branch"))):
            return super().push_to_hub(repo_id, *args, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / WEIGHTS_NAME), metadata={"format": "pt", "library": "hubedit"})
        (Path(save_directory) / "config.json").write_text(json.dumps(self.settings, indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        token: str | bool | None = None, **kwargs) -> "Editor":
        """Load from a local folder or a Hub repo id (optionally at a branch, tag or commit)."""
        from ..hub import snapshot

        where = Path(pretrained_model_name_or_path)
        if where.is_dir():
            folder, source = where, {"path": str(where)}
        else:
            folder, sha = snapshot(
                str(pretrained_model_name_or_path), repo_type="model", revision=revision, token=token,
                allow_patterns=["config.json", WEIGHTS_NAME],
            )
            source = {"repo_id": str(pretrained_model_name_or_path), "revision": sha}
        config_path, weights_path = folder / "config.json", folder / WEIGHTS_NAME
        if not config_path.is_file():
            raise CorruptFileError(f"{pretrained_model_name_or_path}: no config.json (is this a hubedit editor?)")
        if not weights_path.is_file():
            raise CorruptFileError(
                f"{pretrained_model_name_or_path}: no {WEIGHTS_NAME}; hubedit loads safetensors weights only"
            )
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{config_path} does not parse as JSON: {exc}") from exc
        for key in ("requirement", "task"):
            if key not in config:
                raise ConfigError(f"{config_path} has no {key!r}: not a hubedit editor config")
        editor = cls(**config)
        _load_strict(editor, weights_path)
        editor.source = source
        return editor.eval()


def _load_strict(editor: Editor, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} is not a valid safetensors file: {exc}") from exc
    expected = editor.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CorruptFileError(
            f"{path} does not match the editor described by its config.json: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise CorruptFileError(f"{path}: tensor {k!r} is {tuple(t.shape)}, config needs {tuple(expected[k].shape)}")
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
    def edit(self, model: MLP, *, lams: Sequence[float | None] | None = None) -> EditedMLP:
        lams = list(lams) if lams is not None else [None] * len(self.editors)
        if len(lams) != len(self.editors):
            raise ConfigError(f"expected {len(self.editors)} lambdas (one per editor), got {len(lams)}")
        current: MLP = model
        kept: list[int] | None = None
        steps = []
        for editor, lam in zip(self.editors, lams):
            current = editor.edit(current, lam=lam)
            if current.kept_features is not None:
                kept = current.kept_features if kept is None else sorted(set(kept) & set(current.kept_features))
            if kept is not None:
                _zero_dropped_inputs(current, kept)
            steps.append(current.record)
        record = dict(steps[-1])
        record["composed"] = steps
        record["kept_features"] = kept
        record["requirement"] = "+".join(s["requirement"] for s in steps)
        return EditedMLP.wrap(current, record)


def _zero_dropped_inputs(model: MLP, kept: list[int]) -> None:
    dropped = sorted(set(range(model.config.in_features)) - set(kept))
    if not dropped:
        return
    model.layers[0].weight[:, dropped] = 0
    for s, d in model.config.skips:
        if s == 0:
            model.skips[f"{s}_{d}"].weight[:, dropped] = 0
