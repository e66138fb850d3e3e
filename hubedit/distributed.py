"""One function on several processes with ``torch.distributed``: under a launcher, or started here.

hubedit never runs its own scheduler across machines. Code that spreads independent work calls

* :func:`world` -- ``(rank, world size)``: of the ``torch.distributed`` group already running, else of the
  launcher that started this process (``torchrun``, ``accelerate launch --multi_gpu --num_processes N
  [--num_machines M ...]``, MPI: ``WORLD_SIZE`` / ``PMI_SIZE`` ... set, checked by :func:`launched_world`), whose
  group is then joined through ``accelerate.PartialState`` (gloo on CPU), else ``(0, 1)``;
* :func:`share` / :func:`shares` -- the indices of the work items a rank does: a fixed round-robin share, or
  with ``weights`` (estimated costs) shares of about equal total weight;
* :func:`all_gather` / :func:`broadcast` / :func:`barrier` -- collectives of the group (no-ops alone), carrying
  JSON (gloo; a gloo sub-group when the running group is another backend); ``barrier(timeout=...)`` names the
  ranks that did not arrive in time;
* :func:`all_succeed` -- a step every rank takes: when it ends, every rank learns whether it went well on all
  of them, and a rank that failed fails every rank (its own error there, :class:`RankFailedError` naming it on
  the others) instead of leaving them waiting.

:func:`local_processes` runs the same rank code on this machine without a launcher: the calling process is
rank 0 of a gloo group on ``127.0.0.1`` (a free port) and ``N - 1`` helper processes, started with
``torch.multiprocessing.start_processes``, are ranks ``1 .. N-1``. Helpers die with the process that started
them (:func:`die_with_parent`: SIGKILL, which no Python code or C++ loop can delay). A helper that fails ends
the group and its error is raised in the caller. :func:`single_process_env` is the environment for a child
process that must run alone (e.g. a one-process ``accelerate`` training inside a launched world).

Payloads travel as JSON bytes: nothing is ever unpickled, and a value arrives as a JSON round trip gives it
(tuples as lists, NaN kept); a rank's own value comes back to it as it was.
"""

from __future__ import annotations

import ctypes
import datetime
import heapq
import json
import math
import operator
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .errors import ConfigError, HubeditError

__all__ = [
    "LAUNCHER_SIZE_VARIABLES",
    "LAUNCHER_RANK_VARIABLES",
    "COLLECTIVE_TIMEOUT",
    "RankFailedError",
    "launched_world_size",
    "launched_world",
    "world",
    "is_main_process",
    "share",
    "shares",
    "all_gather",
    "broadcast",
    "barrier",
    "all_succeed",
    "local_processes",
    "die_with_parent",
    "single_process_env",
    "free_port",
]

#: Environment variables in which launchers give the number of processes (torchrun/accelerate, MPI flavours).
LAUNCHER_SIZE_VARIABLES: tuple[str, ...] = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: ... and this process's rank among them (the order ``accelerate`` reads them in).
LAUNCHER_RANK_VARIABLES: tuple[str, ...] = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

#: Variables that make a process take part in a launched world; removed by :func:`single_process_env`.
_LAUNCHER_VARIABLES: tuple[str, ...] = (
    *LAUNCHER_SIZE_VARIABLES, "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE",
)

#: How long a rank waits in a collective for the others (a rank that dies ends the wait at once).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


class RankFailedError(HubeditError, RuntimeError):
    """Another rank of the group failed a step every rank takes (:func:`all_succeed`); its error is in the message."""


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes a launcher started (1 when none did)."""
    env = os.environ if environ is None else environ
    sizes = []
    for name in LAUNCHER_SIZE_VARIABLES:
        text = env.get(name)
        if text is None or not text.strip():
            continue
        try:
            sizes.append(int(text))
        except ValueError:
            raise ConfigError(f"environment variable {name} must be a whole number of processes, got {text!r}") from None
    return max(sizes, default=1)


def launched_world(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world size)`` that a launcher gave this process in ``environ`` (default ``os.environ``), else None
    (no launcher, or one process). Checked, without joining anything: the rank must be set and in range, and
    ``MASTER_ADDR`` set (the rendezvous of torchrun / accelerate launch; MPI launches need it too for gloo)."""
    env = os.environ if environ is None else environ
    size = launched_world_size(env)
    if size <= 1:
        return None
    names = [n for n in LAUNCHER_RANK_VARIABLES if (env.get(n) or "").strip()]
    try:
        rank = int(env[names[0]]) if names else None
    except ValueError:
        raise ConfigError(f"environment variable {names[0]} must be a whole number (this process's rank), "
                          f"got {env[names[0]]!r}") from None
    if rank is None or not 0 <= rank < size:
        raise ConfigError(
            f"the launcher's variables say this process is one of {size}, but its rank ({'/'.join(LAUNCHER_RANK_VARIABLES)}) "
            f"is {rank if rank is not None else 'not set'}: expected 0..{size - 1}"
        )
    if not (env.get("MASTER_ADDR") or "").strip():
        raise ConfigError(
            f"the launcher's variables say this process is rank {rank} of {size}, but MASTER_ADDR is not set: joining "
            "the ranks needs torchrun's or accelerate launch's rendezvous variables (MASTER_ADDR, MASTER_PORT)"
        )
    return rank, size


