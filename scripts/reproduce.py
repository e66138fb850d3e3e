#!/usr/bin/env python
"""Reproduce the paper's results (section 5, A.5, A.7) from a zoo preset, end to end and resumable.

Stages (each skips what already exists under ``--work``):

1. zoos for Adult and Bank (``build_zoo`` with the preset; loaded if ``zoo.json`` exists);
2. editors for the five settings -- data minimisation on Adult and Bank (GMN, FS (GMN)), fairness on
   Adult (GMN), pruning on Adult and Bank (GMN - Prune & Edit, GMN - Prune) -- one editor per lambda of
   the preset's grid (``--editors per-lambda``), one lambda-conditioned editor per variant
   (``conditioned``) or both;
3. the evaluation protocol (:func:`hubedit.evaluation.protocol.run_protocol`) for every setting: all
   baselines, points chosen on validation and reported on test, hypervolumes, dominance, timing;
4. matched comparisons per setting, and composition (A.7): DM editor then pruning editor vs FS & Retrain
   then SNIP (the paper's comparison) and FS & Retrain then magnitude pruning (Adult);
5. sample efficiency: pruning editors trained on 10/25/50/75/100 % of the Adult zoo.

Writes ``RESULTS/REPORT.md`` (all tables, the exact command, the machine, timestamps) and the PNGs, plus one
report / JSON per setting. ``RESULTS`` defaults to ``results/<preset>`` (``results/<preset>-quick`` with
``--quick``).

    python scripts/reproduce.py --preset tiny --quick          # smoke run, a few minutes on 2 cores
    python scripts/reproduce.py --preset small --threads 1     # the reference results (hours)
    python scripts/reproduce.py --preset small --editors both --skip sample-efficiency
    python scripts/reproduce.py --preset small --threads 1 --seeds 0,1,2   # three seeds: mean ± sd

Seeds. ``--seeds 0,1,2`` runs stages 2-5 once per seed on the same zoos (``--seed``, default 0, seeds the zoos):
each seed trains its own editors (editor seed, and the zoo fraction of the sample-efficiency editors) and runs the
seeded baselines (Random, SNIP, Lottery Ticket, FS & Retrain, permutation importance; ``ProtocolConfig.seed``) on
the same models: where their number is capped they are drawn with ``--subset-seed`` (default 0;
``ProtocolConfig.subset_seed``), the same for every seed, so the sd is that of the methods on fixed test models. Seed 0 is cached where a run without
``--seeds`` caches (``WORK/editors``, ``WORK/eval``), every other seed in ``WORK/seed-<s>/``, so adding seeds
reuses what exists. With several seeds every table of the report (the settings' hypervolumes, full and on the
baselines' range, the summary, composition, sample efficiency, conditioned against per-lambda editors) gives the
mean ± the sample standard deviation (ddof=1) over the seeds, the plots show every seed (one line style per seed;
error bars for sample efficiency), each seed's reports / JSON / plots are in ``RESULTS/seed-<s>/`` and the
aggregates in ``RESULTS/seeds.json`` (:mod:`hubedit.evaluation.seeds` recomputes them from the per-seed JSON).
Chosen points, dominance, timing, lambda sweeps and matched comparisons are reported for the first seed.

Several processes (``torch.distributed``, gloo on CPU). Under a launcher every stage is shared out: the zoo
build (``build_zoo``), the editors (each trained alone, one process per editor, in a child process), the
protocol's units (an editor run on a batch of models, a baseline on one model), the matched comparisons and
the composition. Rank 0 alone writes caches and reports. Every number equals the one-process run's with the
same torch threads per process (launchers set one; compare with ``--threads 1``); resumed runs reuse the
same caches either way. ``--settings`` now only chooses a subset.

    torchrun --nproc_per_node 2 scripts/reproduce.py --preset small              # both cores of this machine
    accelerate launch --multi_gpu --num_processes 2 --main_process_port 29511 \\
        scripts/reproduce.py --preset small                                      # the same through accelerate
    accelerate launch --multi_gpu --num_machines 2 --num_processes 8 --machine_rank R \\
        --main_process_ip HOST0 --main_process_port 29511 scripts/reproduce.py --preset paper --work /shared/run
                                                                                 # two machines, 4 processes each
    python scripts/reproduce.py --preset small --threads 1 --workers 2         # protocol only, 2 local processes

(``accelerate launch --cpu --num_processes N`` starts a single process unless MPI is set up; ``--multi_gpu``
runs torchrun, which on a machine without GPUs is gloo on CPU.) Over several machines ``--work`` must be on a
filesystem they all share. ``--workers N`` (no launcher) runs only the protocol in N local processes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

SETTING_VARIANTS = {
    "minimise": ("gmn", "fs-gmn"),
    "fairness": ("gmn",),
    "prune": ("prune-edit", "prune"),
}
MAIN_VARIANT = {"minimise": "gmn", "fairness": "gmn", "prune": "prune-edit"}
# After FS & Retrain in the composition (A.7): SNIP, the paper's, and magnitude pruning beside it.
COMPOSITION_PRUNE_BASELINES = ("snip", "magnitude")


@dataclass
class Plan:
    """Everything a preset fixes. ``--quick`` and command-line options override fields."""

    zoo_preset: str
    n_configs: int | None = None
    zoo_epochs: int | None = None
    train: dict = field(default_factory=dict)
    lambdas: dict = field(default_factory=dict)  # requirement -> per-lambda grid
    lam_ranges: dict = field(default_factory=dict)  # requirement -> (low, high) of conditioned editors
    lambda_grid_points: int = 7  # evaluation grid of conditioned editors
    protocol: dict = field(default_factory=dict)  # ProtocolConfig overrides
    composition: dict = field(default_factory=dict)
    sample_efficiency: dict = field(default_factory=dict)


# Per-lambda grids. On the tiny preset (300 steps) lambda 0.003 left models untouched, 0.03 kept about half of the
# features / 90 % of the weights and 0.3 dropped everything (fairness: 0.03 untouched, 3 a constant predictor), so
# the grids of the larger presets are dense between those ends (``small`` uses four of them, log-spaced).
LAMBDAS = {
    "minimise": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
    "prune": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
    "fairness": (0.03, 0.1, 0.3, 0.6, 1.0, 2.0),
}
SMALL_LAMBDAS = {"minimise": (0.003, 0.01, 0.03, 0.1), "prune": (0.003, 0.01, 0.03, 0.1), "fairness": (0.1, 0.3, 1.0, 3.0)}
TINY_LAMBDAS = {"minimise": (0.003, 0.03, 0.3), "prune": (0.003, 0.03, 0.3), "fairness": (0.03, 0.3, 3.0)}
LAM_RANGES = {"minimise": (0.001, 1.0), "prune": (0.001, 1.0), "fairness": (0.01, 10.0)}

PLANS = {
    "tiny": Plan(
        "tiny",
        train=dict(steps=300, models_per_step=16, points_per_step=256, hidden=32, layers=3, eval_every=50),
        lambdas=TINY_LAMBDAS,
        lam_ranges=LAM_RANGES,
        protocol=dict(fs_retrain_epochs=20, timing_models=5),
        composition=dict(dm_lambdas=2, prune_lambdas=2, fs_retrain_epochs=20, max_models=None),
        sample_efficiency=dict(fractions=(0.1, 0.25, 0.5, 0.75, 1.0), lambdas=(0.01, 0.1), steps=300),
    ),
    # Sized for a 2-core CPU machine (launch two processes: torchrun --nproc_per_node 2 scripts/reproduce.py
    # --preset small): smaller editors trained for fewer steps than the paper's, four lambdas per requirement,
    # 24 validation / 24 test models per setting, FS & Retrain at the paper's 100 epochs and, like FS, at every
    # feature count 1..F-1 (13 on Adult, 15 on Bank; dm_n_keep is not set). Cost of the latter, from the timings
    # of results/small (3-4 processes on 2 cores), where FS & Retrain ran at 4 counts: its 647 s of dm-adult's
    # 728 s evaluation (3.4 s per count and model) become about 13/4 x 647 = 2100 s, its 104 s of dm-bank's 121 s
    # about 15/4 x 104 = 390 s: roughly +1750 s (+29 min of one contended core) per seed, on top of the README's
    # 1.5-2 h of one core for editors and evaluations.
    "small": Plan(
        "small",
        train=dict(steps=600, models_per_step=16, points_per_step=512, hidden=32, layers=3, eval_every=100),
        lambdas=SMALL_LAMBDAS,
        lam_ranges=LAM_RANGES,
        protocol=dict(fs_retrain_epochs=100, max_models=24, timing_models=10),
        composition=dict(dm_lambdas=3, prune_lambdas=3, fs_retrain_epochs=100, max_models=16),
        sample_efficiency=dict(fractions=(0.1, 0.25, 0.5, 0.75, 1.0), lambdas=(0.01, 0.03, 0.1), steps=600),
    ),
    "paper": Plan(
        "paper",
        train=dict(steps=10000, models_per_step=64, points_per_step=512, hidden=128, layers=6, eval_every=500),
        lambdas={k: v for k, v in LAMBDAS.items()},
        lam_ranges=LAM_RANGES,
        protocol=dict(fs_retrain_epochs=100, timing_models=20),
        composition=dict(dm_lambdas=3, prune_lambdas=3, fs_retrain_epochs=100, max_models=200),
        sample_efficiency=dict(fractions=(0.1, 0.25, 0.5, 0.75, 1.0), lambdas=(0.01, 0.05, 0.1), steps=10000),
    ),
}


def quick_plan(plan: Plan) -> Plan:
    """A smoke run: a dozen configurations x 2 epochs, editors trained for a few steps, 3 models per split."""
    return replace(
        plan,
        n_configs=12,
        zoo_epochs=2,
        train=dict(steps=30, models_per_step=4, points_per_step=128, hidden=16, layers=2, eval_every=10, lr=0.01),
        lambdas={"minimise": (0.01, 0.3), "prune": (0.01, 0.3), "fairness": (0.1, 3.0)},
        lambda_grid_points=3,
        protocol=dict(max_models=3, fs_retrain_epochs=2, lottery_epochs=1, timing_models=2,
                      prune_keeps=(0.7, 0.3, 0.1, 0.05)),
        composition=dict(dm_lambdas=2, prune_lambdas=2, fs_retrain_epochs=2, max_models=3,
                         prune_keeps=(0.5, 0.2, 0.05)),
        sample_efficiency=dict(fractions=(0.1, 0.25, 0.5, 0.75, 1.0), lambdas=(0.3,), steps=30),
    )


# ======================================================================================================
# helpers
# ======================================================================================================
class Log:
    """Messages and stage times; printed by rank 0 only (``main``), other ranks' own work through :meth:`mine`."""

    def __init__(self, progress: bool, main: bool = True):
        self.t0 = time.perf_counter()
        self.progress = progress
        self.main = main
        self.stages: list[tuple[str, float]] = []
        self._stage: tuple[str, float] | None = None

    def __call__(self, msg: str) -> None:
        if self.main:
            self.mine(msg)

    def mine(self, msg: str) -> None:
        """Printed by whichever process did the work (several processes: rank 1's own training ...)."""
        print(f"[{time.perf_counter() - self.t0:8.1f}s] {msg}", flush=True)

    def stage(self, name: str) -> None:
        self.end_stage()
        self._stage = (name, time.perf_counter())
        self(f"== {name}")

    def end_stage(self) -> None:
        if self._stage is not None:
            name, t = self._stage
            self.stages.append((name, time.perf_counter() - t))
            self._stage = None


