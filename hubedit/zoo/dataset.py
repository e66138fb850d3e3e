"""``Zoo``: a population of trained MLPs in the Hub dataset layout.

Layout of a saved zoo (a folder, or a dataset repo on the Hub)::

    README.md                       dataset card with a ``configs:`` block (plain ``datasets.load_dataset`` works)
    zoo.json                        build info (preset, seed, versions) and the task's feature schema
    data/{split}-00000-of-0000N.parquet   one row per checkpoint

Each row holds the checkpoint's provenance and accuracies as columns and its weights as one binary
column: the MLP serialised as safetensors (config in the header). That keeps every model exact and
safe to load, lets ``datasets`` read the zoo without a custom loader, and keeps the number of files small
(the Hub limits files per folder and per commit).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptFileError, HubeditError
from ..mlp import MLP
from .records import SPLITS, Checkpoint

ZOO_FORMAT = "hubedit.zoo"
ZOO_FORMAT_VERSION = 1
ROWS_PER_SHARD = 2000  # ~30 kB per model: shards stay well under 100 MB

SCHEMA = pa.schema(
    [
        ("model_id", pa.string()),
        ("task", pa.string()),
        ("config_id", pa.int64()),
        ("epoch", pa.int64()),
        ("stage", pa.string()),
        ("seed", pa.int64()),
        ("config", pa.string()),
        ("depth", pa.int64()),
        ("hidden", pa.list_(pa.int64())),
        ("activation", pa.string()),
        ("norm", pa.string()),
        ("dropout", pa.float64()),
        ("n_skips", pa.int64()),
        ("batch_size", pa.int64()),
        ("lr", pa.float64()),
        ("weight_decay", pa.float64()),
        ("train_accuracy", pa.float64()),
        ("validation_accuracy", pa.float64()),
        ("test_accuracy", pa.float64()),
        ("weights", pa.binary()),
    ]
)


class ZooSplit(Sequence):
    """The checkpoints of one split (``zoo["test"][i].to_module()`` gives an :class:`MLP`)."""

    def __init__(self, name: str, checkpoints: list[Checkpoint]):
        self.name = name
        self._checkpoints = checkpoints

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ZooSplit(self.name, self._checkpoints[i])
        return self._checkpoints[i]

    def __len__(self) -> int:
        return len(self._checkpoints)

    def modules(self) -> Iterator[MLP]:
        for ckpt in self._checkpoints:
            yield ckpt.to_module()

    def stage(self, stage: str) -> "ZooSplit":
        """Only the ``early`` / ``middle`` / ``final`` checkpoints."""
        return ZooSplit(self.name, [c for c in self._checkpoints if c.stage == stage])

    def __repr__(self) -> str:
        return f"ZooSplit({self.name!r}, {len(self)} checkpoints)"


class Zoo:
    """A population of trained MLPs of one task, split by configuration into train / validation / test."""

    def __init__(self, task: str, checkpoints: list[Checkpoint], info: dict | None = None, source: dict | None = None):
        self.task_name = task
        self.info = dict(info or {})
        #: where the zoo came from: ``{"repo_id", "revision"}`` after :meth:`from_hub`, ``{"path"}`` after :meth:`load`
        self.source = dict(source or {})
        ordered = sorted(checkpoints, key=lambda c: (c.config.config_id, c.epoch))
        for c in ordered:
            if c.task != task:
                raise HubeditError(f"checkpoint {c.model_id} is of task {c.task!r}, zoo is of task {task!r}")
        self._splits = {s: ZooSplit(s, [c for c in ordered if c.split == s]) for s in SPLITS}
        self._check_split_by_config()

    def _check_split_by_config(self) -> None:
        seen: dict[int, str] = {}
        for split in self._splits.values():
            for c in split:
                if seen.setdefault(c.config.config_id, split.name) != split.name:
                    raise HubeditError(f"configuration {c.config.config_id} appears in splits {seen[c.config.config_id]!r} and {split.name!r}")

    # --- access -------------------------------------------------------------------------------------
    def __getitem__(self, split: str) -> ZooSplit:
        if split not in self._splits:
            raise KeyError(f"unknown split {split!r}; a zoo has {list(SPLITS)}")
        return self._splits[split]

    def __len__(self) -> int:
        return sum(len(s) for s in self._splits.values())

    def __iter__(self) -> Iterator[Checkpoint]:
        for s in self._splits.values():
            yield from s

    @property
    def splits(self) -> dict[str, ZooSplit]:
        return dict(self._splits)

    @property
    def task(self):
        from ..tasks import load_task

        return load_task(self.task_name)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"Zoo(task={self.task_name!r}, checkpoints: {sizes})"

    # --- local persistence --------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write the zoo in the Hub dataset layout. Files are written to a temporary folder first and
        moved in place, so an interrupted save leaves any earlier zoo in ``directory`` intact."""
        from .card import zoo_card

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".zoo-staging-", dir=directory))
        try:
            (staging / "data").mkdir()
            shard_files: dict[str, list[str]] = {}
            for name, split in self._splits.items():
                rows = [c.row() for c in split]
                n_shards = max(1, -(-len(rows) // ROWS_PER_SHARD))
                shard_files[name] = []
                for k in range(n_shards):
                    part = rows[k * ROWS_PER_SHARD : (k + 1) * ROWS_PER_SHARD]
                    fname = f"data/{name}-{k:05d}-of-{n_shards:05d}.parquet"
                    table = pa.Table.from_pylist(part, schema=SCHEMA)
                    pq.write_table(table, staging / fname, compression="zstd")
                    shard_files[name].append(fname)
            meta = {
                "format": ZOO_FORMAT,
                "format_version": ZOO_FORMAT_VERSION,
                "task": self.task_name,
                "task_schema": self.task.schema(),
                "info": self.info,
                "files": shard_files,
            }
            (staging / "zoo.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            (staging / "README.md").write_text(str(zoo_card(self, repo_id=repo_id)))
            # replace the previous zoo's files (only ours: data/, zoo.json, README.md)
            old_data = directory / "data"
            if old_data.exists():
                shutil.rmtree(old_data)
            os.replace(staging / "data", old_data)
            os.replace(staging / "zoo.json", directory / "zoo.json")
            os.replace(staging / "README.md", directory / "README.md")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, source: dict | None = None) -> "Zoo":
        directory = Path(directory)
        meta_path = directory / "zoo.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a hubedit zoo: it has no zoo.json")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{meta_path} does not parse as JSON: {exc}") from exc
        if meta.get("format") != ZOO_FORMAT:
            raise CorruptFileError(f"{meta_path}: expected format {ZOO_FORMAT!r}, got {meta.get('format')!r}")
        if meta.get("format_version", 0) > ZOO_FORMAT_VERSION:
            raise CorruptFileError(
                f"{meta_path}: zoo format version {meta['format_version']} is newer than this hubedit "
                f"understands ({ZOO_FORMAT_VERSION}); upgrade hubedit"
            )
        checkpoints: list[Checkpoint] = []
        for split, files in meta["files"].items():
            for fname in files:
                path = directory / fname
                try:
                    table = pq.read_table(path)
                except (OSError, pa.ArrowException) as exc:
                    raise CorruptFileError(f"zoo shard {path} cannot be read as parquet: {exc}") from exc
                missing = set(SCHEMA.names) - set(table.column_names)
                if missing:
                    raise CorruptFileError(f"zoo shard {path} lacks columns {sorted(missing)}")
                for row in table.to_pylist():
                    ckpt = Checkpoint.from_row(row)
                    if ckpt.split != split:
                        raise CorruptFileError(f"{path}: checkpoint {ckpt.model_id} of split {ckpt.split!r} in a {split!r} shard")
                    checkpoints.append(ckpt)
        return cls(meta["task"], checkpoints, info=meta.get("info"), source=source or {"path": str(directory)})

    # --- Hub ------------------------------------------------------------------------------------------
    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
    ):
        """Publish the zoo as a dataset repo, all files in one commit. Returns the ``CommitInfo``."""
        from ..hub import publish_folder

        with tempfile.TemporaryDirectory(prefix="hubedit-zoo-push-") as tmp:
            self.save(tmp, repo_id=repo_id)
            info = publish_folder(
                tmp, repo_id, repo_type="dataset", revision=revision, private=private, token=token,
                commit_message=commit_message or f"Upload {self.task_name} model zoo ({len(self)} checkpoints) with hubedit",
                create_branch=revision is not None,
            )
        self.source = {"repo_id": repo_id, "revision": info.oid}
        return info

    @classmethod
    def from_hub(cls, repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> "Zoo":
        """Download a zoo dataset repo (or use the cache offline); ``zoo.source`` records the commit."""
        from ..hub import snapshot

        folder, sha = snapshot(
            repo_id, repo_type="dataset", revision=revision, token=token,
            allow_patterns=["zoo.json", "README.md", "data/*.parquet"],
        )
        return cls.load(folder, source={"repo_id": repo_id, "revision": sha})

    @classmethod
    def open(cls, where: str | os.PathLike, *, revision: str | None = None) -> "Zoo":
        """A local zoo folder if ``where`` is one, else a Hub dataset repo id."""
        if Path(where).is_dir():
            return cls.load(where)
        return cls.from_hub(str(where), revision=revision)

    # --- summaries ------------------------------------------------------------------------------------
    def frame(self):
        """A pandas DataFrame of every checkpoint's columns except the weights."""
        import pandas as pd

        rows = []
        for c in self:
            r = c.row()
            r.pop("weights")
            r.pop("config")
            r["split"] = c.split
            rows.append(r)
        return pd.DataFrame(rows)
