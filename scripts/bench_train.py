#!/usr/bin/env python
"""Benchmark: training steps per second of the default editor, before and after, measured in one run.

One step = what ``hubedit.train.loop`` does per step: batch 32 zoo-like models (``Batch.from_data_list``), run
the metanetwork with gradients, the requirement's straight-through masks, the edited models on 512 points
(``functional_forward``), JSD + lambda * R, backward, gradient clipping and an AdamW step. Models are drawn
from the zoo distribution (``scripts/bench_edit.py``'s sampler, Adult's 14 inputs), data are random inputs.
This is one step function timed in this process, on models smaller than a real zoo's (mean 2681 weights; the
``small`` Adult zoo's training models average 5901): ``scripts/bench_train_processes.py`` times ``hubedit
train`` itself on a zoo, in one process and data parallel.

Variants, timed in interleaved rounds (each round times every variant once, so that load from other processes
hits all alike; the table gives medians):

* ``autograd``: the per-edge work of each message-passing layer through plain autograd (before);
* ``chunked``: the same maths as one chunked autograd function (``hubedit.metanet.edge_pass``; after);
* each with 1 and with 2 torch threads (``--threads``), and optionally with ``--calibration N`` (the editor
  also reads per-weight features computed on N calibration points).

    python scripts/bench_train.py                       # default editor, 1 and 2 threads
    python scripts/bench_train.py --threads 1 --rounds 5 --calibration 256
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_edit import zoo_config  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

from hubedit.editor import Editor  # noqa: E402
from hubedit.editor.editing import run_edit, score  # noqa: E402
from hubedit.graph import mlp_to_graph  # noqa: E402
from hubedit.mlp import MLP  # noqa: E402


def make_step(editor: Editor, graphs, n_models: int, n_points: int, seed: int):
    optimizer = torch.optim.AdamW(editor.parameters(), lr=1e-4)
    req = editor.requirement
    gen = torch.Generator().manual_seed(seed)
    lam = torch.full((n_models,), 0.1)

    def step() -> None:
        idx = torch.randint(len(graphs), (n_models,), generator=gen).tolist()
        batch = Batch.from_data_list([graphs[i] for i in idx])
        x = torch.randn(n_points, 14, generator=gen)
        y = torch.randint(2, (n_points,), generator=gen)
        _, edit = run_edit(editor, req, batch, lam=lam, lam_range=None, hard=False)
        outcome, jsd = score(req, batch, edit, x, y, y)
        loss = (jsd + lam * req.penalty(outcome)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(editor.parameters(), 10.0)
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--models-per-step", type=int, default=32)
    ap.add_argument("--points-per-step", type=int, default=512)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--calibration", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (steps per variant)")
    ap.add_argument("--pool", type=int, default=256, help="zoo-like models to draw batches from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    graphs = [mlp_to_graph(MLP(zoo_config(rng)).eval()) for _ in range(args.pool)]
    mean_edges = statistics.mean(g.edge_index.shape[1] for g in graphs)
    metanet = {"hidden": args.hidden, "layers": args.layers}
    if args.calibration:
        metanet["calibration"] = args.calibration
    variants = {}
    for chunked in (False, True):
        torch.manual_seed(args.seed)
        editor = Editor(requirement="prune", task="adult", lam=0.1, metanet=metanet)
        editor.train()
        for layer in editor.metanet.layers:
            layer.chunked_backward = chunked
        for threads in args.threads:
            name = f"{'chunked' if chunked else 'autograd'}, {threads} thread{'s' if threads > 1 else ''}"
            variants[name] = (threads, make_step(editor, graphs, args.models_per_step, args.points_per_step, args.seed))
    times: dict[str, list[float]] = {name: [] for name in variants}
    load0 = os.getloadavg()[0]
    for rnd in range(args.rounds + 1):  # the first round warms up
        for name, (threads, step) in variants.items():
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            step()
            if rnd:
                times[name].append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start {load0:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}")
    print(f"editor: hidden {args.hidden}, {args.layers} layers, calibration {args.calibration}; "
          f"{args.models_per_step} models x {args.points_per_step} points per step; "
          f"mean {mean_edges:.0f} weights per model; {args.rounds} rounds")
    base = None
    print(f"\n{'variant':<22} | {'s/step':>8} | {'steps/s':>8} | {'speed-up':>8}")
    print("-" * 56)
    for name, ts in times.items():
        med = statistics.median(ts)
        base = base or med
        print(f"{name:<22} | {med:8.3f} | {1 / med:8.2f} | {base / med:7.2f}x")


if __name__ == "__main__":
    main()
