"""scripts/reproduce.py end to end on a smoke plan (`--preset tiny --quick`, Bank settings only): the report has
every section, the matched comparison agrees with the per-setting results, and a second run reuses the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubedit.metrics import LN2

ROOT = Path(__file__).resolve().parents[1]


def _run(work: Path, results: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--preset", "tiny", "--quick",
           "--settings", "prune-bank,dm-bank", "--skip", "composition,sample-efficiency", "--editors", "both",
           "--variants", "main", "--threads", "1", "--no-progress", "--work", str(work), "--results", str(results)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    first = _run(base / "work", base / "results")
    return base, first


def test_report_has_every_section(run):
    base, _ = run
    report = (base / "results" / "REPORT.md").read_text()
    for heading in ("## Summary: hypervolume on the test split", "## Timing: seconds to edit one model",
                    "## Requirement metric against lambda (validation)",
                    "## One lambda-conditioned editor against per-lambda editors",
                    "## Matched comparisons", "### prune-bank", "### dm-bank", "## prune-bank:", "## dm-bank:"):
        assert heading in report, heading
    assert "python scripts/reproduce.py --preset tiny --quick" in report.replace(str(ROOT / "scripts") + "/", "scripts/")
    for setting in ("prune-bank", "dm-bank"):
        assert (base / "results" / f"{setting}-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_matched_comparison_levels_agree_with_the_protocol(run):
    """The matched comparison edits the protocol's test models: its mean level per per-lambda editor equals the
    protocol's test metric of the same editor."""
    base, _ = run
    for setting in ("prune-bank", "dm-bank"):
        matched = json.loads((base / "work" / "eval" / f"{setting}-matched.json").read_text())
        proto = json.loads((base / "work" / "eval" / f"{setting}.json").read_text())
        methods = proto["methods"] if isinstance(proto["methods"], list) else list(proto["methods"].values())
        per_lambda = next(m for m in methods if m["kind"] == "editor" and "λ-cond" not in m["name"])
        rows = [r for r in matched["rows"] if r["method"] == per_lambda["name"]]
        assert len(rows) == len(per_lambda["test"]) > 0
        for row, (metric, _jsd) in zip(sorted(rows, key=lambda r: r["lambda"]), per_lambda["test"]):
            assert row["level"] == pytest.approx(metric, abs=1e-9)
            assert 0 <= row["editor_better_share"] <= 1


def test_second_run_reuses_the_cache(run):
    base, _ = run
    before = {p.name: p.read_text() for p in (base / "work" / "eval").iterdir()}
    second = _run(base / "work", base / "results2")
    assert "reusing evaluation" in second.stdout and "reusing matched comparison" in second.stdout
    assert "trained " not in second.stdout
    assert {p.name: p.read_text() for p in (base / "work" / "eval").iterdir()} == before


