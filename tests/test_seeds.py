"""Results over seeds (hubedit.evaluation.seeds): mean and sample standard deviation (ddof=1) of the hypervolume
tables of fake per-seed results whose hypervolumes are known in closed form, their formatting and JSON; and the
composition's SNIP baseline beside magnitude pruning (hubedit.evaluation.experiments.run_composition), with older
composition JSON still loading.

A front of one point (x, y) has hypervolume (1 - x) * (ln 2 - y) against the reference point (1, ln 2).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from hubedit.evaluation.experiments import CompositionResult, SampleEfficiencyResult
from hubedit.evaluation.protocol import MethodResult, ProtocolResult
from hubedit.evaluation.seeds import (
    composition_seed_table,
    format_mean_sd,
    mean_sd,
    protocol_seed_table,
    sample_efficiency_seed_plot,
    sample_efficiency_seed_table,
    seed_fronts_plot,
    summary_seed_table,
)
from hubedit.metrics import LN2


def hv1(x: float, y: float) -> float:
    """Hypervolume of the one-point front (x, y), reference (1, ln 2)."""
    return (1 - x) * (LN2 - y)


def method(name: str, kind: str, x: float, y: float) -> MethodResult:
    """One run at (x, y) on validation and test, accuracy far above any majority class."""
    return MethodResult(name, kind, ["s"], [[x, y]], [[x, y]], [0.95], [0.95])


def protocol(points: dict[str, tuple[str, float, float]]) -> ProtocolResult:
    """A pruning result on a task hubedit does not ship (no majority-class look-up): name -> (kind, x, y)."""
    methods = {n: method(n, k, x, y) for n, (k, x, y) in points.items()}
    return ProtocolResult("toy", "prune", "weights_kept", "fraction of weights kept", 1.0, methods)


# the two seeds: the editor at (0.2, 0.1) then (0.4, 0.1); Magnitude at (0.5, 0.2) both times; SNIP only in seed 1
SEED_A = {"GMN": ("editor", 0.2, 0.1), "Magnitude": ("baseline", 0.5, 0.2)}
SEED_B = {"GMN": ("editor", 0.4, 0.1), "Magnitude": ("baseline", 0.5, 0.2), "SNIP": ("baseline", 0.3, 0.3)}


# --------------------------------------------------------------------------------------------------
# mean_sd and formatting
# --------------------------------------------------------------------------------------------------
def test_mean_sd_uses_the_sample_standard_deviation():
    a = pd.DataFrame({"hv": [0.2, 0.5], "points": [1, 4]}, index=["x", "y"])
    b = pd.DataFrame({"hv": [0.4, 0.5], "points": [3, 4]}, index=["x", "y"])
    c = pd.DataFrame({"hv": [0.9], "points": [8]}, index=["x"])
    t = mean_sd([a, b, c])
    assert t.n_seeds == 3 and list(t.mean.columns) == ["hv", "points"]
    assert t.mean.loc["x", "hv"] == pytest.approx(0.5)
    # ddof=1: sqrt(((0.2-0.5)^2 + (0.4-0.5)^2 + (0.9-0.5)^2) / 2) = sqrt(0.13); ddof=0 would be sqrt(0.26/3)
    assert t.sd.loc["x", "hv"] == pytest.approx(math.sqrt(0.13))
    assert t.sd.loc["x", "points"] == pytest.approx(np.std([1, 3, 8], ddof=1))
    # y is missing from the third seed: mean and sd over the two that have it, n says so
    assert t.mean.loc["y", "hv"] == pytest.approx(0.5) and t.sd.loc["y", "hv"] == pytest.approx(0.0)
    assert t.n.loc["y", "hv"] == 2 and t.n.loc["x", "hv"] == 3
    assert t.cell("x", "hv") == f"0.5000 ± {math.sqrt(0.13):.4f}"
    assert t.cell("y", "hv") == "0.5000 ± 0.0000 (2 of 3 seeds)"


def test_mean_sd_one_seed_gives_the_value_alone_and_rejects_bad_input():
    t = mean_sd([pd.DataFrame({"hv": [0.25]}, index=["x"])])
    assert math.isnan(t.sd.loc["x", "hv"]) and t.cell("x", "hv") == "0.2500"
    assert "±" not in t.markdown()
    with pytest.raises(ValueError, match="at least one table"):
        mean_sd([])
    with pytest.raises(ValueError, match="repeated row key"):
        mean_sd([pd.DataFrame({"hv": [0.1, 0.2]}, index=["x", "x"])])


def test_format_mean_sd():
    assert format_mean_sd(0.12344, 0.00121, 3) == "0.1234 ± 0.0012"
    assert format_mean_sd(0.12344, math.nan, 1) == "0.1234"
    assert format_mean_sd(0.12344, 0.00121, 2, 3) == "0.1234 ± 0.0012 (2 of 3 seeds)"
    assert format_mean_sd(math.nan, math.nan, 0, 3) == "–"
    assert format_mean_sd(2.0, 0.5, 2, floatfmt=".1f") == "2.0 ± 0.5"


# --------------------------------------------------------------------------------------------------
# the experiments' tables
# --------------------------------------------------------------------------------------------------
def test_protocol_seed_table_numbers_and_json_round_trip():
    runs = [protocol(SEED_A), protocol(SEED_B)]
    t = protocol_seed_table(runs)
    gmn = [hv1(0.2, 0.1), hv1(0.4, 0.1)]
    assert runs[0].hypervolume("GMN") == pytest.approx(gmn[0])  # the closed form is the library's hypervolume
    assert t.mean.loc["GMN", "hypervolume"] == pytest.approx(np.mean(gmn))
    assert t.sd.loc["GMN", "hypervolume"] == pytest.approx(np.std(gmn, ddof=1))
    assert t.sd.loc["Magnitude", "hypervolume"] == pytest.approx(0.0)
    assert t.n.loc["SNIP", "hypervolume"] == 1 and t.mean.loc["SNIP", "hypervolume"] == pytest.approx(hv1(0.3, 0.3))
    # baselines' range: seed A's lowest baseline point is 0.5, seed B's 0.3; the editor's point moves up to it
    common = [hv1(0.5, 0.1), hv1(0.4, 0.1)]
    assert t.mean.loc["GMN", "HV on baselines' range"] == pytest.approx(np.mean(common))
    assert t.sd.loc["GMN", "HV on baselines' range"] == pytest.approx(np.std(common, ddof=1))
    assert t.labels.loc["SNIP", "kind"] == "baseline"
    md = t.markdown()
    assert f"{np.mean(gmn):.4f} ± {np.std(gmn, ddof=1):.4f}" in md and "(1 of 2 seeds)" in md
    # the aggregate is recomputed from the per-seed JSON
    back = [ProtocolResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in runs]
    assert protocol_seed_table(back).to_dict() == t.to_dict()
    d = json.loads(json.dumps(t.to_dict()))
    assert d["ddof"] == 1 and d["n_seeds"] == 2 and d["index"] == ["GMN", "Magnitude", "SNIP"]


def test_summary_seed_table_pairs_the_differences_per_seed():
    runs = [protocol(SEED_A), protocol(SEED_B)]
    t = summary_seed_table({"prune-toy": runs})
    assert t.labels.loc["prune-toy", "best editor"] == "GMN"
    # SNIP's hypervolume in the one seed that has it (0.275) beats Magnitude's (0.247 in both)
    assert t.labels.loc["prune-toy", "best baseline"] == "SNIP"
    diff_b = hv1(0.4, 0.1) - hv1(0.3, 0.3)  # only seed B has SNIP
    assert t.mean.loc["prune-toy", "HV difference"] == pytest.approx(diff_b)
    assert t.n.loc["prune-toy", "HV difference"] == 1
    assert t.labels.loc["prune-toy", "editor ≥ every baseline"] == "yes (2 of 2 seeds)"

    two = [protocol({"GMN": ("editor", x, 0.1), "Magnitude": ("baseline", 0.5, 0.2)}) for x in (0.2, 0.6)]
    t2 = summary_seed_table({"s": two})
    diffs = [hv1(0.2, 0.1) - hv1(0.5, 0.2), hv1(0.6, 0.1) - hv1(0.5, 0.2)]
    assert t2.mean.loc["s", "HV difference"] == pytest.approx(np.mean(diffs))
    assert t2.sd.loc["s", "HV difference"] == pytest.approx(np.std(diffs, ddof=1))
    assert t2.labels.loc["s", "editor ≥ every baseline"] == "NO (1 of 2 seeds)"  # 0.6 loses to 0.5 in seed 2


def composition(points: dict[tuple[str, str], tuple[float, float]], info: dict | None = None) -> CompositionResult:
    """(method, DM strength) -> (weights kept, JSD), one point each; baselines are the ``→ Magnitude`` ones."""
    rows = []
    for (name, dm), (wk, j) in points.items():
        rows.append({"method": name, "kind": "baseline" if "Magnitude" in name or "SNIP" in name else "editor",
                     "dm": dm, "prune": "p", "kept_features": 5.0, "weights_kept": wk, "jsd": j, "accuracy": 0.8,
                     "dropped_stay_dropped": True, "dm_kept_features": 6.0 if dm == "lam=0.1" else 7.0,
                     "dm_weights_kept": 0.9, "dm_jsd": 0.01, "dm_accuracy": 0.8})
    return CompositionResult("adult", 14, rows, info or {})


def test_composition_seed_table_numbers():
    ed, base = "GMN → GMN - Prune & Edit", "FS & Retrain → Magnitude"
    a = composition({(ed, "lam=0.1"): (0.3, 0.05), (base, "as lam=0.1"): (0.5, 0.1)})
    b = composition({(ed, "lam=0.1"): (0.5, 0.05), (base, "as lam=0.1"): (0.5, 0.2)})
    t = composition_seed_table([a, b])
    assert list(t.mean.index) == [(ed, "lam=0.1"), (base, "as lam=0.1")]
    hvs = [hv1(0.3, 0.05), hv1(0.5, 0.05)]
    assert t.mean.loc[(ed, "lam=0.1"), "hypervolume (weights kept, JSD)"] == pytest.approx(np.mean(hvs))
    assert t.sd.loc[(ed, "lam=0.1"), "hypervolume (weights kept, JSD)"] == pytest.approx(np.std(hvs, ddof=1))
    # on the baselines' range (weights kept >= 0.5 in both seeds) the editor's points count from 0.5
    assert t.mean.loc[(ed, "lam=0.1"), "HV on baselines' range"] == pytest.approx(hv1(0.5, 0.05))
    assert t.sd.loc[(ed, "lam=0.1"), "HV on baselines' range"] == pytest.approx(0.0)
    assert t.mean.loc[(ed, "lam=0.1"), "kept features"] == pytest.approx(6.0)
    shown = t.formatted()
    assert list(shown.columns[:1]) == ["DM strength"] and shown.index.tolist() == [ed, base]


def test_old_composition_json_still_loads():
    """A composition saved before SNIP was added (one ``prune_baseline`` in its info) loads and reports."""
    old = composition({("GMN → GMN - Prune & Edit", "lam=0.1"): (0.3, 0.05),
                       ("FS & Retrain → Magnitude", "as lam=0.1"): (0.5, 0.1)},
                      info={"dm_baseline": "FS & Retrain", "prune_baseline": "Magnitude", "prune_keeps": [0.5]}).to_dict()
    old["info"].pop("prune_baselines", None)
    back = CompositionResult.from_dict(json.loads(json.dumps(old)))
    assert back.prune_baselines == ["Magnitude"]
    assert "then Magnitude at keep in [0.5]" in back.report_markdown(plot_path=None)
    assert back.hypervolume_table().loc["FS & Retrain → Magnitude", "hypervolume (weights kept, JSD)"] == \
        pytest.approx(hv1(0.5, 0.1))


def sample_efficiency(hv_points: dict[str, float], base_y: float) -> SampleEfficiencyResult:
    """Editors ``GMN 50%`` / ``GMN 100%`` at (x, 0.1) and Magnitude at (0.5, base_y)."""
    pts = {name: ("editor", x, 0.1) for name, x in hv_points.items()}
    pts["Magnitude"] = ("baseline", 0.5, base_y)
    return SampleEfficiencyResult(protocol(pts), {"GMN 50%": 0.5, "GMN 100%": 1.0}, {"GMN 50%": 5, "GMN 100%": 10})


def test_sample_efficiency_seed_table_pairs_the_difference_to_the_best_baseline(tmp_path):
    runs = [sample_efficiency({"GMN 50%": 0.4, "GMN 100%": 0.2}, 0.2),
            sample_efficiency({"GMN 50%": 0.6, "GMN 100%": 0.2}, 0.3)]
    t = sample_efficiency_seed_table(runs)
    vs = "vs best baseline (Magnitude; w/o degenerate)"
    diffs = [hv1(0.4, 0.1) - hv1(0.5, 0.2), hv1(0.6, 0.1) - hv1(0.5, 0.3)]
    assert t.mean.loc["GMN 50%", vs] == pytest.approx(np.mean(diffs))
    assert t.sd.loc["GMN 50%", vs] == pytest.approx(np.std(diffs, ddof=1))
    assert t.mean.loc["Magnitude", "hypervolume"] == pytest.approx(np.mean([hv1(0.5, 0.2), hv1(0.5, 0.3)]))
    assert t.mean.loc["Magnitude", "HV w/o degenerate"] == t.mean.loc["Magnitude", "hypervolume"]  # none degenerate
    assert t.n.loc["Magnitude", vs] == 0 and t.cell("Magnitude", vs) == "–"
    assert t.labels.loc["GMN 100%", "zoo fraction"] == 1.0 and t.labels.loc["GMN 100%", "train models"] == "10"
    # a baseline has no zoo fraction: null in the JSON (strict JSON, no NaN anywhere)
    d = json.loads(json.dumps(t.to_dict(), allow_nan=False))
    assert d["labels"]["zoo fraction"][d["index"].index("Magnitude")] is None
    png = sample_efficiency_seed_plot(runs, tmp_path / "se.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_fronts_plot_writes_a_png(tmp_path):
    fronts = [protocol(SEED_A).fronts, protocol(SEED_B).fronts]
    png = seed_fronts_plot(fronts, tmp_path / "f.png", xlabel="fraction of weights kept", seeds=[0, 1], title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# composition: FS & Retrain then SNIP beside magnitude pruning (paper A.7)
# --------------------------------------------------------------------------------------------------
def test_composition_runs_snip_and_magnitude_after_fs_retrain(tiny_adult_zoo, single_thread):
    import torch

    from hubedit.editor import Editor
    from hubedit.evaluation.experiments import run_composition
    from hubedit.graph import mlps_to_batch

    zoo = tiny_adult_zoo
    model = zoo["test"][0].to_module()

    def half_mask(requirement: str, variant: str, seed: int) -> Editor:
        """A fresh editor whose mask head drops about half of ``model``'s features or weights."""
        torch.manual_seed(seed)
        ed = Editor(requirement=requirement, task="adult", variant=variant, lam=0.1, metanet={"hidden": 16, "layers": 2})
        net = ed.metanet
        with torch.no_grad():
            out = net(mlps_to_batch([model]), cond=None, with_logits=True)
            for head, logits in ((net.edge_classifier, out.edge_logits), (net.input_classifier, out.input_node_logits)):
                head[-1].bias[1] -= float((logits[:, 1] - logits[:, 0]).median()) + 1e-4
        return ed.eval()

    dm, pr = half_mask("minimise", "gmn", 3), half_mask("prune", "prune-edit", 4)
    res = run_composition(zoo, [dm], [pr], dm_baseline="fs-retrain", prune_keeps=(0.5, 0.2), fs_retrain_epochs=1,
                          max_models=2, pfi_repeats=1, progress=False)
    assert res.prune_baselines == ["SNIP", "Magnitude"]  # the default: the paper's SNIP, and magnitude beside it
    by_method: dict[str, list] = {}
    for r in res.rows:
        by_method.setdefault(r["method"], []).append(r)
    assert set(by_method) == {"GMN → GMN - Prune & Edit", "FS & Retrain → SNIP", "FS & Retrain → Magnitude"}
    snip, mag = by_method["FS & Retrain → SNIP"], by_method["FS & Retrain → Magnitude"]
    assert [r["prune"] for r in snip] == [r["prune"] for r in mag] == ["keep=0.5", "keep=0.2"]
    ed_kept = by_method["GMN → GMN - Prune & Edit"][0]["dm_kept_features"]
    for r in snip + mag:
        # one FS & Retrain model per model, shared: the same DM step before either pruning baseline
        assert r["dm_kept_features"] == pytest.approx(ed_kept)
        assert r["dm_jsd"] == snip[0]["dm_jsd"]
        assert r["kept_features"] <= r["dm_kept_features"] + 1e-9
    for r_snip, r_mag in zip(snip, mag):  # both prune to the same fraction of weights
        assert r_snip["weights_kept"] == pytest.approx(r_mag["weights_kept"], abs=0.02)
    assert snip[1]["weights_kept"] < snip[0]["weights_kept"]
    hv = res.hypervolume_table()
    assert {"FS & Retrain → SNIP", "FS & Retrain → Magnitude"} <= set(hv.index)
    assert any("SNIP" in k for k in res.groups()) and any("Magnitude" in k for k in res.groups())
    assert "then SNIP / Magnitude" in res.report_markdown(plot_path=None)
    only = run_composition(zoo, [dm], [pr], dm_baseline="fs", prune_baseline="magnitude", prune_keeps=(0.5,),
                           max_models=2, pfi_repeats=1, progress=False)
    assert {r["method"] for r in only.rows if r["kind"] == "baseline"} == {"FS → Magnitude"}
    with pytest.raises(ValueError, match="lists a baseline twice"):
        run_composition(zoo, [dm], [pr], prune_baseline=["snip", "snip"], progress=False)
    with pytest.raises(ValueError, match="one or several of"):
        run_composition(zoo, [dm], [pr], prune_baseline=["snap"], progress=False)


