"""Reading a saved zoo: ``Zoo.load`` reads metadata up front and weights on demand (one row group at a time),
loads exactly what was saved, refuses a malformed ``zoo.json`` with a clear :class:`CorruptFileError`, keeps
shard paths inside the zoo folder, and ``Zoo.open`` tells a mistyped path from a Hub repo id. Also a smoke
run of ``scripts/bench_zoo_memory.py``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hubedit.errors import ConfigError, CorruptFileError
from hubedit.hub import HubError
from hubedit.zoo import Zoo
from hubedit.zoo import dataset as zoo_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def zoo_copy(tiny_adult_zoo_dir, tmp_path) -> Path:
    """A writable copy of the session's tiny zoo (its folder is read-only for tests)."""
    out = tmp_path / "zoo"
    shutil.copytree(tiny_adult_zoo_dir, out, ignore=shutil.ignore_patterns(".build"))
    return out


def _edit_meta(folder: Path, edit) -> Path:
    meta_path = folder / "zoo.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(edit(meta)))
    return meta_path


def _ids_and_blobs(zoo) -> dict:
    return {s: [(c.model_id, hashlib.sha256(c.weights).hexdigest()) for c in zoo[s]] for s in ("train", "validation", "test")}


# --- exact, lazy loading ------------------------------------------------------------------------------------
def test_load_gives_the_saved_checkpoints_in_order(tiny_adult_zoo, tiny_adult_zoo_dir, tmp_path, monkeypatch):
    loaded = Zoo.load(tiny_adult_zoo_dir)
    assert _ids_and_blobs(loaded) == _ids_and_blobs(tiny_adult_zoo)
    assert [c.metrics for c in loaded] == [c.metrics for c in tiny_adult_zoo]
    assert loaded.frame().equals(tiny_adult_zoo.frame())
    # several shards of several row groups per split, and a loaded zoo saved again, still give the same models
    monkeypatch.setattr(zoo_dataset, "ROWS_PER_SHARD", 5)
    monkeypatch.setattr(zoo_dataset, "ROWS_PER_ROW_GROUP", 2)
    loaded.save(tmp_path / "resaved")
    assert len(json.loads((tmp_path / "resaved" / "zoo.json").read_text())["files"]["train"]) > 1
    again = Zoo.load(tmp_path / "resaved")
    assert _ids_and_blobs(again) == _ids_and_blobs(tiny_adult_zoo)
    test = again["test"]
    assert test[-1].model_id == test[len(test) - 1].model_id and [c.model_id for c in test[1:3]] == [
        c.model_id for c in list(test)[1:3]]
    assert [m.config for m in again["validation"].modules()] == [c.to_module().config for c in tiny_adult_zoo["validation"]]
    with pytest.raises(IndexError):
        test[len(test)]


def test_a_zoo_saved_over_its_own_folder_stays_readable(zoo_copy, tiny_adult_zoo):
    zoo = Zoo.load(zoo_copy)
    zoo.save(zoo_copy)  # reads the old shards while it writes the new ones, then replaces them
    assert _ids_and_blobs(zoo) == _ids_and_blobs(tiny_adult_zoo) == _ids_and_blobs(Zoo.load(zoo_copy))


class _ReadSpy:
    """Records which columns each parquet read of a zoo shard asked for (None: all of them)."""

    def __init__(self, monkeypatch):
        self.reads: list[tuple[str, list | None]] = []
        for owner, name in ((pq, "read_table"), (pq.ParquetFile, "read"), (pq.ParquetFile, "read_row_group"),
                            (pq.ParquetFile, "iter_batches")):
            monkeypatch.setattr(owner, name, self._wrap(name, getattr(owner, name)))

    def _wrap(self, name, fn):
        def spy(*args, **kwargs):
            self.reads.append((name, kwargs.get("columns")))
            return fn(*args, **kwargs)
        return spy

    def weight_reads(self) -> list:
        return [r for r in self.reads if r[1] is None or "weights" in r[1]]


