"""``hubedit train`` and ``hubedit edit``."""

from __future__ import annotations

import argparse
import json


def _lam_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.01,10), got {text!r}") from exc
    return lo, hi


def _preference(text: str) -> tuple[float, ...]:
    from ..errors import ConfigError
    from ..train.scalarisation import check_preference, parse_preference

    try:
        return tuple(float(v) for v in check_preference(parse_preference(text), 2))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(sub: argparse._SubParsersAction) -> None:
    from ..requirements import REGISTRY

    t = sub.add_parser(
        "train",
        help="train an editor for a requirement on a zoo (accelerate; resumable)",
        description="Train a graph-metanetwork editor. Runs unchanged under `accelerate launch --num_processes N`.",
    )
    t.add_argument("--zoo", required=True, help="zoo folder or Hub dataset repo id")
    t.add_argument("--zoo-revision", default=None, help="branch, tag or commit of a Hub zoo")
    t.add_argument("--requirement", required=True, choices=sorted(REGISTRY))
    t.add_argument("--variant", default=None,
                   help="; ".join(f"{n}: {', '.join(c.variants)}" for n, c in sorted(REGISTRY.items())))
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--lambda", dest="lam", type=float, help="trade-off weight of the requirement term")
    g.add_argument("--lambda-range", dest="lam_range", type=_lam_range, metavar="LOW,HIGH",
                   help="train one lambda-conditioned editor over this range (lambda chosen at edit time)")
    g.add_argument("--target-range", dest="target_range", type=_lam_range, metavar="LOW,HIGH",
                   help="train one target-conditioned editor: the requirement level (prune: fraction of weights "
                        "kept, e.g. 0.05,0.8; minimise: kept-feature count, e.g. 1,13) is chosen at edit time and met "
                        "exactly")
    g.add_argument("--preference", type=_preference, metavar="R_JSD,R_REQ",
                   help="with --scalarisation epo / linear: train for this preference over (JSD, requirement loss); "
                        "EPO aims at the Pareto point where R_JSD * JSD = R_REQ * R")
    t.add_argument("--scalarisation", choices=("lambda", "epo", "linear"), default=None,
                   help="how JSD and the requirement are combined: lambda (JSD + lambda R; the default), epo (exact "
                        "Pareto optimal search, Mahapatra & Rajan 2020) or linear (fixed weights from --preference)")
    t.add_argument("--out", required=True,
                   help="output folder (save_pretrained layout + checkpoint/ + train_log.jsonl); one that holds an "
                        "earlier run is refused unless --resume continues it")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--models-per-step", type=int, default=32)
    t.add_argument("--points-per-step", type=int, default=512)
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--edge-hidden", type=int, default=None, help="metanetwork edge width (default: hidden // 2)")
    t.add_argument("--film", action="store_true",
                   help="conditioned editors: the condition also scales and shifts every layer (FiLM)")
    t.add_argument("--calibration", type=int, default=0, metavar="POINTS",
                   help="the editor also reads per-weight features (|w|, |w * dL/dw| on the model's own labels) "
                        "computed on this many points of the task's editing split, stored with the editor")
    t.add_argument("--prior-masks", action="store_true",
                   help="with --calibration: masks come from the calibration prior alone (iterative saliency with "
                        "--calibration-rounds); the editor learns the edit of the kept weights")
    t.add_argument("--feature-importance", action="store_true",
                   help="with --calibration: the keep logit of each input feature starts from its permutation "
                        "importance on the calibration batch (the model's own outputs); for data minimisation")
    t.add_argument("--calibration-rounds", type=int, default=0, metavar="R",
                   help="target-conditioned pruning with --calibration: the editor also reads the outcome of R "
                        "rounds of iterative saliency pruning (on the model's own labels) towards the target")
    t.add_argument("--refit", type=float, default=None, metavar="RIDGE",
                   help="with --calibration (pruning, data minimisation): refit every edit to the original on the "
                        "calibration batch (layer-wise ridge least squares, hubedit.mlp.refit), in training and at "
                        "edit time")
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--zoo-fraction", type=float, default=1.0, help="train on this fraction of the zoo's train split")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true",
                   help="continue the run checkpointed in OUT/checkpoint (same settings; --steps may grow); "
                        "without a checkpoint there, start afresh")
    t.add_argument("--push", metavar="REPO_ID", default=None, help="publish the trained editor")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    e = sub.add_parser("edit", help="edit a model with a trained editor (local folder or Hub repo id)")
    e.add_argument("--editor", required=True, action="append",
                   help="editor folder or repo id; repeat to compose (e.g. data minimisation, then pruning)")
    e.add_argument("--revision", default=None, help="editor revision (branch, tag or commit)")
    e.add_argument("--model", required=True, help="model .safetensors file (hubedit MLP format)")
    e.add_argument("--lambda", dest="lam", type=float, action="append", default=None,
                   help="lambda for lambda-conditioned editors (repeat per editor when composing)")
    e.add_argument("--target", type=float, action="append", default=None,
                   help="requirement level for target-conditioned editors: fraction of weights kept (prune) or number "
                        "of kept features (minimise); met exactly (repeat per editor when composing)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--push", metavar="REPO_ID", default=None,
                   help="publish the edited model (weights, ONNX, generated card, Pareto plot) in one commit")
    e.set_defaults(func=_edit)

    x = sub.add_parser("export", help="export an (edited) model to ONNX, verified against onnxruntime")
    x.add_argument("--model", required=True, help="model .safetensors file (hubedit MLP or edited model)")
    x.add_argument("--out", required=True, help="output .onnx path")
    x.add_argument("--task", default=None, help="task whose test split the verification also runs on, and whose "
                   "feature names name the inputs (default: the edit record's task)")
    x.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    import os
    import sys

    from ..train import train_editor
    from ..train.loop import check_out_folder, has_checkpoint
    from ..zoo import Zoo

    from ..errors import ConfigError

    scalarisation = args.scalarisation or ("epo" if args.preference is not None else "lambda")
    if (scalarisation == "lambda") != (args.preference is None):
        raise ConfigError("--preference goes with --scalarisation epo or linear (and they with it)")
    check_out_folder(args.out, args.resume)  # before the zoo is opened (it may be downloaded)
    if args.resume and not has_checkpoint(args.out) and os.environ.get("RANK", "0") == "0":
        print(f"note: --resume: {args.out} holds no checkpoint (checkpoint/state.json) to continue from; "
              "starting a fresh run", file=sys.stderr, flush=True)
    zoo = Zoo.open(args.zoo, revision=args.zoo_revision)
    editor = train_editor(
        zoo, args.requirement, variant=args.variant, lam=args.lam, lam_range=args.lam_range,
        target_range=args.target_range, preference=args.preference, scalarisation=scalarisation, out=args.out,
        resume=args.resume, progress=not args.no_progress, steps=args.steps, models_per_step=args.models_per_step,
        points_per_step=args.points_per_step, hidden=args.hidden, layers=args.layers, lr=args.lr,
        temperature=args.temperature, eval_every=args.eval_every, zoo_fraction=args.zoo_fraction, seed=args.seed,
        lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps, edge_hidden=args.edge_hidden, film=args.film,
        calibration=args.calibration, calibration_rounds=args.calibration_rounds, prior_masks=args.prior_masks,
        feature_importance=args.feature_importance, refit=args.refit,
    )
    from accelerate import PartialState

    state = PartialState()  # the processes of `accelerate launch`, or just this one
    try:  # report and publish once, from the main process; the others wait at the barrier below
        if state.is_main_process:
            print(f"{editor!r} saved to {args.out}")
            for p in editor.settings["validation_front"]:
                level = (f"target={p['target']:.4g}" if "target" in p else f"preference={p['preference']}"
                         if "preference" in p else f"lambda={p['lam']:.4g}")
                print(f"  validation: {level} metric={p['metric']:.4f} jsd={p['jsd']:.5f}")
            if args.push:
                editor.push_to_hub(args.push)
                print(f"published {args.push}")
    finally:
        state.wait_for_everyone()
    return 0


