"""hubedit.distributed, the one way hubedit runs ranks: launcher variables, shares (round-robin and by cost),
steps every rank takes (a failure anywhere fails every rank), barriers with a timeout, and local helper ranks
that die with the process that started them. (The zoo build and the evaluation protocol on top of it:
test_zoo_distributed.py, test_protocol_distributed.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hubedit import distributed
from hubedit.distributed import RankFailedError
from hubedit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU", "PMI_SIZE",
                      "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE",
                      "MV2_COMM_WORLD_RANK")


def _subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


# --- shares ---------------------------------------------------------------------------------------------
def test_shares_by_weight_balance_the_cost():
    shares = distributed.shares(5, 2, weights=[5.0, 4.0, 3.0, 3.0, 1.0])
    assert shares == [[0, 3], [1, 2, 4]]  # loads 8 and 8, heaviest first in each share
    assert distributed.share(5, 1, 2, weights=[5.0, 4.0, 3.0, 3.0, 1.0]) == [1, 2, 4]
    assert distributed.shares(1, 3, weights=[1.0]) == [[0], [], []]
    # round-robin without weights, as before
    assert distributed.shares(5, 2) == [[0, 2, 4], [1, 3]] == [distributed.share(5, r, 2) for r in range(2)]


@pytest.mark.parametrize("weights, message", [
    ([1.0, 2.0], "one cost per work item: 3 items, got 2 weights"),
    ([1.0, float("nan"), 1.0], "item 1 has nan"),
    ([1.0, -1.0, 1.0], "item 1 has -1.0"),
])
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        distributed.shares(3, 2, weights=weights)


def test_bad_share_arguments_are_refused():
    with pytest.raises(ValueError, match="world_size must be a whole number >= 1, got 0"):
        distributed.shares(3, 0)
    with pytest.raises(ValueError, match="n_items must be a whole number >= 0, got 2.5"):
        distributed.share(2.5, 0, 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        distributed.share(4, 2, 2)


# --- the launcher's variables ---------------------------------------------------------------------------
def test_launcher_variables_are_checked_before_joining():
    assert distributed.launched_world({}) is None
    assert distributed.launched_world({"WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(ConfigError, match="expected 0..1"):
        distributed.launched_world({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="expected 0..1"):
        distributed.launched_world({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h"})
    with pytest.raises(ConfigError, match="RANK must be a whole number"):
        distributed.launched_world({"WORLD_SIZE": "2", "RANK": "one"})
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        distributed.launched_world({"WORLD_SIZE": "2", "RANK": "1"})
    assert distributed.launched_world({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"}) == (1, 2)
    assert distributed.launched_world({"PMI_SIZE": "4", "PMI_RANK": "3", "MASTER_ADDR": "h"}) == (3, 4)  # MPI


def test_a_bad_launch_is_refused_by_world_and_a_lone_cpu_launch_is_said(monkeypatch):
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # no rank: refused instead of waiting for a rendezvous that never comes
    with pytest.raises(ConfigError, match="its rank"):
        distributed.world()
    # `accelerate launch --cpu --num_processes 2` without MPI starts one process: said, and run here alone
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.warns(UserWarning, match="--multi_gpu"):
        assert distributed.world() == (0, 1)


# --- steps and barriers alone ---------------------------------------------------------------------------
def test_alone_a_step_raises_its_own_error_and_a_barrier_returns():
    with pytest.raises(KeyError, match="mine"):
        with distributed.all_succeed("step", error=ConfigError):
            raise KeyError("mine")
    with distributed.all_succeed("step", timeout=1.0):
        pass
    distributed.barrier(timeout=0.1)
    with pytest.raises(ValueError, match="timeout must be a positive timedelta or number of seconds, got 0"):
        distributed.barrier(timeout=0)


# --- local helper ranks ---------------------------------------------------------------------------------
def _steps_helper() -> None:
    """Rank 1: fails step one (told to rank 0), then learns in step two that rank 0 failed."""
    try:
        with distributed.all_succeed("step one"):
            raise ValueError("helper broke on purpose")
    except ValueError:
        pass
    with distributed.all_succeed("step two"):
        pass  # rank 0 fails here: RankFailedError, and this helper ends with it


def test_a_rank_that_fails_a_step_fails_every_rank():
    """A helper's failure reaches rank 0 as an error naming the rank, and rank 0's own failure stays rank 0's error
    (not replaced by the helper's report of it)."""
    with pytest.raises(RuntimeError, match="rank 0 broke on purpose") as caught:
        with distributed.local_processes(2, _steps_helper):
            with pytest.raises(RankFailedError, match="step one: rank 1 failed: ValueError: helper broke on purpose"):
                with distributed.all_succeed("step one"):
                    pass
            with distributed.all_succeed("step two"):
                raise RuntimeError("rank 0 broke on purpose")
    assert type(caught.value) is RuntimeError
    assert distributed.world() == (0, 1)  # no group left behind


def _late_helper(seconds: float) -> None:
    time.sleep(seconds)


def test_a_barrier_with_a_timeout_names_the_rank_that_did_not_come():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="Ranks? 1 failed to pass monitoredBarrier"):
        with distributed.local_processes(2, _late_helper, (1.5,)):
            distributed.barrier(timeout=0.5)
    assert time.monotonic() - t0 < 60
    assert distributed.world() == (0, 1)


def _helper_report() -> None:
    import ctypes

    sig = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # torch's own death signal (SIGINT) would be ignored now
    distributed.all_gather([os.getpid(), sig.value])
    time.sleep(600)


LOCAL_PARENT = textwrap.dedent("""
    import sys, time
    from hubedit import distributed
    from tests.test_distributed import _helper_report

    with distributed.local_processes(2, _helper_report):
        pid, sig = distributed.all_gather(None)[1]
        print(pid, sig, flush=True)
        time.sleep(600)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_local_helpers_die_with_their_parent():
    """Every local helper (the evaluation protocol's workers too) is SIGKILLed when the process that started it dies,
    even one that ignores SIGINT, torch's death signal, which used to leave it running on."""
    from _process_helpers import running  # here: the helpers import this module as tests.test_distributed

    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_PARENT], env=_subprocess_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    helper = None
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 2, proc.stderr.read()[-3000:] if proc.poll() is not None else line
        helper = psutil.Process(int(line[0]))
        assert int(line[1]) == int(signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while running(helper, psutil) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(helper, psutil), "the helper outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        if helper is not None and running(helper, psutil):
            helper.kill()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_process_whose_parent_died_while_it_started_leaves():
    """The kernel's death signal is set only once a process runs: one whose parent died before that sees that it
    was handed to another parent and leaves."""
    script = textwrap.dedent("""
        import ctypes, os
        from hubedit.distributed import die_with_parent
        die_with_parent(os.getppid())  # the parent is alive: carry on, SIGKILLed when it dies
        sig = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
        print(sig.value, flush=True)
        die_with_parent(os.getppid() + 1)  # as if the parent had died and another adopted this process
        print("worked on", flush=True)
    """)
    run = subprocess.run([sys.executable, "-c", script], env=_subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.stdout.split() == [str(int(signal.SIGKILL))] and run.returncode == 1, run.stdout + run.stderr[-2000:]
