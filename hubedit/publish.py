"""Publishing an edited model: one folder, then one commit; and loading it back.

This module sits above :mod:`hubedit.editor`: it takes the edited model (an :class:`~hubedit.EditedMLP`) and
works on it; nothing in :mod:`hubedit.editor` imports it. The folder and its upload are written by
:mod:`hubedit.cards.edited_folder`, below the editor -- the code behind ``EditedMLP.save_pretrained`` /
``EditedMLP.push_to_hub`` (the ``huggingface_hub`` mixin pattern: the method on the object, the machinery in a
lower module) -- and re-exported here:

* :func:`save_edited` writes ``model.safetensors`` (weights first, so nothing later can lose them),
  ``config.json``, ``metrics.json``, ``model.onnx`` (verified against onnxruntime), ``pareto.png`` and the
  generated ``README.md``; :func:`render_card` re-renders the card from the folder alone.
* :func:`push_edited` prepares that folder FIRST, validates the card with the endpoint, and only then
  publishes it with :func:`hubedit.hub.publish_folder` as ONE commit (:func:`publish_edited_folder` publishes
  a folder already written): an upload either lands whole or leaves the Hub as it was, and the error says
  where the prepared folder is kept.
* :func:`load_edited` reads a folder or a repo (at a pinned revision, or offline from the cache).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .cards.edited_folder import (
    CONFIG_FORMAT,
    CONFIG_VERSION,
    FILES,
    ONNX_FILE,
    REPORT_FORMAT,
    WEIGHTS_FILE,
    PublishError,
    SavedEdited,
    build_report,
    evaluate_edit,
    publish_edited_folder,
    push_edited,
    render_card,
    save_edited,
)
from .errors import CorruptFileError

if TYPE_CHECKING:
    from .editor import EditedMLP

__all__ = [
    "PublishError",
    "SavedEdited",
    "evaluate_edit",
    "build_report",
    "save_edited",
    "render_card",
    "push_edited",
    "publish_edited_folder",
    "load_edited",
    "FILES",
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "REPORT_FORMAT",
    "WEIGHTS_FILE",
    "ONNX_FILE",
]


def load_edited(where: str | os.PathLike, *, revision: str | None = None,
                token: str | bool | None = None) -> "EditedMLP":
    """An :class:`~hubedit.EditedMLP` from a saved folder or a Hub repo id (pinned ``revision`` optional;
    offline mode reads the cache). ``model.source`` records where it came from. A mistyped local path is a
    :class:`~hubedit.hub.HubError` naming both readings, never a Hub lookup."""
    from .editor import EditedMLP
    from .hub import local_folder_or_repo_id, snapshot

    path = local_folder_or_repo_id(where, "edited model", revision=revision)
    if path is not None:
        folder, source = path, {"path": str(path)}
    else:
        folder, sha = snapshot(str(where), repo_type="model", revision=revision, token=token,
                               allow_patterns=[WEIGHTS_FILE, "config.json"])
        source = {"repo_id": str(where), "revision": sha}
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CorruptFileError(f"{where}: no {WEIGHTS_FILE} (is this a hubedit edited model?)")
    model = EditedMLP.from_bytes(weights.read_bytes(), source=str(weights))
    model.source = source
    return model
