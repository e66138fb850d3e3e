"""``EditedMLP``: an MLP produced by an editor, carrying its masks and an edit record."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..mlp import MLP

RECORD_KEY = "hubedit_edit_record"


class EditedMLP(MLP):
    """An :class:`MLP` whose weights already satisfy the edit (pruned weights and the weights of dropped
    features are exact zeros). ``record`` says who edited it, how, and what changed."""

    record: dict[str, Any]

    @classmethod
    def wrap(cls, model: MLP, record: dict[str, Any], *, copy: bool = True) -> "EditedMLP":
        """An ``EditedMLP`` with ``model``'s weights and ``record``: a copy, or with ``copy=False`` (for a caller
        that owns ``model`` and drops it) ``model`` itself, turned into one in place -- no second module is built."""
        if not copy and type(model) in (MLP, cls):
            model.__class__ = cls
            model.record = record
            return model.eval()
        edited = cls(model.config)
        edited.load_state_dict(model.state_dict())
        edited.record = record
        return edited.eval()

    @property
    def kept_features(self) -> list[int] | None:
        return self.record.get("kept_features")

    @property
    def requirement(self) -> str:
        return self.record["requirement"]

    def weight_sparsity(self) -> float:
        """Fraction of weights (linear and skip matrices) that are exactly zero."""
        zeros = sum(int((m.weight == 0).sum()) for m in [*self.layers, *self.skips.values()])
        return zeros / self.n_weights

    def to_bytes(self, metadata: dict[str, str] | None = None) -> bytes:
        meta = dict(metadata or {})
        meta[RECORD_KEY] = json.dumps(self.record, sort_keys=True)
        return super().to_bytes(meta)

    @classmethod
    def from_bytes(cls, blob: bytes, *, source: str = "<bytes>") -> "EditedMLP":
        model = MLP.from_bytes(blob, source=source)
        record = json.loads(model.metadata.pop(RECORD_KEY, "{}"))
        edited = cls.wrap(model, record)
        edited.metadata = model.metadata
        return edited

    # --- persistence: the huggingface_hub mixin pattern -- the methods live on the object, the folder and upload
    # machinery in a lower module (hubedit.cards.edited_folder, which never imports hubedit.editor); hubedit.publish,
    # above, re-exports it and loads edited models back.
    def save_pretrained(self, save_directory: str | os.PathLike, *, task=None, reference: MLP | None = None,
                        **kwargs):
        """Write weights, config, ONNX, metrics, card and Pareto plot to a folder
        (:func:`hubedit.publish.save_edited`; ``reference`` is the original model). Returns ``SavedEdited``."""
        from ..cards.edited_folder import save_edited

        return save_edited(self, save_directory, task=task, reference=reference, **kwargs)

    def push_to_hub(self, repo_id: str, *, task=None, reference: MLP | None = None, **kwargs):
        """Publish to a Hub model repo in one commit (:func:`hubedit.publish.push_edited`): weights, config,
        ONNX, metrics, card and Pareto plot, prepared and checked before any upload. Returns the ``CommitInfo``;
        a failed upload is a :class:`hubedit.hub.HubError` and leaves no repo or branch this push created."""
        from ..cards.edited_folder import push_edited

        return push_edited(self, repo_id, task=task, reference=reference, **kwargs)

    def export_onnx(self, path, *, task=None, metadata: dict | None = None, atol: float = 1e-5):
        """Export to ONNX, verified against onnxruntime (on ``task``'s test split when given, max abs
        difference <= ``atol``); a data-minimised model takes only its kept features, named by feature.
        The edit record (editor, requirement, lambda, kept features) goes into ``metadata_props``."""
        from ..export import export_onnx
        from ..tasks import load_task

        task = load_task(task) if isinstance(task, str) else task
        names = task.feature_names if task is not None else None
        kept = self.kept_features
        if kept is not None and len(kept) == 0:
            kept = [0]  # a model that uses no feature keeps one zero-weighted input so the graph has one
        meta = {"hubedit_edit_record": self.record, "requirement": str(self.record.get("requirement")),
                "lambda": self.record.get("lam"), "editor": self.record.get("editor") or {}}
        meta.update(metadata or {})
        data = task.split("test")[0] if task is not None else None
        return export_onnx(self, path, kept_features=kept, feature_names=names, metadata=meta, atol=atol,
                           verify_data=data)

    @torch.no_grad()
    def evaluate(self, task, split: str = "test", reference: MLP | None = None) -> dict[str, Any]:
        """Accuracy, JSD to ``reference`` (the original model), and the compliance metrics on a split."""
        from ..metrics.scores import equalized_odds_difference, group_rates, jsd

        X, y, s = task.split(split)
        probs = self.predict_proba(X)
        pred = probs.argmax(-1)
        report: dict[str, Any] = {
            "split": split,
            "accuracy": float((pred == y).double().mean()),
            "eod": float(equalized_odds_difference(pred.double(), y, s)),
            "group_rates": group_rates(pred.double(), y, s),
            "weights_kept": 1.0 - self.weight_sparsity(),
            "kept_features": self.kept_features if self.kept_features is not None else list(range(self.config.in_features)),
        }
        if reference is not None:
            ref = reference.predict_proba(X)
            report["reference_accuracy"] = float((ref.argmax(-1) == y).double().mean())
            report["jsd"] = float(jsd(ref.double(), probs.double()).mean())
            report["reference_eod"] = float(equalized_odds_difference(ref.argmax(-1).double(), y, s))
        return report