def fmt_lam(lam: float) -> str:
    return f"{lam:g}"


def load_or_build_zoo(task: str, plan: Plan, work: Path, seed: int, progress: bool, log: Log):
    from hubedit import distributed
    from hubedit.zoo import Zoo
    from hubedit.zoo.build import build_zoo

    tag = plan.zoo_preset + (f"-c{plan.n_configs}" if plan.n_configs else "") + (f"-e{plan.zoo_epochs}" if plan.zoo_epochs else "")
    out = work / "zoos" / f"{task}-{tag}"
    if distributed.broadcast((out / "zoo.json").is_file()):  # rank 0 decides for every process
        zoo = Zoo.load(out)
        log(f"zoo {task}: loaded {out} ({zoo})")
        return zoo
    log(f"zoo {task}: building preset {plan.zoo_preset} into {out}")
    t = time.perf_counter()
    # every process takes part (under a launcher build_zoo shares the groups out; rank 0 saves the zoo)
    build_zoo(task, plan.zoo_preset, out, seed=seed, progress=progress and log.main, n_configs=plan.n_configs,
              epochs=plan.zoo_epochs)
    distributed.barrier()
    zoo = Zoo.load(out)
    log(f"zoo {task}: built in {time.perf_counter() - t:.1f} s ({zoo})")
    return zoo


def load_or_train_editors(zoo, jobs: list, args, log: Log) -> list:
    """Editors of ``jobs`` (:class:`hubedit.evaluation.experiments.EditorJob`): loaded, or trained (under a launcher
    each process trains its share, one editor at a time, as one process would)."""
    from hubedit.evaluation.experiments import load_or_train_editors as load_or_train

    try:
        return load_or_train(zoo, jobs, progress=args.progress and log.main, log=lambda m: log.mine(f"  {m}"))
    except ValueError as exc:
        raise SystemExit(f"reproduce: {exc}") from None


def seed_work(work: Path, seed: int) -> Path:
    """Where one run seed's editors and evaluations are cached: ``work`` itself for seed 0 (the caches of runs made
    before ``--seeds`` existed), ``work/seed-<s>`` for every other seed."""
    return work if seed == 0 else work / f"seed-{seed}"


def parse_seeds(text: str | None, default: int) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; None -> [default]. Seeds are distinct non-negative integers."""
    if text is None:
        return [default]
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or any(v < 0 for v in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds takes distinct non-negative integers such as 0,1,2, got {text!r}")
    return seeds


def setting_editors(setting: str, zoo, requirement: str, plan: Plan, args, work: Path, log: Log,
                    seeds: list[int]) -> dict[int, list]:
    """Every seed's editors of ``setting`` (trained with that seed, in that seed's folder), in one call so that
    under a launcher the editors of all seeds are shared out together."""
    from hubedit.evaluation.experiments import EditorJob

    variants = SETTING_VARIANTS[requirement] if args.variants == "all" else (MAIN_VARIANT[requirement],)
    jobs: dict[int, list] = {}
    for seed in seeds:
        train = {**plan.train, "seed": seed}
        mine = jobs[seed] = []
        for variant in variants:
            base = seed_work(work, seed) / "editors" / setting / variant
            if args.editors in ("per-lambda", "both"):
                for lam in plan.lambdas[requirement]:
                    mine.append(EditorJob(requirement, base / f"lam-{fmt_lam(lam)}", variant, lam=lam, train=dict(train)))
            if args.editors in ("conditioned", "both"):
                lo, hi = plan.lam_ranges[requirement]
                mine.append(EditorJob(requirement, base / f"cond-{fmt_lam(lo)}-{fmt_lam(hi)}", variant, lam_range=(lo, hi),
                                      train=dict(train)))
    editors = iter(load_or_train_editors(zoo, [j for seed in seeds for j in jobs[seed]], args, log))
    return {seed: [next(editors) for _ in jobs[seed]] for seed in seeds}


def _editors_key(editors) -> list[str]:
    """Which editors, trained how far (a cached evaluation is stale once an editor is trained on)."""
    return sorted(
        f"{e.source.get('path') or e.source} steps={e.settings['training'].get('steps')} "
        f"best={e.settings['training'].get('best_objective')}" for e in editors
    )


def _stable_options(options: dict) -> dict:
    """``options`` for a cache key: ``subset_seed`` left out where it equals ``seed``, i.e. where the models are
    those runs drew before the subset seed existed (they drew them with ``seed``), so their caches stay valid."""
    return {k: v for k, v in options.items() if not (k == "subset_seed" and v == options.get("seed"))}


def _cache_key(cfg, editors, baselines) -> dict:
    return {
        # workers do not change results
        "config": _stable_options({k: v for k, v in cfg.to_dict().items() if k != "workers"}),
        "editors": _editors_key(editors),
        "baselines": baselines,
    }


def read_cache(cache: Path, key, key_of, args, log: Log, who: str, what: str) -> dict | None:
    """The cached result dict in ``cache`` if ``key_of(dict)`` equals ``key`` (and not ``--force-eval``); a damaged
    or stale cache gives None (recompute). Read by rank 0, whose answer every process gets."""
    from hubedit import distributed

    return distributed.broadcast(_read_cache(cache, key, key_of, args, log, who, what) if log.main else None)


def _read_cache(cache: Path, key, key_of, args, log: Log, who: str, what: str) -> dict | None:
    if not cache.is_file() or args.force_eval:
        return None
    try:
        d = json.loads(cache.read_text())
        if key_of(d) == json.loads(json.dumps(key)):
            log(f"  {who}: reusing {what} {cache}")
            return d
    except Exception as exc:  # a damaged cache is recomputed
        log(f"  {who}: ignoring unreadable cache {cache} ({exc})")
    return None


def write_cache(cache: Path, d: dict) -> None:
    """Write ``d`` to ``cache`` (rank 0 only; other processes return)."""
    from hubedit import distributed

    if not distributed.is_main_process():
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(d, indent=2, default=str))


@dataclass
class CachedJob:
    """A cached computation done by one process: ``compute()`` gives the dict to cache (its key inside, where
    ``key_of`` finds it), ``load(dict)`` the result."""

    who: str
    what: str
    cache: Path
    key: dict
    key_of: Callable[[dict], Any]
    compute: Callable[[], dict]
    load: Callable[[dict], Any]


def run_cached_jobs(jobs: list[CachedJob], args, log: Log) -> list:
    """Every job's result: from its cache, else computed. Under a launcher the jobs to compute are shared out over
    the processes (one process per job, as alone) and their dicts gathered; rank 0 writes the caches. A computed
    dict is used as read back from its cache (a JSON round trip), so a resumed run sees the same values."""
    from hubedit import distributed

    rank, size = distributed.world()
    dicts = [read_cache(j.cache, j.key, j.key_of, args, log, j.who, j.what) for j in jobs]
    todo = [k for k, d in enumerate(dicts) if d is None]
    computed = []
    for i in distributed.share(len(todo), rank, size):
        j, t = jobs[todo[i]], time.perf_counter()
        computed.append([todo[i], json.loads(json.dumps(j.compute(), default=str))])
        log.mine(f"  {j.who}: {j.what} in {time.perf_counter() - t:.1f} s"
                 + (f" (process {rank} of {size})" if size > 1 else ""))
    for part in distributed.all_gather(computed):
        for k, d in part:
            dicts[k] = d
    for k in todo:
        write_cache(jobs[k].cache, dicts[k])
    return [j.load(d) for j, d in zip(jobs, dicts)]


def _info_key(d: dict):
    return d.get("info", {}).get("cache_key")


def run_setting(setting: str, zoo, editors, plan: Plan, args, seed: int, work: Path, log: Log):
    """The protocol for one setting and run seed (the seeded baselines use ``seed``; the models, where their number
    is capped, are drawn with ``--subset-seed``, the same for every seed), cached in that seed's folder."""
    from hubedit.evaluation.protocol import SETTINGS, ProtocolConfig, ProtocolResult, default_lambda_grid, run_protocol

    _, requirement = SETTINGS[setting]
    lo, hi = plan.lam_ranges[requirement]
    cfg = ProtocolConfig.from_dict({**plan.protocol, "lambda_grid": default_lambda_grid((lo, hi), plan.lambda_grid_points),
                                    "seed": seed, "subset_seed": args.subset_seed})
    key = _cache_key(cfg, editors, "all")
    cache = seed_work(work, seed) / "eval" / f"{setting}.json"
    who = setting if seed == 0 else f"{setting} (seed {seed})"
    d = read_cache(cache, key, _info_key, args, log, who, "evaluation")
    if d is not None:
        return ProtocolResult.from_dict(d)
    res = run_protocol(zoo, requirement, editors, baselines="all", config=cfg, progress=args.progress)
    res.info["cache_key"] = key
    write_cache(cache, res.to_dict())
    log(f"  {who}: evaluated in {res.info['seconds']:.1f} s")
    return res