def _warn_if_launched_alone(environ: Mapping[str, str]) -> None:
    if (environ.get("ACCELERATE_USE_CPU") or "").lower() == "true" and environ.get("MASTER_ADDR"):
        warnings.warn(
            "`accelerate launch --cpu` started this one process only (accelerate starts several CPU processes only "
            "through MPI, --mpirun_hostfile), so the work runs here alone. To spread it over processes use "
            "`accelerate launch --multi_gpu --num_processes N ...` (torchrun underneath; hubedit runs on CPU with gloo "
            "whatever the flag says) or `torchrun --nproc_per_node N ...`",
            stacklevel=2,
        )


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: the running ``torch.distributed`` group's; else, under a launcher
    (:func:`launched_world`), of the launched world, joined now through ``accelerate.PartialState`` (gloo on CPU);
    else ``(0, 1)`` (with a warning when ``accelerate launch --cpu`` started this process alone)."""
    import torch.distributed as dist

    if _initialised():
        return dist.get_rank(), dist.get_world_size()
    if launched_world() is None:
        _warn_if_launched_alone(os.environ)
        return 0, 1
    from accelerate import PartialState

    # gloo whatever the machine: the work spread here runs on CPU
    state = PartialState(cpu=True, timeout=COLLECTIVE_TIMEOUT)
    return int(state.process_index), int(state.num_processes)


_GLOO_SUBGROUP: list = []  # [(default group, gloo group)] when the running group is not gloo


def _gloo_group():
    """None (the default group) when it is gloo, else a gloo group over the same processes (made once)."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    default = dist.group.WORLD
    if not _GLOO_SUBGROUP or _GLOO_SUBGROUP[0][0] is not default:
        _GLOO_SUBGROUP[:] = [(default, dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT))]
    return _GLOO_SUBGROUP[0][1]


