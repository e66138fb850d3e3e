#!/usr/bin/env python
"""Target-conditioned editors against the per-model baselines at the same per-model requirement level.

A target-conditioned editor (``hubedit train --target-range LOW,HIGH``) meets the level it is asked for exactly
on every model: for pruning it keeps ``round(target * n_weights)`` weights (the baselines' own count,
``hubedit.baselines.n_kept``), for data minimisation ``target`` features. So each baseline can be run at
*exactly* the editor's level on the same model, and the comparison needs no interpolation:

* pruning: magnitude, SNIP (iterative, the protocol's 5 rounds on the editing split) and Lottery Ticket (the
  protocol's 3 rounds x 5 epochs of masked retraining on the editing split), at each target;
* data minimisation: FS (permutation importance on the editing split, masking) and FS & Retrain (100 epochs of
  distillation, the paper's), at each kept-feature count.

Models: a seeded subset of the zoo's test split (the protocol's subset) and, with ``--outside``, a population
of MLPs trained outside the zoo (``scripts/outside_population.py``). Scores on the task's test split: mean JSD
to the original model's probabilities, accuracy, and the share of models where the editor's JSD is lower.
Baseline results are cached per model in ``--out/cache`` so that an interrupted run resumes.

    python scripts/target_editors.py --editor runs/targets/prune-adult-plain --zoo runs/zoos/adult-small \\
        --targets 0.1,0.2,0.5 --outside runs/outside/adult --out results/targets/prune-adult
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hubedit import Editor, baselines  # noqa: E402
from hubedit.evaluation.protocol import ProtocolConfig, _subset, kept_features, nonzero_weights  # noqa: E402
from hubedit.metrics.pareto import to_markdown  # noqa: E402
from hubedit.metrics.scores import jsd  # noqa: E402
from hubedit.mlp import MLP  # noqa: E402
from hubedit.mlp.refit import refit  # noqa: E402
from hubedit.tasks import load_task  # noqa: E402
from hubedit.zoo import Zoo  # noqa: E402
from hubedit.zoo.outside import load_outside_population  # noqa: E402

# "SNIP (own labels)": iterative SNIP against the model's own predicted labels, the rule whose outcome an editor
# trained with --calibration-rounds reads as a feature (on its 256 calibration points; this baseline uses the
# whole editing split) -- so that such an editor is also compared with what it was given
PRUNE_BASELINES = ("Magnitude", "SNIP", "Lottery Ticket", "SNIP (own labels)")
DM_BASELINES = ("FS", "FS & Retrain")
# With an editor that refits (``refit`` in its config), the same closed-form refit (its ridge, its calibration
# batch) after a per-model rule, without any metanetwork: what the metanetwork adds on top of the refit.
PRUNE_REFIT_BASELINES = ("Magnitude + refit", "SNIP (own labels) + refit")
DM_REFIT_BASELINES = ("FS + refit",)
# With an editor that also reselects (``reselect``), the same reselecting refit after those rules.
PRUNE_RESELECT_BASELINES = ("Magnitude + refit + reselect", "SNIP (own labels) + refit + reselect")


def load_population(folder: Path) -> list[tuple[str, MLP]]:
    """An outside population (``scripts/outside_population.py``), each file checked against its checksum."""
    return [(f"outside-{record['id']}", model) for model, record in load_outside_population(folder)]


def run_baseline(name: str, model: MLP, level: float, task, cfg: ProtocolConfig, importance,
                 refit_with: tuple[torch.Tensor, float] | None = None) -> MLP:
    Xe, ye, _ = task.split("editing")
    if name.endswith(" + refit + reselect"):
        calib, ridge = refit_with
        pruned = run_baseline(name[: -len(" + refit + reselect")], model, level, task, cfg, importance)
        return reselecting_refit(model, pruned, calib, ridge)
    if name.endswith(" + refit"):
        calib, ridge = refit_with
        return refit(model, run_baseline(name[: -len(" + refit")], model, level, task, cfg, importance), calib, ridge=ridge)
    if name == "Magnitude":
        return baselines.magnitude_prune(model, level)
    if name == "SNIP":
        return baselines.snip_prune(model, level, Xe, ye, iterations=cfg.snip_iterations, seed=cfg.seed)
    if name == "SNIP (own labels)":
        with torch.no_grad():
            own = model.predict_proba(Xe).argmax(-1)
        return baselines.snip_prune(model, level, Xe, own, iterations=cfg.snip_iterations, seed=cfg.seed)
    if name == "Lottery Ticket":
        return baselines.lottery_ticket_prune(model, level, Xe, ye, iterations=cfg.lottery_iterations,
                                              epochs_per_iteration=cfg.lottery_epochs, seed=cfg.seed)
    if name == "FS":
        return baselines.feature_selection(model, None, None, int(level), importance=importance)[0]
    if name == "FS & Retrain":
        return baselines.fs_retrain(model, Xe, int(level), importance=importance, epochs=cfg.fs_retrain_epochs,
                                    seed=cfg.seed)[0]
    raise ValueError(name)


def reselecting_refit(original: MLP, pruned: MLP, calib: torch.Tensor, ridge: float) -> MLP:
    """``pruned`` refit to ``original`` as an editor with ``reselect`` refits its own mask
    (:func:`hubedit.editor.editing.refit_edit`)."""
    from hubedit.editor.editing import folded_values, refit_edit
    from hubedit.graph import batch_to_mlps, mlps_to_batch
    from hubedit.requirements import Edit

    batch, edited = mlps_to_batch([original]), mlps_to_batch([pruned])
    values = edited.edge_attr.reshape(-1)
    edit = Edit(values, edited.x, edge_mask=(values != 0).to(values.dtype))
    with torch.no_grad():
        ev, nv = folded_values(batch, refit_edit(batch, edit, calib, ridge, reselect=True))
    return batch_to_mlps(batch, ev, nv)[0]


def scores(original: MLP, edited: MLP, X, y) -> tuple[float, float]:
    with torch.no_grad():
        p, q = original.predict_proba(X).double(), edited.predict_proba(X).double()
    return float(jsd(p, q).mean()), float((q.argmax(-1) == y).double().mean())


def level_of(requirement: str, original: MLP, edited: MLP) -> float:
    if requirement == "prune":
        return nonzero_weights(edited) / original.n_weights
    return float(kept_features(edited))


def evaluate_population(editor: Editor, label: str, models: list[tuple[str, MLP]], targets, task, cfg, cache_dir: Path,
                        log) -> list[dict]:
    requirement = editor.settings["requirement"]
    names = PRUNE_BASELINES if requirement == "prune" else DM_BASELINES
    refit_with = None
    if editor.settings.get("refit") is not None:
        names = names + (PRUNE_REFIT_BASELINES if requirement == "prune" else DM_REFIT_BASELINES)
        if editor.settings.get("reselect"):
            names = names + PRUNE_RESELECT_BASELINES
        n_in = task.split("editing")[0].shape[1]
        refit_with = (editor.metanet.calibration_inputs[:, :n_in].float(), editor.settings["refit"])
    X, y, _ = task.split("test")
    Xe, ye, _ = task.split("editing")
    rows = []
    for target in targets:
        t0 = time.perf_counter()
        edited = editor.edit_many([m for _, m in models], target=target)
        editor_seconds = (time.perf_counter() - t0) / len(models)
        per_model = []
        for (name, model), ed in zip(models, edited):
            e_jsd, e_acc = scores(model, ed, X, y)
            with torch.no_grad():
                orig_acc = float((model.predict_proba(X).argmax(-1) == y).double().mean())
            rec = {"model": name, "level": level_of(requirement, model, ed), "editor_jsd": e_jsd,
                   "editor_accuracy": e_acc, "original_accuracy": orig_acc}
            cache = cache_dir / f"{label}-{name}-{target:g}.json".replace("/", "_").replace(" ", "_")
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
            importance = None
            for b in names:
                key = f"{b} (ridge {refit_with[1]:g})" if " + refit" in b else b  # cached per ridge
                if key not in cached:
                    if requirement == "minimise" and importance is None:
                        importance = baselines.permutation_importance(model, Xe, ye, n_repeats=cfg.pfi_repeats,
                                                                      seed=cfg.seed)
                    t1 = time.perf_counter()
                    base = run_baseline(b, model, target, task, cfg, importance, refit_with)
                    bj, ba = scores(model, base, X, y)
                    cached[key] = {"jsd": bj, "accuracy": ba, "level": level_of(requirement, model, base),
                                   "seconds": time.perf_counter() - t1}
                    cache.write_text(json.dumps(cached))
                rec[b] = cached[key]
            per_model.append(rec)
        row = {"population": label, "target": target, "n_models": len(per_model), "editor_seconds_per_model": editor_seconds,
               "editor_jsd": float(np.mean([r["editor_jsd"] for r in per_model])),
               "editor_jsd_sd": float(np.std([r["editor_jsd"] for r in per_model], ddof=1)) if len(per_model) > 1 else 0.0,
               "editor_accuracy": float(np.mean([r["editor_accuracy"] for r in per_model])),
               "original_accuracy": float(np.mean([r["original_accuracy"] for r in per_model])),
               "level": float(np.mean([r["level"] for r in per_model])), "models": per_model}
        for b in names:
            bj = np.asarray([r[b]["jsd"] for r in per_model])
            ej = np.asarray([r["editor_jsd"] for r in per_model])
            row[b] = {"jsd": float(bj.mean()), "jsd_sd": float(bj.std(ddof=1)) if len(bj) > 1 else 0.0,
                      "accuracy": float(np.mean([r[b]["accuracy"] for r in per_model])),
                      "level": float(np.mean([r[b]["level"] for r in per_model])),
                      "editor_over_baseline": float(ej.mean() / bj.mean()) if bj.mean() > 0 else math.nan,
                      "editor_better_share": float((ej < bj).mean()),
                      "seconds_per_model": float(np.mean([r[b]["seconds"] for r in per_model]))}
        rows.append(row)
        log(f"{label} target={target:g}: editor JSD {row['editor_jsd']:.5f}; "
            + "; ".join(f"{b} {row[b]['jsd']:.5f} (ratio {row[b]['editor_over_baseline']:.3f})" for b in names))
    return rows


def markdown(results: dict) -> str:
    requirement = results["requirement"]
    first = results["populations"][0]["rows"][0]
    names = [b for b in PRUNE_BASELINES + PRUNE_REFIT_BASELINES + PRUNE_RESELECT_BASELINES + DM_BASELINES
             + DM_REFIT_BASELINES if b in first]
    level = "fraction of weights kept" if requirement == "prune" else "kept features"
    lines = [f"# {results['editor_name']}: target-conditioned editor vs per-model baselines ({results['task']})", "",
             f"Command: `{results['command']}`", "",
             f"Editor: `{results['editor']}` (target range {results['target_range']}, best step "
             f"{results['best_step']}). Scores on the task's test split; mean over models (sd across models). "
             "Each baseline runs at the editor's exact per-model level. 'ratio' = editor JSD / baseline JSD "
             "(< 1: the editor is better); 'wins' = share of models where the editor's JSD is lower.", ""]
    for pop in results["populations"]:
        rows = []
        for r in pop["rows"]:
            row = [f"{r['target']:g}", f"{r['level']:.4g}", f"{r['editor_jsd']:.5f} ± {r['editor_jsd_sd']:.5f}",
                   f"{r['editor_accuracy']:.4f}"]
            for b in names:
                row += [f"{r[b]['jsd']:.5f}", f"{r[b]['editor_over_baseline']:.3f}", f"{r[b]['editor_better_share']:.2f}"]
            rows.append(row)
        header = ["target", level, "editor JSD", "editor acc."]
        for b in names:
            header += [f"{b} JSD", "ratio", "wins"]
        import pandas as pd

        lines += [f"## {pop['label']} ({pop['rows'][0]['n_models']} models, original accuracy "
                  f"{pop['rows'][0]['original_accuracy']:.4f})", "", to_markdown(pd.DataFrame(rows, columns=header)), ""]
        acc = [[f"{r['target']:g}", f"{r['editor_accuracy']:.4f}"] + [f"{r[b]['accuracy']:.4f}" for b in names]
               for r in pop["rows"]]
        lines += ["Accuracy:", "", to_markdown(pd.DataFrame(acc, columns=["target", "editor", *names])), ""]
        verdicts = []
        for r in pop["rows"]:
            for b in names:
                ratio = r[b]["editor_over_baseline"]
                verdicts.append(f"- target {r['target']:g}: editor {'at most' if ratio <= 1 else 'ABOVE'} {b} "
                                f"({ratio:.3f}x)")
        lines += ["Per target and baseline:", "", *verdicts, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editor", required=True, help="a target-conditioned editor (folder or repo id)")
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--targets", default=None, help="comma-separated targets (default: 0.1,0.2,0.5 / every count)")
    ap.add_argument("--max-models", type=int, default=24, help="test models of the zoo (the protocol's seeded subset)")
    ap.add_argument("--outside", default=None, help="folder of a population built by scripts/outside_population.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=None, help="baseline cache folder (default: runs/targets/baseline-cache/TASK); "
                    "baseline results depend on the model and level only, so editors of a task share it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--untrained", action="store_true",
                    help="ablation: the editor's configuration (calibration, priors, refit) with freshly initialised "
                         "weights (seed 0), i.e. without what its metanetwork learned")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    editor = Editor.from_pretrained(args.editor)
    if args.untrained:
        settings = {**editor.settings, "training": {}, "validation_front": []}
        torch.manual_seed(0)
        editor = Editor(**settings).eval()
    if editor.target_range is None:
        ap.error(f"{args.editor} is not a target-conditioned editor")
    requirement = editor.settings["requirement"]
    zoo = Zoo.load(args.zoo)
    task = load_task(zoo.task_name)
    lo, hi = editor.target_range
    if args.targets:
        targets = [float(v) for v in args.targets.split(",")]
    elif requirement == "prune":
        targets = [0.1, 0.2, 0.5]
    else:
        targets = [float(k) for k in range(int(lo), int(hi) + 1)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache or HERE.parent / "runs" / "targets" / "baseline-cache" / zoo.task_name)
    cache.mkdir(parents=True, exist_ok=True)
    cfg = ProtocolConfig()
    test = zoo["test"]
    populations = [("zoo test models", [(f"test-{i}", test[i].to_module())
                                        for i in _subset(test, args.max_models, cfg.subset_seed)])]
    if args.outside:
        populations.append(("outside-zoo models", load_population(Path(args.outside))))
    log_lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    results = {"editor": args.editor, "editor_name": Path(args.editor).name + (" (untrained)" if args.untrained else ""), "task": zoo.task_name,
               "requirement": requirement, "target_range": list(editor.target_range),
               "best_step": editor.settings["training"].get("best_step"),
               "command": "python scripts/" + Path(__file__).name + " " + shlex.join(sys.argv[1:] if argv is None else argv),
               "populations": []}
    for label, models in populations:
        rows = evaluate_population(editor, label, models, targets, task, cfg, cache, log)
        results["populations"].append({"label": label, "rows": rows})
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "REPORT.md").write_text(markdown(results))
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