def matched_job(setting: str, zoo, editors, plan: Plan, args, seed: int, work: Path) -> CachedJob:
    """Editors against magnitude pruning / FS at the editor's own per-model level (cached like evaluations)."""
    from hubedit.evaluation.matched import MatchedResult, matched_comparison
    from hubedit.evaluation.protocol import SETTINGS, default_lambda_grid

    _, requirement = SETTINGS[setting]
    grid = default_lambda_grid(plan.lam_ranges[requirement], plan.lambda_grid_points)
    options = {"max_models": plan.protocol.get("max_models"), "seed": seed, "subset_seed": args.subset_seed,
               "lambda_grid": list(grid), "pfi_repeats": plan.protocol.get("pfi_repeats", 5)}
    key = {"options": _stable_options(options), "editors": _editors_key(editors)}
    return CachedJob(setting, "matched comparison", seed_work(work, seed) / "eval" / f"{setting}-matched.json", key,
                     lambda d: d.get("cache_key"),
                     lambda: {**matched_comparison(zoo, editors, requirement, **options).to_dict(), "cache_key": key},
                     MatchedResult.from_dict)


def run_sample_efficiency_cached(zoo, by_frac: dict, base, plan: Plan, args, seed: int, work: Path, log: Log):
    """:func:`hubedit.evaluation.experiments.run_sample_efficiency` for one seed, reusing the pruning setting's
    baselines of the same seed (``base``) when there is one; cached in the seed's folder."""
    from hubedit.evaluation.experiments import SampleEfficiencyResult, run_sample_efficiency
    from hubedit.evaluation.protocol import ProtocolConfig

    cfg = ProtocolConfig.from_dict({**plan.protocol, "seed": seed, "subset_seed": args.subset_seed})
    editors = [e for eds in by_frac.values() for e in eds]
    key = _cache_key(cfg, editors, base.info.get("cache_key") if base is not None else "all")
    cache = seed_work(work, seed) / "eval" / "sample-efficiency.json"
    who = "sample efficiency" + (f" (seed {seed})" if seed else "")
    d = read_cache(cache, key, lambda d: d.get("cache_key"), args, log, who, "evaluation")
    if d is not None:
        return SampleEfficiencyResult.from_dict(d)
    res = run_sample_efficiency(zoo, by_frac, baseline_result=base, config=cfg, progress=args.progress)
    write_cache(cache, {**res.to_dict(), "cache_key": key})
    return res


# ======================================================================================================
# report
# ======================================================================================================
#: Short names of the fronts' second axes in the report's sentences.
AXIS_WORDS = {"jsd": "JSD", "disagreement": "disagreement", "error": "error"}
#: A task whose original models remove less than this share of the majority class's error (1 - majority accuracy)
#: is flagged in the caveats: accuracy then barely tells the models from a constant classifier.
WEAK_ORIGINAL_SHARE = 0.25


def best_methods(res, axis: str = "jsd") -> tuple[str, str, str] | None:
    """(best editor, best baseline, best baseline on the baselines' range) by test hypervolume of the ``axis`` front
    **without degenerate points**, among methods with a non-degenerate point; None when no editor or no baseline
    has one (then nothing can be claimed either way)."""
    hvs = res.hypervolumes_for(axis, exclude_degenerate=True)
    chv = res.common_hypervolumes_for(axis, exclude_degenerate=True)
    eds = [e for e in res.editor_methods if len(res.front(e, axis, exclude_degenerate=True))]
    bases = [b for b in res.baseline_methods if len(res.front(b, axis, exclude_degenerate=True))]
    if not eds or not bases:
        return None
    return max(eds, key=hvs.__getitem__), max(bases, key=hvs.__getitem__), max(bases, key=chv.__getitem__)