def _to_bytes(obj: Any) -> torch.Tensor:
    data = json.dumps(obj, default=_json_default).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"collectives carry JSON data; got {type(o).__name__}")


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes files and prints reports)."""
    return world()[0] == 0


def shares(n_items: int, world_size: int, *, weights: Sequence[float] | None = None) -> list[list[int]]:
    """Every rank's share of ``n_items`` work items (indices), by rank. Without ``weights``, round-robin: rank
    ``r`` does ``r, r + world_size, ...`` (consecutive items go to different ranks, so items listed by kind spread
    every kind evenly). With ``weights`` (one estimated cost per item, finite and >= 0): shares of about equal
    total weight -- heaviest item first, each to the least loaded rank (ties to the lower rank and item); each
    share lists its items heaviest first. A function of the arguments alone: every rank computes the same."""
    world_size, n_items = _whole("world_size", world_size, 1), _whole("n_items", n_items, 0)
    if weights is None:
        return [list(range(r, n_items, world_size)) for r in range(world_size)]
    costs = [float(w) for w in weights]
    if len(costs) != n_items:
        raise ValueError(f"weights must give one cost per work item: {n_items} items, got {len(costs)} weights")
    bad = [(i, w) for i, w in enumerate(costs) if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"weights must be finite and >= 0; item {bad[0][0]} has {bad[0][1]!r}")
    out: list[list[int]] = [[] for _ in range(world_size)]
    loads = [(0.0, r) for r in range(world_size)]  # a heap of (load, rank): the least loaded, then the lowest rank
    for i in sorted(range(n_items), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(loads)
        out[r].append(i)
        heapq.heappush(loads, (load + costs[i], r))
    return out


def share(n_items: int, rank: int, world_size: int, *, weights: Sequence[float] | None = None) -> list[int]:
    """Indices of the ``n_items`` work items that ``rank`` of ``world_size`` does: its entry of :func:`shares`
    (round-robin, or balanced by ``weights``)."""
    world_size, rank = _whole("world_size", world_size, 1), _whole("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}")
    if weights is None:
        return list(range(rank, _whole("n_items", n_items, 0), world_size))  # without the other ranks' shares
    return shares(n_items, world_size, weights=weights)[rank]


def _whole(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int (ints and numpy integers, not bools or floats), at least ``minimum``."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return number


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON data), by rank, on every rank (``[obj]`` alone); this rank's as it was."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return [obj]
    group = _gloo_group()
    data = _to_bytes(obj)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=group)
    longest = max(int(n) for n in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8)
    buf[: len(data)] = data
    bufs = [torch.empty(longest, dtype=torch.uint8) for _ in range(size)]
    dist.all_gather(bufs, buf, group=group)
    return [obj if r == rank else json.loads(b[: int(n)].numpy().tobytes()) for r, (b, n) in enumerate(zip(bufs, sizes))]


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (JSON data) on every rank (other ranks' ``obj`` is ignored)."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return obj
    group = _gloo_group()
    data = _to_bytes(obj) if rank == src else torch.zeros(0, dtype=torch.uint8)
    n = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(n, src=src, group=group)
    buf = data if rank == src else torch.empty(int(n), dtype=torch.uint8)
    dist.broadcast(buf, src=src, group=group)
    return obj if rank == src else json.loads(buf.numpy().tobytes())


def barrier(timeout: datetime.timedelta | float | None = None) -> None:
    """Wait until every rank gets here (nothing alone). With ``timeout`` (a timedelta or seconds), wait at most that
    long: a ``torch.distributed.monitored_barrier`` whose error names every rank that did not arrive; without it,
    up to :data:`COLLECTIVE_TIMEOUT`."""
    import torch.distributed as dist

    wait = None if timeout is None else _timedelta(timeout)
    if world()[1] == 1:
        return
    if wait is None:
        dist.barrier(group=_gloo_group())
    else:
        dist.monitored_barrier(group=_gloo_group(), timeout=wait, wait_all_ranks=True)


def _timedelta(timeout: datetime.timedelta | float) -> datetime.timedelta:
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"timeout must be a positive timedelta or number of seconds, got {timeout!r}")
    return datetime.timedelta(seconds=float(seconds))


#: marks an exception :func:`all_succeed` re-raised on the rank it came from (the other ranks were told of it)
_REPORTED = "_hubedit_reported_to_ranks"
#: on the error :func:`all_succeed` raises for the other ranks' failures: which ranks failed
_FAILED_RANKS = "_hubedit_failed_ranks"


@contextmanager
def all_succeed(what: str, *, error: type[Exception] = RankFailedError,
                timeout: datetime.timedelta | float | None = None) -> Iterator[None]:
    """A step every rank takes: run the block, then tell every rank whether it succeeded on all of them.

    When the block ends, the ranks wait for each other (at most ``timeout`` when given: :func:`barrier`) and
    gather each rank's outcome. A rank whose block raised an ``Exception`` re-raises it after the others were
    told; every other rank then raises ``error("{what}: rank R failed: Type: message; ...")``, so a failure
    anywhere fails every rank, and none waits in a later collective for a rank that left. Alone: the block's
    own error, as it was. ``KeyboardInterrupt`` and other ``BaseException`` leave at once (the other ranks'
    collectives then fail, as a rank that died makes them)."""
    timeout = None if timeout is None else _timedelta(timeout)
    failure: Exception | None = None
    try:
        yield
    except Exception as exc:  # told to the others below
        failure = exc
    if world()[1] > 1:
        if timeout is not None:
            barrier(timeout)
        outcomes = all_gather(None if failure is None else f"{type(failure).__name__}: {failure}")
    else:
        outcomes = []
    if failure is not None:
        _tag(failure, _REPORTED, True)
        raise failure
    failed = [(r, text) for r, text in enumerate(outcomes) if text is not None]
    if failed:
        exc = error(f"{what}: " + "; ".join(f"rank {r} failed: {text}" for r, text in failed))
        _tag(exc, _FAILED_RANKS, [r for r, _ in failed])
        raise exc


def _tag(exc: BaseException, name: str, value: Any) -> None:
    try:
        setattr(exc, name, value)
    except AttributeError:  # an exception type without a __dict__
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when its parent ``parent_pid`` ends, however either ends. On Linux the kernel
    SIGKILLs it (``PR_SET_PDEATHSIG``: no signal handler, ``except`` clause or long C++ call can delay that, as
    they delay torch's own SIGINT death signal); elsewhere a daemon thread looks every second. A process whose
    parent died before this was set (it was handed to another parent) leaves at once, with ``os._exit(1)``."""
    by_kernel = False
    if sys.platform.startswith("linux"):
        try:
            by_kernel = ctypes.CDLL(None).prctl(1, int(signal.SIGKILL)) == 0  # PR_SET_PDEATHSIG = 1 (libc is loaded)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    if not by_kernel:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="hubedit-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _helper_main(index: int, parent_pid: int, port: int, size: int, threads: int, ready, fn: Callable[..., Any],
                 args: Sequence[Any]) -> None:
    """Entry of helper ``index`` of :func:`local_processes`: rank ``index + 1`` of the group, runs ``fn(*args)``;
    dies with the process that started it."""
    import torch.distributed as dist

    die_with_parent(parent_pid)  # before anything else: replaces torch's SIGINT death signal
    torch.set_num_threads(max(1, int(threads)))
    ready[index].set()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=index + 1, world_size=size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