def test_opening_and_metadata_filters_read_no_weights(tiny_adult_zoo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_dataset, "ROWS_PER_ROW_GROUP", 3)
    Zoo.load(tiny_adult_zoo_dir).save(tmp_path / "z")
    spy = _ReadSpy(monkeypatch)
    zoo = Zoo.load(tmp_path / "z")
    final = zoo["train"].stage("final")
    frame = zoo.frame()
    assert len(final) == (frame[frame["split"] == "train"]["stage"] == "final").sum() > 0
    assert spy.reads and spy.weight_reads() == []  # metadata read, weights not
    # iterating reads each row group's weights once, one group at a time
    n_groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in (tmp_path / "z" / "data").glob("*.parquet")
                   if pq.ParquetFile(p).metadata.num_rows)
    assert n_groups > 3
    n = sum(1 for _ in zoo)
    assert n == len(zoo) and spy.weight_reads() == [("iter_batches", ["weights"])] * n_groups


def test_any_access_order_gives_the_right_checkpoint(tiny_adult_zoo, tiny_adult_zoo_dir, tmp_path, monkeypatch):
    """Weights are streamed forwards through a row group: going back, or jumping between groups and shards, restarts."""
    monkeypatch.setattr(zoo_dataset, "ROWS_PER_SHARD", 7)
    monkeypatch.setattr(zoo_dataset, "ROWS_PER_ROW_GROUP", 3)
    monkeypatch.setattr(zoo_dataset, "WEIGHTS_BATCH_ROWS", 2)
    Zoo.load(tiny_adult_zoo_dir).save(tmp_path / "z")
    zoo, train = Zoo.load(tmp_path / "z"), tiny_adult_zoo["train"]
    n = len(train)
    order = [*reversed(range(n)), *range(0, n, 2), 1, 0, n - 1, 2, 2, 5 % n, 4 % n]
    assert [zoo["train"][i].weights for i in order] == [train[i].weights for i in order]
    assert [c.weights for c in zoo["test"][::-1]] == [c.weights for c in tiny_adult_zoo["test"]][::-1]


def test_unknown_stage_is_an_error(tiny_adult_zoo_dir):
    with pytest.raises(ConfigError, match=r"stage must be one of .*'final'.*got 'last'"):
        Zoo.load(tiny_adult_zoo_dir)["test"].stage("last")


# --- zoo.json faults ----------------------------------------------------------------------------------------
def test_zoo_json_that_is_a_list(zoo_copy):
    (zoo_copy / "zoo.json").write_text("[]")
    with pytest.raises(CorruptFileError, match=r"zoo\.json: expected a JSON object .*got a list"):
        Zoo.load(zoo_copy)


def test_zoo_json_without_files(zoo_copy):
    _edit_meta(zoo_copy, lambda m: {k: v for k, v in m.items() if k != "files"})
    with pytest.raises(CorruptFileError, match=r"zoo\.json: expected 'files' mapping each split.*got no 'files' entry"):
        Zoo.load(zoo_copy)


@pytest.mark.parametrize("files", [lambda f: {k: v for k, v in f.items() if k != "test"}, lambda f: {**f, "test": []}])
def test_zoo_json_that_omits_the_test_shards(zoo_copy, files):
    _edit_meta(zoo_copy, lambda m: {**m, "files": files(m["files"])})
    with pytest.raises(CorruptFileError, match=r"zoo\.json: expected 'files' to list the 'test' split's parquet shards"):
        Zoo.load(zoo_copy)


def _outside_shard(zoo_copy: Path) -> Path:
    """A real test shard placed beside (not inside) the zoo folder: a read of it would succeed."""
    inside = zoo_copy / json.loads((zoo_copy / "zoo.json").read_text())["files"]["test"][0]
    outside = zoo_copy.parent / "elsewhere.parquet"
    shutil.copy(inside, outside)
    return outside


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_shard_paths_outside_the_zoo_folder_are_refused(zoo_copy, spelling):
    outside = _outside_shard(zoo_copy)
    fname = "../elsewhere.parquet" if spelling == "relative" else str(outside)
    meta_path = _edit_meta(zoo_copy, lambda m: {**m, "files": {**m["files"], "test": [fname]}})
    with pytest.raises(CorruptFileError, match=re.escape(f"{meta_path}: shard path {fname!r} leaves the zoo folder")):
        Zoo.load(zoo_copy)