def coverage_notes(results: dict) -> list[str]:
    """Per setting and front (:attr:`ProtocolResult.axes`), without degenerate points: by how much the best editor
    misses the best baseline (hypervolume, and on the baselines' range), and where; or that no claim can be made."""
    import numpy as np

    notes = []
    for setting, res in results.items():
        for axis in res.axes:
            y = AXIS_WORDS[axis]
            where = f"**{setting}**" + ("" if axis == "jsd" else f" ({res.metric_name} vs {y})")
            best = best_methods(res, axis)
            if best is None:
                if res.editor_methods and res.baseline_methods:
                    lacking = [kind for kind, names in (("editor", res.editor_methods), ("baseline", res.baseline_methods))
                               if not any(len(res.front(n, axis, exclude_degenerate=True)) for n in names)]
                    who = " and no ".join(lacking)
                    maj = res.majority_accuracy
                    notes.append(f"- {where}: no claim either way: no {who} has a non-degenerate point (every point on "
                                 f"the fronts of every {' and every '.join(lacking)} has a mean accuracy at or below "
                                 "the majority class's"
                                 + (f", {maj['validation']:.4f} on validation / {maj['test']:.4f} on test" if maj else "")
                                 + ").")
                continue
            be, bb, bbc = best
            hvs = res.hypervolumes_for(axis, exclude_degenerate=True)
            chv = res.common_hypervolumes_for(axis, exclude_degenerate=True)
            if hvs[be] >= hvs[bb] and chv[be] >= chv[bbc]:
                continue
            ef = res.front(be, axis, exclude_degenerate=True)
            bf = res.front(bb, axis, exclude_degenerate=True)
            common_x = res.common_x_for(axis, exclude_degenerate=True)
            # at each baseline point: the editor's best y among its points with at most that metric value
            gaps, uncovered = [], 0
            for xb, yb in bf:
                ys = ef[ef[:, 0] <= xb + 1e-12, 1]
                if len(ys) == 0:
                    uncovered += 1
                else:
                    gaps.append(float(ys.min() - yb))
            worse = [g for g in gaps if g > 0]
            orig = res.info.get("original", {})
            if hvs[be] < hvs[bb]:
                text = (f"- {where}: {be} trails {bb} by {hvs[bb] - hvs[be]:.4f} hypervolume "
                        f"({(hvs[bb] - hvs[be]) / max(hvs[bb], 1e-12) * 100:.1f} % of the baseline's)")
            else:
                text = f"- {where}: {be} leads {bb} by {hvs[be] - hvs[bb]:.4f} hypervolume"
            if chv[be] < chv[bbc]:
                text += (f"; on the baselines' range ({res.metric_name} >= {common_x:.3g}) it trails {bbc} by "
                         f"{chv[bbc] - chv[be]:.4f}")
                if hvs[be] >= hvs[bb]:
                    text += ": its lead comes from points below anything the baselines are run at"
            else:
                text += (f"; on the baselines' range ({res.metric_name} >= {common_x:.3g}) it leads {bbc} by "
                         f"{chv[be] - chv[bbc]:.4f}")
            text += (f" (degenerate points left out). Editor's chosen test points ({res.metric_name}/{y}): "
                     + ", ".join(f"{x:.3g}/{v:.3g}" for x, v in ef[:8])
                     + f"; {bb}'s: {res.metric_name} {bf[:, 0].min():.3g}–{bf[:, 0].max():.3g}, {y} {bf[:, 1].min():.3g}–"
                     f"{bf[:, 1].max():.3g} (original models: {res.metric_name} {orig.get('test_metric', float('nan')):.3g}). ")
            if uncovered:
                text += f"{uncovered} of {bb}'s {len(bf)} points lie below every editor point. "
            if worse:
                text += (f"At {len(worse)} of {len(gaps)} of {bb}'s points the editor's best {y} at that "
                         f"{res.metric_name} or lower is higher, by up to {max(worse):.4g} (median "
                         f"{float(np.median(worse)):.4g}).")
            elif gaps:
                text += "Where both have points the editor is at least as good: the gap is coverage of the requirement axis."
            notes.append(text)
    return notes


def lambda_rows(results: dict) -> list[list]:
    """Per editor method: the requirement metric and JSD on validation at increasing lambda, and whether the
    metric never increases with lambda."""
    rows = []
    for setting, res in results.items():
        for name in res.editor_methods:
            m = res.methods[name]
            lams = [float(st.split("=", 1)[1]) for st in m.strengths]
            order = sorted(range(len(lams)), key=lams.__getitem__)
            metric = [float(m.val[i, 0]) for i in order]
            mono = all(b <= a + 1e-9 for a, b in zip(metric, metric[1:]))
            rows.append([setting, name, ", ".join(f"{lams[i]:g}" for i in order),
                         ", ".join(f"{v:.3g}" for v in metric), ", ".join(f"{float(m.val[i, 1]):.3g}" for i in order),
                         "yes" if mono else "NO"])
    return rows


def conditioned_rows(results: dict, editors: dict) -> list[list]:
    """Per setting and variant: hypervolume (test, JSD front, degenerate points left out) and training seconds of
    the per-lambda editors together against the one lambda-conditioned editor, and mutual dominance of their
    non-degenerate fronts."""
    rows = []
    for setting, res in results.items():
        for name in res.editor_methods:
            cond = f"{name} (λ-cond.)"
            if name.endswith("(λ-cond.)") or cond not in res.methods:
                continue
            eds = editors.get(setting, [])
            per_s = sum(e.settings["training"].get("seconds") or 0 for e in eds if e.lam is not None and _label(e) == name)
            cond_s = sum(e.settings["training"].get("seconds") or 0 for e in eds if e.lam is None and _label(e) == cond)
            n_per = sum(1 for e in eds if e.lam is not None and _label(e) == name)
            dom = res.dominance_table(exclude_degenerate=True)
            hvs = res.hypervolumes_for(exclude_degenerate=True)
            rows.append([setting, name, n_per, hvs[name], round(per_s, 1), hvs[cond], round(cond_s, 1),
                         hvs[cond] - hvs[name], dom.loc[cond, name], dom.loc[name, cond]])
    return rows


def _label(editor) -> str:
    from hubedit.evaluation.protocol import editor_label

    return editor_label(editor)


def _first_seed(results: dict, seeds: list[int]) -> dict:
    """``{setting: result}`` of the first seed that every setting has (the per-seed details of the report)."""
    out = {}
    for setting, runs in results.items():
        seed = next((s for s in seeds if s in runs), None)
        if seed is not None:
            out[setting] = runs[seed]
    return out


def conditioned_seed_table(results: dict, editors: dict, seeds: list[int]):
    """:func:`conditioned_rows` of every seed, as mean ± sd over the seeds (:func:`hubedit.evaluation.seeds.mean_sd`)."""
    import pandas as pd

    from hubedit.evaluation.seeds import mean_sd

    cols = ["per-lambda editors", "per-lambda HV w/o degenerate", "per-lambda train s", "conditioned HV w/o degenerate",
            "conditioned train s", "HV difference", "share of per-lambda front dominated by conditioned",
            "share of conditioned front dominated by per-lambda"]
    tables = []
    for seed in seeds:
        rows = conditioned_rows({s: runs[seed] for s, runs in results.items() if seed in runs},
                                {s: eds.get(seed, []) for s, eds in editors.items()})
        df = pd.DataFrame(rows, columns=["setting", "method", *cols])
        tables.append(df.set_index(["setting", "method"]))
    if not any(len(t) for t in tables):
        return None
    table = mean_sd(tables, cols)
    table.formats = {"per-lambda editors": ".0f", "per-lambda train s": ".1f", "conditioned train s": ".1f",
                     "share of per-lambda front dominated by conditioned": ".2f",
                     "share of conditioned front dominated by per-lambda": ".2f"}
    return table


def _task_margins(first: dict) -> dict[str, dict[str, float]]:
    """Per task: majority-class and original models' mean test accuracy, their difference and the share of the
    majority class's error (1 - its accuracy) the originals remove, from the first result of each task."""
    out: dict[str, dict[str, float]] = {}
    for r in first.values():
        maj, acc = r.majority_accuracy, r.info.get("original", {}).get("test_accuracy")
        if r.task in out or maj is None or acc is None:
            continue
        out[r.task] = {"majority": maj["test"], "original": float(acc), "difference": float(acc) - maj["test"],
                       "share": (float(acc) - maj["test"]) / max(1.0 - maj["test"], 1e-12)}
    return out


