"""scripts/keep_run.py: a run's finished pieces copied into a kept folder and back, nothing overwritten."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("keep_run", ROOT / "scripts" / "keep_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_keep_copies_finished_editors_and_evaluations_only_and_restore_never_overwrites(tmp_path):
    mod = _script()
    work, kept = tmp_path / "work", tmp_path / "kept"
    done = work / "editors" / "prune-adult" / "prune-edit" / "lam-0.01"
    for name in ("config.json", "model.safetensors", "train_log.jsonl", "README.md", "pareto.png",
                 "checkpoint/editor.safetensors", "checkpoint/state.json"):
        _write(done / name, name)
    _write(work / "seed-1" / "editors" / "dm-bank" / "gmn" / "lam-0.1" / "checkpoint" / "state.json", "unfinished")
    _write(work / "seed-1" / "editors" / "dm-bank" / "gmn" / "lam-0.1" / "train_log.jsonl", "unfinished")
    _write(work / "eval" / "prune-adult.json", "{}")
    _write(work / "seed-2" / "eval" / "dm-bank-matched.json", "{}")
    _write(work / "zoos" / "adult-small" / "zoo.json", "{}")
    _write(work / "zoos" / "adult-small" / "eval" / "x.json", "{}")

    assert sorted(map(str, mod.keep(work, kept))) == sorted([
        "editors/prune-adult/prune-edit/lam-0.01/config.json", "editors/prune-adult/prune-edit/lam-0.01/model.safetensors",
        "editors/prune-adult/prune-edit/lam-0.01/train_log.jsonl", "editors/prune-adult/prune-edit/lam-0.01/README.md",
        "eval/prune-adult.json", "seed-2/eval/dm-bank-matched.json"])
    assert mod.keep(work, kept) == []  # identical files are left alone
    _write(work / "eval" / "prune-adult.json", '{"new": 1}')
    assert [str(p) for p in mod.keep(work, kept)] == ["eval/prune-adult.json"]

    fresh = tmp_path / "fresh"
    assert len(mod.restore(kept, fresh)) == 6
    assert (fresh / "eval" / "prune-adult.json").read_text() == '{"new": 1}'
    assert mod.restore(kept, fresh) == []
    _write(fresh / "eval" / "prune-adult.json", "a user's own file")
    (fresh / "seed-2" / "eval" / "dm-bank-matched.json").unlink()
    with pytest.raises(ValueError, match="differ"):
        mod.restore(kept, fresh)
    assert (fresh / "eval" / "prune-adult.json").read_text() == "a user's own file"
    assert not (fresh / "seed-2" / "eval" / "dm-bank-matched.json").exists()  # nothing copied before the refusal
    assert mod.main(["restore", str(tmp_path / "missing"), str(fresh)]) == 2
