"""``hubedit pareto``: the paper's evaluation protocol for trained editors against the baselines."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (e.g. 0.01,0.1,1), got {text!r}") from exc


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 1,2,4,8), got {text!r}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.protocol import BASELINE_KEYS, BASELINES
    from ..requirements import REGISTRY

    keys_by_req = "; ".join(
        f"{req}: " + ", ".join(k for k, v in BASELINE_KEYS.items() if v in names) for req, names in BASELINES.items()
    )
    p = sub.add_parser(
        "pareto",
        help="evaluate editors against the baselines: Pareto fronts, hypervolumes, timing (paper section 5)",
        description=(
            "Run the evaluation protocol: every method at every strength on the zoo's validation models "
            "(task evaluation split) and test models (task test split); points chosen on validation, reported on "
            "test; hypervolume with reference point (1, ln 2); seconds per model for every method in the same run. "
            "Every point carries its accuracy; points at or below the majority-class accuracy are marked degenerate and "
            "left out of the best-method claims; non-finite points are counted. Fairness is also reported as EOD vs "
            "label disagreement with the original and EOD vs error (1 - accuracy). "
            "Writes OUT/report.md, OUT/results.json and OUT/pareto.png (fairness: also OUT/pareto-disagreement.png and "
            "OUT/pareto-error.png). "
            "Several processes: --workers N on this machine, or under a launcher, e.g. "
            "`torchrun --nproc_per_node N -m hubedit pareto ...` or `accelerate launch --multi_gpu --num_processes N "
            "[--num_machines M --machine_rank R --main_process_ip IP] --main_process_port PORT -m hubedit pareto ...` "
            "(gloo on CPU; every machine needs the zoo and editors); the work is shared out and the numbers are those "
            "of one process with the same threads per process; rank 0 alone times the methods and writes OUT."
        ),
    )
    p.add_argument("--zoo", required=True, help="zoo folder or Hub dataset repo id")
    p.add_argument("--zoo-revision", default=None, help="branch, tag or commit of a Hub zoo")
    p.add_argument("--editor", action="append", default=[], metavar="DIR|REPO",
                   help="trained editor (folder or Hub repo id); repeat for several (e.g. one per lambda)")
    p.add_argument("--editor-revision", default=None, help="revision for every Hub --editor")
    p.add_argument("--requirement", choices=sorted(REGISTRY), default=None,
                   help="requirement to evaluate (default: the editors'); needed without --editor")
    p.add_argument("--lambda-grid", type=_floats, nargs="+", default=None, metavar="L",
                   help="lambdas at which lambda-conditioned editors are evaluated, comma- or space-separated "
                        "(default: 7 log-spaced over each editor's range)")
    p.add_argument("--baselines", nargs="*", default=["all"], metavar="NAME",
                   help=f"baselines to run: 'all' (default), 'none', or keys ({keys_by_req})")
    p.add_argument("--baselines-from", default=None, metavar="RESULTS_JSON",
                   help="take every baseline from an earlier run's results.json (same zoo, models, seed and baseline "
                        "options; checked) instead of running them: a new editor against baselines already run")
    p.add_argument("--above-majority", action="store_true",
                   help="evaluate only the checkpoints whose accuracy on the task's editing split beats its majority "
                        "class (before --max-models)")
    p.add_argument("--max-models", type=int, default=None, metavar="N",
                   help="evaluate at most N validation and N test models (seeded subset; for quick runs)")
    p.add_argument("--prune-keeps", type=_floats, default=None, metavar="K1,K2,...",
                   help="fractions of weights kept by the pruning baselines (default 0.9,0.7,0.5,0.3,0.2,0.1,0.05)")
    p.add_argument("--dm-n-keep", type=_ints, default=None, metavar="N1,N2,...",
                   help="kept-feature counts of FS (default: all of 1..F-1)")
    p.add_argument("--fs-retrain-n-keep", type=_ints, default=None, metavar="N1,N2,...",
                   help="kept-feature counts of FS & Retrain (default: those of FS, --dm-n-keep)")
    p.add_argument("--fs-retrain-epochs", type=int, default=100, help="distillation epochs of FS & Retrain (paper: 100)")
    p.add_argument("--lottery-epochs", type=int, default=5, help="retraining epochs per lottery-ticket round")
    p.add_argument("--timing-models", type=int, default=5, help="models timed per method (0: no timing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes on this machine for editors and baselines (each with --threads torch threads: use "
                        "--threads 1; same results as 1). Timing stays in this process. Not under a launcher")
    p.add_argument("--out", default="pareto", help="output folder (default: ./pareto)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_pareto)


def _pareto(args: argparse.Namespace) -> int:
    import torch

    from .. import distributed
    from ..editor import Editor
    from ..errors import ConfigError
    from ..evaluation.protocol import (FRONT_AXES, ProtocolConfig, ProtocolResult, check_baselines_reusable,
                                       run_protocol, with_baselines_of, zoo_label)
    from ..metrics.pareto import to_markdown
    from ..zoo import Zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.editor and args.requirement is None:
        raise ConfigError("give --requirement when no --editor is evaluated (baselines only)")
    zoo = Zoo.open(args.zoo, revision=args.zoo_revision)
    editors = [Editor.from_pretrained(e, revision=args.editor_revision) for e in args.editor]
    earlier = None
    if args.baselines_from is not None:
        if [b.lower() for b in args.baselines] != ["all"]:
            raise ConfigError("--baselines-from takes every baseline of the earlier run; leave out --baselines")
        try:
            earlier = ProtocolResult.load(args.baselines_from)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--baselines-from {args.baselines_from}: not a hubedit pareto results.json ({exc})") from exc
    if earlier is not None:  # the editors alone; the baselines come from the earlier run
        baselines = []
    elif [b.lower() for b in args.baselines] == ["all"]:
        baselines = "all"
    elif [b.lower() for b in args.baselines] in ([], ["none"]):
        baselines = []
    else:
        baselines = list(args.baselines)
    cfg = ProtocolConfig(
        fs_retrain_epochs=args.fs_retrain_epochs, lottery_epochs=args.lottery_epochs, max_models=args.max_models,
        timing_models=args.timing_models, seed=args.seed, workers=args.workers, above_majority=args.above_majority,
        lambda_grid=tuple(v for part in args.lambda_grid for v in part) if args.lambda_grid else None, dm_n_keep=args.dm_n_keep, fs_retrain_n_keep=args.fs_retrain_n_keep,
    )
    if args.prune_keeps:
        cfg.prune_keeps = args.prune_keeps
    if earlier is not None:  # checked before any work: options and zoo (the models after the run)
        try:
            check_baselines_reusable(earlier, cfg.to_dict(), zoo_label(zoo))
        except ValueError as exc:
            raise ConfigError(f"--baselines-from {args.baselines_from}: {exc}") from exc
    try:
        result = run_protocol(zoo, args.requirement, editors, baselines=baselines, config=cfg,
                              progress=not args.no_progress)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not distributed.is_main_process():  # launched: rank 0 alone writes and prints
        return 0
    if earlier is not None:
        try:
            result = with_baselines_of(result, earlier)
        except ValueError as exc:
            raise ConfigError(f"--baselines-from {args.baselines_from}: {exc}") from exc
    paths = result.save(args.out)
    print(f"{result.title}: {result.info['n_val_models']} validation / {result.info['n_test_models']} test models, "
          f"{result.info['seconds']:.1f} s")
    maj = result.majority_accuracy
    if maj is not None:
        print(f"majority-class accuracy: validation {maj['validation']:.4f}, test {maj['test']:.4f} "
              "(points at or below it are degenerate)")
    for axis in result.axes:
        if len(result.axes) > 1:
            print(f"\n{result.metric_name} vs {FRONT_AXES[axis][0]}:")
        print(to_markdown(result.hypervolume_table(axis).drop(columns="kind")))
    if result.nonfinite_total:
        print(f"\nnon-finite points left out ({result.nonfinite_total} in all):")
        print(to_markdown(result.nonfinite_table(), floatfmt=".0f"))
    print()
    print(result.timing_markdown())
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0