def caveat_lines(results: dict, seeds: list[int], zoos: dict, subset_seed: int) -> list[str]:
    """The report's caveats in plain words, every figure computed from ``results`` (setting -> seed -> result):
    what the sd over seeds covers, degenerate points and the majority class, originals barely above it, the JSD
    floor of label-outputting fairness baselines, and the non-finite points left out."""
    from hubedit.evaluation.protocol import FRONT_AXES
    from tabulate import tabulate

    first = _first_seed(results, seeds)
    if not first:
        return []
    lines = ["## Caveats: read the numbers with these", ""]
    # --- seeds: what the sd covers ---------------------------------------------------------------------------
    described: dict[str, list[str]] = {}  # "24 test / 24 validation models ..." -> settings
    for s, r in first.items():
        text = f"{r.info.get('n_test_models', '?')} test / {r.info.get('n_val_models', '?')} validation models"
        if r.task in zoos:
            text += f" of the {r.task} zoo's {len(zoos[r.task]['test'])} / {len(zoos[r.task]['validation'])}"
        described.setdefault(text, []).append(s)
    models = "; ".join(f"{', '.join(names)}: {text}" for text, names in described.items())
    if len(seeds) > 1:
        differ = [s for s, runs in results.items()
                  if len({json.dumps([runs[k].info.get("val_model_ids"), runs[k].info.get("test_model_ids")])
                          for k in seeds if k in runs}) > 1]
        text = (f"- **What ± covers.** Every ± is the sample sd (ddof=1) over the {len(seeds)} run seeds "
                f"({', '.join(map(str, seeds))}): the editors' training and the seeded baselines (Random, SNIP, Lottery "
                "Ticket, FS & Retrain, permutation importance, randomised post-processors). The models are not "
                f"resampled: every seed evaluates the same models, drawn once with subset seed {subset_seed} where their "
                f"number is capped ({models}). The sd says how much a rerun of the methods moves the numbers, not how "
                "much other test models would.")
        if differ:
            text += (f" **Except** {', '.join(differ)}: those results evaluate different models in different seeds "
                     "(cached before the subset seed was fixed; `--force-eval` recomputes them), so their sd also "
                     "mixes in which models were drawn.")
        lines.append(text)
    else:
        lines.append(f"- **One run seed ({seeds[0]}).** No spread is given; `--seeds 0,1,2` gives mean ± sd over editor "
                     f"and baseline seeds on the same models (subset seed {subset_seed}; {models}).")
    # --- degenerate points and the majority class --------------------------------------------------------------
    margins = _task_margins(first)
    tables = {s: r.hypervolume_table() for s, r in first.items()}
    counts = {s: (int(t["degenerate"].sum()), int(t["points"].sum())) for s, t in tables.items()}
    if margins:
        lines.append(
            "- **Degenerate points.** A point whose mean accuracy is at or below the majority class's (what a constant "
            "classifier scores: " + "; ".join(f"{t} {m['majority']:.4f} on test" for t, m in margins.items())
            + ") is degenerate: it is marked in every table and circled in the plots, and hypervolumes used for "
            "\"best\" and for every editor-against-baseline sentence leave it out (tables with all points stand "
            "beside them). Degenerate points among the JSD-front points"
            + (f" (seed {seeds[0]})" if len(seeds) > 1 else "") + ": "
            + "; ".join(f"{s} {d} of {n}" for s, (d, n) in counts.items()) + ".")
        lines += ["", tabulate([[t, m["majority"], m["original"], m["difference"], 100 * m["share"]]
                                for t, m in margins.items()],
                               headers=["task", "majority-class accuracy (test)", "original models' mean accuracy (test)",
                                        "difference", "% of the majority class's error the originals remove"],
                               tablefmt="github", floatfmt=("", ".4f", ".4f", ".4f", ".1f")), ""]
        for task, m in margins.items():
            if m["share"] >= WEAK_ORIGINAL_SHARE:
                continue
            on_task = [s for s, r in first.items() if r.task == task]
            d = sum(counts[s][0] for s in on_task)
            n = sum(counts[s][1] for s in on_task)
            beats = m["difference"] > 0
            lines.append(
                f"- **{task.capitalize()} originals {'barely beat' if beats else 'do not beat'} a constant classifier.** "
                f"Their mean test accuracy {m['original']:.4f} is "
                + (f"{abs(m['difference']):.4f} {'above' if beats else 'below'}" if m["difference"] else "equal to")
                + f" the majority class's {m['majority']:.4f}: "
                + (f"they remove {100 * m['share']:.1f} % of its error (less than {100 * WEAK_ORIGINAL_SHARE:.0f} %). "
                   if beats else "always predicting the majority class does as well or better. ")
                + f"On {task.capitalize()} accuracy hardly separates a model from a constant classifier: {d} of the {n} "
                f"JSD-front points of {', '.join(on_task)} are degenerate, and claims rest on the few points that are "
                "not, or are withheld where none is left.")
    # --- the JSD floor of label-outputting fairness baselines ------------------------------------------------------
    for s, r in first.items():
        if r.requirement != "fairness" or not r.baseline_methods:
            continue
        try:
            floor = r.label_jsd_floor("test", zoos.get(r.task))
        except ValueError as exc:  # a result of another zoo than this run's
            floor, why = None, str(exc)
        else:
            why = "it was not recorded in this result and no zoo was at hand to compute it"
        ranges, below = [], []
        for b in r.baseline_methods:
            f = r.front(b)
            if len(f):
                ranges.append(f"{b} {f[:, 1].min():.4f}" + (f"–{f[:, 1].max():.4f}" if len(f) > 1 else ""))
                if floor is not None and f[:, 1].min() < floor:
                    below.append(b)
        text = (f"- **JSD of the fairness post-processors ({s}).** {', '.join(r.baseline_methods)} output labels (hard, "
                "or randomised with the probabilities they report), not soft probabilities like the original's, so "
                "their JSD to the original has a floor: ")
        if floor is not None:
            text += (f"the original models' own labels are at mean JSD {floor:.4f} to their probabilities "
                     f"({r.info.get('n_test_models', '?')} test models, test split), and a method whose outputs are 0/1 "
                     "probabilities cannot go below that. ")
        else:
            text += f"(its value is unknown here: {why}). "
        if ranges:
            text += "Their chosen test points' JSD: " + "; ".join(ranges) + ". "
        if below:
            text += (f"{', '.join(below)} {'goes' if len(below) == 1 else 'go'} below the floor: randomised rules, whose "
                     "reported label probabilities are not all 0 or 1. ")
        text += ("The fronts against " + " and ".join(FRONT_AXES[a][0] for a in r.axes if a != "jsd")
                 + " (beside the JSD front) judge editors and post-processors alike on labels.")
        lines.append(text)
    # --- non-finite values -------------------------------------------------------------------------------------
    found = []
    for s, runs in results.items():
        for k in seeds:
            if k not in runs or runs[k].nonfinite_total == 0:
                continue
            r = runs[k]
            parts = [f"{name} {a}: {nf['validation']} validation / {nf['test']} test"
                     for name, m in r.methods.items() for a in r.axes
                     for nf in [m.nonfinite_points(a)] if nf["validation"] or nf["test"]]
            found.append(f"{s}" + (f" seed {k}" if len(seeds) > 1 else "") + f": {r.nonfinite_total} ({'; '.join(parts)})")
    if found:
        lines.append("- **Non-finite values.** Points with a non-finite mean (a NaN or infinite value on some model) are "
                     "left out of the fronts and counted, not dropped silently (a run left out on validation cannot be "
                     "chosen): " + " — ".join(found) + ". Each setting's section has the table.")
    else:
        lines.append("- **Non-finite values.** None: every point of every method, setting and seed is finite.")
    return lines + [""]


