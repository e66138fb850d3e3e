"""``build_zoo``: sample a population of configurations, train it in batched groups, save it as a Zoo.

Resumable: the build keeps its state under ``out/.build/``:

* ``manifest.json`` -- task, seed, preset, the sampled configurations (their hash) and the group plan.
  A rerun into the same folder checks it and refuses a different task / seed / preset / option with a
  clear error instead of mixing two populations.
* ``group-NNNN.parquet`` -- the checkpoints of one finished group (one row per checkpoint, the zoo's row
  format), written atomically (temporary file + rename) when the group finishes.

The plan (which configurations train together) is a function of the configurations alone, never of
what has finished, and each group's result depends only on its members, so a build that is interrupted
and rerun skips the finished groups and ends byte-identical to an uninterrupted one.

* ``lock`` -- held (``fcntl.flock``) by the process that builds into the folder: a second build of the
  same folder fails at once instead of mixing its files in. The lock goes with its process, however it ends.

The output folder is checked before anything is trained: a build writes ``.build/`` and replaces
``data/``, ``zoo.json`` and ``README.md``, so those may exist only as the build's own (an unfinished or
finished build of the same settings, which resumes); anything else there is refused, never deleted.

Processes (:mod:`hubedit.distributed`). Each group trains on one thread, so the bytes never depend on how
many processes train. The processes are the ranks of a gloo group, and every rank runs the same code: it
trains its share of the pending groups (shares of about equal cost, by :func:`~hubedit.zoo.trainer.group_cost`)
into the build folder; rank 0 checks and locks the folder first and alone assembles and saves the zoo, which
is byte-identical to a one-process build. Each step ends with every rank learning whether all succeeded
(:func:`hubedit.distributed.all_succeed`): if any rank fails, every rank raises, and the groups finished so
far stay for a rerun to resume from. The ranks are

* ``workers=N`` (``--workers``): this process (rank 0) and ``N - 1`` helper processes on this machine
  (:func:`hubedit.distributed.local_processes`), which die with it; ``workers=1`` trains here alone.
* a launched world: under ``torchrun`` or ``accelerate launch --multi_gpu --num_processes N
  [--num_machines M ...] -m hubedit zoo build ...`` (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set), the
  launcher's processes. Over several machines ``out`` must be on a filesystem they all share, and the machines
  alike (hubedit, torch, trainer kernels).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import platform
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import distributed
from ..errors import ConfigError, CorruptFileError, HubeditError
from ..tasks import load_task
from . import fused
from .presets import ZooPreset, get_preset
from .records import Checkpoint, ZooConfig
from .sampling import sample_configs
from .trainer import TRAINER_REVISION, group_cost, plan_groups, train_group, training_data

if TYPE_CHECKING:
    from .dataset import Zoo

__all__ = ["build_zoo", "build_checkpoints", "BUILD_DIR", "BuildError", "BuildLockedError"]

BUILD_DIR = ".build"
LOCK_NAME = "lock"
MANIFEST_FORMAT = "hubedit.zoo-build"
MANIFEST_VERSION = 1
_GROUP_META_KEY = b"hubedit.group"


def _hubedit_version() -> str:
    from ..version import __version__

    return __version__


def _configs_digest(configs: list[ZooConfig]) -> str:
    h = hashlib.sha256()
    for c in configs:
        h.update(json.dumps(c.to_dict(), sort_keys=True).encode())
    return h.hexdigest()


def _manifest(task: str, preset: ZooPreset, seed: int, configs: list[ZooConfig], plan: list[list[int]], compile) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "task": task,
        "seed": int(seed),
        "preset": preset.to_dict(),
        "compile": compile if isinstance(compile, str) else bool(compile),
        "n_configs": len(configs),
        "configs_sha256": _configs_digest(configs),
        "plan": plan,
        "trainer_revision": TRAINER_REVISION,
        "fused_kernels": fused.available(),
        "hubedit_version": _hubedit_version(),
        "torch_version": torch.__version__,
        "configs": [c.to_dict() for c in configs],
    }


_CHECKED_FIELDS = (
    "task", "seed", "preset", "compile", "n_configs", "configs_sha256", "plan", "trainer_revision", "fused_kernels"
)


def _check_manifest(path: Path, wanted: dict) -> None:
    try:
        have = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"build manifest {path} cannot be read ({exc}); delete {path.parent} to start over") from exc
    if have.get("format") != MANIFEST_FORMAT:
        raise CorruptFileError(f"{path} is not a hubedit zoo build manifest; delete {path.parent} to start over")
    diffs = []
    for key in _CHECKED_FIELDS:
        if have.get(key) != wanted[key]:
            if key == "configs_sha256":
                diffs.append("the sampled configurations differ")
            elif key == "plan":
                diffs.append(
                    f"the training-group plan differs (built by hubedit {have.get('hubedit_version')}, this is "
                    f"{wanted.get('hubedit_version')}: versions may plan groups differently)"
                )
            elif key == "trainer_revision":
                diffs.append(
                    f"the trainer's arithmetic changed (revision {have.get(key)} -> {wanted[key]}, hubedit "
                    f"{have.get('hubedit_version')} -> {wanted.get('hubedit_version')}): groups trained by both "
                    "would not reproduce one build"
                )
            elif key == "fused_kernels":
                diffs.append(
                    f"the trainer's fused kernels were {'' if have.get(key) else 'un'}available when it started and "
                    f"are {'' if wanted[key] else 'un'}available now (HUBEDIT_FUSED_KERNELS, a C++ compiler): "
                    "groups trained both ways would not reproduce one build"
                )
            elif key == "preset":
                a, b = have.get(key) or {}, wanted[key]
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diffs.append("preset " + ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys))
            else:
                diffs.append(f"{key}: {have.get(key)!r} -> {wanted[key]!r}")
    if diffs:
        raise ConfigError(
            f"{path.parent.parent} holds an unfinished zoo build with other settings ({'; '.join(diffs)}). "
            f"Rerun with the original settings to resume it, choose another output folder, or delete "
            f"{path.parent} to discard it."
        )


def _group_path(build_dir: Path, index: int) -> Path:
    return build_dir / f"group-{index:05d}.parquet"


def _write_group(path: Path, index: int, config_ids: list[int], checkpoints: list[Checkpoint], meta: dict) -> None:
    rows = [c.row() for c in checkpoints]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"model_id": pa.array([], pa.string())})
    info = dict(meta, index=index, config_ids=sorted(config_ids))
    table = table.replace_schema_metadata({_GROUP_META_KEY: json.dumps(info, sort_keys=True).encode()})
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _read_group(path: Path, index: int, config_ids: list[int]) -> tuple[list[Checkpoint], dict] | None:
    """The finished group stored at ``path``, or None (with a warning) if it is unreadable or foreign."""
    try:
        table = pq.read_table(path)
        info = json.loads((table.schema.metadata or {})[_GROUP_META_KEY])
        if info.get("index") != index or info.get("config_ids") != sorted(config_ids):
            raise ValueError(f"holds group {info.get('index')} with configs {info.get('config_ids')}")
        checkpoints = [Checkpoint.from_row(r) for r in table.to_pylist()] if "config" in table.column_names else []
    except Exception as exc:  # a damaged file is retrained, not fatal
        warnings.warn(f"zoo build: ignoring unreadable group file {path} ({exc}); the group is retrained")
        return None
    return checkpoints, info


def _train_and_save(
    task: str, configs: list[dict], index: int, path: str, options: dict,
    on_epoch: Callable[[int, int], None] | None = None,
) -> dict:
    """Train one group and store it (in the calling process, a worker process or a launched rank)."""
    cfgs = [ZooConfig.from_dict(d) for d in configs]
    res = train_group(task, cfgs, max_train_rows=options["max_train_rows"], compile=options["compile"], on_epoch=on_epoch)
    meta = {
        "diverged": {str(k): v for k, v in res.diverged.items()},
        "backend": res.backend,
        "train_seconds": res.train_seconds,
        "eval_seconds": res.eval_seconds,
    }
    if "rank" in options:  # which rank of a launched build trained it
        meta["rank"] = options["rank"]
    _write_group(Path(path), index, [c.config_id for c in cfgs], res.checkpoints, meta)
    return meta


# --------------------------------------------------------------------------------------------------
# the build's plan, its folder and its lock
# --------------------------------------------------------------------------------------------------
@dataclass
class _Build:
    """One build's plan: the same on every process that takes part, before anything is trained."""

    task: str
    preset: ZooPreset
    seed: int
    compile: "bool | str"
    configs: list[ZooConfig]
    plan: list[list[int]]
    n_rows: int
    out: Path
    manifest: dict

    def __post_init__(self) -> None:
        self.by_id = {c.config_id: c for c in self.configs}
        self.build_dir = self.out / BUILD_DIR
        self.options = {"max_train_rows": self.preset.max_train_rows, "compile": self.compile}

    def members(self, i: int) -> list[ZooConfig]:
        return [self.by_id[c] for c in self.plan[i]]

    def cost(self, i: int) -> float:
        return group_cost(self.members(i), self.n_rows)

    def job(self, i: int) -> tuple:
        """``_train_and_save``'s arguments for group ``i`` (plain data: they travel to worker processes)."""
        return (self.task, [c.to_dict() for c in self.members(i)], i, str(_group_path(self.build_dir, i)), self.options)


