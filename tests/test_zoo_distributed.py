"""Zoo builds over several processes (``--workers``, ``accelerate launch``, ``torchrun``) give the bytes of a
one-process build; the build folder is locked and checked before anything is trained; worker processes die
with their parent; a failing worker or rank fails the build everywhere. (The shared machinery,
:mod:`hubedit.distributed`, has its own tests in test_distributed.py.)"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hubedit.cli import main
from hubedit.errors import ConfigError
from hubedit.zoo.build import BuildLockedError, build_checkpoints, build_zoo
from hubedit.zoo.presets import ZooPreset
from _process_helpers import running

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: zoo.json fields that say how this session ran, not what was built
SESSION_FIELDS = {"build_seconds", "train_seconds", "eval_seconds", "workers", "world_size"}
#: 8 configurations in groups of at most 2: several groups to share out, trained in a second or two
SMALL = ZooPreset("small-groups", n_configs=8, epochs=1, checkpoint_epochs=(1,), max_group_size=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    return env


def _blobs(checkpoints):
    return {c.model_id: c.weights for c in checkpoints}


def _assert_same_zoo(a: Path, b: Path) -> None:
    """Every file of two zoo folders byte for byte, but the session fields of zoo.json and the timings in
    the group files' metadata (their rows byte for byte as tables)."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "lock")
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "lock")
    assert files_a == files_b
    assert any(f.parts[0] == "data" for f in files_a)
    for f in files_a:
        if f.name == "zoo.json":
            ja, jb = json.loads((a / f).read_text()), json.loads((b / f).read_text())
            for j in (ja, jb):
                for key in SESSION_FIELDS:
                    j["info"].pop(key)
            assert ja == jb
        elif f.parts[0] == ".build" and f.name.startswith("group-"):
            ta, tb = pq.read_table(a / f), pq.read_table(b / f)
            assert ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None)), f
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def _group_metas(out: Path) -> list[dict]:
    return [json.loads(pq.read_schema(f).metadata[b"hubedit.group"]) for f in sorted((out / ".build").glob("group-*.parquet"))]