def write_report(path: Path, *, args, plan: Plan, argv: list[str], started: str, log: Log, zoos: dict, seeds: list[int],
                 results: dict, compositions: dict, sample_effs: dict, editors: dict, matched: dict | None = None) -> None:
    """REPORT.md. ``results``: setting -> seed -> ProtocolResult; ``compositions`` / ``sample_effs``: seed -> result;
    ``editors``: setting -> seed -> editors. With several seeds every hypervolume table gives mean ± sd over the
    seeds; the per-seed details (chosen points, dominance, timing, lambda sweeps, matched comparisons) are the
    first seed's, each seed's own reports are in ``seed-<s>/``."""
    from hubedit.metrics.pareto import to_markdown
    from hubedit.evaluation.protocol import FRONT_AXES, axis_plot_name, machine_info
    from hubedit.evaluation.seeds import (
        composition_seed_table,
        mean_sd,
        protocol_seed_table,
        sample_efficiency_seed_table,
        summary_seed_table,
    )
    from tabulate import tabulate

    import pandas as pd

    many = len(seeds) > 1
    s0 = seeds[0]
    first = _first_seed(results, seeds)
    of_first = f" — seed {s0} (each seed's in `seed-<s>/`)" if many else ""
    m = machine_info()
    lines = [f"# hubedit: the paper's results reproduced — preset `{args.preset}`{' (QUICK SMOKE RUN)' if args.quick else ''}", ""]
    if args.quick:
        lines += ["> `--quick`: a smoke run of the pipeline (a dozen configurations trained 2 epochs, editors trained "
                  "for a few steps, 3 models per split). The numbers show that every stage runs, not what the method "
                  "achieves.", ""]
    lines += [
        "## How this was made", "",
        "```", "python " + " ".join(shlex.quote(a) for a in argv), "```", "",
        f"- started: {started}; finished: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; wall time {time.perf_counter() - log.t0:.1f} s",
        f"- machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads), CUDA: {m['cuda'] or 'none'}, python {m['python']}, hubedit {m.get('hubedit', '?')}",
        f"- zoo preset `{plan.zoo_preset}`" + (f", n_configs={plan.n_configs}" if plan.n_configs else "")
        + (f", epochs={plan.zoo_epochs}" if plan.zoo_epochs else "") + f", seed {args.seed}",
        f"- run seed{'s' if many else ''}: {', '.join(map(str, seeds))} (editor training, seeded baselines); models: subset "
        f"seed {args.subset_seed}, the same for every seed",
        f"- editor training: {plan.train}; editors: {args.editors}, variants: {args.variants}",
        f"- per-lambda grids: {plan.lambdas}; lambda-conditioned ranges: {plan.lam_ranges} "
        f"(evaluated at {plan.lambda_grid_points} log-spaced lambdas)",
        f"- protocol options: {plan.protocol}",
        "",
    ]
    if many:
        lines += [f"**{len(seeds)} seeds.** Every hypervolume table gives the mean ± the sample standard deviation over "
                  "the seeds (ddof=1: divided by n - 1), e.g. `0.1234 ± 0.0012`; a cell that only some seeds have says "
                  "how many. Each seed trains its own editors (editor seed) and runs the seeded baselines (Random, "
                  "SNIP, Lottery Ticket, FS & Retrain, permutation importance) with it, on the same zoo and the same "
                  f"models (drawn once with subset seed {args.subset_seed} where their number is capped). Per-seed results (reports, JSON, plots) are in "
                  "`seed-<s>/`, the aggregates in `seeds.json` (recomputed from the per-seed JSON with "
                  "`hubedit.evaluation.seeds`). Chosen points, dominance, timing, lambda sweeps and matched "
                  f"comparisons are seed {s0}'s.", ""]
    lines += [
        "Stage times of this invocation (a resumed run reuses zoos, editors and evaluations: their own times are "
        "the zoos' `build s`, the editors' `train s` and each setting's `Evaluated in ... s`):", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {n} | {s:.1f} |" for n, s in log.stages],
        "",
        "## Zoos", "",
    ]
    zrows = [[t, str(z.source.get("path", "")), z.info.get("n_configs"), z.info.get("epochs"), len(z["train"]),
              len(z["validation"]), len(z["test"]), z.info.get("build_seconds")] for t, z in zoos.items()]
    lines += [tabulate(zrows, headers=["task", "folder", "configs", "epochs", "train ckpts", "validation ckpts",
                                       "test ckpts", "build s"], tablefmt="github"), ""]
    if editors:
        lines += ["## Editors", "", "Training seconds and the validation points recorded at training time "
                  "(zoo validation models, task evaluation split).", ""]
        erows = []
        for setting, by_seed in editors.items():
            for seed, eds in by_seed.items():
                for e in eds:
                    tr = e.settings.get("training", {})
                    lam = f"{e.lam:g}" if e.lam is not None else f"range {e.lam_range}"
                    front = "; ".join(f"{p['metric']:.3g}/{p['jsd']:.3g}" for p in e.settings.get("validation_front", [])[:3])
                    erows.append([setting, *([seed] if many else []), e.settings["variant"], lam, tr.get("zoo_fraction"),
                                  tr.get("train_models"), tr.get("steps"), tr.get("best_step"),
                                  None if tr.get("seconds") is None else round(tr["seconds"], 1), front])
        lines += [tabulate(erows, headers=["setting", *(["seed"] if many else []), "variant", "lambda", "zoo fraction",
                                           "train models", "steps", "best step", "train s", "val metric/JSD"],
                           tablefmt="github"), ""]

    if results:
        by_setting = {s: [runs[k] for k in seeds if k in runs] for s, runs in results.items()}
        summary = summary_seed_table(by_setting)
        lines += caveat_lines(results, seeds, zoos, args.subset_seed)
        lines += ["## Summary: hypervolume on the test split (points chosen on validation)", "",
                  "Reference point (1, ln 2) on JSD fronts, (1, 1) on label-disagreement and error fronts (fairness is "
                  "reported on all three: rows `fairness-... (disagreement)` / `(error)`); requirement axis divided by "
                  "the number of features (data minimisation) or 1. Larger is better. **Degenerate points are left "
                  "out** of every number here (runs chosen on validation among those not degenerate there, test points "
                  "degenerate on test dropped), so best editor and best baseline are chosen without them; `HV difference "
                  "with degenerate points` is the same difference with every point kept. `HV difference on baselines' "
                  "range`: best editor minus best baseline when every front is cut to the requirement range the "
                  "baselines are run on (see each setting's section).", ""]
        if many:
            lines += ["Best editor and best baseline: largest mean hypervolume over the seeds; differences are taken "
                      "within each seed, then averaged.", ""]
        if len(summary.mean):
            lines += [summary.markdown(), ""]
        axes_present = [a for a in FRONT_AXES if any(a in r.axes for runs in results.values() for r in runs.values())]
        for axis in axes_present:
            front = "" if axis == "jsd" else f" — {FRONT_AXES[axis][0]} front"
            for title, kwargs, common in (("without degenerate points", {"exclude_degenerate": True}, False),
                                          ("with all points", {}, False),
                                          ("on the baselines' range, without degenerate points",
                                           {"exclude_degenerate": True}, True)):
                frames = [pd.DataFrame({s: (runs[k].common_hypervolumes_for if common else runs[k].hypervolumes_for)(axis, **kwargs)
                                        for s, runs in results.items() if k in runs and axis in runs[k].axes})
                          for k in seeds]
                if any(len(f.columns) for f in frames):
                    lines += [f"### Hypervolume of every method{front}, {title}", "",
                              mean_sd([f for f in frames if len(f.columns)]).markdown(), ""]
        notes = coverage_notes(first)
        lines += [f"### Where the editor's front does not dominate (degenerate points left out){of_first}", ""]
        lines += notes if notes else ["The best editor's hypervolume is at least every baseline's in every setting and "
                                      "front, also on the baselines' range."]
        lines += [""]
        # timing, paper Table 1
        lines += [f"## Timing: seconds to edit one model (paper Table 1; same run, same machine per setting){of_first}", ""]
        trow = {}
        for s, r in first.items():
            for name, t in r.timing.items():
                trow.setdefault(name, {})[s] = t.median_s
        if trow:
            lines += ["Median seconds per model:", "", to_markdown(pd.DataFrame(trow).T, floatfmt=".4g"), ""]
        lines += ["What each method's time covers is listed under each setting below.", ""]
        lines += [f"## Requirement metric against lambda (validation){of_first}", "",
                  "Mean requirement metric and JSD of each editor method over the zoo's validation models (task evaluation "
                  "split) at increasing lambda: per-lambda editors, or the lambda-conditioned editor at its lambda grid.", "",
                  tabulate(lambda_rows(first), headers=["setting", "method", "lambda", "metric", "JSD",
                                                        "metric non-increasing"], tablefmt="github"), ""]
        ctable = conditioned_seed_table(results, editors, seeds)
        if ctable is not None:
            lines += ["## One lambda-conditioned editor against per-lambda editors", "",
                      "Test hypervolume of the per-lambda editors' front (one editor per lambda) and of the single "
                      "lambda-conditioned editor's front (evaluated at its lambda grid), JSD fronts without degenerate "
                      "points, with their training seconds.", "",
                      ctable.markdown(), ""]
    if matched:
        lines += [f"## Matched comparisons: editors against a baseline at the same level, model by model{of_first}", "",
                  "For each editor run and test model, the baseline is applied to the original model at exactly the level "
                  "the editor reached on that model: magnitude pruning to the same number of non-zero weights, or FS "
                  "(permutation importance on the editing split) keeping the same number of features. Mean JSD to the "
                  "original model (natural log) and accuracy on the task's test split.", ""]
        for s_, m_ in matched.items():
            lines += [f"### {s_}", "", m_.report_markdown(), ""]

    for s, runs in results.items():
        r = first[s]
        if not many:
            lines += [r.report_markdown(heading_level=2, plot_path=f"{s}-pareto.png").replace(f"## {r.title}", f"## {s}: {r.title}", 1), ""]
            continue
        present = [k for k in seeds if k in runs]
        lines += [f"## {s}: {r.title} ({len(present)} seeds)", "",
                  "Every seed's test front (one line style per seed; all points).", ""]
        for axis in r.axes:
            label = f" — {r.metric_name} vs {FRONT_AXES[axis][0]}" if len(r.axes) > 1 else ""
            lines += [f"![{r.title}{label}]({axis_plot_name(f'{s}-pareto.png', axis)})", "",
                      f"### Hypervolume over the seeds{label} (test fronts, points chosen on validation; mean ± sd)", "",
                      protocol_seed_table([runs[k] for k in present], axis).markdown(), ""]
        lines += [r.report_markdown(heading_level=3, plot_path=f"seed-{present[0]}/{s}-pareto.png")
                  .replace(f"### {r.title}", f"### {s}, seed {present[0]} in detail", 1), ""]
    if compositions:
        comps = [compositions[k] for k in seeds if k in compositions]
        if not many:
            lines += [comps[0].report_markdown(heading_level=2, plot_path="composition.png"), ""]
        else:
            c0 = comps[0]
            lines += [f"## Composition: data minimisation, then pruning ({c0.task.capitalize()}, paper A.7; "
                      f"{len(comps)} seeds)", "", "![composition](composition.png)", "",
                      "Every seed's points (one line style per seed). Baselines: "
                      f"{c0.info.get('dm_baseline', '?')} then {' / '.join(c0.prune_baselines) or '?'}.", "",
                      "### Hypervolume per DM level over the seeds (x = weights kept, y = JSD; mean ± sd)", "",
                      composition_seed_table(comps).markdown(), "",
                      c0.report_markdown(heading_level=3, plot_path=f"seed-{s0}/composition.png")
                      .replace("### Composition:", f"### Seed {s0} in detail — composition:", 1), ""]
    if sample_effs:
        ses = [sample_effs[k] for k in seeds if k in sample_effs]
        if not many:
            lines += [ses[0].report_markdown(heading_level=2, plot_path="sample_efficiency.png"), ""]
        else:
            lines += [f"## Sample efficiency: pruning editors trained on part of the zoo ({ses[0].protocol.task.capitalize()}; "
                      f"{len(ses)} seeds)", "", "![sample efficiency](sample_efficiency.png)", "",
                      "Mean test hypervolume with error bars of one sd (each seed a grey dot); baselines as dashed lines "
                      "with a band of one sd. The editors of each seed are trained on that seed's fraction of the zoo.", "",
                      "### Hypervolume by training fraction over the seeds (test; mean ± sd)", "",
                      sample_efficiency_seed_table(ses).markdown(), "",
                      ses[0].report_markdown(heading_level=3, plot_path=f"seed-{s0}/sample_efficiency.png")
                      .replace("### Sample efficiency:", f"### Seed {s0} in detail — sample efficiency:", 1), ""]
    path.write_text("\n".join(lines) + "\n")


