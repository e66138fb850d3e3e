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
   then magnitude pruning (Adult);
5. sample efficiency: pruning editors trained on 10/25/50/75/100 % of the Adult zoo.

Writes ``RESULTS/REPORT.md`` (all tables, the exact command, the machine, timestamps) and the PNGs, plus one
report / JSON per setting. ``RESULTS`` defaults to ``results/<preset>`` (``results/<preset>-quick`` with
``--quick``).

    python scripts/reproduce.py --preset tiny --quick          # smoke run, a few minutes on 2 cores
    python scripts/reproduce.py --preset small --threads 1     # the reference results (hours)
    python scripts/reproduce.py --preset small --editors both --skip sample-efficiency

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
    # Sized for a 2-core CPU machine in about two hours of compute (launch two processes: torchrun --nproc_per_node 2
    # scripts/reproduce.py --preset small): smaller editors trained for fewer steps than the
    # paper's, four lambdas per requirement, 24 validation / 24 test models per setting, FS & Retrain at the
    # paper's 100 epochs on four feature counts.
    "small": Plan(
        "small",
        train=dict(steps=600, models_per_step=16, points_per_step=512, hidden=32, layers=3, eval_every=100),
        lambdas=SMALL_LAMBDAS,
        lam_ranges=LAM_RANGES,
        protocol=dict(fs_retrain_epochs=100, fs_retrain_n_keep=(2, 4, 7, 11), max_models=24, timing_models=10),
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
                      fs_retrain_n_keep=(1, 4, 10), prune_keeps=(0.7, 0.3, 0.1, 0.05)),
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


def setting_editors(setting: str, zoo, requirement: str, plan: Plan, args, work: Path, log: Log) -> list:
    from hubedit.evaluation.experiments import EditorJob

    variants = SETTING_VARIANTS[requirement] if args.variants == "all" else (MAIN_VARIANT[requirement],)
    jobs = []
    for variant in variants:
        base = work / "editors" / setting / variant
        if args.editors in ("per-lambda", "both"):
            for lam in plan.lambdas[requirement]:
                jobs.append(EditorJob(requirement, base / f"lam-{fmt_lam(lam)}", variant, lam=lam, train=dict(plan.train)))
        if args.editors in ("conditioned", "both"):
            lo, hi = plan.lam_ranges[requirement]
            jobs.append(EditorJob(requirement, base / f"cond-{fmt_lam(lo)}-{fmt_lam(hi)}", variant, lam_range=(lo, hi),
                                  train=dict(plan.train)))
    return load_or_train_editors(zoo, jobs, args, log)


def _editors_key(editors) -> list[str]:
    """Which editors, trained how far (a cached evaluation is stale once an editor is trained on)."""
    return sorted(
        f"{e.source.get('path') or e.source} steps={e.settings['training'].get('steps')} "
        f"best={e.settings['training'].get('best_objective')}" for e in editors
    )


