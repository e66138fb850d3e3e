"""``Zoo``: a population of trained MLPs in the Hub dataset layout.

Layout of a saved zoo (a folder, or a dataset repo on the Hub)::

    README.md                       dataset card with a ``configs:`` block (plain ``datasets.load_dataset`` works)
    zoo.json                        build info (preset, seed, versions) and the task's feature schema
    data/{split}-00000-of-0000N.parquet   one row per checkpoint

Each row holds the checkpoint's provenance and accuracies as columns and its weights as one binary
column: the MLP serialised as safetensors (config in the header). That keeps every model exact and
safe to load, lets ``datasets`` read the zoo without a custom loader, and keeps the number of files small
(the Hub limits files per folder and per commit).

:meth:`Zoo.load` reads only the metadata columns up front; a checkpoint's weights are read from its shard when
the checkpoint is asked for, streamed a few rows at a time, so opening and iterating a zoo takes a small fraction
of its size in memory. Shards are written in small row groups and pages for that. Shard paths in ``zoo.json`` must
stay inside the zoo folder (symlinks resolved).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, CorruptFileError, HubeditError
from ..mlp import MLP
from .records import SPLITS, Checkpoint, ZooConfig

ZOO_FORMAT = "hubedit.zoo"
ZOO_FORMAT_VERSION = 1
ROWS_PER_SHARD = 2000  # ~30 kB per model: shards stay well under 100 MB
ROWS_PER_ROW_GROUP = 250  # a loaded zoo seeks to a row group's start, then streams: random access decodes <= 1 group
ROWS_PER_PAGE_BATCH = 16  # rows the writer buffers per page-size check: keeps weights pages near 1 MB
WEIGHTS_BATCH_ROWS = 16  # rows of weights a loaded zoo decodes at a time
STAGES = ("early", "middle", "final")

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


#: the columns a loaded zoo reads up front (everything but the weights)
META_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "weights"])
_ACCURACIES = ("train_accuracy", "validation_accuracy", "test_accuracy")


class _MemoryStore:
    """Checkpoints held in memory (a zoo built or assembled in this process)."""

    def __init__(self, checkpoints: list[Checkpoint]):
        self._checkpoints = checkpoints

    def checkpoint(self, row: int) -> Checkpoint:
        return self._checkpoints[row]

    described = checkpoint  # the checkpoint without needing its weights: here it has them anyway

    def stage(self, row: int) -> str:
        return self._checkpoints[row].stage


class _Shard:
    """One parquet file of a saved zoo: its open handle and where its row groups start."""

    def __init__(self, path: Path, file: pq.ParquetFile, first_row: int):
        self.path = path
        self.file = file
        self.first_row = first_row  # the store's row number of the shard's first row
        sizes = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
        self.group_starts = [0, *itertools.accumulate(sizes)][:-1]  # local row of each group's first row


class _WeightsCursor:
    """Streams the weights column of one row group of a shard, a few rows at a time, forwards only."""

    def __init__(self, key: tuple[int, int], shard: _Shard, group: int):
        self.key = key  # (shard index, row group)
        self._batches = shard.file.iter_batches(
            batch_size=WEIGHTS_BATCH_ROWS, row_groups=[group], columns=["weights"], use_threads=False)
        self._batch: pa.Array | None = None
        self.batch_start = 0  # row (within the group) of the held batch's first row
        self.next_row = 0  # the first row (within the group) not yet read

    def get(self, i: int) -> bytes | None:
        """Row ``i`` of the group; ``i`` must not lie before the held batch."""
        while i >= self.next_row:
            self._batch = None  # let the previous batch go before decoding the next
            batch = next(self._batches).column(0)
            self._batch, self.batch_start = batch, self.next_row
            self.next_row += len(batch)
        return self._batch[i - self.batch_start].as_py()


class _ShardStore:
    """Checkpoints in the parquet shards of a saved zoo: metadata in memory, weights read on demand.

    Weights are streamed from the parquet file (buffered reads, ``WEIGHTS_BATCH_ROWS`` rows decoded at a time)
    by a forward cursor over one row group; reading checkpoints in file order -- a split's order -- decodes
    every page once and holds only the page and batch in use. Going back within a group, or to another
    group, restarts the cursor at that group's start.
    """

    def __init__(self, shards: list[_Shard], columns: dict[str, list], stages: list[str]):
        self._shards = shards
        self._starts = [s.first_row for s in shards]
        self._columns = columns  # model_id, task, config (JSON), epoch and the accuracies, one entry per row
        self._stages = stages
        self._cursor: _WeightsCursor | None = None
        self._lock = threading.Lock()  # the cursor is shared by every split and slice of the zoo

    def stage(self, row: int) -> str:
        return self._stages[row]

    def described(self, row: int, weights: bytes = b"") -> Checkpoint:
        """The row's checkpoint; its weights are ``weights`` (empty: for metadata-only uses)."""
        c = self._columns
        return Checkpoint.from_row({
            "model_id": c["model_id"][row], "task": c["task"][row], "config": c["config"][row],
            "epoch": c["epoch"][row], "weights": weights, **{k: c[k][row] for k in _ACCURACIES},
        })

    def checkpoint(self, row: int) -> Checkpoint:
        return self.described(row, self._read_weights(row))

    def _read_weights(self, row: int) -> bytes:
        k = bisect.bisect_right(self._starts, row) - 1
        shard = self._shards[k]
        local = row - shard.first_row
        g = bisect.bisect_right(shard.group_starts, local) - 1
        within = local - shard.group_starts[g]
        with self._lock:
            try:
                cursor = self._cursor
                if cursor is None or cursor.key != (k, g) or within < cursor.batch_start:
                    self._cursor = cursor = None  # let the previous one go first
                    self._cursor = cursor = _WeightsCursor((k, g), shard, g)
                blob = cursor.get(within)
            except (OSError, pa.ArrowException, StopIteration) as exc:
                self._cursor = None
                raise CorruptFileError(f"zoo shard {shard.path}: row group {g} cannot be read: {exc!r}") from exc
        if not blob:
            raise CorruptFileError(f"zoo shard {shard.path}: checkpoint {self._columns['model_id'][row]} has no weights")
        return blob