def save_setting(name: str, runs: dict, results_dir: Path) -> None:
    """One setting's files (``runs``: seed -> result). One seed: its report, JSON and plots (one per front,
    :meth:`ProtocolResult.save`) in ``results_dir``. Several: each seed's in ``seed-<s>/``, and per front the fronts
    of every seed in one plot (``<name>-pareto.png``, ``<name>-pareto-<axis>.png``)."""
    from hubedit.evaluation.protocol import FRONT_AXES, axis_plot_name
    from hubedit.evaluation.seeds import seed_fronts_plot

    if len(runs) == 1:
        next(iter(runs.values())).save(results_dir, prefix=f"{name}-")
        return
    for seed, r in runs.items():
        r.save(results_dir / f"seed-{seed}", prefix=f"{name}-")
    first = next(iter(runs.values()))
    for axis in first.axes:
        seed_fronts_plot([{n: f for n, f in r.fronts_for(axis).items() if len(f)} for r in runs.values()],
                         results_dir / axis_plot_name(f"{name}-pareto.png", axis), xlabel=first.metric_label,
                         ylabel=f"{FRONT_AXES[axis][0]} (test)", seeds=list(runs),
                         title=f"{first.title} (test; {len(runs)} seeds)")


def save_composition(compositions: dict, results_dir: Path) -> None:
    """One seed: ``composition.{md,json,png}`` as before. Several: each seed's in ``seed-<s>/`` and every seed's
    points in ``composition.png``."""
    from hubedit.evaluation.seeds import seed_fronts_plot

    if len(compositions) == 1:
        next(iter(compositions.values())).save(results_dir)
        return
    for seed, comp in compositions.items():
        comp.save(results_dir / f"seed-{seed}")
    c0 = next(iter(compositions.values()))
    seed_fronts_plot([c.groups(with_features=False) for c in compositions.values()], results_dir / "composition.png",
                     xlabel="fraction of weights kept", seeds=list(compositions),
                     title=f"Data minimisation then pruning on {c0.task.capitalize()} ({len(compositions)} seeds)")


def save_sample_efficiency(sample_effs: dict, results_dir: Path) -> None:
    """One seed: ``sample_efficiency.{md,json,png}`` as before. Several: each seed's in ``seed-<s>/`` and the
    hypervolume by fraction with error bars in ``sample_efficiency.png``."""
    from hubedit.evaluation.seeds import sample_efficiency_seed_plot

    if len(sample_effs) == 1:
        next(iter(sample_effs.values())).save(results_dir)
        return
    for seed, se in sample_effs.items():
        se.save(results_dir / f"seed-{seed}")
    sample_efficiency_seed_plot(list(sample_effs.values()), results_dir / "sample_efficiency.png", seeds=list(sample_effs))


def write_seed_aggregates(path: Path, *, seeds: list[int], results: dict, compositions: dict, sample_effs: dict) -> None:
    """``seeds.json``: every aggregate table of the report (mean, sd with ddof=1, n; ``settings``: JSD fronts,
    ``settings_by_axis``: every front of each setting) and the per-seed JSON files they come from
    (``hubedit.evaluation.seeds`` recomputes them from those files)."""
    from hubedit.evaluation.seeds import (
        composition_seed_table,
        protocol_seed_table,
        sample_efficiency_seed_table,
        summary_seed_table,
    )

    by_setting = {s: [runs[k] for k in seeds if k in runs] for s, runs in results.items()}
    d: dict[str, Any] = {"format": "hubedit.seed-aggregates", "seeds": seeds, "ddof": 1,
                         "summary": summary_seed_table(by_setting).to_dict(),
                         "settings": {s: protocol_seed_table(r).to_dict() for s, r in by_setting.items() if r},
                         "settings_by_axis": {s: {a: protocol_seed_table(r, a).to_dict() for a in r[0].axes}
                                              for s, r in by_setting.items() if r},
                         "per_seed_files": {s: [f"seed-{k}/{s}-results.json" for k in seeds if k in runs]
                                            for s, runs in results.items()}}
    if compositions:
        d["composition"] = composition_seed_table([compositions[k] for k in seeds if k in compositions]).to_dict()
        d["per_seed_files"]["composition"] = [f"seed-{k}/composition.json" for k in seeds if k in compositions]
    if sample_effs:
        d["sample_efficiency"] = sample_efficiency_seed_table([sample_effs[k] for k in seeds if k in sample_effs]).to_dict()
        d["per_seed_files"]["sample_efficiency"] = [f"seed-{k}/sample_efficiency.json" for k in seeds if k in sample_effs]
    path.write_text(json.dumps(d, indent=2, default=str))


