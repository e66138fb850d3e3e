"""``hubedit zoo build`` and ``hubedit zoo info``."""

from __future__ import annotations

import argparse

from tabulate import tabulate


def register(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="build, inspect and publish model zoos (Hub datasets of MLP weights)")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)

    from ..tasks import TASKS
    from ..zoo.presets import PRESETS

    b = zsub.add_parser(
        "build",
        help="sample configurations and train a zoo (batched across models, resumable)",
        description="Sample MLP configurations for a task and train them as one batched population. Interrupted "
        "builds resume where they stopped when rerun with the same arguments. On one machine, --workers processes "
        "share the training groups. To spread a build over processes or machines, launch it with torch.distributed: "
        "`accelerate launch --multi_gpu --num_processes N [--num_machines M --machine_rank R --main_process_ip IP "
        "--main_process_port PORT] -m hubedit zoo build ...` or `torchrun --nproc_per_node N -m hubedit zoo build ...` "
        "(gloo on CPU, whatever accelerate's flag says; `accelerate launch --cpu` starts several processes only "
        "through MPI). The ranks share the groups and rank 0 writes the zoo; over several machines --out must be on a "
        "filesystem they all share. The zoo is byte-identical to a one-process build whatever the processes.",
    )
    b.add_argument("--task", required=True, choices=TASKS)
    b.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="population size and epochs (default: tiny)")
    b.add_argument("--out", required=True, help="output folder (Hub dataset layout): new, one without data/, zoo.json "
                   "and README.md, or an earlier build's with the same settings (which resumes); a user's files are "
                   "refused, never replaced")
    b.add_argument("--seed", type=int, default=0, help="zoo seed: the same seed gives byte-identical weights")
    b.add_argument("--configs", type=int, default=None, help="override the preset's number of configurations")
    b.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    b.add_argument("--push", metavar="REPO_ID", default=None, help="also publish the zoo as a Hub dataset repo")
    b.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="training processes on this machine, this one included (default: the cores available, at most "
                   "one per training group; 1 trains in this process alone). Not under `accelerate launch` / `torchrun`, "
                   "whose processes share the groups instead")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    i = zsub.add_parser("info", help="summarise a zoo (local folder or Hub dataset repo id)")
    i.add_argument("zoo", help="folder or repo id")
    i.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo")
    i.set_defaults(func=_info)

    p = zsub.add_parser("push", help="publish a local zoo folder as a Hub dataset repo (one commit)")
    p.add_argument("zoo", help="zoo folder")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_push)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes, got {text!r}")
    return value


def _build(args: argparse.Namespace) -> int:
    from ..zoo.build import build_zoo

    zoo = build_zoo(
        args.task, args.preset, args.out, seed=args.seed, progress=not args.no_progress,
        n_configs=args.configs, epochs=args.epochs, workers=args.workers,
    )
    if zoo is None:  # a rank other than 0 of a launched build: rank 0 saved the zoo and reports it
        return 0
    print(summary(zoo))
    print(f"saved to {args.out}")
    if args.push:
        info = zoo.push_to_hub(args.push)
        print(f"published {args.push} at commit {info.oid}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..zoo import Zoo

    print(summary(Zoo.open(args.zoo, revision=args.revision)))
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..zoo import Zoo

    zoo = Zoo.load(args.zoo)
    info = zoo.push_to_hub(args.repo_id, revision=args.revision, private=args.private or None)
    print(f"published {args.repo_id} at commit {info.oid}")
    return 0


def summary(zoo) -> str:
    """Text summary of a zoo: sizes per split and accuracy quantiles per checkpoint stage."""
    frame = zoo.frame()
    lines = [repr(zoo)]
    if zoo.source:
        lines.append("source: " + ", ".join(f"{k}={v}" for k, v in zoo.source.items()))
    info = zoo.info
    lines.append(f"preset={info.get('preset')} seed={info.get('seed')} epochs={info.get('epochs')} "
                 f"configurations={frame['config_id'].nunique() if len(frame) else 0}")
    rows = []
    for (split, stage), sub in frame.groupby(["split", "stage"], sort=False):
        acc = sub["test_accuracy"]
        rows.append([split, stage, len(sub), acc.min(), acc.median(), acc.max()])
    lines.append(tabulate(rows, headers=["split", "stage", "models", "min test acc", "median", "max"], floatfmt=".4f"))
    return "\n".join(lines)
