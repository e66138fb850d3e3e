"""``build_zoo``: sample a population of configurations, train it in batched groups, save it as a Zoo.

Resumable: the build keeps its state under ``out/.build/``:

* ``manifest.json`` -- task, seed, preset, the sampled configurations (their hash) and the group plan.
  A rerun into the same folder checks it and refuses a different task / seed / preset / option with a
  clear error instead of mixing two populations.
* ``group-NNNN.parquet`` -- the checkpoints of one finished group (one row per checkpoint, the zoo's row
  format), written atomically (temporary file + rename) when the group finishes.

The plan (which configurations train together) is a function of the configurations alone, never of
what has finished, and each group's result depends only on its members, so a build that is interrupted
and rerun skips the finished groups and ends byte-identical to an uninterrupted one. Groups run in
worker processes (one per core, one thread each), which gives the same bytes as a single process.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..errors import ConfigError, CorruptFileError
from ..tasks import load_task
from . import fused
from .presets import ZooPreset, get_preset
from .records import Checkpoint, ZooConfig
from .sampling import sample_configs
from .trainer import TRAINER_REVISION, group_cost, plan_groups, train_group, training_data

__all__ = ["build_zoo", "build_checkpoints", "BUILD_DIR"]

BUILD_DIR = ".build"
MANIFEST_FORMAT = "hubedit.zoo-build"
MANIFEST_VERSION = 1
_GROUP_META_KEY = b"hubedit.group"


def _hubedit_version() -> str:
    from .. import __version__

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


def _train_and_save(task: str, configs: list[dict], index: int, path: str, options: dict, queue=None) -> dict:
    """Train one group and store it (runs in a worker process, or in the parent)."""
    cfgs = [ZooConfig.from_dict(d) for d in configs]
    on_epoch = None
    if queue is not None:
        on_epoch = lambda epoch, g: queue.put((index, g))  # noqa: E731
    elif options.get("_on_epoch") is not None:
        on_epoch = options["_on_epoch"]
    res = train_group(task, cfgs, max_train_rows=options["max_train_rows"], compile=options["compile"], on_epoch=on_epoch)
    meta = {
        "diverged": {str(k): v for k, v in res.diverged.items()},
        "backend": res.backend,
        "train_seconds": res.train_seconds,
        "eval_seconds": res.eval_seconds,
    }
    _write_group(Path(path), index, [c.config_id for c in cfgs], res.checkpoints, meta)
    return meta


def _default_workers(n_pending: int) -> int:
    return max(1, min(2, os.cpu_count() or 1, n_pending))


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
) -> tuple[list[Checkpoint], dict]:
    """Everything :func:`build_zoo` does except creating and saving the :class:`Zoo`: returns the
    checkpoints (ordered by configuration and epoch) and the build info."""
    t_start = time.perf_counter()
    t = load_task(task)
    p = get_preset(preset).replace(n_configs=n_configs, epochs=epochs)
    configs = sample_configs(t.name, t.n_features, p.n_configs, seed, p.epochs, p.checkpoint_epochs, p.split_fractions)
    _, y = training_data(t, p.max_train_rows)
    n_rows = len(y)
    plan = plan_groups(configs, n_rows, p.max_group_size)
    by_id = {c.config_id: c for c in configs}

    out = Path(out)
    build_dir = out / BUILD_DIR
    build_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(t.name, p, seed, configs, plan, compile)
    mpath = build_dir / "manifest.json"
    if mpath.exists():
        _check_manifest(mpath, manifest)
    else:
        tmp = mpath.with_name("manifest.json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, mpath)

    for stale in build_dir.glob("group-*.parquet.tmp-*"):  # left by a killed worker
        stale.unlink(missing_ok=True)
    done: dict[int, tuple[list[Checkpoint], dict]] = {}
    for i, ids in enumerate(plan):
        path = _group_path(build_dir, i)
        if path.exists():
            got = _read_group(path, i, ids)
            if got is not None:
                done[i] = got
    pending = [i for i in range(len(plan)) if i not in done]
    options = {"max_train_rows": p.max_train_rows, "compile": compile}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(configs),
            initial=sum(len(plan[i]) for i in done),
            unit="model",
            desc=f"zoo {t.name}/{p.name}",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} models [{elapsed}<{remaining}]",
            dynamic_ncols=True,
        )

    def finished(i: int, meta: dict) -> None:
        got = _read_group(_group_path(build_dir, i), i, plan[i])
        if got is None:
            raise CorruptFileError(f"zoo build: group {i} was written but cannot be read back")
        done[i] = got
        if on_group_done is not None:
            on_group_done(i, meta)

    n_workers = workers if workers is not None else _default_workers(len(pending))
    try:
        if n_workers <= 1 or len(pending) <= 1:
            for i in pending:
                if bar is not None:
                    g_epochs = by_id[plan[i][0]].train.epochs
                    options["_on_epoch"] = lambda epoch, g, e=g_epochs: bar.update(g / e)
                    start_n = bar.n
                meta = _train_and_save(t.name, [by_id[c].to_dict() for c in plan[i]], i, str(_group_path(build_dir, i)), options)
                if bar is not None:  # land exactly on the group's size whatever the epoch updates summed to
                    bar.update(start_n + len(plan[i]) - bar.n)
                finished(i, meta)
        else:
            # longest groups first (results do not depend on the order; the tail gets shorter)
            order = sorted(pending, key=lambda i: -group_cost([by_id[c] for c in plan[i]], n_rows))
            _run_parallel(t.name, plan, order, by_id, build_dir, options, n_workers, bar, finished)
    finally:
        if bar is not None:
            bar.close()

    checkpoints: list[Checkpoint] = []
    diverged: dict[str, str] = {}
    backends: dict[str, int] = {}
    train_s = eval_s = 0.0
    for i in range(len(plan)):
        cps, meta = done[i]
        checkpoints.extend(cps)
        diverged.update(meta.get("diverged", {}))
        backends[meta.get("backend", "?")] = backends.get(meta.get("backend", "?"), 0) + len(plan[i])
        train_s += meta.get("train_seconds", 0.0)
        eval_s += meta.get("eval_seconds", 0.0)
    checkpoints.sort(key=lambda c: (c.config.config_id, c.epoch))
    info = {
        "builder": "hubedit.zoo.build_zoo",
        "task": t.name,
        "preset": p.name,
        "preset_config": p.to_dict(),
        "seed": int(seed),
        "n_configs": len(configs),
        "n_checkpoints": len(checkpoints),
        "epochs": p.epochs,
        "checkpoint_epochs": list(p.checkpoint_epochs),
        "split_fractions": list(p.split_fractions),
        "max_train_rows": p.max_train_rows,
        "n_train_rows": n_rows,
        "n_groups": len(plan),
        "backends": backends,
        "diverged": diverged,
        "compile": compile if isinstance(compile, str) else bool(compile),
        "workers": n_workers,
        "train_seconds": round(train_s, 1),  # summed over groups (worker wall time), all sessions
        "eval_seconds": round(eval_s, 1),
        "build_seconds": round(time.perf_counter() - t_start, 1),
        "resumed_groups": len(plan) - len(pending),
        "hubedit_version": _hubedit_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    return checkpoints, info


def _credit(credited: dict[int, float], i: int, step: float, size: int) -> float:
    """Credit group ``i`` with ``step`` models of progress, at most up to its ``size``; returns what was
    credited. A worker's last epoch messages can arrive after its group was credited in full on completion
    (the queue is asynchronous): without the cap the bar ran past its total."""
    step = max(0.0, min(step, size - credited[i]))
    credited[i] += step
    return step


def _run_parallel(task, plan, pending, by_id, build_dir, options, n_workers, bar, finished) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    manager = ctx.Manager() if bar is not None else None
    queue = manager.Queue() if manager is not None else None
    opts = {k: v for k, v in options.items() if not k.startswith("_")}
    epochs = {i: by_id[plan[i][0]].train.epochs for i in pending}
    credited = {i: 0.0 for i in pending}

    def drain() -> None:
        while queue is not None and not queue.empty():
            i, g = queue.get_nowait()
            bar.update(_credit(credited, i, g / epochs[i], len(plan[i])))

    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx)
    try:
        futures = {
            pool.submit(
                _train_and_save, task, [by_id[c].to_dict() for c in plan[i]], i,
                str(_group_path(build_dir, i)), opts, queue,
            ): i
            for i in pending
        }
        while futures:
            ready, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            drain()
            for f in ready:
                i = futures.pop(f)
                meta = f.result()
                if bar is not None:
                    bar.update(len(plan[i]) - credited[i])
                    credited[i] = len(plan[i])
                finished(i, meta)
        pool.shutdown(wait=True)
    except BaseException:
        # interrupted (or a group failed): stop now; finished groups are on disk, running ones are lost
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        raise
    finally:
        if manager is not None:
            manager.shutdown()


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
):
    """Sample ``preset``'s configurations for ``task`` with ``seed``, train them (batched, resumable,
    see the module docstring), save the :class:`~hubedit.zoo.Zoo` to ``out`` and return it.

    ``n_configs`` / ``epochs`` override the preset (checkpoints move with ``epochs``). ``workers``:
    training processes (default: one per core, at most 2). ``compile``: ``"auto"`` or False (the
    whole-step kernel where it is built; otherwise the torch formulation, compiled for groups large enough
    to repay it under ``"auto"``), or True (the compiled torch formulation everywhere); part of the
    build's identity (a resume must match).
    The same arguments give byte-identical weights.
    """
    from .dataset import Zoo

    checkpoints, info = build_checkpoints(
        task, preset, out, seed, progress, n_configs, epochs, workers=workers, compile=compile
    )
    zoo = Zoo(info["task"], checkpoints, info=info)
    zoo.save(out)
    return zoo