# ======================================================================================================
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else ["scripts/reproduce.py", *argv])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PLANS), default="tiny")
    p.add_argument("--quick", action="store_true", help="smoke run (a few minutes on 2 cores)")
    p.add_argument("--work", default=None, help="zoos, editors and cached evaluations (default runs/reproduce/<preset>[-quick])")
    p.add_argument("--results", default=None, help="report folder (default results/<preset>[-quick])")
    p.add_argument("--editors", choices=("per-lambda", "conditioned", "both"), default="per-lambda",
                   help="per-lambda editors (the paper), one lambda-conditioned editor per variant, or both")
    p.add_argument("--variants", choices=("all", "main"), default="all",
                   help="all variants (GMN + FS (GMN), Prune & Edit + Prune) or only the main one per requirement")
    p.add_argument("--settings", default=None,
                   help="comma-separated subset of dm-adult,dm-bank,fairness-adult,prune-adult,prune-bank (to use several "
                        "cores, launch with torchrun / accelerate launch instead of splitting settings by hand)")
    p.add_argument("--skip", default="", help="comma-separated: composition, sample-efficiency, matched")
    p.add_argument("--steps", type=int, default=None, help="override editor training steps")
    p.add_argument("--max-models", type=int, default=None, help="override: at most N validation / test models per setting")
    p.add_argument("--fs-retrain-epochs", type=int, default=None, help="override FS & Retrain epochs (paper: 100)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--workers", type=int, default=1,
                   help="local processes for the evaluation protocol (editors and baselines; each with --threads "
                        "threads; results identical to 1; timing in the main process). Not under a launcher, which "
                        "shares every stage: torchrun --nproc_per_node N scripts/reproduce.py ...")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the zoos, and the run seed when --seeds is not given (default 0)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated run seeds, e.g. 0,1,2: editors and seeded baselines (SNIP, Lottery Ticket, "
                        "Random, FS & Retrain) per seed on the same models (--subset-seed), cached per seed (seed 0 in "
                        "--work itself, others in --work/seed-<s>); every table gives mean ± sd over the seeds "
                        "(default: --seed alone)")
    p.add_argument("--subset-seed", type=int, default=0,
                   help="seed of the subset of validation / test models where their number is capped (the preset's "
                        "max_models, --max-models); the same for every --seeds, so that the spread over seeds is that "
                        "of the editors and baselines on fixed models (default 0)")
    p.add_argument("--force-eval", action="store_true", help="recompute evaluations even when cached")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv[1:])

    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*RejectOption.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    from hubedit import distributed
    from hubedit.evaluation.experiments import run_composition
    from hubedit.evaluation.protocol import SETTINGS

    try:
        seeds = parse_seeds(args.seeds, args.seed)
    except ValueError as exc:
        p.error(str(exc))
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and distributed.launched_world_size() > 1:
        p.error(f"--workers {args.workers} under a launcher of {distributed.launched_world_size()} processes: the "
                "launched processes already share the work; drop --workers")
    rank, size = distributed.world()  # under a launcher: joins its world before anything else

    plan = PLANS[args.preset]
    if args.quick:
        plan = quick_plan(plan)
    if args.steps:
        plan = replace(plan, train={**plan.train, "steps": args.steps},
                       sample_efficiency={**plan.sample_efficiency, "steps": args.steps})
    if args.max_models:
        plan = replace(plan, protocol={**plan.protocol, "max_models": args.max_models})
    if args.workers > 1:
        plan = replace(plan, protocol={**plan.protocol, "workers": args.workers})
    if args.fs_retrain_epochs is not None:
        plan = replace(plan, protocol={**plan.protocol, "fs_retrain_epochs": args.fs_retrain_epochs},
                       composition={**plan.composition, "fs_retrain_epochs": args.fs_retrain_epochs})
    tag = args.preset + ("-quick" if args.quick else "")
    work = Path(args.work or Path("runs") / "reproduce" / tag)
    results_dir = Path(args.results or Path("results") / tag)
    if rank == 0:
        results_dir.mkdir(parents=True, exist_ok=True)
    settings = [s.strip() for s in args.settings.split(",")] if args.settings else list(SETTINGS)
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        p.error(f"unknown settings {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    log = Log(args.progress, main=rank == 0)
    log(f"reproduce: preset {args.preset}{' (quick)' if args.quick else ''}; work {work}; results {results_dir}"
        + (f"; seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "") + (f"; {size} processes" if size > 1 else ""))

    def report() -> None:
        """REPORT.md with what there is so far (rank 0)."""
        if rank == 0:
            write_report(results_dir / "REPORT.md", args=args, plan=plan, argv=argv, started=started, log=log,
                         zoos=zoos, seeds=seeds, results=results, compositions=compositions, sample_effs=sample_effs,
                         editors=editors_by_setting, matched=matched)

    log.stage("zoos")
    tasks = sorted({SETTINGS[s][0] for s in settings} | ({"adult"} if not {"composition", "sample-efficiency"} <= skip else set()))
    zoos = {t: load_or_build_zoo(t, plan, work, args.seed, args.progress, log) for t in tasks}

    # setting -> seed -> result / editors
    results: dict[str, dict[int, Any]] = {}
    editors_by_setting: dict[str, dict[int, list]] = {}
    matched: dict = {}
    compositions: dict[int, Any] = {}
    sample_effs: dict[int, Any] = {}
    for s in settings:
        task, req = SETTINGS[s]
        log.stage(f"editors {s}")
        editors_by_setting[s] = setting_editors(s, zoos[task], req, plan, args, work, log, seeds)
        log.stage(f"evaluation {s}")
        results[s] = {}
        for seed in seeds:
            results[s][seed] = run_setting(s, zoos[task], editors_by_setting[s][seed], plan, args, seed, work, log)
        if rank == 0:
            save_setting(s, results[s], results_dir)
        # REPORT.md after every setting, so an interrupted run still leaves what it has
        log.end_stage()
        report()

    # matched comparisons (per setting, first seed) and the composition (per seed): one cached job each, shared out
    # over the processes
    jobs = [matched_job(s, zoos[SETTINGS[s][0]], editors_by_setting[s][seeds[0]], plan, args, seeds[0], work)
            for s in settings if SETTINGS[s][1] in ("prune", "minimise") and "matched" not in skip]
    if "composition" not in skip:
        log.stage("composition editors")
        c = plan.composition
        dm_eds = editors_by_setting.get("dm-adult") or setting_editors("dm-adult", zoos["adult"], "minimise", plan, args,
                                                                       work, log, seeds)
        pr_eds = editors_by_setting.get("prune-adult") or setting_editors("prune-adult", zoos["adult"], "prune", plan,
                                                                          args, work, log, seeds)

        def pick(eds, variant, n):
            """``n`` per-lambda editors spread over the grid, preferring those whose validation point is neither
            the untouched model nor everything removed (the interesting part of a composition)."""
            per = sorted([e for e in eds if e.settings["variant"] == variant and e.lam is not None], key=lambda e: e.lam)
            full = float(zoos["adult"].task.n_features) if variant in ("gmn", "fs-gmn") else 1.0
            inner = [e for e in per if any(0 < p["metric"] < full for p in e.settings.get("validation_front", []))]
            per = inner or per
            if per:
                if not n or n >= len(per):
                    return per
                picks = sorted({round(i * (len(per) - 1) / max(n - 1, 1)) for i in range(n)})
                return [per[i] for i in picks]
            return [e for e in eds if e.settings["variant"] == variant][:1]

        def same_lambdas(chosen, eds):
            """The editors of another seed at the lambdas ``chosen`` (the first seed's pick) has, so that every seed
            composes the same lambdas."""
            return [next(e for e in eds if e.settings["variant"] == ch.settings["variant"] and e.lam == ch.lam
                         and e.lam_range == ch.lam_range) for ch in chosen]

        first = seeds[0]
        dm_first = pick(dm_eds[first], "gmn", c.get("dm_lambdas", 2))
        pr_first = pick(pr_eds[first], "prune-edit", c.get("prune_lambdas", 2))
        lam_grid = lambda req: [plan.lambdas[req][0], plan.lambdas[req][-1]]  # noqa: E731 (conditioned editors only)
        from hubedit.evaluation.experiments import CompositionResult

        def composition_job(seed: int) -> CachedJob:
            dm_sel = dm_first if seed == first else same_lambdas(dm_first, dm_eds[seed])
            pr_sel = pr_first if seed == first else same_lambdas(pr_first, pr_eds[seed])
            options = dict(dm_lambdas=lam_grid("minimise"), prune_lambdas=lam_grid("prune"), dm_baseline="fs-retrain",
                           prune_baseline=list(COMPOSITION_PRUNE_BASELINES),
                           prune_keeps=tuple(c.get("prune_keeps", (0.7, 0.5, 0.3, 0.2, 0.1, 0.05))),
                           fs_retrain_epochs=c.get("fs_retrain_epochs", 100), max_models=c.get("max_models"), seed=seed,
                           subset_seed=args.subset_seed)
            key = {"options": _stable_options(options), "editors": _editors_key(dm_sel + pr_sel)}

            def compose() -> dict:
                res = run_composition(zoos["adult"], dm_sel, pr_sel, progress=args.progress and size == 1, **options)
                res.info["cache_key"] = key
                return res.to_dict()

            return CachedJob(f"composition-seed-{seed}", "evaluation", seed_work(work, seed) / "eval" / "composition.json",
                             key, _info_key, compose, CompositionResult.from_dict)

        jobs += [composition_job(seed) for seed in seeds]
    if jobs:
        log.stage("matched comparisons and composition" if "composition" not in skip else "matched comparisons")
        done = run_cached_jobs(jobs, args, log)
        matched = {j.who: r for j, r in zip(jobs, done) if not j.who.startswith("composition-seed-")}
        if "composition" not in skip:
            compositions = dict(zip(seeds, done[-len(seeds):]))
            if rank == 0:
                save_composition(compositions, results_dir)
            for seed, comp in compositions.items():
                log(f"  composition (seed {seed}): {len(comp.rows)} points, checks {comp.checks()}")
        log.end_stage()
        report()

    if "sample-efficiency" not in skip:
        log.stage("sample efficiency (training)")
        from hubedit.evaluation.experiments import fraction_editor_jobs, fraction_editors_from

        se = plan.sample_efficiency
        train = {**plan.train, "steps": se.get("steps", plan.train["steps"])}
        se_jobs = {seed: fraction_editor_jobs(seed_work(work, seed) / "editors" / "sample-efficiency",
                                              fractions=se["fractions"], lambdas=se["lambdas"], requirement="prune",
                                              variant="prune-edit", **{**train, "seed": seed}) for seed in seeds}
        trained = iter(load_or_train_editors(zoos["adult"], [j for seed in seeds for j in se_jobs[seed]], args, log))
        by_frac = {seed: fraction_editors_from([next(trained) for _ in se_jobs[seed]], se["fractions"], se["lambdas"])
                   for seed in seeds}
        editors_by_setting["sample-efficiency"] = {seed: [e for eds in by_frac[seed].values() for e in eds]
                                                   for seed in seeds}
        log.stage("sample efficiency (evaluation)")
        for seed in seeds:
            sample_effs[seed] = run_sample_efficiency_cached(zoos["adult"], by_frac[seed], results.get("prune-adult", {})
                                                             .get(seed), plan, args, seed, work, log)
            log(f"  sample efficiency (seed {seed}): " + ", ".join(
                f"{n} HV {sample_effs[seed].protocol.hypervolume(n):.4f}" for n in sample_effs[seed].fractions))
        if rank == 0:
            save_sample_efficiency(sample_effs, results_dir)

    log.end_stage()
    report()
    if rank == 0 and len(seeds) > 1:
        write_seed_aggregates(results_dir / "seeds.json", seeds=seeds, results=results, compositions=compositions,
                              sample_effs=sample_effs)
    log(f"wrote {results_dir / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