@contextmanager
def local_processes(processes: int, fn: Callable[..., Any], args: Sequence[Any] = (), *,
                    threads: int = 1) -> Iterator[None]:
    """Inside the block, this process is rank 0 of a gloo group of ``processes`` on this machine; ranks
    ``1 .. processes-1`` are helper processes (spawned, ``threads`` torch threads each) running ``fn(*args)``,
    which must join the same collectives as the block's code. ``fn`` must be importable (a module-level
    function) and ``args`` plain data. ``processes == 1``: nothing is started, the block runs alone.

    Helpers die with this process (:func:`die_with_parent`), so call this from a thread that outlives the block.
    A helper that fails makes the block's next collective fail; its error (a ``ProcessException`` of
    ``torch.multiprocessing``, with the helper's traceback) is raised here. A helper that failed a step of
    :func:`all_succeed` makes that step raise its error naming the rank; the helper's traceback is then that
    error's ``__cause__``. An error in the block ends the helpers. Not inside a running ``torch.distributed``
    group (a launched world has its ranks).
    """
    import torch.distributed as dist
    import torch.multiprocessing as tmp
    from torch.multiprocessing.spawn import ProcessException

    processes = _whole("processes", processes, 1)
    if processes == 1:
        yield
        return
    if _initialised() or launched_world_size() > 1:
        raise RuntimeError(
            f"cannot start {processes} local processes inside a launched world of {world()[1]} processes: "
            "the launcher's processes already share the work (use one or the other)"
        )
    port = free_port()
    ctx = tmp.get_context("spawn")
    ready = [ctx.Event() for _ in range(processes - 1)]
    helpers = tmp.start_processes(_helper_main, args=(os.getpid(), port, processes, threads, ready, fn, tuple(args)),
                                  nprocs=processes - 1, join=False, start_method="spawn")

    def stop_helpers() -> None:
        for p in helpers.processes:
            if p.is_alive():
                p.terminate()
        for p in helpers.processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()

    def helper_failure(seconds: float) -> ProcessException | None:
        try:
            helpers.join(timeout=seconds)
        except ProcessException as exc:
            return exc
        return None

    try:
        # a helper that cannot even start (import error, ...) never joins the group: wait for all to be ready
        while not all(e.is_set() for e in ready):
            if helpers.join(timeout=0.05):  # raises when a helper failed
                raise RuntimeError("a helper process ended before joining the group")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=processes,
                                timeout=COLLECTIVE_TIMEOUT)
    except BaseException:
        stop_helpers()
        raise
    try:
        yield
    except BaseException as exc:
        # a collective that failed because a helper died: the helper's own error is the one to read
        failure = helper_failure(5.0) if _collective_failure(exc) else None
        # a helper that failed a step of all_succeed leaves after it: its traceback is the cause of the step's error
        cause = helper_failure(5.0) if failure is None and getattr(exc, _FAILED_RANKS, None) else None
        if _initialised():
            dist.destroy_process_group()  # ends the helpers' collectives
        stop_helpers()
        if failure is not None:
            raise failure from exc
        if cause is not None and exc.__cause__ is None:
            exc.__cause__ = cause
        raise
    if _initialised():
        dist.destroy_process_group()
    deadline = time.monotonic() + 600
    while not helpers.join(timeout=1.0):  # raises a helper's error
        if time.monotonic() > deadline:
            stop_helpers()
            raise RuntimeError(f"helper processes did not end within 10 minutes of the work (port {port})")


def _collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is how a collective fails when another rank died (gloo raises ``RuntimeError`` or
    ``torch.distributed.DistError``), not this rank's own error already told to the others by :func:`all_succeed`."""
    import torch.distributed as dist

    return (type(exc) is RuntimeError or isinstance(exc, dist.DistError)) and not getattr(exc, _REPORTED, False)


def single_process_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) without the launcher's variables: a child process started
    with it runs alone (``accelerate`` sees no distributed world)."""
    env = dict(os.environ if environ is None else environ)
    for name in _LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env