# --------------------------------------------------------------------------------------------------
# "best" without degenerate points, and the fairness fronts
# --------------------------------------------------------------------------------------------------
MAJORITY = {"majority_accuracy": {"validation": 0.75, "test": 0.75}}


def runs_of(name: str, kind: str, points: list[tuple[float, float, float]], disagreement: float = 0.1) -> MethodResult:
    """One run per (x, y, accuracy), the same on validation and test."""
    pts = [[x, y] for x, y, _ in points]
    acc = [a for _, _, a in points]
    return MethodResult(name, kind, [str(i) for i in range(len(points))], pts, pts, acc, acc,
                        val_disagreement=[disagreement] * len(points), test_disagreement=[disagreement] * len(points))


def result(requirement: str, methods: list[MethodResult]) -> ProtocolResult:
    return ProtocolResult("toy", requirement, "m", "metric", 1.0, {m.name: m for m in methods}, info=dict(MAJORITY))


def test_summary_seed_table_chooses_and_compares_without_degenerate_points():
    """SNIP's one point beats Magnitude's but is degenerate (accuracy 0.6 <= majority 0.75): Magnitude is the best
    baseline. The editor's degenerate point (0.05, 0.3) counts only in `HV difference with degenerate points`."""
    editor = runs_of("GMN", "editor", [(0.2, 0.1, 0.95), (0.05, 0.3, 0.6)])
    mag = runs_of("Magnitude", "baseline", [(0.5, 0.2, 0.95)])
    snip = runs_of("SNIP", "baseline", [(0.1, 0.05, 0.6)])
    t = summary_seed_table({"prune-toy": [result("prune", [editor, mag, snip])]})
    assert t.labels.loc["prune-toy", "best baseline"] == "Magnitude"  # with all points it would be SNIP
    assert t.mean.loc["prune-toy", "HV difference"] == pytest.approx(hv1(0.2, 0.1) - hv1(0.5, 0.2))
    # every point kept: the editor's front is (0.05, 0.3), (0.2, 0.1)
    hv_all = 0.15 * (LN2 - 0.3) + 0.8 * (LN2 - 0.1)
    assert t.mean.loc["prune-toy", "HV difference with degenerate points"] == pytest.approx(hv_all - hv1(0.5, 0.2))
    assert t.labels.loc["prune-toy", "editor ≥ every baseline"] == "yes"

    # every baseline point degenerate: a row that makes no claim, and no numbers
    bad = runs_of("Magnitude", "baseline", [(0.5, 0.2, 0.7)])
    t2 = summary_seed_table({"prune-bank": [result("prune", [editor, bad])] * 2})
    assert t2.labels.loc["prune-bank", "editor ≥ every baseline"] == "no claim: no baseline has a non-degenerate point"
    assert t2.n.loc["prune-bank"].sum() == 0 and t2.cell("prune-bank", "HV difference") == "–"


