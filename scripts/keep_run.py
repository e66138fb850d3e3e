#!/usr/bin/env python
"""Copy what a ``reproduce.py`` run has finished into a folder that is committed, and back.

A session ends its processes and ``runs/`` is git-ignored, so a run longer than a session is kept by copying its
finished pieces into the repository as they come:

* ``keep``: every finished editor (a folder with ``config.json`` and ``model.safetensors``: those, its
  ``train_log.jsonl`` and its card ``README.md``; not its training checkpoint, which only an unfinished run needs)
  and every cached evaluation (``eval/*.json``), from the run's ``--work`` folder (zoos left out: they rebuild from
  their seed) into ``DEST``, same layout; files already there and identical are left alone;
* ``restore``: ``DEST`` back into a work folder, where ``reproduce.py`` loads what is there (it checks each
  editor's training settings) and trains / evaluates only the rest. Nothing in the work folder is overwritten:
  a file that exists there with other bytes stops the restore with an error.

    python scripts/keep_run.py keep runs/reproduce/small results/small-seeds/cache
    python scripts/keep_run.py restore results/small-seeds/cache runs/reproduce/small
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

EDITOR_FILES = ("config.json", "model.safetensors", "train_log.jsonl", "README.md")


def finished_files(work: Path) -> list[Path]:
    """Paths (relative to ``work``) of the finished editors' files and the cached evaluations."""
    out = []
    for weights in sorted(work.rglob("model.safetensors")):
        folder = weights.parent
        if "zoos" in folder.relative_to(work).parts or not (folder / "config.json").is_file():
            continue
        out += [(folder / name).relative_to(work) for name in EDITOR_FILES if (folder / name).is_file()]
    out += [p.relative_to(work) for p in sorted(work.rglob("eval/*.json")) if "zoos" not in p.relative_to(work).parts]
    return out


def keep(work: Path, dest: Path) -> list[Path]:
    """Copy :func:`finished_files` of ``work`` into ``dest``; returns what was new or changed."""
    copied = []
    for rel in finished_files(work):
        src, dst = work / rel, dest / rel
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied.append(rel)
    return copied


def restore(kept: Path, work: Path) -> list[Path]:
    """Copy every file of ``kept`` into ``work``; refuses (before copying anything) to replace other bytes."""
    files = [p.relative_to(kept) for p in sorted(kept.rglob("*")) if p.is_file()]
    clashes = [rel for rel in files if (work / rel).is_file() and (work / rel).read_bytes() != (kept / rel).read_bytes()]
    if clashes:
        raise ValueError(f"{len(clashes)} file(s) in {work} differ from {kept} (first: {clashes[0]}); nothing copied")
    copied = []
    for rel in files:
        if not (work / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept / rel, work / rel)
            copied.append(rel)
    return copied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("keep", "restore"))
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    if not args.source.is_dir():
        print(f"keep_run: error: {args.source} is not a folder", file=sys.stderr)
        return 2
    try:
        done = keep(args.source, args.dest) if args.action == "keep" else restore(args.source, args.dest)
    except ValueError as exc:
        print(f"keep_run: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.action}: {len(done)} file(s) copied into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
