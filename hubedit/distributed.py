"""One function on several processes with ``torch.distributed``: under a launcher, or started here.

hubedit never runs its own scheduler across machines. Code that spreads independent work calls

* :func:`world` -- ``(rank, world size)``: of the ``torch.distributed`` group already running, else of the
  launcher that started this process (``torchrun``, ``accelerate launch --multi_gpu --num_processes N
  [--num_machines M ...]``, MPI: ``WORLD_SIZE`` / ``PMI_SIZE`` ... set), whose group is then joined through
  ``accelerate.PartialState`` (gloo on CPU), else ``(0, 1)``;
* :func:`share` -- the indices of the work items this rank does (a fixed round-robin share);
* :func:`all_gather` / :func:`broadcast` / :func:`barrier` -- collectives of the group (no-ops alone), carrying
  JSON (gloo; a gloo sub-group when the running group is another backend).

:func:`local_processes` runs the same rank code on this machine without a launcher: the calling process is
rank 0 of a gloo group on ``127.0.0.1`` (a free port) and ``N - 1`` helper processes, started with
``torch.multiprocessing.start_processes``, are ranks ``1 .. N-1``. A helper that fails ends the group and its
error is raised in the caller. :func:`single_process_env` is the environment for a child process that must
run alone (e.g. a one-process ``accelerate`` training inside a launched world).

Payloads travel as JSON bytes: nothing is ever unpickled, and a value arrives as a JSON round trip gives it
(tuples as lists, NaN kept); a rank's own value comes back to it as it was.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "LAUNCHER_SIZE_VARIABLES",
    "COLLECTIVE_TIMEOUT",
    "launched_world_size",
    "world",
    "is_main_process",
    "share",
    "all_gather",
    "broadcast",
    "barrier",
    "local_processes",
    "single_process_env",
    "free_port",
]

#: Environment variables in which launchers give the number of processes (torchrun/accelerate, MPI flavours).
LAUNCHER_SIZE_VARIABLES: tuple[str, ...] = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

#: Variables that make a process take part in a launched world; removed by :func:`single_process_env`.
_LAUNCHER_VARIABLES: tuple[str, ...] = (
    *LAUNCHER_SIZE_VARIABLES, "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE",
)

#: How long a rank waits in a collective for the others (a rank that dies ends the wait at once).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


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
            raise ValueError(f"environment variable {name} must be a whole number of processes, got {text!r}") from None
    return max(sizes, default=1)


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: the running ``torch.distributed`` group's; else, under a launcher,
    of the launched world, joined now through ``accelerate.PartialState`` (gloo on CPU); else ``(0, 1)``."""
    import torch.distributed as dist

    if _initialised():
        return dist.get_rank(), dist.get_world_size()
    if launched_world_size() > 1:
        from accelerate import PartialState

        # gloo whatever the machine: the work spread here runs on CPU
        state = PartialState(cpu=True, timeout=COLLECTIVE_TIMEOUT)
        return int(state.process_index), int(state.num_processes)
    return 0, 1


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


def share(n_items: int, rank: int, world_size: int) -> list[int]:
    """Indices of ``n_items`` work items that ``rank`` of ``world_size`` does: ``rank, rank + world_size, ...``
    (consecutive items go to different ranks, so items listed by kind spread every kind evenly)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}")
    return list(range(rank, int(n_items), world_size))


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


def barrier() -> None:
    """Wait until every rank gets here (nothing alone)."""
    import torch.distributed as dist

    if world()[1] > 1:
        dist.barrier(group=_gloo_group())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _helper_main(index: int, port: int, size: int, threads: int, ready, fn: Callable[..., Any], args: Sequence[Any]) -> None:
    """Entry of helper ``index`` of :func:`local_processes`: rank ``index + 1`` of the group, runs ``fn(*args)``."""
    import torch.distributed as dist

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
    function) and ``args`` plain data. ``processes <= 1``: nothing is started.

    A helper that fails makes the block's next collective fail; its error is raised here. An error in the
    block ends the helpers. Not inside a running ``torch.distributed`` group (a launched world has its ranks).
    """
    import torch.distributed as dist
    import torch.multiprocessing as tmp
    from torch.multiprocessing.spawn import ProcessException

    processes = int(processes)
    if processes <= 1:
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
    helpers = tmp.start_processes(_helper_main, args=(port, processes, threads, ready, fn, tuple(args)),
                                  nprocs=processes - 1, join=False, start_method="spawn")

    def stop_helpers() -> None:
        for p in helpers.processes:
            if p.is_alive():
                p.terminate()
        for p in helpers.processes:
            p.join(timeout=30)

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
        failure = helper_failure(5.0) if isinstance(exc, RuntimeError) else None
        if _initialised():
            dist.destroy_process_group()  # ends the helpers' collectives
        stop_helpers()
        if failure is not None:
            raise failure from exc
        raise
    if _initialised():
        dist.destroy_process_group()
    deadline = time.monotonic() + 600
    while not helpers.join(timeout=1.0):  # raises a helper's error
        if time.monotonic() > deadline:
            stop_helpers()
            raise RuntimeError(f"helper processes did not end within 10 minutes of the work (port {port})")


def single_process_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) without the launcher's variables: a child process started
    with it runs alone (``accelerate`` sees no distributed world)."""
    env = dict(os.environ if environ is None else environ)
    for name in _LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env