def test_fairness_settings_are_summarised_and_tabled_on_every_front():
    """Fairness results have three fronts: EOD against JSD (reference (1, ln 2)), against label disagreement and
    against error = 1 - accuracy (reference (1, 1))."""
    seeds = []
    for acc in (0.90, 0.80):  # the editor's accuracy differs between the two seeds
        editor = runs_of("GMN", "editor", [(0.05, 0.1, acc)], disagreement=0.2)
        post = runs_of("ThresholdOpt", "baseline", [(0.02, 0.3, 0.85)], disagreement=0.1)
        seeds.append(result("fairness", [editor, post]))
    assert seeds[0].axes == ("jsd", "disagreement", "error")
    t = summary_seed_table({"fairness-toy": seeds})
    assert list(t.mean.index) == ["fairness-toy", "fairness-toy (disagreement)", "fairness-toy (error)"]
    assert t.labels.loc["fairness-toy (error)", "front"] == "error (1 - accuracy)"
    # error front: (1 - x) * (1 - error) per seed, paired differences
    diffs = [0.95 * acc - 0.98 * 0.85 for acc in (0.90, 0.80)]
    assert t.mean.loc["fairness-toy (error)", "HV difference"] == pytest.approx(np.mean(diffs))
    assert t.sd.loc["fairness-toy (error)", "HV difference"] == pytest.approx(np.std(diffs, ddof=1))
    assert t.labels.loc["fairness-toy (error)", "editor ≥ every baseline"] == "NO (1 of 2 seeds)"
    assert t.mean.loc["fairness-toy (disagreement)", "editor HV"] == pytest.approx(0.95 * 0.8)
    assert t.labels.loc["fairness-toy", "editor ≥ every baseline"] == "yes (2 of 2 seeds)"  # JSD: 0.1 < 0.3
    only_jsd = summary_seed_table({"fairness-toy": seeds}, axes=["jsd"])
    assert list(only_jsd.mean.index) == ["fairness-toy"]

    err = protocol_seed_table(seeds, "error")
    assert err.mean.loc["GMN", "hypervolume"] == pytest.approx(np.mean([0.95 * 0.9, 0.95 * 0.8]))
    assert err.sd.loc["GMN", "hypervolume"] == pytest.approx(np.std([0.95 * 0.9, 0.95 * 0.8], ddof=1))
    assert protocol_seed_table(seeds, "disagreement").mean.loc["ThresholdOpt", "hypervolume"] == pytest.approx(0.98 * 0.9)
    assert protocol_seed_table(seeds).mean.loc["GMN", "hypervolume"] == pytest.approx(hv1(0.05, 0.1))
    with pytest.raises(ValueError, match="unknown front axis"):
        protocol_seed_table(seeds, "accuracy")


