"""Publishing a folder of editors to the Hub: one repo and one commit per editor (``hubedit publish-editors``).

A folder such as ``model_cards/`` holds one Hub-ready folder per editor (``model_cards/prune-edit-adult/``:
``config.json``, ``model.safetensors``, card, plot) next to folders of other things (a zoo's card, an edited
model's). :func:`publish_editors` finds the editor folders directly under it, checks everything it can before
the first push -- the org and every repo id, every editor loaded with ``Editor.from_pretrained`` (which
validates its config and weights) -- and then publishes each with ``Editor.push_to_hub`` to ``ORG/<folder
name>``. The card and its plot are generated again from the editor by the push, as for every hubedit editor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, HubeditError

__all__ = ["PublishedEditor", "SkippedFolder", "PublishEditorsReport", "PublishEditorsError", "find_editor_folders",
           "publish_editors"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class PublishedEditor:
    """One editor folder and where it goes; ``commit`` is ``None`` until it is published (and in a dry run)."""

    name: str
    folder: Path
    repo_id: str
    commit: str | None = None
    editor: Any = field(default=None, repr=False)  # the hubedit.Editor loaded from ``folder``

    def describe(self) -> str:
        """``prune / prune-edit on adult, target_range [0.05, 0.8]``: what the editor is."""
        if self.editor is None:
            return ""
        s = self.editor.settings
        for key in ("target_range", "lam_range", "preference", "lam"):
            if s.get(key) is not None:
                trade = f"{key} {s[key]}"
                break
        else:
            trade = "no trade-off recorded"
        return f"{s['requirement']} / {s['variant']} on {s['task']}, {trade}"


@dataclass
class SkippedFolder:
    """A subfolder that holds no editor, and why."""

    folder: Path
    reason: str


@dataclass
class PublishEditorsReport:
    """What :func:`publish_editors` published (or, with ``dry_run``, would publish) and what it skipped."""

    editors: list[PublishedEditor]
    skipped: list[SkippedFolder]
    dry_run: bool


class PublishEditorsError(HubeditError, RuntimeError):
    """Publishing one editor failed; ``published`` are the editors committed before it (they stay on the Hub)."""

    def __init__(self, message: str, name: str, published: list[PublishedEditor]):
        super().__init__(message)
        self.name = name
        self.published = published


def _editor_or_reason(folder: Path) -> str | None:
    """``None`` when ``folder`` holds an editor (``config.json`` naming a ``requirement``, and weights); else why
    it is skipped. A config that describes an editor but has no weights next to it is an error, not a skip."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return f"no {CONFIG_NAME}"
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{CONFIG_NAME} is not JSON ({exc})"
    if not isinstance(config, dict) or "requirement" not in config:
        return f"{CONFIG_NAME} names no 'requirement' (not an editor)"
    if not (folder / WEIGHTS_NAME).is_file():
        raise ConfigError(f"{folder}: {CONFIG_NAME} describes an editor (requirement {config['requirement']!r}) but "
                          f"there is no {WEIGHTS_NAME} next to it; an editor folder needs both")
    return None