def _edit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..editor import Editor
    from ..mlp import MLP

    editors = [Editor.from_pretrained(e, revision=args.revision) for e in args.editor]
    model = MLP.load(args.model)
    out = Path(args.out)
    if len(editors) == 1:
        lam = args.lam[0] if args.lam else None
        target = args.target[0] if args.target else None
        edited = editors[0].edit(model, lam=lam, target=target)
    else:
        edited = editors[0].then(*editors[1:]).edit(model, lams=args.lam, targets=args.target)
    path = edited.save(out / "model.safetensors")
    print(f"edited model written to {path}")
    print(json.dumps(edited.record, indent=2, default=str))
    if args.push:
        info = edited.push_to_hub(args.push, reference=model, editor=editors[0] if len(editors) == 1 else None)
        print(f"published {args.push} at commit {info.oid}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..editor import EditedMLP

    edited = EditedMLP.from_bytes(Path(args.model).read_bytes(), source=args.model)
    task = args.task or edited.record.get("task")
    info = edited.export_onnx(args.out, task=task)
    print(f"wrote {info.path}: inputs {list(info.input_names)}, max |onnxruntime - torch| = {info.max_abs_diff:.3g}, "
          f"{info.n_zero_weights}/{info.n_weights} weights are zero")
    return 0

