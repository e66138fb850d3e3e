#!/usr/bin/env python
"""Benchmark zoo training: the batched population trainer against a plain per-model loop, and a
projection of the ``paper`` preset's build time on this machine.

What it does, per task:

1. Samples the ``paper`` preset's 4,000 configurations and plans its training groups exactly as
   ``build_zoo`` would.
2. Picks ``--groups`` of those groups (spread over batch sizes and sizes) and trains each with the batched
   trainer as a build would (the whole-step kernel where it is built, else the torch formulation, compiled
   when the build would compile it): after compilation (if any) and warm-up,
   ``--steps`` optimiser steps are timed (CPU time of the one training thread, so other load on the machine
   does not inflate it). Seconds per epoch = seconds per step x steps per epoch.
3. Trains every configuration of those groups (or ``--plain N`` of them) with :func:`train_single` (a real
   MLP, ``torch.optim.AdamW``, one thread) for ``--plain-steps`` steps: the per-model loop's seconds per epoch.
4. Reports trained models per second (one core each, steady state, ``paper`` epochs) of both on the same
   configurations -- the timed groups' models trained one after the other against the same models trained
   as batched groups -- and their ratio, then projects the full ``paper`` build: the planner's cost model for
   every group, calibrated per batch size by the measured groups, plus measured compilation time per group,
   checkpoint extraction/evaluation (measured per checkpoint) and per-epoch shuffling, divided over the
   build's worker processes (one per core by default).

Run:  python scripts/bench_zoo_training.py [--tasks adult bank] [--groups 12] [--steps 25] [--plain 0]
(about 15 minutes on 2 cores; compilation is timed with a fresh inductor cache unless --warm-cache)
"""

from __future__ import annotations

import os
import sys
import tempfile

if "--warm-cache" not in sys.argv:  # a fresh inductor cache: compilation is timed as on a first build
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="hubedit-bench-inductor-")

import argparse
import math
import random
import resource
import statistics
import time
from collections import defaultdict
from dataclasses import replace

import torch
from tabulate import tabulate

from hubedit.tasks import load_task
from hubedit.zoo.presets import PRESETS
from hubedit.zoo.sampling import sample_configs
from hubedit.zoo.trainer import (
    COMPILED_COST,
    ModelGroup,
    _batches,
    _real_size,
    _single_thread,
    choose_backend,
    derive_seeds,
    evaluate_blob,
    evaluation_data,
    gather_batch,
    group_cost,
    plan_groups,
    steps_per_epoch,
    train_single,
    training_data,
)


def pick_groups(plan, by_id, k, rng):
    """``k`` groups spread over batch sizes (round robin), random within a batch size."""
    per_bs = defaultdict(list)
    for i, g in enumerate(plan):
        per_bs[by_id[g[0]].train.batch_size].append(i)
    for v in per_bs.values():
        rng.shuffle(v)
    out, order = [], sorted(per_bs)
    while len(out) < k and any(per_bs.values()):
        for bs in order:
            if per_bs[bs] and len(out) < k:
                out.append(per_bs[bs].pop())
    return sorted(out)