def _plan_build(task, preset, out, seed, n_configs, epochs, compile) -> _Build:
    t = load_task(task)
    p = get_preset(preset).replace(n_configs=n_configs, epochs=epochs)
    configs = sample_configs(t.name, t.n_features, p.n_configs, seed, p.epochs, p.checkpoint_epochs, p.split_fractions)
    _, y = training_data(t, p.max_train_rows)
    plan = plan_groups(configs, len(y), p.max_group_size)
    manifest = _manifest(t.name, p, seed, configs, plan, compile)
    return _Build(t.name, p, int(seed), compile, configs, plan, len(y), Path(out), manifest)


class BuildError(HubeditError, RuntimeError):
    """A zoo build that could not finish: a worker process or a rank failed (finished groups are kept)."""


class BuildLockedError(BuildError):
    """Another process is building into the same folder."""


#: what a build writes into ``.build/`` (lock, manifest and its temporary file, groups and theirs)
_OWN_BUILD_FILE = re.compile(r"lock|manifest\.json(\.tmp)?|group-\d{5}\.parquet(\.tmp-\d+)?")


def _listing(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _check_out_folder(out: Path, manifest: "dict | None") -> None:
    """Refuse, before anything is trained or written, an output folder holding files a build would
    replace but did not write. A build writes ``.build/`` and replaces ``data/``, ``zoo.json`` and
    ``README.md``: those may exist only as this build's own -- an unfinished or finished build of the same
    settings (``.build/manifest.json``), which resumes and saves the same zoo again. Other files in ``out``
    are never touched and are allowed. Without ``manifest`` (the build's, not yet planned), only what does
    not depend on the settings is checked."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"the output folder {out} is a file; give a new folder or one of an earlier build")
    if not out.is_dir():
        return
    build_dir, mpath = out / BUILD_DIR, out / BUILD_DIR / "manifest.json"
    if build_dir.exists():
        foreign = sorted(p.name for p in build_dir.iterdir() if not (_OWN_BUILD_FILE.fullmatch(p.name) and p.is_file())) \
            if build_dir.is_dir() else []
        if not build_dir.is_dir() or foreign:
            what = f"it holds {_listing(foreign)}, which a build does not write" if foreign else "it is a file"
            raise FileExistsError(
                f"{build_dir} is not a zoo build folder ({what}); move it away or choose another output folder"
            )
    if not mpath.is_file():
        present = [n for n in ("data", "zoo.json", "README.md") if (out / n).exists() or (out / n).is_symlink()]
        if present:
            raise FileExistsError(
                f"{out} already holds {', '.join(present)}, not written by a zoo build into this folder (it has no "
                f"{BUILD_DIR}/manifest.json); building would replace them. Build into a new or empty folder, or move "
                "them away first"
            )
        return
    if manifest is None:
        return
    _check_manifest(mpath, manifest)  # an unfinished build of other settings: a clear ConfigError
    from .dataset import ZOO_FORMAT

    problems = []
    zoo_json = out / "zoo.json"
    if zoo_json.exists():
        try:
            meta = json.loads(zoo_json.read_text())
            info = meta.get("info") or {}
            ours = meta.get("format") == ZOO_FORMAT and all(
                info.get(k) == manifest[m] for k, m in (("task", "task"), ("seed", "seed"), ("preset_config", "preset"))
            )
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            problems.append("a zoo.json that is not this build's zoo (other task, seed or preset, or not a hubedit zoo)")
    elif (out / "README.md").exists():
        problems.append("a README.md without the zoo.json a build writes beside its card")
    data = out / "data"
    if data.is_symlink() or (data.exists() and not data.is_dir()):
        problems.append("data, which is not a folder")
    elif data.is_dir():
        from .dataset import SHARD_NAME

        foreign = sorted(p.name for p in data.iterdir() if not (SHARD_NAME.fullmatch(p.name) and p.is_file()))
        if foreign:
            problems.append(f"files in data/ that are not zoo shards ({_listing(foreign)})")
    if problems:
        raise FileExistsError(
            f"{out} holds a zoo build of these settings but also {'; '.join(problems)}: saving the zoo would replace "
            "them. Move them away, then rerun to resume the build"
        )


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold ``build_dir/lock`` (``fcntl.flock``, exclusive) for the ``with`` block: a second build of the same
    folder raises :class:`BuildLockedError` at once. The kernel releases the lock when its process ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = build_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                warnings.warn(f"zoo build: cannot lock {path} ({exc}); building without a lock")
            else:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
                raise BuildLockedError(
                    f"{build_dir.parent} is being built by {holder} (it holds {path}); wait for that build to "
                    "finish, or build into another folder"
                ) from None
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _prepare(b: _Build, stack: contextlib.ExitStack) -> dict[int, tuple[list[Checkpoint], dict]]:
    """Check the output folder, lock it (for as long as ``stack``), write or check the manifest, and
    return the groups already finished there."""
    _check_out_folder(b.out, b.manifest)
    b.build_dir.mkdir(parents=True, exist_ok=True)
    stack.enter_context(_build_lock(b.build_dir))
    mpath = b.build_dir / "manifest.json"
    if mpath.exists():
        _check_manifest(mpath, b.manifest)
    else:
        tmp = mpath.with_name("manifest.json.tmp")
        tmp.write_text(json.dumps(b.manifest, indent=1, sort_keys=True))
        os.replace(tmp, mpath)
    for stale in b.build_dir.glob("group-*.parquet.tmp-*"):  # left by a killed worker
        stale.unlink(missing_ok=True)
    done: dict[int, tuple[list[Checkpoint], dict]] = {}
    for i, ids in enumerate(b.plan):
        path = _group_path(b.build_dir, i)
        if path.exists():
            got = _read_group(path, i, ids)
            if got is not None:
                done[i] = got
    return done


def _default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------------
def _credit(credited: dict[int, float], i: int, step: float, size: int) -> float:
    """Credit group ``i`` with ``step`` models of progress, at most up to its ``size``; returns what was
    credited. A group can be credited in full more than once (another rank's group when the progress thread
    sees its file and again when rank 0 reads it back): without the cap the bar ran past its total."""
    step = max(0.0, min(step, size - credited[i]))
    credited[i] += step
    return step


class _Progress:
    """The build's progress bar in models (or nothing): credited per epoch and topped up per finished
    group. ``watch`` lists groups trained elsewhere (other ranks): while :meth:`watching`, a thread looks for
    their files every few seconds and each counts when it appears (the bar moves while this rank waits)."""

    def __init__(self, b: _Build, enabled: bool, done: "set[int] | dict", pending: list[int], desc: str):
        self.b = b
        self.credited = {i: 0.0 for i in pending}
        self.watch: list[int] = []
        self.lock = threading.Lock()  # the watching thread and this one both credit groups
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=len(b.configs), initial=sum(len(b.plan[i]) for i in done), unit="model", desc=desc,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} models [{elapsed}<{remaining}]",
                dynamic_ncols=True,
            )

    def epoch(self, i: int, n_models: int) -> None:
        if self.bar is not None:
            e = self.b.by_id[self.b.plan[i][0]].train.epochs
            with self.lock:
                self.bar.update(_credit(self.credited, i, n_models / e, len(self.b.plan[i])))

    def group_done(self, i: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(_credit(self.credited, i, len(self.b.plan[i]), len(self.b.plan[i])))

    def look(self) -> None:
        """Count the watched groups whose files are there now."""
        for i in [i for i in self.watch if _group_path(self.b.build_dir, i).exists()]:
            self.watch.remove(i)
            self.group_done(i)

    @contextlib.contextmanager
    def watching(self, every: float = 2.0):
        """Look for the watched groups' files every ``every`` seconds in a thread, for the ``with`` block."""
        if self.bar is None or not self.watch:
            yield
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                self.look()

        thread = threading.Thread(target=loop, name="hubedit-zoo-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------
# the build: the same rank code alone, with local worker ranks, or in a launched world
# --------------------------------------------------------------------------------------------------
def _training_wait(b: _Build, shares: list[list[int]]) -> datetime.timedelta:
    """How long a rank waits for the others to finish training: half an hour more than three times the
    largest share's estimated training time (the estimate is this project's cost model)."""
    return datetime.timedelta(seconds=1800 + 3 * max(sum(b.cost(i) for i in s) for s in shares))


def _collect(b: _Build, done: dict, pending: list[int], t_start: float, workers: int, world: int) -> tuple[list[Checkpoint], dict]:
    """The build's checkpoints (ordered by configuration and epoch) and info, from ``done`` and the
    group files of groups trained elsewhere."""
    for i in range(len(b.plan)):
        if i not in done:
            path = _group_path(b.build_dir, i)
            got = _read_group(path, i, b.plan[i]) if path.exists() else None
            if got is None:
                raise BuildError(
                    f"zoo build: group {i} was trained by another rank but {path} is missing or unreadable here: every "
                    "rank must build into the same folder (over several machines, a shared filesystem)"
                )
            done[i] = got
    checkpoints: list[Checkpoint] = []
    diverged: dict[str, str] = {}
    backends: dict[str, int] = {}
    train_s = eval_s = 0.0
    for i in range(len(b.plan)):
        cps, meta = done[i]
        checkpoints.extend(cps)
        diverged.update(meta.get("diverged", {}))
        backends[meta.get("backend", "?")] = backends.get(meta.get("backend", "?"), 0) + len(b.plan[i])
        train_s += meta.get("train_seconds", 0.0)
        eval_s += meta.get("eval_seconds", 0.0)
    checkpoints.sort(key=lambda c: (c.config.config_id, c.epoch))
    p = b.preset
    info = {
        "builder": "hubedit.zoo.build_zoo",
        "task": b.task,
        "preset": p.name,
        "preset_config": p.to_dict(),
        "seed": b.seed,
        "n_configs": len(b.configs),
        "n_checkpoints": len(checkpoints),
        "epochs": p.epochs,
        "checkpoint_epochs": list(p.checkpoint_epochs),
        "split_fractions": list(p.split_fractions),
        "max_train_rows": p.max_train_rows,
        "n_train_rows": b.n_rows,
        "n_groups": len(b.plan),
        "backends": backends,
        "diverged": diverged,
        "compile": b.compile if isinstance(b.compile, str) else bool(b.compile),
        "workers": workers,  # training processes per rank (this session)
        "world_size": world,  # ranks of a launched build (this session); 1 otherwise
        "train_seconds": round(train_s, 1),  # summed over groups (worker wall time), all sessions
        "eval_seconds": round(eval_s, 1),
        "build_seconds": round(time.perf_counter() - t_start, 1),
        "resumed_groups": len(b.plan) - len(pending),
        "hubedit_version": _hubedit_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    return checkpoints, info


def _check_workers(workers: "int | None") -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive number of processes, got {workers!r}")


def _finisher(b: _Build, done: dict, progress: _Progress, on_group_done):
    def finished(i: int, meta: "dict | None") -> None:
        """Group ``i`` finished: trained here (``meta``), or by another rank (None: read from its file)."""
        path = _group_path(b.build_dir, i)
        got = _read_group(path, i, b.plan[i]) if path.exists() else None
        if got is None and meta is None:
            raise BuildError(
                f"zoo build: group {i} was trained by another rank but {path} is missing or unreadable here: every "
                "rank must build into the same folder (over several machines, a shared filesystem)"
            )
        if got is None:
            raise CorruptFileError(f"zoo build: group {i} was written but cannot be read back")
        done[i] = got
        progress.group_done(i)
        if on_group_done is not None:
            on_group_done(i, meta if meta is not None else got[1])

    return finished


def _build(task, preset, out, seed, progress, n_configs, epochs, workers, compile, on_group_done, save: bool):
    """Plan, train and collect a build (and save its zoo if ``save``); returns ``(checkpoints, info, zoo)``,
    or None on the ranks other than 0 of a launched world."""
    from torch.multiprocessing.spawn import ProcessException

    t_start = time.perf_counter()
    _check_workers(workers)
    if workers not in (None, 1) and distributed.launched_world_size() > 1:  # checked before joining the world
        raise ConfigError(
            f"workers={workers} under a launcher of {distributed.launched_world_size()} processes: the launched "
            "processes already share the groups; drop --workers there, or launch more processes"
        )
    rank, size = distributed.world()
    if size > 1:  # a launched world: every rank plans, rank 0 prepares the folder
        if workers not in (None, 1):
            raise ConfigError(f"workers={workers} inside a torch.distributed group of {size} processes: they already "
                              "share the groups; use workers=1 there")
        with contextlib.ExitStack() as stack:
            return _build_as_rank(
                lambda: _plan_build(task, preset, out, seed, n_configs, epochs, compile), lambda b: _prepare(b, stack),
                rank, size, progress=progress, on_group_done=on_group_done, save=save, t_start=t_start, local=False,
            )
    # this process is rank 0 of `workers` local ranks: it prepares the folder before the others start
    _check_out_folder(Path(out), None)  # at once, before the task is loaded and the kernels are built
    b = _plan_build(task, preset, out, seed, n_configs, epochs, compile)
    with contextlib.ExitStack() as stack:
        done = _prepare(b, stack)
        n = max(1, min(workers if workers is not None else _default_workers(), len(b.plan) - len(done)))
        try:
            with distributed.local_processes(n, _worker_main, (b.task, b.preset.to_dict(), str(b.out), b.seed, b.compile),
                                             threads=1):
                return _build_as_rank(lambda: b, lambda _: done, 0, n, progress=progress, on_group_done=on_group_done,
                                      save=save, t_start=t_start, local=True)
        except ProcessException as exc:  # a worker that died (killed, crashed) rather than failed a step
            raise BuildError(
                f"zoo build: worker rank {exc.error_index + 1} (pid {exc.error_pid}) failed; the groups finished so far "
                f"are kept in {b.build_dir} and rerunning the build resumes from them.\n{exc.msg.strip()}"
            ) from None


def _worker_main(task: str, preset: dict, out: str, seed: int, compile: "bool | str") -> None:
    """A local worker rank of a ``workers=N`` build (:func:`hubedit.distributed.local_processes`): plans the
    build as rank 0 did and trains its share."""
    rank, size = distributed.world()
    _build_as_rank(lambda: _plan_build(task, ZooPreset(**preset), out, seed, None, None, compile), None, rank, size,
                   progress=False, on_group_done=None, save=False, t_start=time.perf_counter(), local=True)


def _save(b: _Build, checkpoints: list[Checkpoint], info: dict) -> "Zoo":
    from .dataset import Zoo

    zoo = Zoo(info["task"], checkpoints, info=info)
    zoo.save(b.out)
    return zoo


def _build_as_rank(plan: Callable[[], _Build], prepare: "Callable[[_Build], dict] | None", rank: int, size: int, *,
                   progress: bool, on_group_done, save: bool, t_start: float, local: bool):
    """One rank's part of a build (alone, all of it); ``local``: the ranks are this machine's ``workers``, else
    a launched world's. Every rank plans the build (``plan()``), rank 0 ``prepare``s the folder (checks, locks,
    writes the manifest; returns the finished groups) and shares out the pending groups; every rank checks it
    plans rank 0's build, trains its share, and rank 0 collects (and saves) the zoo. Each step ends with every
    rank learning whether all succeeded: a failure anywhere raises on every rank. Returns ``(checkpoints, info,
    zoo)`` on rank 0, None on the others."""
    # 1. every rank plans the build; rank 0 prepares the folder and shares the pending groups out
    b, done, setup = None, {}, None
    with distributed.all_succeed("zoo build did not start", error=BuildError):
        b = plan()
        if size > 1:
            b.options["rank"] = rank  # which rank trained a group (its file's metadata)
        if rank == 0:
            done = prepare(b)
            pending = [i for i in range(len(b.plan)) if i not in done]
            weights = [b.cost(i) for i in pending] if size > 1 else None
            setup = dict(
                shares=[[pending[k] for k in share] for share in distributed.shares(len(pending), size, weights=weights)],
                pending=pending,
                manifest={k: b.manifest[k] for k in (*_CHECKED_FIELDS, "hubedit_version", "torch_version")},
                manifest_sha256=hashlib.sha256((b.build_dir / "manifest.json").read_bytes()).hexdigest(),
            )
    setup = distributed.broadcast(setup)
    # 2. every rank checks it plans the same build and sees rank 0's folder
    with distributed.all_succeed("zoo build did not start", error=BuildError):
        problem = _same_build(b, setup) if rank != 0 else None
        if problem is not None:
            raise BuildError(f"zoo build: rank {rank} {problem}")
    # 3. every rank trains its share; rank 0 counts the others' groups as their files appear
    shares, pending = setup["shares"], setup["pending"]
    bar = _Progress(b, progress and rank == 0, set(range(len(b.plan))) - set(pending), pending,
                    f"zoo {b.task}/{b.preset.name}" + (f" ({size} processes)" if size > 1 else ""))
    others = [i for r, share in enumerate(shares) if r != 0 for i in share] if rank == 0 else []
    bar.watch = list(others)
    finished = _finisher(b, done, bar, on_group_done)
    try:
        with bar.watching(), distributed.all_succeed("zoo build", error=BuildError,
                                                      timeout=_training_wait(b, shares) if size > 1 else None):
            try:
                for i in shares[rank]:
                    meta = _train_and_save(*b.job(i), on_epoch=lambda epoch, n_models, i=i: bar.epoch(i, n_models))
                    finished(i, meta)
            except Exception as exc:
                if size > 1:
                    print(f"hubedit zoo build: rank {rank} failed ({type(exc).__name__}: {exc}); the other ranks finish "
                          "their groups, which a rerun then resumes from", file=sys.stderr, flush=True)
                raise
        # 4. rank 0 collects (and saves) the zoo, and every rank learns how that went
        result = None
        with distributed.all_succeed("zoo build: assembling the zoo", error=BuildError):
            if rank == 0:
                for i in others:  # trained by the other ranks, all finished now
                    finished(i, None)
                checkpoints, info = _collect(b, done, pending, t_start, size if local else 1, 1 if local else size)
                result = checkpoints, info, (_save(b, checkpoints, info) if save else None)
    finally:
        bar.close()
    return result


def _same_build(b: _Build, setup: dict) -> "str | None":
    """What keeps this rank from joining rank 0's build (other settings, versions, or not the same folder)."""
    mine = {k: b.manifest[k] for k in setup["manifest"]}
    diffs = sorted(k for k in mine if mine[k] != setup["manifest"][k])
    if diffs:
        return (f"plans another build than rank 0 (it differs in {', '.join(diffs)}): every rank needs the same "
                "arguments, hubedit, torch and trainer kernels")
    mpath = b.build_dir / "manifest.json"
    try:
        sha = hashlib.sha256(mpath.read_bytes()).hexdigest()
    except OSError:
        sha = None
    if sha != setup["manifest_sha256"]:
        return (f"does not see rank 0's build folder ({mpath} is {'missing' if sha is None else 'another file'} "
                "here): over several machines the output folder must be on a filesystem they all share")
    return None


def build_checkpoints(
    task: str,
    preset: "str | ZooPreset",
    out: "str | os.PathLike",
    seed: int = 0,
    progress: bool = True,
    n_configs: int | None = None,
    epochs: int | None = None,
    *,
    workers: int | None = None,
    compile: "bool | str" = "auto",
    on_group_done: Callable[[int, dict], None] | None = None,
) -> "tuple[list[Checkpoint], dict] | None":
    """Everything :func:`build_zoo` does except creating and saving the :class:`Zoo`: returns the
    checkpoints (ordered by configuration and epoch) and the build info; None on the ranks other than 0
    of a launched build. ``on_group_done(index, meta)`` is called as each group this process trains
    finishes, and on rank 0 for each group the other ranks (``workers``, or a launched world's) trained,
    once all have finished."""
    got = _build(task, preset, out, seed, progress, n_configs, epochs, workers, compile, on_group_done, save=False)
    return None if got is None else got[:2]


def build_zoo(
    task: str,
    preset: "str | ZooPreset",
    out: "str | os.PathLike",
    seed: int = 0,
    progress: bool = True,
    n_configs: int | None = None,
    epochs: int | None = None,
    *,
    workers: int | None = None,
    compile: "bool | str" = "auto",
) -> "Zoo | None":
    """Sample ``preset``'s configurations for ``task`` with ``seed``, train them (batched, resumable,
    see the module docstring), save the :class:`~hubedit.zoo.Zoo` to ``out`` and return it.

    ``n_configs`` / ``epochs`` override the preset (checkpoints move with ``epochs``). ``workers``:
    training processes on this machine, this one included (default: the cores available to this process, at
    most one per pending group; ``1`` trains here alone). Under ``torchrun`` / ``accelerate launch`` the
    launched processes share the groups (``workers`` other than 1 is refused there) and rank 0 saves the zoo;
    the other ranks return None (see the module docstring).
    ``out`` must be new, empty, or an earlier build's folder with the same settings (other files a build
    would replace are refused with ``FileExistsError``; a folder another build holds, with
    :class:`BuildLockedError`). ``compile``: ``"auto"`` or False (the whole-step kernel where it is built;
    otherwise the torch formulation, compiled for groups large enough to repay it under ``"auto"``), or
    True (the compiled torch formulation everywhere); part of the build's identity (a resume must match).
    The same arguments give byte-identical weights, whatever the number of processes.
    """
    got = _build(task, preset, out, seed, progress, n_configs, epochs, workers, compile, None, save=True)
    return None if got is None else got[2]