#: the names ``Zoo.save`` gives its shards: ``data/`` may hold nothing else when a save replaces it
SHARD_NAME = re.compile(r"(train|validation|test)-\d{5}-of-\d{5}\.parquet")


def check_replaceable(directory: Path) -> None:
    """Refuse to save a zoo into ``directory`` when that would replace files that are not an earlier zoo's:
    a save replaces ``data/``, ``zoo.json`` and ``README.md``, so ``data/`` may hold only shards, and a
    ``zoo.json`` or ``README.md`` may be there only beside a hubedit ``zoo.json``. Deletes nothing."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"cannot save a zoo into {directory}: it is a file")
    data, zoo_json, card = directory / "data", directory / "zoo.json", directory / "README.md"
    problems = []
    if data.is_symlink() or (data.exists() and not data.is_dir()):
        problems.append("data, which is not a folder")
    elif data.is_dir():
        foreign = sorted(p.name for p in data.iterdir() if not (SHARD_NAME.fullmatch(p.name) and p.is_file()))
        if foreign:
            problems.append(f"files in data/ that are not zoo shards ({', '.join(foreign[:5])}"
                            f"{' and more' if len(foreign) > 5 else ''})")
    if zoo_json.exists():
        try:
            ours = json.loads(zoo_json.read_text()).get("format") == ZOO_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            problems.append("a zoo.json that is not a hubedit zoo's")
    elif card.exists() and (data.is_dir() or card.is_file()):
        problems.append("a README.md with no zoo.json beside it")
    if problems:
        raise FileExistsError(
            f"cannot save a zoo into {directory}: it holds {'; '.join(problems)}, which saving would replace. "
            "Save into a new or empty folder, or move them away first"
        )


class ZooSplit(Sequence):
    """The checkpoints of one split (``zoo["test"][i].to_module()`` gives an :class:`MLP`).

    A view: indexing or iterating materialises one :class:`Checkpoint` at a time (for a loaded zoo, its
    weights are read from disk then); slices and :meth:`stage` are views too.
    """

    def __init__(self, name: str, checkpoints: list[Checkpoint]):
        self.name = name
        self._store: _MemoryStore | _ShardStore = _MemoryStore(list(checkpoints))
        self._rows: list[int] = list(range(len(checkpoints)))

    @classmethod
    def _view(cls, name: str, store: "_MemoryStore | _ShardStore", rows: list[int]) -> "ZooSplit":
        split = cls.__new__(cls)
        split.name, split._store, split._rows = name, store, rows
        return split

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ZooSplit._view(self.name, self._store, self._rows[i])
        return self._store.checkpoint(self._rows[i])

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Checkpoint]:
        for row in self._rows:
            yield self._store.checkpoint(row)

    def modules(self) -> Iterator[MLP]:
        for ckpt in self:
            yield ckpt.to_module()

    def stage(self, stage: str) -> "ZooSplit":
        """Only the ``early`` / ``middle`` / ``final`` checkpoints (reads no weights)."""
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
        return ZooSplit._view(self.name, self._store, [r for r in self._rows if self._store.stage(r) == stage])

    def _described(self) -> Iterator[Checkpoint]:
        """The checkpoints without reading their weights (a loaded zoo's have empty ``weights``)."""
        for row in self._rows:
            yield self._store.described(row)

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
            _check_task(c.model_id, c.task, task)
        store = _MemoryStore(ordered)
        rows = {s: [i for i, c in enumerate(ordered) if c.split == s] for s in SPLITS}
        self._splits = {s: ZooSplit._view(s, store, rows[s]) for s in SPLITS}
        self._check_split_by_config((s, ordered[r].config.config_id) for s in SPLITS for r in rows[s])

    @classmethod
    def _from_store(cls, task: str, store: _ShardStore, rows: dict[str, list[int]], config_ids: list[int],
                    info: dict | None, source: dict) -> "Zoo":
        """A zoo over checkpoints kept in ``store`` (``rows``: each split's rows, in order)."""
        zoo = cls.__new__(cls)
        zoo.task_name, zoo.info, zoo.source = task, dict(info or {}), dict(source)
        zoo._splits = {s: ZooSplit._view(s, store, rows[s]) for s in SPLITS}
        zoo._check_split_by_config((s, config_ids[r]) for s in SPLITS for r in rows[s])
        return zoo

    @staticmethod
    def _check_split_by_config(split_and_config: Iterable[tuple[str, int]]) -> None:
        seen: dict[int, str] = {}
        for split, config_id in split_and_config:
            if seen.setdefault(config_id, split) != split:
                raise HubeditError(f"configuration {config_id} appears in splits {seen[config_id]!r} and {split!r}")

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
        check_replaceable(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".zoo-staging-", dir=directory))
        try:
            (staging / "data").mkdir()
            shard_files: dict[str, list[str]] = {}
            for name, split in self._splits.items():
                n_shards = max(1, -(-len(split) // ROWS_PER_SHARD))
                shard_files[name] = []
                for k in range(n_shards):
                    fname = f"data/{name}-{k:05d}-of-{n_shards:05d}.parquet"
                    part = split[k * ROWS_PER_SHARD : (k + 1) * ROWS_PER_SHARD]
                    with pq.ParquetWriter(
                        staging / fname, SCHEMA, compression="zstd", write_batch_size=ROWS_PER_PAGE_BATCH,
                        use_dictionary=[n for n in SCHEMA.names if n != "weights"],  # blobs never repeat
                    ) as writer:
                        # small row groups and pages: a loaded zoo streams its weights (see _ShardStore)
                        for g in range(0, max(1, len(part)), ROWS_PER_ROW_GROUP):
                            rows = [c.row() for c in part[g : g + ROWS_PER_ROW_GROUP]]
                            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
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
        """Open a saved zoo folder (see :meth:`save`). Reads ``zoo.json`` and the shards' metadata columns now;
        each checkpoint's weights are read from its shard when the checkpoint is asked for."""
        return cls._load(Path(directory), source=source or {"path": str(directory)}, roots=())

    @classmethod
    def _load(cls, directory: Path, *, source: dict, roots: Sequence[Path]) -> "Zoo":
        """:meth:`load`; shard files may resolve into ``directory`` or one of ``roots`` (a Hub cache's blobs)."""
        if not directory.is_dir():
            raise FileNotFoundError(
                f"zoo folder {str(directory)!r} does not exist (for a zoo on the Hub use Zoo.from_hub or Zoo.open)")
        meta_path = directory / "zoo.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a hubedit zoo: it has no zoo.json")
        meta = _read_zoo_json(meta_path)
        task = meta["task"]
        roots = [directory.resolve(), *(Path(r).resolve() for r in roots)]
        shards: list[_Shard] = []
        columns: dict[str, list] = {k: [] for k in ("model_id", "task", "config", "epoch", *_ACCURACIES)}
        keys: list[tuple[int, int]] = []  # (config_id, epoch) per row: the zoo's order
        splits: list[str] = []
        stages: list[str] = []
        seen_files: dict[Path, str] = {}
        for split, fnames in meta["files"].items():
            for fname in fnames:
                path = _shard_path(directory, fname, meta_path, roots)
                if path.resolve() in seen_files:
                    raise CorruptFileError(f"{meta_path}: shard {fname!r} is listed more than once "
                                           f"(also as {seen_files[path.resolve()]!r})")
                seen_files[path.resolve()] = fname
                shard = _open_shard(path, fname, meta_path, first_row=len(keys))
                table = _read_metadata(shard)
                for name in columns:
                    columns[name].extend(table.column(name).to_pylist())
                for r in range(shard.first_row, len(columns["model_id"])):
                    try:
                        ckpt = Checkpoint(columns["model_id"][r], columns["task"][r],
                                          ZooConfig.from_dict(json.loads(columns["config"][r])), int(columns["epoch"][r]),
                                          b"")
                        stage = ckpt.stage
                    except (TypeError, ValueError, KeyError, IndexError) as exc:
                        raise CorruptFileError(f"zoo shard {path}: row {r - shard.first_row} "
                                               f"({columns['model_id'][r]}) has an unreadable config: {exc!r}") from exc
                    if ckpt.split != split:
                        raise CorruptFileError(f"{path}: checkpoint {ckpt.model_id} of split {ckpt.split!r} in a {split!r} shard")
                    keys.append((ckpt.config.config_id, ckpt.epoch))
                    splits.append(split)
                    stages.append(stage)
                shards.append(shard)
        ordered = sorted(range(len(keys)), key=keys.__getitem__)  # stable, as Zoo() orders checkpoints
        for r in ordered:
            _check_task(columns["model_id"][r], columns["task"][r], task)
        rows = {s: [r for r in ordered if splits[r] == s] for s in SPLITS}
        store = _ShardStore(shards, columns, stages)
        return cls._from_store(task, store, rows, [k[0] for k in keys], meta.get("info"), source)

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
        # in the Hub cache a snapshot's files are symlinks into the repo's blobs/ folder
        blobs = folder.parent.parent / "blobs"
        return cls._load(folder, source={"repo_id": repo_id, "revision": sha},
                         roots=[blobs] if folder.parent.name == "snapshots" and blobs.is_dir() else [])

    @classmethod
    def open(cls, where: str | os.PathLike, *, revision: str | None = None) -> "Zoo":
        """A local zoo folder if ``where`` is one, else a Hub dataset repo id (a mistyped local path is a
        :class:`~hubedit.hub.HubError`, not a Hub lookup)."""
        from ..hub import local_folder_or_repo_id

        folder = local_folder_or_repo_id(where, "zoo", revision=revision)
        if folder is not None:
            return cls.load(folder)
        return cls.from_hub(str(where), revision=revision)

    # --- summaries ------------------------------------------------------------------------------------
    def frame(self):
        """A pandas DataFrame of every checkpoint's columns except the weights."""
        import pandas as pd

        rows = []
        for c in (c for split in self._splits.values() for c in split._described()):  # no weights read
            r = c.row()
            r.pop("weights")
            r.pop("config")
            r["split"] = c.split
            rows.append(r)
        return pd.DataFrame(rows)


# --- reading a saved zoo ------------------------------------------------------------------------------
def _check_task(model_id: str, task: str, zoo_task: str) -> None:
    if task != zoo_task:
        raise HubeditError(f"checkpoint {model_id} is of task {task!r}, zoo is of task {zoo_task!r}")


def _read_zoo_json(meta_path: Path) -> dict:
    """``zoo.json``, checked: a format this hubedit reads, a task name, and ``files`` listing shards for every split."""
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{meta_path} does not parse as JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{meta_path}: expected a JSON object with 'format', 'task' and 'files', "
                               f"got a {type(meta).__name__}")
    if meta.get("format") != ZOO_FORMAT:
        raise CorruptFileError(f"{meta_path}: expected format {ZOO_FORMAT!r}, got {meta.get('format')!r}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptFileError(f"{meta_path}: expected an integer 'format_version', got {version!r}")
    if version > ZOO_FORMAT_VERSION:
        raise CorruptFileError(
            f"{meta_path}: zoo format version {version} is newer than this hubedit "
            f"understands ({ZOO_FORMAT_VERSION}); upgrade hubedit"
        )
    if not isinstance(meta.get("task"), str) or not meta["task"]:
        raise CorruptFileError(f"{meta_path}: expected 'task' to name the zoo's task, got {meta.get('task')!r}")
    if not isinstance(meta.get("info", {}), dict):
        raise CorruptFileError(f"{meta_path}: expected 'info' to be an object, got {type(meta['info']).__name__}")
    example = {s: [f"data/{s}-00000-of-00001.parquet"] for s in SPLITS}
    files = meta.get("files")
    if not isinstance(files, dict):
        got = "no 'files' entry" if files is None else f"'files' as a {type(files).__name__}"
        raise CorruptFileError(f"{meta_path}: expected 'files' mapping each split to its parquet shards "
                               f"(like {json.dumps(example)}), got {got}")
    unknown = sorted(set(files) - set(SPLITS))
    if unknown:
        raise CorruptFileError(f"{meta_path}: 'files' names unknown splits {unknown}; expected {list(SPLITS)}")
    for split in SPLITS:
        shards = files.get(split)
        if not isinstance(shards, list) or not shards or not all(isinstance(f, str) for f in shards):
            raise CorruptFileError(f"{meta_path}: expected 'files' to list the {split!r} split's parquet shards "
                                   f"(like {json.dumps(example[split])}), got {shards!r}")
    return meta


def _shard_path(directory: Path, fname: str, meta_path: Path, roots: Sequence[Path]) -> Path:
    """``directory / fname``, refused unless it stays inside the zoo folder (or ``roots``) once resolved."""
    inside = f"expected a relative path inside the zoo folder {directory} such as 'data/test-00000-of-00001.parquet'"
    windows = PureWindowsPath(fname)
    if (not fname or PurePosixPath(fname).is_absolute() or windows.is_absolute() or windows.drive
            or ".." in PurePosixPath(fname.replace("\\", "/")).parts):
        raise CorruptFileError(f"{meta_path}: shard path {fname!r} leaves the zoo folder; {inside}")
    path = directory / fname
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise CorruptFileError(f"{meta_path}: shard {fname!r} resolves to {resolved}, outside the zoo folder "
                               f"(a symlink?); {inside}")
    return path


def _open_shard(path: Path, fname: str, meta_path: Path, first_row: int) -> _Shard:
    """The shard's parquet file, opened (footer only), with the zoo's columns."""
    if not path.is_file():
        raise CorruptFileError(f"{meta_path} lists shard {fname!r}, but {path} is not a file")
    try:
        # buffered reads, no pre-buffering: a row group's weights column chunk is streamed, never read whole
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        schema = file.schema_arrow
    except (OSError, pa.ArrowException) as exc:
        raise CorruptFileError(f"zoo shard {path} cannot be read as parquet: {exc}") from exc
    missing = set(SCHEMA.names) - set(schema.names)
    if missing:
        raise CorruptFileError(f"zoo shard {path} lacks columns {sorted(missing)}")
    weights = schema.field("weights").type
    if not (pa.types.is_binary(weights) or pa.types.is_large_binary(weights)):
        raise CorruptFileError(f"zoo shard {path}: expected a binary 'weights' column, got {weights}")
    return _Shard(path, file, first_row)


def _read_metadata(shard: _Shard) -> pa.Table:
    """Every column of ``shard`` but the weights, in :data:`META_SCHEMA`'s types."""
    try:
        table = shard.file.read(columns=META_SCHEMA.names, use_threads=False)
        return table.select(META_SCHEMA.names).cast(META_SCHEMA)
    except (OSError, pa.ArrowException) as exc:
        raise CorruptFileError(f"zoo shard {shard.path}: its metadata columns cannot be read as the zoo's "
                               f"column types: {exc}") from exc