def test_sample_efficiency_best_baseline_leaves_degenerate_points_out():
    """SNIP leads with all points, but its point is degenerate: the difference is to Magnitude."""
    def one(gmn_x: float) -> SampleEfficiencyResult:
        methods = [runs_of("GMN 50%", "editor", [(gmn_x, 0.1, 0.9)]), runs_of("GMN 100%", "editor", [(0.2, 0.1, 0.9)]),
                   runs_of("Magnitude", "baseline", [(0.5, 0.2, 0.9)]), runs_of("SNIP", "baseline", [(0.1, 0.1, 0.7)])]
        return SampleEfficiencyResult(result("prune", methods), {"GMN 50%": 0.5, "GMN 100%": 1.0},
                                      {"GMN 50%": 5, "GMN 100%": 10})

    runs = [one(0.4), one(0.3)]
    t = sample_efficiency_seed_table(runs)
    vs = "vs best baseline (Magnitude; w/o degenerate)"
    diffs = [hv1(x, 0.1) - hv1(0.5, 0.2) for x in (0.4, 0.3)]
    assert t.mean.loc["GMN 50%", vs] == pytest.approx(np.mean(diffs))
    assert t.mean.loc["SNIP", "hypervolume"] == pytest.approx(hv1(0.1, 0.1))
    assert t.mean.loc["SNIP", "HV w/o degenerate"] == 0.0
    single = runs[0].table()
    assert single.loc["GMN 50%", vs] == pytest.approx(diffs[0])
    assert single.loc["SNIP", "HV w/o degenerate"] == 0.0
