"""The evaluation protocol (hubedit.evaluation.protocol), composition and sample efficiency
(hubedit.evaluation.experiments) and `hubedit pareto`, on the session's tiny Adult zoo (conftest).

Editors are fresh ones whose mask-head biases are set so that they drop about half of the features /
weights (deterministic, no training needed), and one briefly trained editor for the CLI.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hubedit.editor import Editor
from hubedit.metrics import LN2, pareto_front
from hubedit.evaluation.experiments import (
    load_or_train_editor,
    run_composition,
    run_sample_efficiency,
    train_fraction_editors,
)
from hubedit.evaluation.protocol import (
    BASELINES,
    MethodResult,
    ProtocolResult,
    _subset,
    editor_runs,
    kept_features,
    run_protocol,
)
from hubedit.zoo import Zoo

NET = {"hidden": 16, "layers": 2}
FAST = dict(models_per_step=4, points_per_step=128, hidden=16, layers=2, eval_every=4, steps=4, lr=0.01)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def zoo(tiny_adult_zoo_dir):
    z = Zoo.load(tiny_adult_zoo_dir)
    assert len(z["validation"]) and len(z["test"])
    return z


def half_mask_editor(requirement: str, model, *, variant: str | None = None, lam=0.1, lam_range=None, seed: int = 0,
                     edit_bias: float = 0.0) -> Editor:
    """A fresh editor whose mask heads are centred on ``model``: it drops about half of that model's features
    or weights (other models: more or fewer), optionally adding ``edit_bias`` to every weight through the first
    residual head."""
    from hubedit.editor.editing import lambda_condition
    from hubedit.graph import mlps_to_batch

    torch.manual_seed(seed)
    ed = Editor(requirement=requirement, task="adult", variant=variant, lam=None if lam_range else lam,
                lam_range=lam_range, metanet=NET)
    net = ed.metanet
    with torch.no_grad():
        if edit_bias:
            net.edge_heads[0].bias.fill_(edit_bias)
            net.alpha.fill_(1.0)
        cond = lambda_condition(torch.tensor([0.1]), tuple(lam_range)) if lam_range else None
        out = net(mlps_to_batch([model]), cond=cond, with_logits=True)
        for head, logits in ((net.edge_classifier, out.edge_logits), (net.input_classifier, out.input_node_logits)):
            diff = logits[:, 1] - logits[:, 0]  # keep - drop
            head[-1].bias[1] -= float(diff.median()) + 1e-4
    return ed.eval()


def check_common(res: ProtocolResult, expected: list[str]):
    assert list(res.methods) == expected
    for name, m in res.methods.items():
        k = len(m.strengths)
        assert m.val.shape == (k, 2) and m.test.shape == (k, 2), name
        assert np.isfinite(m.val).all() and np.isfinite(m.test).all(), name
        assert ((m.test[:, 1] >= 0) & (m.test[:, 1] <= LN2 + 1e-12)).all(), name
        # points are chosen on validation (its Pareto front) and reported on test
        assert m.chosen.tolist() == pareto_front(m.val).tolist(), name
        np.testing.assert_array_equal(res.fronts[name], m.test[m.chosen])
        assert len(res.fronts[name]) >= 1, name
    for name, hv in res.hypervolumes.items():
        assert 0.0 <= hv <= LN2 + 1e-12, (name, hv)
        assert 0.0 <= res.common_hypervolume(name) <= hv + 1e-12, name
    assert set(res.timing) == set(expected)
    table = res.timing_markdown()
    assert all(f"| {n} " in table for n in expected)
    dom = res.dominance_table()
    assert list(dom.index) == expected and ((dom.fillna(0) >= 0) & (dom.fillna(0) <= 1)).all().all()
    md = res.report_markdown()
    assert all(n in md for n in expected) and "Hypervolume" in md and "Dominance" in md
    back = ProtocolResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.hypervolumes == pytest.approx(res.hypervolumes)
    assert back.methods[expected[0]].chosen.tolist() == res.methods[expected[0]].chosen.tolist()


def test_protocol_pruning_every_method(zoo, tmp_path):
    ref = zoo["test"][0].to_module()
    per_lambda = half_mask_editor("prune", ref, variant="prune-edit")
    mask_only = half_mask_editor("prune", ref, variant="prune", seed=1)
    conditioned = half_mask_editor("prune", ref, variant="prune-edit", lam_range=[0.01, 1.0], seed=2)
    res = run_protocol(zoo, "prune", [per_lambda, mask_only, conditioned], max_models=3, prune_keeps=(0.5, 0.1),
                       lottery_epochs=1, snip_iterations=2, timing_models=1, lambda_grid=(0.01, 0.1, 1.0),
                       progress=False)
    expected = ["GMN - Prune & Edit", "GMN - Prune", "GMN - Prune & Edit (λ-cond.)", *BASELINES["prune"]]
    check_common(res, expected)
    assert res.methods["GMN - Prune & Edit (λ-cond.)"].strengths == ["lam=0.01", "lam=0.1", "lam=1"]
    # the metric is read off the edited weights: magnitude pruning keeps round(keep * n) weights per model
    mag = res.methods["Magnitude"]
    np.testing.assert_allclose(mag.test[:, 0], [0.5, 0.1], atol=0.01)
    # the centred mask head prunes part of the weights
    assert 0.05 < res.methods["GMN - Prune"].test[0, 0] < 0.95
    assert res.info["n_test_models"] == 3 and len(res.info["test_model_ids"]) == 3
    assert res.info["original"]["test_metric"] == 1.0
    paths = res.save(tmp_path)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pareto.png" in paths["report"].read_text()


def test_protocol_data_minimisation_and_fairness(zoo):
    ref = zoo["test"][0].to_module()
    dm = half_mask_editor("minimise", ref, variant="gmn")
    res = run_protocol(zoo, "minimise", [dm], max_models=2, dm_n_keep=(2, 7), fs_retrain_n_keep=(3,),
                       fs_retrain_epochs=1, pfi_repeats=1, timing_models=1, progress=False)
    check_common(res, ["GMN", "FS", "FS & Retrain"])
    assert res.x_scale == 14
    np.testing.assert_array_equal(res.methods["FS"].test[:, 0], [2, 7])  # kept features counted from the weights
    assert res.methods["FS & Retrain"].test[0, 0] == 3
    assert 0 < res.methods["GMN"].test[0, 0] < 14

    fair = half_mask_editor("fairness", ref, lam=1.0)
    res = run_protocol(zoo, None, [fair], max_models=2, cal_eq_odds_constraints=("fpr", "weighted"),
                       reject_option_bounds=(0.05, 0.2), fair_cls_alphas=(0.0, 0.1), timing_models=1, progress=False)
    assert res.requirement == "fairness"
    check_common(res, ["GMN", *BASELINES["fairness"]])
    assert res.methods["ThresholdOpt"].strengths == ["equalized_odds"]
    assert all(0 <= v <= 1 for m in res.methods.values() for v in m.test[:, 0])


def test_validation_selects_and_test_reports():
    val = [[0.2, 0.1], [0.5, 0.05], [0.5, 0.2], [0.9, 0.0]]
    test = [[0.25, 0.3], [0.45, 0.01], [0.1, 0.0], [0.8, 0.02]]
    m = MethodResult("x", "baseline", ["a", "b", "c", "d"], val, test, [0.8] * 4, [0.8] * 4)
    assert m.chosen.tolist() == [0, 1, 3]  # run c is dominated on validation, although it is best on test
    np.testing.assert_array_equal(m.test_front, np.asarray(test)[[0, 1, 3]])


def test_common_range_hypervolume_ignores_area_only_one_method_reaches():
    def method(name, kind, pts):
        return MethodResult(name, kind, [str(i) for i in range(len(pts))], pts, pts, [1] * len(pts), [1] * len(pts))

    editor = method("GMN", "editor", [[0.0, 0.3], [0.5, 0.1]])  # reaches 0 weights kept, the baseline stops at 0.2
    base = method("Magnitude", "baseline", [[0.2, 0.2], [0.5, 0.1]])
    res = ProtocolResult("adult", "prune", "weights_kept", "fraction of weights kept", 1.0,
                         {"GMN": editor, "Magnitude": base})
    assert res.common_x == 0.2
    assert res.hypervolume("GMN") == pytest.approx(0.2 * (LN2 - 0.3) + 0.3 * (LN2 - 0.3) + 0.5 * (LN2 - 0.1))
    assert res.common_hypervolume("GMN") == pytest.approx(0.3 * (LN2 - 0.3) + 0.5 * (LN2 - 0.1))
    assert res.common_hypervolume("Magnitude") == res.hypervolume("Magnitude")
    (c,) = res.comparison()
    assert c["hv_difference"] > 0 > c["common_hv_difference"]


def test_editor_runs_and_errors(zoo):
    ref = zoo["test"][0].to_module()
    a, b = half_mask_editor("prune", ref, lam=0.3), half_mask_editor("prune", ref, lam=0.01)
    runs = editor_runs([a, b])
    assert list(runs) == ["GMN - Prune & Edit"] and [r.effective_lam for r in runs["GMN - Prune & Edit"]] == [0.01, 0.3]
    named = editor_runs({"mine": [a]})
    assert list(named) == ["mine"]
    with pytest.raises(ValueError, match="requirement"):
        run_protocol(zoo, "minimise", [a], baselines=[], progress=False)
    with pytest.raises(ValueError, match="unknown baseline"):
        run_protocol(zoo, "prune", [], baselines=["fs"], progress=False)


def test_composition_keeps_dropped_features_dropped(zoo):
    model = zoo["test"][0].to_module()
    dm = half_mask_editor("minimise", model, variant="gmn", seed=3)
    # a prune & edit editor that also adds to every weight: without the pipeline's guard it would revive
    # the weights of dropped features
    pr = half_mask_editor("prune", dm.edit(model), variant="prune-edit", seed=4, edit_bias=0.5)
    after_dm = dm.edit(model)
    assert 0 < kept_features(after_dm) < 14
    revived = pr.edit(after_dm)
    assert kept_features(revived) > kept_features(after_dm)  # the guard below is needed
    composed = dm.then(pr).edit(model)
    assert set(composed.kept_features) <= set(after_dm.kept_features)
    assert kept_features(composed) <= kept_features(after_dm)

    res = run_composition(zoo, [dm], [pr], dm_baseline="fs", prune_baseline="magnitude", prune_keeps=(0.5, 0.2),
                          max_models=3, pfi_repeats=1, progress=False)
    assert res.checks() == {"dropped_features_stay_dropped": True, "fewer_weights_after_pruning": True}
    ed_rows = [r for r in res.rows if r["kind"] == "editor"]
    base_rows = [r for r in res.rows if r["kind"] == "baseline"]
    assert len(ed_rows) == 1 and len(base_rows) == 2
    for r in res.rows:
        assert r["kept_features"] <= r["dm_kept_features"] + 1e-9
        assert r["weights_kept"] < r["dm_weights_kept"]
        assert 0 <= r["jsd"] <= LN2 and 0 <= r["accuracy"] <= 1
    # the baseline keeps, per model, as many features as the editor kept
    assert base_rows[0]["dm_kept_features"] == pytest.approx(ed_rows[0]["dm_kept_features"])
    md = res.report_markdown()
    assert "dropped features stay dropped: True" in md
    back = type(res).from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.hypervolume_table().equals(res.hypervolume_table())


def test_sample_efficiency_and_resumed_training(zoo, tmp_path):
    eds = train_fraction_editors(zoo, fractions=(0.5, 1.0), lambdas=(0.1,), out=tmp_path / "se", progress=False, **FAST)
    n = [eds[f][0].settings["training"]["train_models"] for f in (0.5, 1.0)]
    assert n[0] < n[1] == len(zoo["train"])
    stamp = (tmp_path / "se" / "frac-0.5" / "lam-0.1" / "model.safetensors").stat().st_mtime_ns
    again = train_fraction_editors(zoo, fractions=(0.5,), lambdas=(0.1,), out=tmp_path / "se", progress=False, **FAST)
    assert (tmp_path / "se" / "frac-0.5" / "lam-0.1" / "model.safetensors").stat().st_mtime_ns == stamp  # loaded
    assert again[0.5][0].source["path"].endswith("lam-0.1")
    with pytest.raises(ValueError, match="other settings"):
        load_or_train_editor(zoo, "prune", tmp_path / "se" / "frac-0.5" / "lam-0.1", variant="prune-edit", lam=0.1,
                             progress=False, **{**FAST, "hidden": 32}, zoo_fraction=0.5)

    base = run_protocol(zoo, "prune", [], baselines=["magnitude"], max_models=2, prune_keeps=(0.5, 0.1),
                        timing_models=0, progress=False)
    res = run_sample_efficiency(zoo, eds, baseline_result=base, max_models=2, prune_keeps=(0.5, 0.1), progress=False)
    assert list(res.protocol.methods) == ["GMN 50%", "GMN 100%", "Magnitude"]
    table = res.table()
    assert table.loc["GMN 50%", "zoo fraction"] == 0.5 and "hypervolume" in table
    assert "Sample efficiency" in res.report_markdown()
    paths = res.save(tmp_path / "out")
    assert all(p.is_file() for p in paths.values())


def test_pareto_cli_writes_report_json_and_plot(tiny_adult_zoo_dir, zoo, tmp_path):
    from hubedit.cli import main

    ed_dir = tmp_path / "editor"
    load_or_train_editor(zoo, "prune", ed_dir, variant="prune-edit", lam=0.1, progress=False, **FAST)
    cond_dir = tmp_path / "conditioned"
    half_mask_editor("prune", zoo["test"][0].to_module(), lam_range=[0.01, 1.0]).save_pretrained(cond_dir)
    out = tmp_path / "pareto"
    rc = main(["pareto", "--zoo", str(tiny_adult_zoo_dir), "--editor", str(ed_dir), "--editor", str(cond_dir),
               "--lambda-grid", "0.05", "0.5", "--baselines", "magnitude", "random", "--max-models", "2",
               "--prune-keeps", "0.5,0.1", "--timing-models", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"report.md", "results.json", "pareto.png"}
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == ["GMN - Prune & Edit", "GMN - Prune & Edit (λ-cond.)", "Random", "Magnitude"]
    assert data["methods"]["GMN - Prune & Edit (λ-cond.)"]["strengths"] == ["lam=0.05", "lam=0.5"]
    assert all(0 <= v <= math.log(2) for v in data["hypervolumes"].values())
    assert set(data["timing"]) == set(data["methods"])
    assert "![" in (out / "report.md").read_text()
    # baselines only, and a clear error without a requirement
    assert main(["pareto", "--zoo", str(tiny_adult_zoo_dir), "--requirement", "prune", "--baselines", "random", "--max-models",
                 "1", "--prune-keeps", "0.5", "--timing-models", "0", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert main(["pareto", "--zoo", str(tiny_adult_zoo_dir), "--out", str(tmp_path / "c"), "--no-progress"]) == 2


def test_baselines_in_worker_processes_give_the_same_points(zoo):
    kw = dict(baselines=["magnitude"], max_models=2, prune_keeps=(0.5, 0.1), timing_models=0,
              progress=False)
    one = run_protocol(zoo, "prune", [], workers=1, **kw)
    two = run_protocol(zoo, "prune", [], workers=2, **kw)
    for name, m in one.methods.items():
        np.testing.assert_array_equal(m.val, two.methods[name].val)
        np.testing.assert_array_equal(m.test, two.methods[name].test)


# --------------------------------------------------------------------------------------------------
# matched comparisons (hubedit.evaluation.matched)
# --------------------------------------------------------------------------------------------------
def test_matched_pruning_is_magnitude_at_the_editors_per_model_count(zoo):
    from hubedit.baselines import magnitude_prune
    from hubedit.evaluation.matched import matched_comparison
    from hubedit.metrics.scores import jsd

    ref = zoo["test"][0].to_module()
    ed = half_mask_editor("prune", ref, variant="prune-edit")
    res = matched_comparison(zoo, [ed], "prune", max_models=3)
    assert res.baseline == "Magnitude" and res.n_models == 3 and len(res.rows) == 1
    row = res.rows[0]
    # independent recomputation: edit, count non-zeros per model, magnitude-prune to that fraction
    X, y, _ = zoo.task.split("test")
    models = [zoo["test"][i].to_module() for i in _subset(zoo["test"], 3, 0)]  # the protocol's seeded subset
    edited = ed.edit_many(models)
    fracs, b_jsd, e_jsd = [], [], []
    for m, e in zip(models, edited):
        nz = sum(int((p != 0).sum()) for n, p in e.named_parameters() if n.endswith("weight") and p.dim() == 2)
        k = nz / m.n_weights
        fracs.append(k)
        base = magnitude_prune(m, k)
        assert sum(int((p != 0).sum()) for n, p in base.named_parameters() if n.endswith("weight") and p.dim() == 2) == nz
        with torch.no_grad():
            p0 = m.predict_proba(X).double()
            b_jsd.append(float(jsd(p0, base.predict_proba(X).double()).mean()))
            e_jsd.append(float(jsd(p0, e.predict_proba(X).double()).mean()))
    assert 0 < np.mean(fracs) < 1
    assert row["level"] == pytest.approx(np.mean(fracs), abs=1e-12)
    assert row["baseline_jsd"] == pytest.approx(np.mean(b_jsd), rel=1e-9)
    assert row["editor_jsd"] == pytest.approx(np.mean(e_jsd), rel=1e-6)
    assert row["editor_better_share"] == pytest.approx(np.mean(np.asarray(e_jsd) < np.asarray(b_jsd)))
    assert row["informative"] and "Magnitude JSD" in res.report_markdown()
    # keeping nothing is allowed by count (a fraction keep must be > 0)
    empty = magnitude_prune(ref, n_keep=0)
    assert all(float(p.abs().sum()) == 0 for n, p in empty.named_parameters() if n.endswith("weight") and p.dim() == 2)
    assert type(res).from_dict(json.loads(json.dumps(res.to_dict()))).rows == res.rows


def test_matched_minimisation_is_fs_at_the_editors_feature_count(zoo):
    from hubedit.baselines import feature_selection
    from hubedit.evaluation.matched import matched_comparison
    from hubedit.metrics.scores import jsd

    ref = zoo["test"][0].to_module()
    ed = half_mask_editor("minimise", ref, variant="gmn")
    res = matched_comparison(zoo, [ed], "minimise", max_models=2, pfi_repeats=2)
    row = res.rows[0]
    X, _, _ = zoo.task.split("test")
    Xe, ye, _ = zoo.task.split("editing")
    models = [zoo["test"][i].to_module() for i in _subset(zoo["test"], 2, 0)]
    levels, b_jsd = [], []
    for m, e in zip(models, ed.edit_many(models)):
        k = kept_features(e)
        levels.append(k)
        base, kept = feature_selection(m, Xe, ye, k, n_repeats=2, seed=0)
        assert len(kept) == k and kept_features(base) == k
        with torch.no_grad():
            b_jsd.append(float(jsd(m.predict_proba(X).double(), base.predict_proba(X).double()).mean()))
    assert 0 < np.mean(levels) < zoo.task.n_features
    assert row["level"] == pytest.approx(np.mean(levels))
    assert row["baseline_jsd"] == pytest.approx(np.mean(b_jsd), rel=1e-9)
    with pytest.raises(ValueError, match="not minimise"):
        matched_comparison(zoo, [half_mask_editor("prune", ref)], "minimise", max_models=1)
    with pytest.raises(ValueError, match="matched comparisons exist"):
        matched_comparison(zoo, [ed], "fairness", max_models=1)
