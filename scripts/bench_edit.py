#!/usr/bin/env python
"""Benchmark: seconds to edit one zoo-like MLP, and models edited per second in batches.

Editing = graph build (``mlps_to_batch``) + metanetwork forward under ``torch.no_grad`` (no mask heads) +
write-back to ``MLP`` modules (``batch_to_mlps``), i.e. ``GraphMetanetwork.edit``.

Models are drawn from the zoo distribution of hubedit/DESIGN.md (Adult: 14 inputs, 2 classes; depth 1-4;
non-decreasing widths from {8, 16, 32, 64}; 0-2 skips into each hidden layer; any activation/norm).
"One median-size model" is the sampled config with the median number of weights; "mixed" is a batch of
sampled architectures, "same" a batch of median-size models.

Variants are timed in interleaved rounds (each round times every variant once), so that load from other
processes on a shared machine hits all of them alike; the table gives medians over rounds.
Paths: "kernel" is the default inference path, with each layer's per-edge work in the C++ kernel of
``hubedit.metanet.edge_kernel`` ("fused" where it is not built); "fused" is the chunked torch loop it replaced
(``--torch-loop``); "unfused" the plain autograd-path forward run without gradients, the implementation before
the chunked path (``--unfused``): before / after comparisons in one run.

    python scripts/bench_edit.py                       # default metanetwork (hidden 64, edge 32, 4 layers)
    python scripts/bench_edit.py --torch-loop --threads 1
    python scripts/bench_edit.py --edge-hidden 32 64 --activation relu silu --unfused
    python scripts/bench_edit.py --editor model_cards/prune-edit-adult --graph-torch   # a reference editor, with and
                                                                # without the C++ calibration and refit kernels
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import random
import statistics
import time
from collections.abc import Callable

import torch

from hubedit.graph import batch_to_mlps, mlps_to_batch, native_kernels
from hubedit.metanet import GraphMetanetwork, edge_kernel
from hubedit.mlp import ACTIVATIONS, MLP, NORMS, MLPConfig


def zoo_config(rng: random.Random, in_features: int = 14, out_features: int = 2) -> MLPConfig:
    """One architecture from the zoo distribution of hubedit/DESIGN.md."""
    depth = rng.choice([1, 2, 3, 4])
    hidden = tuple(sorted(rng.choice([8, 16, 32, 64]) for _ in range(depth)))
    skips = []
    for dst in range(2, depth + 1):
        candidates = list(range(0, dst - 1))
        skips += [(s, dst) for s in rng.sample(candidates, min(rng.choice([0, 1, 2]), len(candidates)))]
    return MLPConfig(
        in_features,
        hidden,
        out_features,
        rng.choice(ACTIVATIONS),
        rng.choice(NORMS),
        rng.choice([0.0, 0.1, 0.2]),
        tuple(skips),
    )


def n_weights(c: MLPConfig) -> int:
    w = c.widths
    return sum(w[i] * w[i + 1] for i in range(len(w) - 1)) + sum(w[s] * w[d] for s, d in c.skips)


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def make_editor(net: GraphMetanetwork, path: str) -> Callable[[list[MLP]], list[MLP]]:
    if path in ("kernel", "fused"):
        def edit(models: list[MLP]) -> list[MLP]:
            for layer in net.layers:
                layer.edge_kernel = path == "kernel"
            return net.edit(models)

        return edit

    @torch.no_grad()
    def edit_unfused(models: list[MLP]) -> list[MLP]:
        batch = mlps_to_batch(models)
        out = net._forward_autograd(batch, False)  # the plain path, without autograd
        return batch_to_mlps(batch, out.edge_values, out.node_values)

    return edit_unfused


def _without_graph_kernels(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the C++ saliency and refit kernels off (their torch formulations)."""
    native_kernels.USE = False
    try:
        return fn(*args, **kwargs)
    finally:
        native_kernels.USE = True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--edge-hidden", type=int, nargs="*", default=None, help="edge widths to compare (default: the default)")
    ap.add_argument("--activation", nargs="*", default=None, help="metanetwork activations to compare (default: the default)")
    ap.add_argument("--unfused", action="store_true", help="also time the plain (pre-optimisation) forward path")
    ap.add_argument("--torch-loop", action="store_true", help="also time the chunked torch loop the edge kernel replaced")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30, help="timing rounds for the single-model figures")
    ap.add_argument("--batch-rounds", type=int, default=10, help="timing rounds for the batched figures")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--editor", action="append", default=[], metavar="FOLDER",
                    help="also time Editor.edit / edit_many of this saved editor (a target-conditioned one at --target); "
                         "its calibration passes, masks and records included")
    ap.add_argument("--graph-torch", action="store_true",
                    help="also time each --editor with its calibration features and refit in their torch formulations "
                         "(hubedit.graph.native_kernels.USE = False): the before of the graph kernels, in the same run")
    ap.add_argument("--target", type=float, default=0.2, help="target of target-conditioned --editor runs")
    ap.add_argument("--dm-target", type=float, default=None,
                    help="kept features of target-conditioned data-minimisation --editor runs (default: mid-range)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    pool = [zoo_config(rng) for _ in range(2001)]
    median_cfg = sorted(pool, key=n_weights)[len(pool) // 2]
    single = MLP(median_cfg).eval()
    mixed = [MLP(c).eval() for c in pool[: args.batch_size]]
    same = [MLP(median_cfg).eval() for _ in range(args.batch_size)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"median model: {median_cfg.to_json()} ({n_weights(median_cfg)} weights, {sum(median_cfg.widths)} neurons)")
    print(f"mixed batch: {args.batch_size} sampled architectures, mean "
          f"{sum(n_weights(m.config) for m in mixed) / len(mixed):.0f} weights per model")

    variants: dict[str, tuple[GraphMetanetwork, str]] = {}
    for de in args.edge_hidden or [None]:
        for act in args.activation or [None]:
            kw = {k: v for k, v in (("edge_hidden", de), ("activation", act)) if v is not None}
            net = GraphMetanetwork(args.hidden, args.layers, max_in=14, max_out=2, **kw).eval()
            name = f"{args.hidden:>6} {net.config['edge_hidden']:>4} {args.layers:>6} {net.config['activation']:>10}"
            width_ok = edge_kernel.supports(torch.empty(1, net.config["edge_hidden"]), net.config["activation"])
            variants[name + f" {'kernel' if width_ok else 'fused':>7}"] = (net, "kernel")
            if args.torch_loop and width_ok:
                variants[name + f" {'fused':>7}"] = (net, "fused")
            if args.unfused:
                variants[name + f" {'unfused':>7}"] = (net, "unfused")

    single_fns, same_fns, mixed_fns, parts = {}, {}, {}, {}
    editors = {}
    for folder in args.editor:
        from hubedit import Editor

        ed = Editor.from_pretrained(folder)
        kw = {}
        if ed.target_range is not None:  # --target for pruning; the middle of the range for a feature count
            lo, hi = ed.target_range
            kw["target"] = (args.target if lo <= args.target <= hi else
                            args.dm_target if args.dm_target is not None else float(round((lo + hi) / 2)))
        extra = ", ".join(f"{k}={v}" for k, v in ed.metanet.config.items() if k in ("calibration", "calibration_rounds"))
        extra += "".join(f", {k}={ed.settings[k]}" for k in ("refit", "reselect", "greedy_features") if ed.settings.get(k))
        extra += f", target={kw['target']:g}" if kw else ""
        name = f"Editor {Path(folder).name} ({extra.lstrip(', ') or 'no calibration'})"
        editors[name] = lambda models, ed=ed, kw=kw: ed.edit_many(models, batch_size=args.batch_size, **kw)
        if args.graph_torch:
            editors[name.replace("Editor ", "Editor (torch calibration + refit) ", 1)] = (
                lambda models, ed=ed, kw=kw: _without_graph_kernels(ed.edit_many, models, batch_size=args.batch_size, **kw))
    edits = {name: make_editor(net, path) for name, (net, path) in variants.items()} | editors
    for name, edit in edits.items():
        single_fns[name] = lambda edit=edit: edit([single])
        same_fns[name] = lambda edit=edit: edit(same)
        mixed_fns[name] = lambda edit=edit: edit(mixed)
    with torch.no_grad():
        t_single = interleaved_medians(single_fns, args.rounds)
        t_same = interleaved_medians(same_fns, args.batch_rounds, warmup=1)
        t_mixed = interleaved_medians(mixed_fns, args.batch_rounds, warmup=1)
        # where the time of the mixed batch goes, for the first variant
        net, _ = next(iter(variants.values()))
        for layer in net.layers:
            layer.edge_kernel = True
        bm = mlps_to_batch(mixed)
        om = net(bm, with_logits=False)
        parts = interleaved_medians(
            {
                "build": lambda: mlps_to_batch(mixed),
                "forward": lambda: net(bm, with_logits=False),
                "write-back": lambda: batch_to_mlps(bm, om.edge_values, om.node_values),
            },
            args.batch_rounds,
            warmup=1,
        )

    print()
    head = (f"{'hidden':>6} {'edge':>4} {'layers':>6} {'activation':>10} {'path':>7} | {'1 model (s)':>11} | "
            f"{'models/s mixed':>14} {'models/s same':>13}   (batch {args.batch_size})")
    print(head)
    print("-" * len(head))
    for name in [*variants, *editors]:
        print(f"{name} | {t_single[name]:>11.4f} | {args.batch_size / t_mixed[name]:>14.0f} "
              f"{args.batch_size / t_same[name]:>13.0f}")
    first = next(iter(variants))
    print(f"\nmixed batch, {first.split()[1]}-wide edges, {first.split()[-1]}: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts.items()))
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print("\n'1 model' = median seconds of editor.edit(model) (build + forward + write-back); 'models/s' = batch "
          "size / median seconds of editor.edit(batch). Targets (issue #13): < 0.010 s and > 1000 models/s.")


if __name__ == "__main__":
    main()