# --------------------------------------------------------------------------------------------------
# several seeds (--seeds)
# --------------------------------------------------------------------------------------------------
def _script_module():
    """scripts/reproduce.py as a module (its main() only runs when executed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_seed_folders_and_parsing():
    mod = _script_module()
    work = Path("w")
    assert mod.seed_work(work, 0) == work  # seed 0: the caches of runs made before --seeds
    assert mod.seed_work(work, 2) == work / "seed-2"
    assert mod.parse_seeds(None, 3) == [3] and mod.parse_seeds("0,1, 2", 0) == [0, 1, 2]
    for bad in ("0,0", "a,1", "-1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            mod.parse_seeds(bad, 0)
    assert mod.COMPOSITION_PRUNE_BASELINES == ("snip", "magnitude")


def _run_seeds(work: Path, results: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--preset", "tiny", "--quick", "--seeds", "0,1",
           "--variants", "main", "--threads", "1", "--no-progress", "--work", str(work), "--results", str(results),
           *extra]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_seeds_cache_per_seed_and_report_mean_and_sd(tmp_path):
    """`--seeds 0,1` on one setting: editors trained per seed (seed 0 in today's folders, seed 1 in `seed-1/`), the
    protocol run per seed with that seed on the same models, per-seed JSON kept, and the report's tables are mean ± sd (ddof=1) of the
    per-seed results, recomputed here from the per-seed JSON."""
    from hubedit.evaluation.protocol import ProtocolResult
    from hubedit.evaluation.seeds import protocol_seed_table, summary_seed_table

    work, results = tmp_path / "work", tmp_path / "results"
    _run_seeds(work, results, "--settings", "prune-bank", "--skip", "composition,sample-efficiency,matched",
               "--steps", "4", "--max-models", "2")
    for seed, folder in ((0, work), (1, work / "seed-1")):
        cfg = json.loads((folder / "editors" / "prune-bank" / "prune-edit" / "lam-0.01" / "config.json").read_text())
        assert cfg["training"]["seed"] == seed
        assert json.loads((folder / "eval" / "prune-bank.json").read_text())["info"]["config"]["seed"] == seed
    runs = [ProtocolResult.load(results / f"seed-{s}" / "prune-bank-results.json") for s in (0, 1)]
    assert runs[0].hypervolumes != runs[1].hypervolumes  # the seeds differ ...
    for key in ("test_model_ids", "val_model_ids"):  # ... on the same models (subset seed 0 in both)
        assert runs[0].info[key] == runs[1].info[key] and len(runs[0].info[key]) == 2
    assert [r.info["config"]["subset_seed"] for r in runs] == [0, 0]
    table = protocol_seed_table(runs)
    aggregates = json.loads((results / "seeds.json").read_text())
    assert aggregates["seeds"] == [0, 1] and aggregates["ddof"] == 1
    assert aggregates["settings"]["prune-bank"] == json.loads(json.dumps(table.to_dict()))
    report = (results / "REPORT.md").read_text()
    assert "ddof=1" in report and "## prune-bank: Weight pruning on Bank (2 seeds)" in report
    for name in ("SNIP", "Magnitude", "GMN - Prune & Edit"):
        cell = table.cell(name, "hypervolume")
        assert " ± " in cell and f"| {cell} " in report, (name, cell)
    summary = summary_seed_table({"prune-bank": runs})
    assert summary.cell("prune-bank", "HV difference") in report
    assert (results / "prune-bank-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (results / "prune-bank-results.json").exists()  # per-seed files live in seed-<s>/


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HUBEDIT_LONG_TESTS") != "1",
                    reason="about 40 s on 2 cores (HUBEDIT_LONG_TESTS=1 runs it)")
def test_two_seeds_composition_and_sample_efficiency(tmp_path):
    """`--quick --seeds 0,1` with the composition and sample efficiency: per seed, FS & Retrain is followed by SNIP
    and by magnitude pruning, and the fraction editors are trained with that seed; the report aggregates both."""
    from hubedit.evaluation.experiments import CompositionResult, SampleEfficiencyResult
    from hubedit.evaluation.seeds import composition_seed_table, sample_efficiency_seed_table

    work, results = tmp_path / "work", tmp_path / "results"
    _run_seeds(work, results, "--settings", "prune-adult", "--skip", "matched")
    comps = [CompositionResult.from_dict(json.loads((results / f"seed-{s}" / "composition.json").read_text()))
             for s in (0, 1)]
    for seed, comp in zip((0, 1), comps):
        assert comp.info["seed"] == seed and comp.prune_baselines == ["SNIP", "Magnitude"]
        assert {"FS & Retrain → SNIP", "FS & Retrain → Magnitude"} <= {r["method"] for r in comp.rows}
        assert comp.checks() == {"dropped_features_stay_dropped": True, "fewer_weights_after_pruning": True}
    # both seeds compose the same lambdas
    assert [r["dm"] for r in comps[0].rows] == [r["dm"] for r in comps[1].rows]
    ses = [SampleEfficiencyResult.from_dict(json.loads((results / f"seed-{s}" / "sample_efficiency.json").read_text()))
           for s in (0, 1)]
    cfg = json.loads((work / "seed-1" / "editors" / "sample-efficiency" / "frac-0.5" / "lam-0.3" / "config.json").read_text())
    assert cfg["training"]["seed"] == 1 and cfg["training"]["zoo_fraction"] == 0.5
    report = (results / "REPORT.md").read_text()
    comp_table, se_table = composition_seed_table(comps), sample_efficiency_seed_table(ses)
    assert comp_table.cell(("FS & Retrain → SNIP", comps[0].rows[-1]["dm"]), "hypervolume (weights kept, JSD)") in report
    assert se_table.cell("GMN 50%", "hypervolume") in report
    aggregates = json.loads((results / "seeds.json").read_text())
    assert aggregates["composition"] == json.loads(json.dumps(comp_table.to_dict()))
    assert aggregates["sample_efficiency"] == json.loads(json.dumps(se_table.to_dict()))
    for png in ("composition.png", "sample_efficiency.png", "prune-adult-pareto.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# the plans, cache keys and what the report claims (fake results: fast)
# --------------------------------------------------------------------------------------------------
def test_fs_retrain_runs_at_every_count_fs_runs_at_in_every_plan():
    from hubedit.evaluation.protocol import ProtocolConfig

    mod = _script_module()
    plans = [*mod.PLANS.values(), *(mod.quick_plan(p) for p in mod.PLANS.values())]
    for plan in plans:
        cfg = ProtocolConfig.from_dict(plan.protocol)
        # FS at 1..F-1 (dm_n_keep unset), so FS & Retrain (defaulting to FS's counts) is at every one of them
        assert cfg.dm_n_keep is None and cfg.fs_retrain_n_keep is None, plan.zoo_preset


def test_cache_keys_stay_valid_only_where_the_models_are_the_same():
    """Caches written before the subset seed drew their models with the run seed: seed 0's key is unchanged (the
    same models), every other seed's changes (other models now)."""
    from hubedit.evaluation.protocol import ProtocolConfig

    mod = _script_module()
    assert mod._stable_options({"seed": 0, "subset_seed": 0, "max_models": 3}) == {"seed": 0, "max_models": 3}
    assert mod._stable_options({"seed": 2, "subset_seed": 0}) == {"seed": 2, "subset_seed": 0}

    def old_key(seed):  # what a run before the subset seed wrote
        cfg = {k: v for k, v in ProtocolConfig(seed=seed).to_dict().items() if k not in ("workers", "subset_seed")}
        return json.loads(json.dumps({"config": cfg, "editors": [], "baselines": "all"}))

    def new_key(seed):
        return json.loads(json.dumps(mod._cache_key(ProtocolConfig(seed=seed, subset_seed=0), [], "all")))

    assert new_key(0) == old_key(0)
    assert new_key(1) != old_key(1) and new_key(1)["config"]["subset_seed"] == 0