# --- the output folder ----------------------------------------------------------------------------------
@pytest.mark.parametrize("user_file", ["data/mine.csv", "README.md", "zoo.json"])
def test_a_users_files_in_the_output_folder_are_refused_not_replaced(tmp_path, capsys, user_file):
    """`zoo build --out DIR` used to delete DIR/data/ (and replace README.md / zoo.json) of the user's, exit 0."""
    mine = tmp_path / user_file
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("the user's own file\n")
    rc = main(["zoo", "build", "--task", "bank", "--configs", "2", "--epochs", "1", "--out", str(tmp_path),
               "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert user_file.split("/")[0] in err and "not written by a zoo build" in err and "new or empty folder" in err
    assert mine.read_text() == "the user's own file\n"
    assert not (tmp_path / ".build").exists()  # refused before anything was trained or written


def test_an_own_finished_build_rebuilds_and_foreign_files_beside_it_are_refused(tiny_adult_zoo_dir, tmp_path):
    out = tmp_path / "zoo"
    shutil.copytree(tiny_adult_zoo_dir, out)
    before = {p: p.read_bytes() for p in (out / "data").iterdir()}
    counted = []
    # the same settings: every group is on disk, nothing is trained, the same zoo is saved again
    build_checkpoints("adult", "tiny", out, seed=0, progress=False, n_configs=9, epochs=2, workers=1,
                      on_group_done=lambda i, meta: counted.append(i))
    build_zoo("adult", "tiny", out, seed=0, progress=False, n_configs=9, epochs=2, workers=1)
    assert counted == [] and {p: p.read_bytes() for p in (out / "data").iterdir()} == before

    (out / "data" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"files in data/ that are not zoo shards \(notes.txt\)"):
        build_zoo("adult", "tiny", out, seed=0, progress=False, n_configs=9, epochs=2, workers=1)
    assert (out / "data" / "notes.txt").read_text() == "mine"
    (out / "data" / "notes.txt").unlink()

    meta = json.loads((out / "zoo.json").read_text())
    meta["info"]["seed"] = 7  # another zoo saved into the folder of this build
    (out / "zoo.json").write_text(json.dumps(meta))
    with pytest.raises(FileExistsError, match="zoo.json that is not this build's zoo"):
        build_zoo("adult", "tiny", out, seed=0, progress=False, n_configs=9, epochs=2, workers=1)
    # other settings into the build's folder: the unfinished-build error, as before
    with pytest.raises(ConfigError, match="seed"):
        build_zoo("adult", "tiny", out, seed=1, progress=False, n_configs=9, epochs=2, workers=1)

    odd = tmp_path / "odd"
    (odd / ".build").mkdir(parents=True)
    (odd / ".build" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a zoo build folder \(it holds todo.txt"):
        build_zoo("adult", "tiny", odd, seed=0, progress=False, n_configs=9, epochs=2, workers=1)


def test_a_folder_another_build_holds_is_refused_at_once(tmp_path):
    (tmp_path / ".build").mkdir()
    with open(tmp_path / ".build" / "lock", "w") as held:
        held.write("process 4242 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.monotonic()
        with pytest.raises(BuildLockedError, match="being built by process 4242 on elsewhere"):
            build_zoo("bank", SMALL, tmp_path, seed=0, progress=False, workers=1)
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / ".build" / "manifest.json").exists()
    # released: the build goes ahead (and its own lock goes when it ends)
    cps, _ = build_checkpoints("bank", SMALL, tmp_path, seed=0, progress=False, workers=1)
    assert len(cps) == 8


# --- local worker processes -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    cps, info = build_checkpoints("bank", SMALL, out, seed=3, progress=False, workers=1)
    assert info["n_groups"] >= 4 and info["workers"] == 1 and info["world_size"] == 1
    return out, cps, info


def test_a_resume_with_two_workers_equals_a_one_process_build(one_process_build, tmp_path):
    src, cps, info = one_process_build
    shutil.copytree(src / ".build", tmp_path / ".build")
    groups = sorted((tmp_path / ".build").glob("group-*.parquet"))
    for f in groups[1:]:  # an interrupted one-process build: one group finished
        f.unlink()
    seen = []
    got, rinfo = build_checkpoints("bank", SMALL, tmp_path, seed=3, progress=True, workers=2,
                                   on_group_done=lambda i, meta: seen.append(i))
    assert _blobs(got) == _blobs(cps)
    assert rinfo["workers"] == 2 and rinfo["resumed_groups"] == 1 and sorted(seen) == list(range(1, info["n_groups"]))
    assert not list((tmp_path / ".build").glob("*.tmp-*"))


FAILING_WORKER = textwrap.dedent("""
    import multiprocessing, sys
    from hubedit.zoo import build as build_mod
    from hubedit.zoo.presets import ZooPreset

    real = build_mod.train_group
    def train_group(*args, **kw):  # the worker rank (a spawned process, which imports this file too) fails
        if multiprocessing.parent_process() is not None:
            raise RuntimeError("the worker ran out of something")
        return real(*args, **kw)
    build_mod.train_group = train_group

    if __name__ == "__main__":
        preset = ZooPreset("small-groups", n_configs=8, epochs=1, checkpoint_epochs=(1,), max_group_size=2)
        try:
            build_mod.build_zoo("bank", preset, sys.argv[1], seed=0, progress=False, workers=2)
        except Exception as exc:
            print(f"raised {type(exc).__name__}: {exc}", flush=True)
            sys.exit(1)
        print("returned", flush=True)
""")


def test_a_failing_worker_fails_the_build_and_keeps_the_finished_groups(tmp_path):
    script = tmp_path / "failing_worker.py"
    script.write_text(FAILING_WORKER)
    out = tmp_path / "zoo"
    run = subprocess.run([sys.executable, str(script), str(out)], env=_subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    assert "raised BuildError: zoo build: rank 1 failed: RuntimeError: the worker ran out of something" in run.stdout, \
        run.stdout + run.stderr[-3000:]
    assert not (out / "zoo.json").exists()
    assert {m["rank"] for m in _group_metas(out)} == {0}  # this process's groups are kept for a resume


#: CPU seconds a worker process spends starting (importing torch and hubedit, planning the build): one that
#: has used more is training. (A worker whose parent dies while it starts leaves as soon as it has started:
#: test_distributed.py::test_a_process_whose_parent_died_while_it_started_leaves.)
WORKER_STARTUP_CPU_S = 8.0


def test_workers_die_with_their_parent(tmp_path):
    """SIGKILL of `hubedit zoo build` used to leave its worker processes training on, forever. With --workers 3
    the command trains as rank 0 and starts two worker ranks. The epochs are many so that no fast machine finishes
    the build before both workers have started training (400 epochs took 18 s on an AVX-512 Xeon)."""
    psutil = pytest.importorskip("psutil")
    cmd = [str(BIN / "hubedit"), "zoo", "build", "--task", "bank", "--epochs", "100000", "--out", str(tmp_path),
           "--workers", "3", "--no-progress"]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:  # until both workers are training
            workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
            if len(workers) >= 2 and all(sum(w.cpu_times()[:2]) > WORKER_STARTUP_CPU_S for w in workers):
                break
            time.sleep(0.5)
        else:
            code = proc.poll()
            pytest.fail(f"no training workers appeared (build exit code {code}): "
                        + (proc.stderr.read().decode()[-2000:] if code is not None else ""))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        alive = workers
        deadline = time.monotonic() + 15
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [w for w in alive if running(w, psutil)]
        assert alive == [], f"workers {[p.pid for p in alive]} outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if running(w, psutil):
                w.kill()
        proc.stderr.close()


# --- launched worlds ------------------------------------------------------------------------------------
def test_an_accelerate_launch_build_equals_a_one_process_build(tmp_path):
    one = tmp_path / "one"
    build_zoo("bank", "tiny", one, seed=5, progress=False, n_configs=8, epochs=1, workers=1)
    two = tmp_path / "two"
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "hubedit", "zoo", "build", "--task", "bank", "--preset", "tiny", "--configs", "8", "--epochs", "1",
           "--seed", "5", "--out", str(two)]
    run = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("saved to") == 1  # rank 0 alone reports
    _assert_same_zoo(one, two)
    info = json.loads((two / "zoo.json").read_text())["info"]
    assert info["world_size"] == 2 and info["n_groups"] >= 2
    assert {m["rank"] for m in _group_metas(two)} == {0, 1}  # both ranks trained groups


FAILING_RANK = textwrap.dedent("""
    import os, sys
    from hubedit.zoo import build as build_mod
    from hubedit.zoo.presets import ZooPreset

    real = build_mod.train_group
    def train_group(*args, **kw):
        if os.environ["RANK"] == "1":
            raise RuntimeError("rank 1 ran out of something")
        return real(*args, **kw)
    build_mod.train_group = train_group
    preset = ZooPreset("small-groups", n_configs=8, epochs=1, checkpoint_epochs=(1,), max_group_size=2)
    try:
        build_mod.build_zoo("bank", preset, sys.argv[1], seed=0, progress=False)
    except Exception as exc:
        print(f"rank {os.environ['RANK']} raised {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print(f"rank {os.environ['RANK']} returned", flush=True)
""")


def test_a_failing_rank_fails_every_rank(tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    out = tmp_path / "zoo"
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script), str(out)]
    run = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "rank 1 raised RuntimeError: rank 1 ran out of something" in run.stdout, run.stdout + run.stderr[-3000:]
    assert "rank 0 raised BuildError: zoo build: rank 1 failed: RuntimeError: rank 1 ran out of something" in run.stdout
    assert "returned" not in run.stdout and not (out / "zoo.json").exists()
    assert {m["rank"] for m in _group_metas(out)} == {0}  # rank 0's groups are kept for a resume


# --- units ----------------------------------------------------------------------------------------------
def test_workers_are_refused_under_a_launcher(tmp_path, monkeypatch):
    """Under torchrun / accelerate launch the launched processes share the groups: local workers on top of them
    are refused at once, before the world is joined or anything written (they used to be started per rank)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="workers=2 under a launcher of 2 processes"):
        build_zoo("bank", SMALL, tmp_path, workers=2)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_count(tmp_path, workers):
    with pytest.raises(ConfigError, match="workers must be a positive number"):
        build_zoo("bank", SMALL, tmp_path, workers=workers)
    assert not any(tmp_path.iterdir())
