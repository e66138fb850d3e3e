#!/usr/bin/env python
"""Wall time of one zoo build in one process, with ``--workers N`` and under ``accelerate launch --num_processes N``.

Each build goes into a fresh folder (nothing resumes); the trainer kernels are built once before the first
timed run, so that no run pays for their compilation. Prints a markdown table -- wall seconds, trained models
(configurations) per second, speed-up over one process -- checks that the three zoos' data shards are
byte-identical, and lists the command lines used.

Run:  python scripts/bench_zoo_processes.py [--task adult] [--preset small] [--processes 2] [--keep DIR]
The ``small`` preset takes tens of minutes per build on 2 cores: run it on an otherwise idle machine, or the
timings say more about the other load than about the build.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_executable() -> str:
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.exists() else "accelerate"


def data_shards(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "data").glob("*.parquet"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="adult")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--configs", type=int, default=None, help="override the preset's number of configurations")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=2, help="processes of the --workers and accelerate runs")
    ap.add_argument("--keep", type=Path, default=None, help="build into this (new) folder and keep the zoos")
    args = ap.parse_args(argv)
    if args.processes < 2:
        ap.error(f"--processes must be at least 2, got {args.processes}")

    build_args = ["zoo", "build", "--task", args.task, "--preset", args.preset, "--seed", str(args.seed), "--no-progress"]
    if args.configs is not None:
        build_args += ["--configs", str(args.configs)]
    if args.epochs is not None:
        build_args += ["--epochs", str(args.epochs)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)

    if args.keep is not None:
        if args.keep.exists() and any(args.keep.iterdir()):
            ap.error(f"--keep {args.keep} is not empty: give a new or empty folder")
        work = args.keep
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="hubedit-bench-processes-"))
    n = args.processes
    runs = [
        ("1 process", 1, lambda out: [sys.executable, "-m", "hubedit", *build_args, "--out", str(out), "--workers", "1"]),
        (f"--workers {n}", n, lambda out: [sys.executable, "-m", "hubedit", *build_args, "--out", str(out), "--workers", str(n)]),
        (f"accelerate launch --num_processes {n}", n, lambda out: [
            accelerate_executable(), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "hubedit", *build_args, "--out", str(out)]),
    ]

    # build the trainer kernels now (once per machine), not inside the first timed run
    subprocess.run([sys.executable, "-c", "from hubedit.zoo import fused; fused.available()"], env=env, check=True)
    rows, commands, shards = [], [], {}
    for k, (name, processes, command) in enumerate(runs):
        out = work / f"run-{k}"
        cmd = command(out)
        commands.append(" ".join(cmd))
        print(f"[{name}] {commands[-1]}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-5000:], file=sys.stderr)
            print(f"{name}: the build failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        info = json.loads((out / "zoo.json").read_text())["info"]
        shards[name] = data_shards(out)
        rows.append((name, processes, wall, info["n_configs"], info))

    base = rows[0][2]
    first = shards[rows[0][0]]
    info = rows[0][4]
    print(f"\nZoo build `{args.task}` / `{info['preset']}`: {info['n_configs']} configurations x {info['epochs']} epochs, "
          f"{info['n_groups']} training groups, seed {args.seed}; {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} "
          f"cores available\n")
    print("| run | processes | wall s | models/s | speed-up | data shards identical to 1 process |")
    print("|---|---:|---:|---:|---:|---|")
    for name, processes, wall, n_models, _ in rows:
        same = "yes" if shards[name] == first else "**no**"
        print(f"| {name} | {processes} | {wall:.1f} | {n_models / wall:.3f} | {base / wall:.2f}x | {same} |")
    print("\nCommands (each into a fresh folder; wall time includes interpreter start and saving the zoo):\n")
    for c in commands:
        print(f"    {c}")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nzoos kept in {work}")
    return 0 if all(shards[r[0]] == first for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