MAJORITY = {"validation": 0.75, "test": 0.75}


def _runs(name, kind, points, disagreement=0.1):
    from hubedit.evaluation.protocol import MethodResult

    pts = [[x, y] for x, y, _ in points]
    acc = [a for _, _, a in points]
    strengths = [f"lam={0.1 * (i + 1):g}" if kind == "editor" else str(i) for i in range(len(points))]
    return MethodResult(name, kind, strengths, pts, pts, acc, acc,
                        val_disagreement=[disagreement] * len(points), test_disagreement=[disagreement] * len(points))


def _result(task, requirement, methods, *, majority=MAJORITY, original_accuracy=0.9, label_jsd=None, ids=("a", "b")):
    from hubedit.evaluation.protocol import ProtocolResult

    original = {"test_accuracy": original_accuracy, "val_accuracy": original_accuracy, "test_metric": 1.0, "val_metric": 1.0}
    if label_jsd is not None:
        original["test_label_jsd"] = label_jsd
    info = {"majority_accuracy": dict(majority), "original": original, "n_test_models": len(ids),
            "n_val_models": len(ids), "test_model_ids": list(ids), "val_model_ids": list(ids)}
    return ProtocolResult(task, requirement, "m", "metric", 1.0, {m.name: m for m in methods}, info=info)


def test_best_methods_and_notes_leave_degenerate_points_out():
    mod = _script_module()
    editor = _runs("GMN", "editor", [(0.4, 0.2, 0.9)])
    mag = _runs("Magnitude", "baseline", [(0.3, 0.1, 0.9)])
    snip = _runs("SNIP", "baseline", [(0.1, 0.05, 0.6)])  # the best front, but degenerate (0.6 <= 0.75)
    res = _result("toy", "prune", [editor, mag, snip])
    assert mod.best_methods(res) == ("GMN", "Magnitude", "Magnitude")
    (note,) = mod.coverage_notes({"prune-toy": res})
    gap = 0.7 * (LN2 - 0.1) - 0.6 * (LN2 - 0.2)
    assert f"GMN trails Magnitude by {gap:.4f} hypervolume" in note and "SNIP" not in note
    # no baseline left: no claim, said so
    lonely = _result("toy", "prune", [editor, snip])
    assert mod.best_methods(lonely) is None
    (note,) = mod.coverage_notes({"prune-toy": lonely})
    assert "no claim either way: no baseline has a non-degenerate point" in note and "0.7500" in note
    # fairness: a note per front; the editor trails on error only (accuracy 0.8 vs 0.9)
    fair = _result("toy", "fairness", [_runs("GMN", "editor", [(0.05, 0.1, 0.8)], 0.1),
                                       _runs("FairCls", "baseline", [(0.05, 0.3, 0.9)], 0.2)])
    (note,) = mod.coverage_notes({"fairness-toy": fair})
    assert note.startswith("- **fairness-toy** (m vs error): GMN trails FairCls by "
                           f"{0.95 * 0.9 - 0.95 * 0.8:.4f} hypervolume")


