#!/usr/bin/env python
"""Training steps per second of the default editor through ``hubedit train`` itself: one process against
``accelerate launch --num_processes N`` (data parallel), same global step, measured in one run.

``scripts/bench_train.py`` times one step function in this process; this script times the real command, on a
real zoo, end to end. Every variant trains the default editor (hidden 64, 4 layers) on a global batch of 32 zoo
models per step, each edited model scored on 512 points of the task's editing split:

* ``1 process, T threads``: ``hubedit train --models-per-step 32`` with ``OMP_NUM_THREADS=T``;
* ``accelerate, N processes``: ``accelerate launch --multi_gpu --num_processes N hubedit train
  --models-per-step 32/N`` with one thread per process (``models_per_step`` is per process: the processes
  share one global draw of 32 models, :func:`hubedit.train.sampling.sample_models`, and average gradients).

Each variant runs twice, for ``--steps`` and for ``--steps + --extra`` steps, into fresh folders, and the
seconds per step are the difference of the two wall times over ``--extra``: start-up, zoo loading and the
validations at step 0 and at the end cancel out. Variants alternate within each repetition so that other load
hits all alike; the table gives medians over ``--repeats``.

``--hidden / --layers / --edge-hidden`` time another editor size, ``--variants`` a subset of the three,
``--torch-loop`` each beside itself with ``HUBEDIT_FUSED_KERNELS=0`` (the metanetwork's torch loops instead of the
C++ edge kernel).

Run:  python scripts/bench_train_processes.py --zoo runs/zoos/adult-small [--steps 10 --extra 60 --repeats 2]
      python scripts/bench_train_processes.py --zoo runs/zoos/adult-small --hidden 32 --variants 1x2,N
Needs an otherwise idle machine: the timings say more about other load than about training when there is some.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_zoo_processes import accelerate_executable, free_port

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_MODELS = 32


def train_command(zoo: str, out: Path, steps: int, models_per_step: int, seed: int, size: list[str]) -> list[str]:
    return ["-m", "hubedit", "train", "--zoo", zoo, "--requirement", "prune", "--variant", "prune-edit",
            "--lambda", "0.03", "--out", str(out), "--steps", str(steps), "--eval-every", str(steps),
            "--models-per-step", str(models_per_step), "--points-per-step", "512", "--seed", str(seed),
            "--no-progress", *size]


def run_variant(kind: tuple[str, int, int, bool], zoo: str, out: Path, steps: int, seed: int, size: list[str]) -> float:
    """Wall seconds of one training run of ``kind = (label, processes, threads, kernel)``; ``size``: metanetwork
    options; ``kernel=False`` sets ``HUBEDIT_FUSED_KERNELS=0`` (the metanetwork's torch loops)."""
    _, processes, threads, kernel = kind
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if not kernel:
        env["HUBEDIT_FUSED_KERNELS"] = "0"
    if processes == 1:
        cmd = [sys.executable, *train_command(zoo, out, steps, GLOBAL_MODELS, seed, size)]
    else:
        cmd = [accelerate_executable(), "launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               *train_command(zoo, out, steps, GLOBAL_MODELS // processes, seed, size)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def last_loss(out: Path) -> float:
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if "loss" in r][-1]["loss"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", required=True, help="zoo folder (e.g. runs/zoos/adult-small)")
    ap.add_argument("--steps", type=int, default=10, help="steps of the short run")
    ap.add_argument("--extra", type=int, default=60, help="further steps of the long run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=None, help="metanetwork width (default: hubedit train's, 64)")
    ap.add_argument("--layers", type=int, default=None, help="metanetwork layers (default: hubedit train's, 4)")
    ap.add_argument("--edge-hidden", type=int, default=None, help="edge width (default: hidden // 2)")
    ap.add_argument("--variants", default="1x1,1x2,N", help="which of 1 process x 1 thread, x 2 threads, N processes")
    ap.add_argument("--torch-loop", action="store_true",
                    help="also run each variant with HUBEDIT_FUSED_KERNELS=0 (the torch loops the edge kernel replaced)")
    args = ap.parse_args(argv)
    size = [arg for name, value in (("--hidden", args.hidden), ("--layers", args.layers),
                                    ("--edge-hidden", args.edge_hidden)) if value is not None for arg in (name, str(value))]
    if GLOBAL_MODELS % args.processes:
        ap.error(f"--processes must divide {GLOBAL_MODELS}, got {args.processes}")
    every = {"1x1": ("1 process, 1 thread", 1, 1, True), "1x2": ("1 process, 2 threads", 1, 2, True),
             "N": (f"accelerate, {args.processes} processes x 1 thread", args.processes, 1, True)}
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not wanted or any(v not in every for v in wanted):
        ap.error(f"--variants takes a comma-separated subset of {', '.join(every)}, got {args.variants!r}")
    kinds = [every[v] for v in wanted]
    if args.torch_loop:
        kinds = [k for v in wanted for k in (every[v], (every[v][0] + ", torch loop", *every[v][1:3], False))]
    per_step: dict[str, list[float]] = {k[0]: [] for k in kinds}
    losses: dict[str, float] = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hubedit-bench-train-") as tmp:
        for rep in range(args.repeats):
            for kind in kinds:
                walls = []
                for steps in (args.steps, args.steps + args.extra):
                    out = Path(tmp) / f"{len(list(Path(tmp).iterdir()))}"
                    walls.append(run_variant(kind, args.zoo, out, steps, args.seed, size))
                per_step[kind[0]].append((walls[1] - walls[0]) / args.extra)
                losses[kind[0]] = last_loss(out)
    print(f"python {' '.join(sys.argv)}")
    print(f"{os.cpu_count()} CPUs, load average at start {load0:.2f}, at end {os.getloadavg()[0]:.2f}; zoo {args.zoo}")
    print(f"editor: {' '.join(size) or 'the default (hidden 64, 4 layers, edge width 32)'}; global batch {GLOBAL_MODELS} models x 512 points per step; "
          f"s/step = (wall of {args.steps + args.extra} steps - wall of {args.steps}) / {args.extra}, median of "
          f"{args.repeats}\n")
    print(f"| variant | s/step | steps/s | speed-up | loss at step {args.steps + args.extra} |")
    print("|---|---|---|---|---|")
    base = None
    for name, values in per_step.items():
        med = statistics.median(values)
        base = base or med
        print(f"| {name} | {med:.3f} | {1 / med:.2f} | {base / med:.2f}x | {losses[name]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
