#!/usr/bin/env python
"""Check: a reference editor edits the same with the C++ calibration and refit kernels as with their torch
formulations (``hubedit.graph.native_kernels.USE``), on a zoo's test models, and how long each takes.

For each target it edits the final checkpoints of the zoo's test split both ways (``Editor.edit_many``) and
reports: the share of weights whose kept / pruned state differs, the largest weight difference, the mean JSD of
the edited models to their originals on the task's test split either way, and seconds per model (the batch
edited once each way, alternating, median of ``--rounds``).

    python scripts/check_graph_kernels.py runs/reproduce/small/zoos/adult-small model_cards/prune-edit-adult
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hubedit import Editor
from hubedit.graph import native_kernels
from hubedit.metrics.scores import jsd_from_logits
from hubedit.zoo.dataset import Zoo


def edit(editor: Editor, models, target: float, kernels: bool):
    native_kernels.USE = kernels
    try:
        start = time.perf_counter()
        out = editor.edit_many(models, target=target)
        return out, time.perf_counter() - start
    finally:
        native_kernels.USE = True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo")
    ap.add_argument("editor")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    ap.add_argument("--models", type=int, default=64, help="test models (final checkpoints) to edit")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if not native_kernels.available():
        raise SystemExit("hubedit: error: the graph kernels are not built here (no C++ compiler?)")
    zoo = Zoo.open(args.zoo)
    models = list(zoo.splits["test"].stage("final").modules())[: args.models]
    x, _, _ = zoo.task.split("test")
    editor = Editor.from_pretrained(args.editor)
    print(f"{args.editor} on {len(models)} final test models of {args.zoo}; JSD on the task's test split "
          f"({x.shape[0]} points); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'target':>6} | {'mask differs':>12} {'max |dw|':>9} | {'JSD kernels':>11} {'JSD torch':>10} | "
          f"{'ms/model kernels':>16} {'ms/model torch':>14}")
    with torch.no_grad():
        originals = [m(x) for m in models]
        for target in args.targets:
            fast, _ = edit(editor, models, target, True)
            slow, _ = edit(editor, models, target, False)
            differ = total = 0
            max_dw = 0.0
            jsd = {True: [], False: []}
            for orig, a, b, ref in zip(models, fast, slow, originals):
                for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
                    if name.endswith("weight") and wa.dim() == 2:
                        differ += int(((wa != 0) != (wb != 0)).sum())
                        total += wa.numel()
                    max_dw = max(max_dw, float((wa - wb).abs().max()))
                jsd[True].append(float(jsd_from_logits(ref, a(x)).mean()))
                jsd[False].append(float(jsd_from_logits(ref, b(x)).mean()))
            times = {True: [], False: []}
            for _ in range(args.rounds):
                for kernels in (True, False):
                    times[kernels].append(edit(editor, models, target, kernels)[1])
            ms = {k: 1e3 * statistics.median(v) / len(models) for k, v in times.items()}
            print(f"{target:>6g} | {differ / total:>12.5f} {max_dw:>9.2e} | {statistics.mean(jsd[True]):>11.6f} "
                  f"{statistics.mean(jsd[False]):>10.6f} | {ms[True]:>16.2f} {ms[False]:>14.2f}")


if __name__ == "__main__":
    main()