def find_editor_folders(folder: str | os.PathLike) -> tuple[list[Path], list[SkippedFolder]]:
    """The editor folders directly under ``folder`` (sorted by name) and the other subfolders with the reason
    they are skipped. An editor folder holds ``config.json`` with a ``requirement`` key and ``model.safetensors``;
    one with the config but no weights raises :class:`~hubedit.errors.ConfigError`."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected a folder holding one subfolder per editor)")
    editors: list[Path] = []
    skipped: list[SkippedFolder] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name.startswith(".") or sub.name == "__pycache__":
            continue
        reason = _editor_or_reason(sub)
        if reason is None:
            editors.append(sub)
        else:
            skipped.append(SkippedFolder(sub, reason))
    return editors, skipped


def _check_org(org: str) -> None:
    from .hub import HubError, check_repo_id

    if not isinstance(org, str) or not org or "/" in org:
        raise ConfigError(f"org must be one Hub user or organisation name (no '/'), got {org!r}")
    try:
        check_repo_id(org)
    except HubError as exc:
        raise ConfigError(f"org {org!r} is not a valid Hub user or organisation name (letters, digits, '-', '_', "
                          f"'.'; at most 96 characters): {exc}") from exc


def publish_editors(
    folder: str | os.PathLike,
    org: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    token: str | bool | None = None,
    on_published: Callable[[PublishedEditor], None] | None = None,
) -> PublishEditorsReport:
    """Publish every editor folder directly under ``folder`` to ``{org}/{folder name}``, one commit each.

    ``only``: the folder names to publish (each must be an editor folder here). ``revision``: the branch to
    commit to (created from main where missing). Before the first push, the org and every repo id are checked
    (:func:`hubedit.hub.check_repo_id`) and every editor is loaded with ``Editor.from_pretrained`` -- so a bad
    name or a broken editor publishes nothing. ``dry_run``: do all of that and return what would be published,
    without a Hub request. ``on_published`` is called after each commit (to report progress).

    A failed push raises :class:`PublishEditorsError` naming the editor, what was published before it (kept:
    each editor is its own repo) and what was not attempted; the failed push itself leaves its repo as it was
    (:func:`hubedit.hub.publish_folder`).
    """
    from .editor import Editor
    from .hub import HubError, check_repo_id

    _check_org(org)
    found, skipped = find_editor_folders(folder)
    if isinstance(only, str):
        only = [only]
    if only is not None:
        names = {p.name: p for p in found}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: not an editor folder under {folder}; the editor folders "
                              f"there are: {', '.join(names) or 'none'}")
        wanted = list(dict.fromkeys(only))
        found = [names[n] for n in wanted]
    if not found:
        raise ConfigError(f"no editor folder under {folder} (a subfolder with {CONFIG_NAME} naming a 'requirement' "
                          f"and {WEIGHTS_NAME}); skipped: "
                          + ("; ".join(f"{s.folder.name} ({s.reason})" for s in skipped) or "nothing"))
    plan: list[PublishedEditor] = []
    for sub in found:  # every repo id first: a bad name publishes nothing
        repo_id = f"{org}/{sub.name}"
        try:
            check_repo_id(repo_id)
        except HubError as exc:
            raise ConfigError(f"editor folder {sub.name!r} gives the repo id {repo_id!r}, which the Hub does not "
                              f"accept; rename the folder ({exc})") from exc
        plan.append(PublishedEditor(sub.name, sub, repo_id))
    for item in plan:  # then every editor loaded (validated): a broken one publishes nothing
        item.editor = Editor.from_pretrained(item.folder)
    if dry_run:
        return PublishEditorsReport(plan, skipped, dry_run=True)
    published: list[PublishedEditor] = []
    for k, item in enumerate(plan):
        s = item.editor.settings
        message = f"Upload {s['requirement']} editor {item.name} ({s['variant']}) for {s['task']} with hubedit"
        try:
            info = item.editor.push_to_hub(item.repo_id, private=private, token=token, branch=revision,
                                           commit_message=message, model_card_kwargs={"repo_id": item.repo_id})
        except Exception as exc:
            done = ", ".join(f"{p.repo_id} @ {p.commit[:10]}" for p in published) or "none"
            rest = ", ".join(p.name for p in plan[k + 1:]) or "none"
            raise PublishEditorsError(
                f"publishing editor {item.name!r} ({item.folder}) to {item.repo_id} failed: "
                f"{type(exc).__name__}: {exc}; published before it: {done}; not attempted: {rest}",
                item.name, published,
            ) from exc
        item.commit = info.oid
        published.append(item)
        if on_published is not None:
            on_published(item)
    return PublishEditorsReport(published, skipped, dry_run=False)