def time_group(configs, X, y, steps, backend):
    """(compile seconds, CPU seconds per step, group) of a group trained as a build would."""
    with _single_thread():
        g = ModelGroup(configs)
        g.use_native = backend == "native"
        N = len(y)
        gens = [torch.Generator().manual_seed(derive_seeds(c.seed)[1]) for c in g.configs]
        perms = torch.stack([torch.randperm(N, generator=gen) for gen in gens])
        batches = [b for b in _batches(N, g.batch_size) if b[1] - b[0] == g.batch_size]
        compiled = backend == "compiled"
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        c0 = time.process_time()
        if compiled:
            g.enable_compile()
        for a, b in batches[:2]:  # compilation (if any) and warm-up
            g.train_step(*gather_batch(X, y, perms, a, b), compiled=compiled)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # compilation: CPU of this process and of the C++ compiler processes it waited for; wall as well
        # (the compiler pool's persistent workers are not in RUSAGE_CHILDREN), the larger counts
        compile_cpu = time.process_time() - c0 + (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        compile_s = max(compile_cpu, time.perf_counter() - t0) if compiled else compile_cpu
        t0 = time.process_time()
        for k in range(steps):
            a, b = batches[(2 + k) % len(batches)]
            g.train_step(*gather_batch(X, y, perms, a, b), compiled=compiled)
        return compile_s, (time.process_time() - t0) / steps, g


def time_plain(config, task, X, y, steps):
    """CPU seconds per step of the plain per-model loop: at least ``steps`` optimiser steps (over as many
    epochs as that takes: Bank has only 11 batches of 256 per epoch), less the same loop run with no steps
    (model construction, optimiser, per-epoch shuffles, the final checkpoint), after a warm-up."""
    per_epoch = steps_per_epoch(len(y), config.train.batch_size)
    if per_epoch >= steps:  # the first `steps` batches of one epoch
        epochs, cap, n_steps = 1, steps, steps
    else:  # whole epochs
        epochs = math.ceil(steps / per_epoch)
        cap, n_steps = None, epochs * per_epoch
    run = replace(config, train=replace(config.train, epochs=epochs), checkpoint_epochs=(epochs,))
    with _single_thread():
        train_single(run, task, data=(X, y), evaluate=False, max_steps_per_epoch=2)  # warm-up
        t0 = time.process_time()
        train_single(run, task, data=(X, y), evaluate=False, max_steps_per_epoch=0)
        t1 = time.process_time()
        train_single(run, task, data=(X, y), evaluate=False, max_steps_per_epoch=cap)
        t2 = time.process_time()
    return max(t2 - t1 - (t1 - t0), 0.0) / n_steps


def time_eval(checkpoint_models, sets):
    """CPU seconds to serialise and score one checkpoint (as the build does, on one thread)."""
    with _single_thread():
        t0 = time.process_time()
        for m in checkpoint_models:
            evaluate_blob(m.to_bytes(), sets)
        return (time.process_time() - t0) / len(checkpoint_models)


def bench_task(task_name, args, rng):
    task = load_task(task_name)
    preset = PRESETS["paper"]
    configs = sample_configs(task.name, task.n_features, preset.n_configs, args.seed, preset.epochs,
                             preset.checkpoint_epochs, preset.split_fractions)
    by_id = {c.config_id: c for c in configs}
    X, y = training_data(task)
    N = len(y)
    t0 = time.perf_counter()
    plan = plan_groups(configs, N, preset.max_group_size)
    plan_s = time.perf_counter() - t0
    chosen = pick_groups(plan, by_id, args.groups, rng)
    print(f"[{task_name}] {len(configs)} configs, {N} training rows, {len(plan)} groups (planned in {plan_s:.1f}s); "
          f"timing groups {chosen}", flush=True)

    rows, measured = [], {}
    for i in chosen:
        cfgs = [by_id[c] for c in plan[i]]
        backend = choose_backend(cfgs, N)
        comp_s, step_s, g = time_group(cfgs, X, y, args.steps, backend)
        spe = steps_per_epoch(N, g.batch_size)
        epoch_s = step_s * spe
        model_est = group_cost(cfgs, N) - (COMPILED_COST.compile if backend == "compiled" else 0.0)
        measured[i] = dict(bs=g.batch_size, G=g.n_models, epoch_s=epoch_s, comp_s=comp_s, backend=backend,
                           est_train=model_est, meas_train=epoch_s * preset.epochs)
        real_p = round(statistics.mean(_real_size(c)[0] for c in cfgs))
        rows.append([task_name, i, g.batch_size, g.n_models, g.depth, "/".join(map(str, g.widths[1:])), g.n_params, real_p, backend,
                     f"{comp_s:.1f}", f"{step_s * 1e3:.1f}", f"{epoch_s:.2f}", f"{epoch_s / g.n_models * 1e3:.1f}"])
        print("  " + " | ".join(map(str, rows[-1])), flush=True)
        timed = cfgs if args.plain <= 0 else rng.sample(cfgs, min(len(cfgs), max(1, args.plain // len(chosen))))
        measured[i]["plain_cfgs"] = timed
        # a few extractions for the evaluation cost
        measured[i]["models"] = [g.extract(k) for k in range(min(3, g.n_models))]

    # plain per-model loop on configurations of the same groups (all of them with --plain 0)
    n_plain = 0
    plain_by_bs = defaultdict(list)
    for m in measured.values():
        epochs = []
        for c in m["plain_cfgs"]:
            epochs.append(time_plain(c, task, X, y, args.plain_steps) * steps_per_epoch(N, c.train.batch_size))
        n_plain += len(epochs)
        plain_by_bs[m["bs"]] += epochs
        m["plain_epoch_s"] = m["G"] * statistics.mean(epochs)  # the whole group, one model after the other
    # batched vs plain, one core each, steady state, on the same configurations: the groups' models trained
    # one after the other take sum(plain_epoch_s), as one batched group each sum(epoch_s); also per batch size
    by_bs = defaultdict(lambda: [0, 0.0, 0.0])  # batch size -> [models, batched s/epoch, plain s/epoch]
    for m in measured.values():
        acc = by_bs[m["bs"]]
        acc[0] += m["G"]
        acc[1] += m["epoch_s"]
        acc[2] += m["plain_epoch_s"]
    n_models, batched_s, plain_s = (sum(v[k] for v in by_bs.values()) for k in range(3))
    batched_model_epochs_per_s, plain_model_epochs_per_s = n_models / batched_s, n_models / plain_s

    # projection of the whole paper build
    sets = evaluation_data(task)
    eval_s = time_eval([m for v in measured.values() for m in v["models"]], sets)
    calib = defaultdict(list)
    for m in measured.values():
        calib[m["bs"]].append(m["meas_train"] / m["est_train"])
    overall = statistics.mean(r for v in calib.values() for r in v)
    train_cpu = 0.0
    for g in plan:
        cfgs = [by_id[c] for c in g]
        backend = choose_backend(cfgs, N)
        est = group_cost(cfgs, N) - (COMPILED_COST.compile if backend == "compiled" else 0.0)
        bs = cfgs[0].train.batch_size
        train_cpu += est * (statistics.mean(calib[bs]) if calib.get(bs) else overall)
    comp = [m["comp_s"] for m in measured.values() if m["backend"] == "compiled"]
    n_compiled = sum(choose_backend([by_id[c] for c in g], N) == "compiled" for g in plan)
    compile_cpu = (statistics.mean(comp) if comp else 0.0) * n_compiled
    shuffle_t0 = time.process_time()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        torch.randperm(N, generator=gen)
    shuffle_cpu = (time.process_time() - shuffle_t0) / 50 * len(configs) * preset.epochs
    eval_cpu = eval_s * len(configs) * len(preset.checkpoint_epochs)
    total_cpu = train_cpu + compile_cpu + eval_cpu + shuffle_cpu
    workers = 2
    wall_h = total_cpu / workers / 3600
    # per-model loop over the whole population: mean measured epoch time per batch size x its configurations
    bs_count = defaultdict(int)
    for c in configs:
        bs_count[c.train.batch_size] += 1
    plain_cpu = preset.epochs * sum(n * statistics.mean(plain_by_bs[bs]) for bs, n in bs_count.items() if plain_by_bs.get(bs))
    return dict(
        task=task_name, rows=rows, batched=batched_model_epochs_per_s, plain=plain_model_epochs_per_s,
        by_bs={bs: tuple(v) for bs, v in sorted(by_bs.items())}, n_plain=n_plain, calib={bs: statistics.mean(v) for bs, v in calib.items()},
        train_cpu=train_cpu, compile_cpu=compile_cpu, eval_cpu=eval_cpu, shuffle_cpu=shuffle_cpu,
        total_cpu=total_cpu, wall_h=wall_h, plain_wall_h=plain_cpu / 3600, n_groups=len(plan), n_compiled=n_compiled,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["adult", "bank"])
    ap.add_argument("--groups", type=int, default=12, help="groups of the paper plan to time per task")
    ap.add_argument("--steps", type=int, default=25, help="timed optimiser steps per group")
    ap.add_argument("--plain", type=int, default=0,
                    help="configurations timed with the per-model loop per task, spread over the timed groups "
                         "(0, the default: every configuration of the timed groups)")
    ap.add_argument("--plain-steps", type=int, default=50, help="timed steps per per-model configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm-cache", action="store_true", help="reuse the inductor cache (compile times then are not a first build's)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available; timings are CPU seconds of one "
          "training thread (1 core); a build runs one worker per core (2 here)", flush=True)
    results = [bench_task(t, args, rng) for t in args.tasks]

    print("\nMeasured groups of the paper plan (compile = compilation + 2 warm-up steps, s, the larger of CPU and wall):")
    print(tabulate([r for res in results for r in res["rows"]],
                   headers=["task", "group", "batch", "G", "depth", "padded widths", "padded params/model",
                            "real params/model (mean)", "backend",
                            "compile s", "ms/step", "s/epoch", "ms/model-epoch"]))
    print("\nThroughput on the same configurations (one core each, steady state):")
    table = []
    for res in results:
        e = PRESETS["paper"].epochs
        table.append([res["task"], f"{res['batched'] * 3600 / e:.1f}", f"{res['plain'] * 3600 / e:.2f}",
                      f"{res['batched'] / res['plain']:.1f}x", res["n_plain"]])
    print(tabulate(table, headers=["task", "batched models/h (60 ep)", "per-model loop models/h (60 ep)", "ratio",
                                   "per-model configs timed"]))
    print("\nBy batch size (same configurations; the per-model loop's cost per epoch falls with the batch size, "
          "the batched trainer's hardly does):")
    table = []
    for res in results:
        for bs, (n, batched_s, plain_s) in res["by_bs"].items():
            table.append([res["task"], bs, n, f"{batched_s / n * 1e3:.1f}", f"{plain_s / n * 1e3:.1f}",
                          f"{plain_s / batched_s:.1f}x"])
    print(tabulate(table, headers=["task", "batch", "models", "batched ms/model-epoch", "per-model loop ms/model-epoch",
                                   "ratio"]))
    print("\nProjected `paper` preset build (4000 configs x 60 epochs, 12,000 checkpoints) on this machine:")
    table = []
    for res in results:
        table.append([res["task"], res["n_groups"], res["n_compiled"], f"{res['train_cpu'] / 3600:.2f}",
                      f"{res['compile_cpu'] / 3600:.2f}", f"{res['eval_cpu'] / 3600:.2f}",
                      f"{res['total_cpu'] / 3600:.2f}", f"{res['wall_h']:.2f}", f"{res['plain_wall_h']:.1f}",
                      " ".join(f"{bs}:{v:.2f}" for bs, v in sorted(res["calib"].items()))])
    print(tabulate(table, headers=["task", "groups", "compiled", "train cpu-h", "compile cpu-h", "eval cpu-h",
                                   "total cpu-h", "wall h (2 workers)", "per-model loop wall h (1 core)",
                                   "calibration by batch (measured/model)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
