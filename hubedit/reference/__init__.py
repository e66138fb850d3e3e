"""Reference editors shipped inside the package (package data): ``hubedit/reference/<name>/`` holds one editor's
``config.json`` and ``model.safetensors``, loadable with ``Editor.from_pretrained(folder)``. The quickstart edits
with :data:`QUICKSTART_EDITOR`. This module only says where the files are; it imports nothing of hubedit."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REFERENCE_DIR", "QUICKSTART_EDITOR", "editor_folder", "names"]

REFERENCE_DIR = Path(__file__).resolve().parent
QUICKSTART_EDITOR = "prune-edit-adult"


def editor_folder(name: str = QUICKSTART_EDITOR) -> Path | None:
    """The folder of the shipped reference editor ``name``, or ``None`` when this installation has none (both
    ``config.json`` and ``model.safetensors`` must be there)."""
    folder = REFERENCE_DIR / name
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    return None


def names() -> list[str]:
    """The names of the reference editors this installation ships."""
    if not REFERENCE_DIR.is_dir():
        return []
    return sorted(p.name for p in REFERENCE_DIR.iterdir() if p.is_dir() and editor_folder(p.name) is not None)
