#!/usr/bin/env python
"""EPO against linear scalarisation on one setting (paper A.8): fronts, hypervolumes, preferences needed.

For each preference ``(1, rho)`` of ``--rhos`` an editor is trained twice on the same zoo, with the same seed,
steps and size: once by EPO search (``--scalarisation epo``: training converges to the Pareto optimal point on
the ray ``JSD = rho * R``) and once by linear scalarisation (``--scalarisation linear``: loss ``JSD + rho * R``
up to a constant factor, i.e. a per-lambda editor at lambda = rho). Both sets of editors are then evaluated by
the protocol (``hubedit.evaluation.run_protocol``, no baselines): each method's front is chosen on the zoo's
validation models and reported on its test models, with hypervolumes on every front of the requirement (for
fairness: EOD against JSD, against label disagreement, against error).

"How many preference vectors each needs": the hypervolume of each method's front made of its first ``n``
preferences, ``n = 1 .. len(rhos)``, in the order given (spread first: pass the coarse grid first), and the
smallest ``n`` reaching 95 % of the larger of the two methods' full hypervolumes.

Editors are saved under ``--editors/<method>-rho<rho>`` (default ``runs/epo-vs-linear/<name of --out>``) and
reused when the script is run again (resume); the report, plots and numbers go to ``--out``.

    python scripts/epo_vs_linear.py --zoo runs/zoos/adult-small --requirement fairness \\
        --rhos 0.3,0.03,3,0.1,1 --out results/epo-vs-linear/fairness-adult
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hubedit import Editor  # noqa: E402
from hubedit.evaluation.protocol import FRONT_AXES, run_protocol  # noqa: E402
from hubedit.metrics.pareto import hypervolume, select_on_validation, to_markdown  # noqa: E402
from hubedit.train import train_editor  # noqa: E402
from hubedit.zoo import Zoo  # noqa: E402

METHODS = {"EPO": "epo", "Linear scalarisation": "linear"}


def nested_hypervolumes(method, order: list[int], axis: str, ref, x_scale: float) -> list[float]:
    """Hypervolume of the front chosen on validation among the first n runs of ``order``, n = 1..len(order)."""
    val, test = method.points(axis, "validation"), method.points(axis, "test")
    out = []
    for n in range(1, len(order) + 1):
        idx = np.asarray(order[:n])
        ok = idx[np.isfinite(val[idx]).all(1) & np.isfinite(test[idx]).all(1)]
        out.append(hypervolume(select_on_validation(val[ok], test[ok]), ref=ref, x_scale=x_scale) if len(ok) else 0.0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--requirement", default="fairness")
    ap.add_argument("--rhos", default="0.3,0.03,3,0.1,1", help="preference ratios r_req / r_jsd, spread first")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--models-per-step", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-models", type=int, default=24, help="validation / test models of the protocol")
    ap.add_argument("--methods", default="EPO,Linear scalarisation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-only", action="store_true", help="train (or find) the editors of --methods and stop")
    ap.add_argument("--editors", default=None, help="where the editors are trained / found (default "
                    "runs/epo-vs-linear/<name of --out>)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rhos = [float(v) for v in args.rhos.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or len(set(rhos)) != len(rhos) or not all(r > 0 for r in rhos):
        ap.error(f"methods must be among {list(METHODS)} and rhos distinct and positive; got {methods}, {rhos}")
    out = Path(args.out)
    editor_dir = Path(args.editors) if args.editors else Path("runs/epo-vs-linear") / out.name
    zoo = Zoo.load(args.zoo)
    editors: dict[str, list[Editor]] = {}
    train_seconds: dict[str, list[float]] = {}
    for method in methods:
        editors[method], train_seconds[method] = [], []
        for rho in rhos:
            folder = editor_dir / f"{METHODS[method]}-rho{rho:g}"
            if not (folder / "config.json").is_file():
                print(f"training {method} rho={rho:g} -> {folder}", flush=True)
                train_editor(zoo, args.requirement, preference=(1.0, rho), scalarisation=METHODS[method], out=folder,
                             steps=args.steps, hidden=args.hidden, layers=args.layers, lr=args.lr,
                             models_per_step=args.models_per_step, seed=args.seed, eval_every=100, progress=False)
            ed = Editor.from_pretrained(folder)
            editors[method].append(ed)
            train_seconds[method].append(float(ed.settings["training"].get("seconds", float("nan"))))
    if args.train_only:
        return
    t0 = time.perf_counter()
    result = run_protocol(zoo, args.requirement, editors, baselines=[], max_models=args.max_models, seed=args.seed,
                          progress=False)
    seconds = time.perf_counter() - t0
    result.save(out)
    order = list(range(len(rhos)))
    axes = result.axes
    table, rows = {}, []
    for axis in axes:
        ref = result.reference(axis)
        nested = {m: nested_hypervolumes(result.methods[m], order, axis, ref, result.x_scale) for m in methods}
        best = max(v[-1] for v in nested.values())
        needed = {m: next((n + 1 for n, hv in enumerate(v) if hv >= 0.95 * best), None) for m, v in nested.items()}
        table[axis] = {"hypervolume": {m: result.hypervolume(m, axis) for m in methods},
                       "hypervolume_without_degenerate": {m: result.hypervolume(m, axis, exclude_degenerate=True)
                                                          for m in methods},
                       "nested": nested, "preferences_for_95pct": needed}
        for m in methods:
            rows.append([FRONT_AXES[axis][0], m, f"{table[axis]['hypervolume'][m]:.4f}",
                         f"{table[axis]['hypervolume_without_degenerate'][m]:.4f}",
                         " / ".join(f"{v:.4f}" for v in nested[m]), str(needed[m] or f"> {len(rhos)}")])
    points = []
    for m in methods:
        mr = result.methods[m]
        for k, rho in enumerate(rhos):
            points.append([m, f"{rho:g}", f"{mr.test[k, 0]:.4f}", f"{mr.test[k, 1]:.5f}", f"{mr.test_accuracy[k]:.4f}",
                           f"{train_seconds[m][k]:.0f}"])
    import pandas as pd

    command = "python scripts/" + Path(__file__).name + " " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [f"# EPO against linear scalarisation: {args.requirement}, zoo `{args.zoo}`", "", f"Command: `{command}`", "",
             f"Editors: hidden {args.hidden}, {args.layers} layers, {args.models_per_step} models per step, "
             f"{args.steps} steps, lr {args.lr:g}, seed {args.seed}; one editor per preference (1, rho) and method. "
             f"Protocol: {args.max_models} validation / {args.max_models} test models, fronts chosen on validation, "
             f"reported on test; evaluation {seconds:.0f} s.", "",
             "## Hypervolumes", "",
             "'nested': the hypervolume of the front of the first n preferences (in the order of `--rhos`), n = 1.."
             f"{len(rhos)}; 'preferences for 95 %': the smallest n whose front reaches 95 % of the larger full "
             "hypervolume of the two methods.", "",
             to_markdown(pd.DataFrame(rows, columns=["front", "method", "HV", "HV w/o degenerate",
                                                     "nested HV (n = 1..)", "preferences for 95 %"])), "",
             "## Every editor (test points)", "",
             to_markdown(pd.DataFrame(points, columns=["method", "rho", "metric", "JSD", "accuracy", "train s"]),
                         floatfmt=".5f"), "",
             "Plots: `pareto*.png`; every number: `results.json` (protocol) and `summary.json`."]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"command": command, "rhos": rhos, "methods": methods,
                                                   "train_seconds": train_seconds, "fronts": table,
                                                   "evaluation_seconds": seconds}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