def _cache_key(cfg, editors, baselines) -> dict:
    return {
        "config": {k: v for k, v in cfg.to_dict().items() if k != "workers"},  # workers do not change results
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


def run_setting(setting: str, zoo, editors, plan: Plan, args, work: Path, log: Log):
    from hubedit.evaluation.protocol import SETTINGS, ProtocolConfig, ProtocolResult, default_lambda_grid, run_protocol

    _, requirement = SETTINGS[setting]
    lo, hi = plan.lam_ranges[requirement]
    cfg = ProtocolConfig.from_dict({**plan.protocol, "lambda_grid": default_lambda_grid((lo, hi), plan.lambda_grid_points),
                                    "seed": args.seed})
    key = _cache_key(cfg, editors, "all")
    cache = work / "eval" / f"{setting}.json"
    d = read_cache(cache, key, _info_key, args, log, setting, "evaluation")
    if d is not None:
        return ProtocolResult.from_dict(d)
    res = run_protocol(zoo, requirement, editors, baselines="all", config=cfg, progress=args.progress)
    res.info["cache_key"] = key
    write_cache(cache, res.to_dict())
    log(f"  {setting}: evaluated in {res.info['seconds']:.1f} s")
    return res


def matched_job(setting: str, zoo, editors, plan: Plan, args, work: Path) -> CachedJob:
    """Editors against magnitude pruning / FS at the editor's own per-model level (cached like evaluations)."""
    from hubedit.evaluation.matched import MatchedResult, matched_comparison
    from hubedit.evaluation.protocol import SETTINGS, default_lambda_grid

    _, requirement = SETTINGS[setting]
    grid = default_lambda_grid(plan.lam_ranges[requirement], plan.lambda_grid_points)
    options = {"max_models": plan.protocol.get("max_models"), "seed": args.seed, "lambda_grid": list(grid),
               "pfi_repeats": plan.protocol.get("pfi_repeats", 5)}
    key = {"options": options, "editors": _editors_key(editors)}
    return CachedJob(setting, "matched comparison", work / "eval" / f"{setting}-matched.json", key,
                     lambda d: d.get("cache_key"),
                     lambda: {**matched_comparison(zoo, editors, requirement, **options).to_dict(), "cache_key": key},
                     MatchedResult.from_dict)


# ======================================================================================================
# report
# ======================================================================================================
def best_methods(res) -> tuple[str, str, str] | None:
    """(best editor, best baseline, best baseline on the baselines' range) by test hypervolume, among methods with
    a front; None when the setting lacks editors or baselines."""
    hvs, chv = res.hypervolumes, res.common_hypervolumes
    eds = [e for e in res.editor_methods if len(res.methods[e].test_front)]
    bases = [b for b in res.baseline_methods if len(res.methods[b].test_front)]
    if not eds or not bases:
        return None
    return max(eds, key=hvs.__getitem__), max(bases, key=hvs.__getitem__), max(bases, key=chv.__getitem__)


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for setting, res in results.items():
        best = best_methods(res)
        if best is None:
            continue
        be, bb, bbc = best
        hvs, chv, dom = res.hypervolumes, res.common_hypervolumes, res.dominance_table()
        rows.append({
            "setting": setting, "best editor": be, "editor HV": hvs[be], "best baseline": bb, "baseline HV": hvs[bb],
            "HV difference": hvs[be] - hvs[bb], "editor ≥ every baseline": "yes" if hvs[be] >= hvs[bb] else "NO",
            "HV difference on baselines' range": chv[be] - chv[bbc],
            "share of best baseline's front dominated by the editor": dom.loc[be, bb],
        })
    return rows


def coverage_notes(results: dict) -> list[str]:
    """By how much the best editor misses the best baseline (hypervolume, and on the baselines' range), and where."""
    import numpy as np

    notes = []
    for setting, res in results.items():
        best = best_methods(res)
        if best is None:
            continue
        be, bb, bbc = best
        hvs, chv = res.hypervolumes, res.common_hypervolumes
        if hvs[be] >= hvs[bb] and chv[be] >= chv[bbc]:
            continue
        ef, bf = res.methods[be].test_front, res.methods[bb].test_front
        # at each baseline point: the editor's best JSD among its points with at most that metric value
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
            text = (f"- **{setting}**: {be} trails {bb} by {hvs[bb] - hvs[be]:.4f} hypervolume "
                    f"({(hvs[bb] - hvs[be]) / max(hvs[bb], 1e-12) * 100:.1f} % of the baseline's)")
        else:
            text = f"- **{setting}**: {be} leads {bb} by {hvs[be] - hvs[bb]:.4f} hypervolume"
        if chv[be] < chv[bbc]:
            text += (f"; on the baselines' range ({res.metric_name} >= {res.common_x:.3g}) it trails {bbc} by "
                     f"{chv[bbc] - chv[be]:.4f}")
            if hvs[be] >= hvs[bb]:
                text += ": its lead comes from points below anything the baselines are run at"
        else:
            text += (f"; on the baselines' range ({res.metric_name} >= {res.common_x:.3g}) it leads {bbc} by "
                     f"{chv[be] - chv[bbc]:.4f}")
        text += (f". Editor's chosen test points ({res.metric_name}/JSD): "
                 + ", ".join(f"{x:.3g}/{y:.3g}" for x, y in ef[:8])
                 + f"; {bb}'s: {res.metric_name} {bf[:, 0].min():.3g}–{bf[:, 0].max():.3g}, JSD {bf[:, 1].min():.3g}–"
                 f"{bf[:, 1].max():.3g} (original models: {res.metric_name} {orig.get('test_metric', float('nan')):.3g}). ")
        if uncovered:
            text += f"{uncovered} of {bb}'s {len(bf)} points lie below every editor point. "
        if worse:
            text += (f"At {len(worse)} of {len(gaps)} of {bb}'s points the editor's best JSD at that {res.metric_name} or "
                     f"lower is higher, by up to {max(worse):.4g} (median {float(np.median(worse)):.4g}).")
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
    """Per setting and variant: hypervolume (test) and training seconds of the per-lambda editors together
    against the one lambda-conditioned editor."""
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
            dom = res.dominance_table()
            rows.append([setting, name, n_per, res.hypervolumes[name], round(per_s, 1), res.hypervolumes[cond], round(cond_s, 1),
                         res.hypervolumes[cond] - res.hypervolumes[name], dom.loc[cond, name], dom.loc[name, cond]])
    return rows


def _label(editor) -> str:
    from hubedit.evaluation.protocol import editor_label

    return editor_label(editor)


def write_report(path: Path, *, args, plan: Plan, argv: list[str], started: str, log: Log, zoos: dict, results: dict,
                 composition, sample_eff, editors: dict, matched: dict | None = None) -> None:
    from hubedit.metrics.pareto import to_markdown
    from hubedit.evaluation.protocol import machine_info
    from tabulate import tabulate

    import pandas as pd

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
        f"- editor training: {plan.train}; editors: {args.editors}, variants: {args.variants}",
        f"- per-lambda grids: {plan.lambdas}; lambda-conditioned ranges: {plan.lam_ranges} "
        f"(evaluated at {plan.lambda_grid_points} log-spaced lambdas)",
        f"- protocol options: {plan.protocol}",
        "",
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
        for setting, eds in editors.items():
            for e in eds:
                tr = e.settings.get("training", {})
                lam = f"{e.lam:g}" if e.lam is not None else f"range {e.lam_range}"
                front = "; ".join(f"{p['metric']:.3g}/{p['jsd']:.3g}" for p in e.settings.get("validation_front", [])[:3])
                erows.append([setting, e.settings["variant"], lam, tr.get("zoo_fraction"), tr.get("train_models"),
                              tr.get("steps"), tr.get("best_step"),
                              None if tr.get("seconds") is None else round(tr["seconds"], 1), front])
        lines += [tabulate(erows, headers=["setting", "variant", "lambda", "zoo fraction", "train models", "steps",
                                           "best step", "train s", "val metric/JSD"], tablefmt="github"), ""]

    if results:
        rows = summary_rows(results)
        lines += ["## Summary: hypervolume on the test split (points chosen on validation)", "",
                  "Reference point (1, ln 2); requirement axis divided by the number of features (data minimisation) "
                  "or 1. Larger is better. `HV difference on baselines' range`: best editor minus best baseline when every "
                  "front is cut to the requirement range the baselines are run on (see each setting's section).", ""]
        if rows:
            lines += [to_markdown(pd.DataFrame(rows).set_index("setting")), ""]
        hv = pd.DataFrame({s: r.hypervolumes for s, r in results.items()})
        lines += ["### Hypervolume of every method", "", to_markdown(hv), ""]
        notes = coverage_notes(results)
        lines += ["### Where the editor's front does not dominate", ""]
        lines += notes if notes else ["The best editor's hypervolume is at least every baseline's in every setting, "
                                      "also on the baselines' range."]
        lines += [""]
        # timing, paper Table 1
        lines += ["## Timing: seconds to edit one model (paper Table 1; same run, same machine per setting)", ""]
        trow = {}
        for s, r in results.items():
            for name, t in r.timing.items():
                trow.setdefault(name, {})[s] = t.median_s
        if trow:
            lines += ["Median seconds per model:", "", to_markdown(pd.DataFrame(trow).T, floatfmt=".4g"), ""]
        lines += ["What each method's time covers is listed under each setting below.", ""]
        lines += ["## Requirement metric against lambda (validation)", "",
                  "Mean requirement metric and JSD of each editor method over the zoo's validation models (task evaluation "
                  "split) at increasing lambda: per-lambda editors, or the lambda-conditioned editor at its lambda grid.", "",
                  tabulate(lambda_rows(results), headers=["setting", "method", "lambda", "metric", "JSD",
                                                          "metric non-increasing"], tablefmt="github"), ""]
        crow = conditioned_rows(results, editors)
        if crow:
            lines += ["## One lambda-conditioned editor against per-lambda editors", "",
                      "Test hypervolume of the per-lambda editors' front (one editor per lambda) and of the single "
                      "lambda-conditioned editor's front (evaluated at its lambda grid), with their training seconds.", "",
                      tabulate(crow, headers=["setting", "method", "per-lambda editors", "per-lambda HV", "per-lambda train s",
                                              "conditioned HV", "conditioned train s", "HV difference",
                                              "share of per-lambda front dominated by conditioned",
                                              "share of conditioned front dominated by per-lambda"],
                               tablefmt="github", floatfmt=".4f"), ""]
    if matched:
        lines += ["## Matched comparisons: editors against a baseline at the same level, model by model", "",
                  "For each editor run and test model, the baseline is applied to the original model at exactly the level "
                  "the editor reached on that model: magnitude pruning to the same number of non-zero weights, or FS "
                  "(permutation importance on the editing split) keeping the same number of features. Mean JSD to the "
                  "original model (natural log) and accuracy on the task's test split.", ""]
        for s_, m in matched.items():
            lines += [f"### {s_}", "", m.report_markdown(), ""]

    for s, r in results.items():
        lines += [r.report_markdown(heading_level=2, plot_path=f"{s}-pareto.png").replace(f"## {r.title}", f"## {s}: {r.title}", 1), ""]
    if composition is not None:
        lines += [composition.report_markdown(heading_level=2, plot_path="composition.png"), ""]
    if sample_eff is not None:
        lines += [sample_eff.report_markdown(heading_level=2, plot_path="sample_efficiency.png"), ""]
    path.write_text("\n".join(lines) + "\n")


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force-eval", action="store_true", help="recompute evaluations even when cached")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv[1:])

    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*RejectOption.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    from hubedit import distributed
    from hubedit.evaluation.experiments import run_composition, run_sample_efficiency, train_fraction_editors
    from hubedit.evaluation.protocol import SETTINGS

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
        + (f"; {size} processes" if size > 1 else ""))

    def report(composition=None, sample_eff=None) -> None:
        """REPORT.md with what there is so far (rank 0)."""
        if rank == 0:
            write_report(results_dir / "REPORT.md", args=args, plan=plan, argv=argv, started=started, log=log,
                         zoos=zoos, results=results, composition=composition, sample_eff=sample_eff,
                         editors=editors_by_setting, matched=matched)

    log.stage("zoos")
    tasks = sorted({SETTINGS[s][0] for s in settings} | ({"adult"} if not {"composition", "sample-efficiency"} <= skip else set()))
    zoos = {t: load_or_build_zoo(t, plan, work, args.seed, args.progress, log) for t in tasks}

    results, editors_by_setting, matched = {}, {}, {}
    for s in settings:
        task, req = SETTINGS[s]
        log.stage(f"editors {s}")
        editors_by_setting[s] = setting_editors(s, zoos[task], req, plan, args, work, log)
        log.stage(f"evaluation {s}")
        results[s] = run_setting(s, zoos[task], editors_by_setting[s], plan, args, work, log)
        if rank == 0:
            results[s].save(results_dir, prefix=f"{s}-")
        # REPORT.md after every setting, so an interrupted run still leaves what it has
        log.end_stage()
        report()

    # matched comparisons (per setting) and the composition: one cached job each, shared out over the processes
    jobs = [matched_job(s, zoos[SETTINGS[s][0]], editors_by_setting[s], plan, args, work) for s in settings
            if SETTINGS[s][1] in ("prune", "minimise") and "matched" not in skip]
    if "composition" not in skip:
        log.stage("composition editors")
        c = plan.composition
        dm_eds = editors_by_setting.get("dm-adult") or setting_editors("dm-adult", zoos["adult"], "minimise", plan, args, work, log)
        pr_eds = editors_by_setting.get("prune-adult") or setting_editors("prune-adult", zoos["adult"], "prune", plan, args, work, log)

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

        dm_sel, pr_sel = pick(dm_eds, "gmn", c.get("dm_lambdas", 2)), pick(pr_eds, "prune-edit", c.get("prune_lambdas", 2))
        lam_grid = lambda req: [plan.lambdas[req][0], plan.lambdas[req][-1]]  # noqa: E731 (conditioned editors only)
        from hubedit.evaluation.experiments import CompositionResult

        options = dict(dm_lambdas=lam_grid("minimise"), prune_lambdas=lam_grid("prune"), dm_baseline="fs-retrain",
                       prune_baseline="magnitude", prune_keeps=tuple(c.get("prune_keeps", (0.7, 0.5, 0.3, 0.2, 0.1, 0.05))),
                       fs_retrain_epochs=c.get("fs_retrain_epochs", 100), max_models=c.get("max_models"), seed=args.seed)
        key = {"options": options, "editors": _editors_key(dm_sel + pr_sel)}

        def compose() -> dict:
            res = run_composition(zoos["adult"], dm_sel, pr_sel, progress=args.progress and size == 1, **options)
            res.info["cache_key"] = key
            return res.to_dict()

        jobs.append(CachedJob("composition", "evaluation", work / "eval" / "composition.json", key, _info_key, compose,
                              CompositionResult.from_dict))
    composition = None
    if jobs:
        log.stage("matched comparisons and composition" if "composition" not in skip else "matched comparisons")
        done = run_cached_jobs(jobs, args, log)
        matched = {j.who: r for j, r in zip(jobs, done) if j.who != "composition"}
        if "composition" not in skip:
            composition = done[-1]
            if rank == 0:
                composition.save(results_dir)
            log(f"  composition: {len(composition.rows)} points, checks {composition.checks()}")
        log.end_stage()
        report(composition)

    sample_eff = None
    if "sample-efficiency" not in skip:
        log.stage("sample efficiency (training)")
        se = plan.sample_efficiency
        train = {**plan.train, "steps": se.get("steps", plan.train["steps"])}
        by_frac = train_fraction_editors(zoos["adult"], fractions=se["fractions"], lambdas=se["lambdas"],
                                         requirement="prune", variant="prune-edit",
                                         out=work / "editors" / "sample-efficiency", progress=args.progress and log.main,
                                         **train)
        editors_by_setting["sample-efficiency"] = [e for eds in by_frac.values() for e in eds]
        log.stage("sample efficiency (evaluation)")
        from hubedit.evaluation.protocol import ProtocolConfig

        cfg = ProtocolConfig.from_dict({**plan.protocol, "seed": args.seed})
        base = results.get("prune-adult")
        sample_eff = run_sample_efficiency(zoos["adult"], by_frac, baseline_result=base, config=cfg, progress=args.progress)
        if rank == 0:
            sample_eff.save(results_dir)
        log("  sample efficiency: " + ", ".join(f"{n} HV {sample_eff.protocol.hypervolume(n):.4f}" for n in sample_eff.fractions))

    log.end_stage()
    report(composition, sample_eff)
    log(f"wrote {results_dir / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
