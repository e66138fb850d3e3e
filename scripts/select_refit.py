#!/usr/bin/env python
"""Pick an editor's refit ridge on validation models (never on test).

For each ridge, the editor (its weights unchanged, ``refit`` set to that ridge) edits a seeded subset of the
zoo's *validation* checkpoints at each target, and the mean JSD to the originals on the task's *validation*
split is recorded; "none" is the editor without a refit. The ridge with the lowest mean JSD over all targets is
written as ``chosen``; `scripts/reference_editors.py --refit-selection FILE` then packages the editor with it.
With ``--reselect`` (pruning) every ridge is also run with the editor's ``reselect`` setting (rows ``<ridge>
reselect``); ``chosen_reselect`` says whether the best row is one of those. With ``--greedy`` (data
minimisation) every ridge is also run with greedy feature selection at every count (rows ``<ridge> greedy``);
``chosen_greedy_features`` is the largest count up to which greedy selection is at least as good as the editor's own
features at every count, at the chosen ridge (0: never).

    python scripts/select_refit.py --editor runs/targets/dm-adult-pfi --zoo runs/zoos/adult-small \\
        --ridges 0.01,0.03,0.1,0.3,1 --out results/targets/refit-selection/dm-adult.json
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
from hubedit.metrics.scores import jsd  # noqa: E402
from hubedit.mlp.refit import refit  # noqa: E402
from hubedit.tasks import load_task  # noqa: E402
from hubedit.zoo import Zoo  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editor", required=True, help="a target-conditioned pruning or data-minimisation editor")
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--ridges", default="0.01,0.03,0.1,0.3,1")
    ap.add_argument("--targets", default=None, help="default: 0.1,0.2,0.5 (pruning) / every count (minimisation)")
    ap.add_argument("--models", type=int, default=16, help="validation checkpoints (seeded subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reselect", action="store_true", help="pruning: also try each ridge with reselect")
    ap.add_argument("--greedy", action="store_true", help="data minimisation: also try each ridge with greedy "
                    "feature selection (Editor greedy_features)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    editor = Editor.from_pretrained(args.editor)
    if editor.metanet.calibration_inputs is None or editor.target_range is None:
        ap.error(f"{args.editor}: a refit needs a target-conditioned editor with a calibration batch")
    requirement = editor.settings["requirement"]
    if args.targets:
        targets = [float(v) for v in args.targets.split(",")]
    elif requirement == "prune":
        targets = [0.1, 0.2, 0.5]
    else:
        targets = [float(k) for k in range(int(editor.target_range[0]), int(editor.target_range[1]) + 1)]
    ridges = [float(r) for r in args.ridges.split(",")]
    zoo = Zoo.load(args.zoo)
    task = load_task(zoo.task_name)
    val = zoo["validation"]
    pick = np.random.default_rng(args.seed).choice(len(val), min(args.models, len(val)), replace=False)
    models = [val[int(i)].to_module() for i in pick]
    x_val = task.split("validation")[0]
    calib = editor.metanet.calibration_inputs[:, : x_val.shape[1]].float()
    t0 = time.perf_counter()
    with torch.no_grad():
        reference = [m.predict_proba(x_val).double() for m in models]

    def mean_jsd(edited) -> float:
        with torch.no_grad():
            return float(np.mean([float(jsd(p, e.predict_proba(x_val).double()).mean()) for p, e in zip(reference, edited)]))

    if args.reselect and requirement != "prune":
        ap.error("--reselect is for pruning editors")
    if args.greedy and requirement != "minimise":
        ap.error("--greedy is for data-minimisation editors")
    table: dict[str, dict[str, float]] = {"none": {}, **{f"{r:g}": {} for r in ridges}}
    if args.reselect:
        table |= {f"{r:g} reselect": {} for r in ridges}
        reselecting = {r: editor.with_refit(r, reselect=True) for r in ridges}
    if args.greedy:
        table |= {f"{r:g} greedy": {} for r in ridges}
        greedy = {r: editor.with_refit(r, greedy_features=int(max(targets))) for r in ridges}
    for target in targets:
        edited = editor.edit_many(models, target=target)
        table["none"][f"{target:g}"] = mean_jsd(edited)
        for r in ridges:
            table[f"{r:g}"][f"{target:g}"] = mean_jsd([refit(m, e, calib, ridge=r) for m, e in zip(models, edited)])
            if args.reselect:
                table[f"{r:g} reselect"][f"{target:g}"] = mean_jsd(reselecting[r].edit_many(models, target=target))
            if args.greedy:
                table[f"{r:g} greedy"][f"{target:g}"] = mean_jsd(greedy[r].edit_many(models, target=target))
        print(f"target {target:g}: " + ", ".join(f"{k} {v[f'{target:g}']:.5f}" for k, v in table.items()), flush=True)
    means = {k: float(np.mean(list(v.values()))) for k, v in table.items()}
    chosen = min((k for k in means if k != "none" and not k.endswith(" greedy")), key=means.get)
    greedy_features = 0
    if args.greedy:  # the prefix of counts where greedy selection wins, at the chosen ridge
        for target in sorted(targets):
            if table[f"{chosen} greedy"][f"{target:g}"] > table[chosen][f"{target:g}"]:
                break
            greedy_features = int(target)
    result = {"editor": args.editor, "zoo": args.zoo, "n_models": len(models), "targets": targets,
              "mean_validation_jsd": means, "per_target": table, "chosen": float(chosen.split()[0]),
              "chosen_reselect": chosen.endswith("reselect"), "chosen_greedy_features": greedy_features,
              "seconds": time.perf_counter() - t0,
              "command": "python scripts/" + Path(__file__).name + " " + shlex.join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"chosen ridge {chosen}, greedy_features {greedy_features} (mean validation JSD {means[chosen]:.5f}; no refit {means['none']:.5f}); wrote {out}")


if __name__ == "__main__":
    main()