def test_a_symlinked_shard_outside_the_zoo_folder_is_refused(zoo_copy):
    outside = _outside_shard(zoo_copy)
    (zoo_copy / "data" / "link.parquet").symlink_to(outside)
    _edit_meta(zoo_copy, lambda m: {**m, "files": {**m["files"], "test": ["data/link.parquet"]}})
    with pytest.raises(CorruptFileError, match=r"shard 'data/link.parquet' resolves to .*elsewhere\.parquet, outside the zoo folder"):
        Zoo.load(zoo_copy)


def test_from_hub_follows_cache_symlinks_into_the_repos_blobs_only(zoo_copy, tmp_path, monkeypatch):
    """In the Hub cache a snapshot's files are symlinks into ``blobs/`` beside ``snapshots/``: allowed there."""
    import hubedit.hub

    repo = tmp_path / "hub" / "datasets--someone--zoo"
    snap = repo / "snapshots" / ("a" * 40)
    (snap / "data").mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in [zoo_copy / "zoo.json", *(zoo_copy / "data").glob("*.parquet")]:
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snap / f.relative_to(zoo_copy)).symlink_to(os.path.relpath(blob, (snap / f.relative_to(zoo_copy)).parent))
    monkeypatch.setattr(hubedit.hub, "snapshot", lambda *a, **k: (snap, snap.name))
    zoo = Zoo.from_hub("someone/zoo")
    assert zoo.source == {"repo_id": "someone/zoo", "revision": "a" * 40}
    assert _ids_and_blobs(zoo) == _ids_and_blobs(Zoo.load(zoo_copy))
    # a symlink out of the repo's cache folder is still refused
    (snap / "data" / "out.parquet").symlink_to(_outside_shard(zoo_copy))
    _edit_meta(zoo_copy, lambda m: {**m, "files": {**m["files"], "test": ["data/out.parquet"]}})
    (snap / "zoo.json").unlink()
    shutil.copy(zoo_copy / "zoo.json", snap / "zoo.json")
    with pytest.raises(CorruptFileError, match="outside the zoo folder"):
        Zoo.from_hub("someone/zoo")


def test_a_shard_listed_twice_is_refused(zoo_copy):
    _edit_meta(zoo_copy, lambda m: {**m, "files": {**m["files"], "test": m["files"]["test"] * 2}})
    with pytest.raises(CorruptFileError, match="is listed more than once"):
        Zoo.load(zoo_copy)


def test_a_mistyped_local_path_is_not_a_hub_lookup(tmp_path):
    with pytest.raises(HubError, match="not an existing local folder, and not a Hub repo id"):
        Zoo.open(tmp_path / "zoos" / "bnak")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Zoo.load(tmp_path / "zoos" / "bnak")


# --- scripts/bench_zoo_memory.py ----------------------------------------------------------------------------
def test_bench_zoo_memory_smoke(tiny_adult_zoo, tiny_adult_zoo_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_zoo_memory.py"), str(tiny_adult_zoo_dir)],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"hubedit: {ROOT / 'hubedit' / '__init__.py'}" in out
    digest = hashlib.sha256(b"".join(c.weights for s in tiny_adult_zoo.splits.values() for c in s)).hexdigest()
    assert f"weights sha256 (iterate, {len(tiny_adult_zoo)} checkpoints in order): {digest}" in out
    rows = re.findall(r"^\| (open|iterate) \| (\d+) \| (-?\d+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["open", "iterate"], out
    for _, peak, above, seconds, size in rows:
        assert int(peak) > int(above) >= 0 and float(seconds) > 0 and float(size) > 0


@pytest.mark.parametrize("user_file", ["data/mine.csv", "zoo.json", "README.md"])
def test_save_refuses_to_replace_a_users_files(tiny_adult_zoo, tmp_path, user_file):
    """`Zoo.save` replaced `data/` wholesale (shutil.rmtree) and overwrote zoo.json / README.md, whatever they were."""
    target = tmp_path / "out"
    (target / user_file).parent.mkdir(parents=True, exist_ok=True)
    (target / user_file).write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match="not"):
        tiny_adult_zoo.save(target)
    assert (target / user_file).read_text() == '{"mine": true}'
    assert not (target / "data").exists() or [p.name for p in (target / "data").iterdir()] == ["mine.csv"]