def test_caveats_give_the_computed_figures():
    import math

    mod = _script_module()
    fair = [_runs("GMN", "editor", [(0.05, 0.1, 0.9)]), _runs("ThresholdOpt", "baseline", [(0.02, 0.03, 0.85)]),
            _runs("FairCls", "baseline", [(0.04, 0.2, 0.85)])]
    weak = [_runs("GMN", "editor", [(0.5, 0.1, 0.9), (0.3, math.nan, 0.9)]), _runs("SNIP", "baseline", [(0.5, 0.2, 0.7)])]
    results = {
        "fairness-toy": {s: _result("toy", "fairness", fair, label_jsd=0.0421) for s in (0, 1)},
        "prune-weak": {s: _result("weak", "prune", weak, majority={"validation": 0.88, "test": 0.88},
                                  original_accuracy=0.885) for s in (0, 1)},
        "prune-below": {s: _result("below", "prune", weak[1:], majority={"validation": 0.9, "test": 0.9},
                                   original_accuracy=0.85) for s in (0, 1)},
    }
    text = "\n".join(mod.caveat_lines(results, [0, 1], {}, subset_seed=3))
    assert "sample sd (ddof=1) over the 2 run seeds (0, 1)" in text and "subset seed 3" in text
    assert "**Except**" not in text  # the same models in both seeds
    # majority class and originals: toy's remove 60 % of the majority's error, weak's 0.005 / 0.12 = 4.2 %
    assert "toy 0.7500 on test; weak 0.8800 on test" in text
    assert "**Weak originals barely beat a constant classifier.**" in text and "Toy originals" not in text
    assert "0.8850 is 0.0050 above the majority class's 0.8800: they remove 4.2 % of its error" in text
    assert "1 of the 2 JSD-front points of prune-weak are degenerate" in text  # SNIP (0.7 <= 0.88), not GMN (0.9)
    assert ("**Below originals do not beat a constant classifier.** Their mean test accuracy 0.8500 is 0.0500 below "
            "the majority class's 0.9000: always predicting the majority class does as well or better.") in text
    # the JSD floor, recorded by the protocol, and who goes below it
    assert "at mean JSD 0.0421 to their probabilities" in text
    assert "ThresholdOpt goes below the floor" in text and "FairCls goes" not in text
    # GMN's second run has a NaN JSD on both splits, counted in each seed
    assert "prune-weak seed 0: 2 (GMN jsd: 1 validation / 1 test)" in text and "prune-weak seed 1: 2" in text
    # other models in seed 1: the sd of that setting mixes in the models, said so
    results["prune-weak"][1].info["test_model_ids"] = ["c", "d"]
    assert "**Except** prune-weak" in "\n".join(mod.caveat_lines(results, [0, 1], {}, subset_seed=3))
    one = "\n".join(mod.caveat_lines({k: {0: v[0]} for k, v in results.items()}, [0], {}, subset_seed=0))
    assert "**One run seed (0).**" in one


def test_report_and_plots_of_a_fairness_setting_over_seeds(tmp_path):
    """Two seeds of a fairness setting: one plot per front, a seed table per front, summary rows per front."""
    import argparse

    from hubedit.evaluation.seeds import protocol_seed_table, summary_seed_table

    mod = _script_module()
    runs = {s: _result("toy", "fairness", [_runs("GMN", "editor", [(0.05, 0.1, acc)], 0.1),
                                           _runs("FairCls", "baseline", [(0.05, 0.3, 0.9)], 0.2)], label_jsd=0.05)
            for s, acc in ((0, 0.8), (1, 0.85))}
    mod.save_setting("fairness-toy", runs, tmp_path)
    for png in ("fairness-toy-pareto.png", "fairness-toy-pareto-disagreement.png", "fairness-toy-pareto-error.png",
                "seed-1/fairness-toy-pareto-error.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    args = argparse.Namespace(preset="tiny", quick=True, editors="per-lambda", variants="main", seed=0, subset_seed=0)
    mod.write_report(tmp_path / "REPORT.md", args=args, plan=mod.PLANS["tiny"], argv=["reproduce.py"], started="now",
                     log=mod.Log(False), zoos={}, seeds=[0, 1], results={"fairness-toy": runs}, compositions={},
                     sample_effs={}, editors={})
    report = (tmp_path / "REPORT.md").read_text()
    summary = summary_seed_table({"fairness-toy": list(runs.values())})
    assert f"| fairness-toy (error) " in report and summary.cell("fairness-toy (error)", "HV difference") in report
    for axis in ("jsd", "disagreement", "error"):
        cell = protocol_seed_table(list(runs.values()), axis).cell("GMN", "hypervolume")
        assert " ± " in cell and cell in report, axis
    assert "](fairness-toy-pareto-error.png)" in report and "## Caveats" in report
    assert "Hypervolume of every method — error (1 - accuracy) front, without degenerate points" in report
