#!/usr/bin/env python
"""Build a held-out population of MLP classifiers trained outside the zoo trainer (issue #13).

Half scikit-learn ``MLPClassifier``s, half plain torch training loops, with architectures and training recipes
the zoo never uses (:mod:`hubedit.zoo.outside`), imported with ``MLP.from_sklearn`` / ``MLP.from_torch`` and
checked against their sources. Writes ``OUT/outside-NNN.safetensors`` (``MLP.load`` reads them) and
``OUT/manifest.json`` (per model: trainer, optimiser, hyper-parameters, widths, activation, init, train seconds,
accuracies, majority-class accuracy; every skipped draw with its reason). ``OUT`` must be new or empty.

    python scripts/outside_population.py --task adult --n 24 --seed 1000 --out runs/outside/adult
    python scripts/outside_population.py --task bank --n 24 --seed 1000 --out runs/outside/bank

Training runs on one thread (torch, and numpy's BLAS through the environment variables set below unless
already set), so the build time is one core's.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # read when numpy / torch load their BLAS: before the imports below

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hubedit.errors import HubeditError  # noqa: E402
from hubedit.tasks import TASKS  # noqa: E402
from hubedit.zoo.outside import MANIFEST_NAME, build_outside_population  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--n", type=int, default=24, help="number of models (half scikit-learn, half torch)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    p.add_argument("--max-train-rows", type=int, default=None,
                   help="train on a fixed seeded subset of the train split (as the zoo's presets do)")
    p.add_argument("--training-scale", type=float, default=1.0, help="scale every model's training length")
    p.add_argument("--filter-split", choices=("test", "validation"), default="test",
                   help="split whose accuracy must beat the majority class's")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        pairs = build_outside_population(args.task, args.n, args.seed, args.out, max_train_rows=args.max_train_rows,
                                         training_scale=args.training_scale, filter_split=args.filter_split)
    except (HubeditError, FileExistsError) as exc:
        print(f"outside_population.py: error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    print(f"{'id':<12} {'trainer':<13} {'optimiser':<18} {'hidden':<14} {'activation':<11} {'norm':<10} "
          f"{'steps':>6} {'train s':>8} {'test acc':>9}")
    for _, r in pairs:
        print(f"{r['id']:<12} {r['trainer'].split()[0]:<13} {r['optimiser']:<18} {str(r['hidden']):<14} "
              f"{r['activation']:<11} {r['norm']:<10} {r['optimiser_steps']:>6} {r['train_seconds']:>8.2f} "
              f"{r['test_accuracy']:>9.4f}")
    accs = [r["test_accuracy"] for _, r in pairs]
    majority = pairs[0][1]["majority_class_accuracy"]["test"] if pairs else float("nan")
    if accs:
        print(f"\n{args.task}: {len(pairs)} of {args.n} models; test accuracy mean {sum(accs) / len(accs):.4f}, "
              f"min {min(accs):.4f}, max {max(accs):.4f} (majority class {majority:.4f}); built in {wall:.1f} s")
    print(f"wrote {args.out}/ ({MANIFEST_NAME} lists the skipped draws and why)")
    if len(pairs) < args.n:
        print(f"warning: {args.n - len(pairs)} slot(s) gave no model above the majority class; see {MANIFEST_NAME}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
