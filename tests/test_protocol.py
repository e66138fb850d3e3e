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


def test_pareto_cli_reuses_the_baselines_of_an_earlier_run(tiny_adult_zoo_dir, zoo, tmp_path, capsys):
    """--baselines-from: the editors are evaluated, the baselines copied from an earlier run with the same options
    (same numbers as running them); other options are refused before any work, with one error line."""
    from hubedit.cli import main

    common = ["--zoo", str(tiny_adult_zoo_dir), "--max-models", "2", "--prune-keeps", "0.5,0.1", "--timing-models", "0",
              "--no-progress"]
    assert main(["pareto", *common, "--requirement", "prune", "--baselines", "random", "magnitude",
                 "--out", str(tmp_path / "base")]) == 0
    ed_dir = tmp_path / "editor"
    half_mask_editor("prune", zoo["test"][0].to_module(), lam_range=[0.01, 1.0]).save_pretrained(ed_dir)
    assert main(["pareto", *common, "--editor", str(ed_dir), "--lambda-grid", "0.05", "0.5",
                 "--baselines", "random", "magnitude", "--out", str(tmp_path / "both")]) == 0
    assert main(["pareto", *common, "--editor", str(ed_dir), "--lambda-grid", "0.05", "0.5",
                 "--baselines-from", str(tmp_path / "base" / "results.json"), "--out", str(tmp_path / "reused")]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    reused = json.loads((tmp_path / "reused" / "results.json").read_text())
    assert set(reused["methods"]) == set(both["methods"])
    for name in both["methods"]:
        assert reused["methods"][name]["test"] == both["methods"][name]["test"], name
    assert reused["hypervolumes"] == pytest.approx(both["hypervolumes"])
    assert reused["info"]["baselines_from"]["methods"] == ["Random", "Magnitude"]
    capsys.readouterr()
    assert main(["pareto", *common, "--editor", str(ed_dir), "--seed", "3",
                 "--baselines-from", str(tmp_path / "base" / "results.json"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hubedit: error: --baselines-from") and "seed 0 there, 3 here" in err[0]
    assert not (tmp_path / "bad").exists()


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


# --------------------------------------------------------------------------------------------------
# fronts on three axes, degenerate points, non-finite points, FS & Retrain counts (issue #14)
# --------------------------------------------------------------------------------------------------
def _majority(y) -> float:
    y = np.asarray(y)
    return float(max((y == c).mean() for c in np.unique(y)))


def test_fairness_fronts_on_jsd_disagreement_and_error(zoo, tmp_path):
    from hubedit.baselines import ThresholdOpt
    from hubedit.metrics import hypervolume

    ref = zoo["test"][0].to_module()
    fair = half_mask_editor("fairness", ref, lam=1.0)
    res = run_protocol(zoo, "fairness", [fair], baselines=["threshold-opt", "reject-option"], max_models=2,
                       reject_option_bounds=(0.01, 0.05, 0.2), timing_models=0, progress=False)
    assert res.axes == ("jsd", "disagreement", "error")

    # independent recomputation on the two test models: the editor's labels and ThresholdOpt's sampled labels
    # against the original model's argmax labels
    X, y, s = zoo.task.split("test")
    Xe, ye, se = zoo.task.split("editing")
    models = [zoo["test"][i].to_module() for i in _subset(zoo["test"], 2, 0)]
    ed_dis, ed_acc, to_dis, to_acc = [], [], [], []
    with torch.no_grad():
        for i, (m, e) in enumerate(zip(models, fair.edit_many(models))):
            orig = m.predict_proba(X).argmax(-1)
            pred = e.predict_proba(X).argmax(-1)
            ed_dis.append(float((pred != orig).double().mean()))
            ed_acc.append(float((pred == y).double().mean()))
            pp = ThresholdOpt(None).fit(None, ye, se, scores=m.predict_proba(Xe)[:, 1].double())
            lab = pp.predict(None, s, scores=m.predict_proba(X)[:, 1].double(), seed=i)  # seed: cfg.seed * 100_003 + i
            to_dis.append(float((lab != orig).double().mean()))
            to_acc.append(float((lab == y).double().mean()))
    assert res.methods["GMN"].test_disagreement[0] == pytest.approx(np.mean(ed_dis), abs=1e-12)
    assert res.methods["GMN"].test_accuracy[0] == pytest.approx(np.mean(ed_acc), abs=1e-12)
    assert res.methods["ThresholdOpt"].test_disagreement[0] == pytest.approx(np.mean(to_dis), abs=1e-12)
    assert res.methods["ThresholdOpt"].test_accuracy[0] == pytest.approx(np.mean(to_acc), abs=1e-12)
    assert 0 < np.mean(to_dis) < 0.5  # randomised labels differ from the original's on some points

    maj = {"validation": _majority(zoo.task.split("evaluation")[1]), "test": _majority(y)}
    assert res.info["majority_accuracy"] == pytest.approx(maj)
    for name, m in res.methods.items():
        # error = 1 - accuracy; every front is the validation front of its own axis, reported on test
        np.testing.assert_allclose(m.points("error", "test")[:, 1], 1 - m.test_accuracy)
        np.testing.assert_array_equal(m.points("disagreement", "validation")[:, 1], m.val_disagreement)
        for axis in res.axes:
            runs = res.front_runs(name, axis)
            assert runs.tolist() == pareto_front(m.points(axis, "validation")).tolist(), (name, axis)
            ry = math.log(2) if axis == "jsd" else 1.0
            assert res.hypervolume(name, axis) == pytest.approx(
                hypervolume(m.points(axis, "test")[runs], ref=(1.0, ry)), abs=1e-12)
            deg = m.test_accuracy <= maj["test"] + 1e-9
            np.testing.assert_array_equal(res.degenerate(name, "test"), deg)
    # RejectOption at bound 0.01 labels most points by group: below the majority class, so degenerate
    ro = res.methods["RejectOption"]
    assert ro.test_accuracy[0] < maj["test"] and res.degenerate("RejectOption")[0]
    # the JSD of hard/randomised labels has a floor; the disagreement front does not carry it
    assert res.methods["ThresholdOpt"].test[0, 1] > res.methods["ThresholdOpt"].test_disagreement[0] / 10

    paths = res.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"pareto.png", "pareto-disagreement.png", "pareto-error.png"}
    assert paths["plot_error"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["report"].read_text()
    for axis in ("label disagreement with the original", "error (1 - accuracy)"):
        assert f"Front: eod vs {axis}" in md
    assert "](pareto-disagreement.png)" in md and "](pareto-error.png)" in md
    assert f"test {maj['test']:.4f}" in md  # the majority-class accuracy line
    data = json.loads(paths["json"].read_text())
    assert set(data["by_axis"]) == {"jsd", "disagreement", "error"}
    back = ProtocolResult.from_dict(data)
    for axis in res.axes:
        assert back.hypervolumes_for(axis, exclude_degenerate=True) == pytest.approx(
            res.hypervolumes_for(axis, exclude_degenerate=True))
    np.testing.assert_array_equal(back.methods["GMN"].test_disagreement, res.methods["GMN"].test_disagreement)
    # every table of points carries accuracy and the degenerate flag
    pts = res.points_table("all")
    assert {"val accuracy", "test accuracy", "val disagreement", "test disagreement", "degenerate"} <= set(pts.columns)
    assert (pts.loc["RejectOption", "degenerate"].iloc[0]).endswith("test")


def hand_result(info=None) -> ProtocolResult:
    """An editor whose front has one degenerate point (accuracy 0.70 <= majority 0.75) that carries its
    hypervolume lead, and a baseline without degenerate points; validation = test."""
    def method(name, kind, pts, acc):
        return MethodResult(name, kind, [str(i) for i in range(len(pts))], pts, pts, acc, acc,
                            val_disagreement=[0.1] * len(pts), test_disagreement=[0.1] * len(pts))

    editor = method("GMN", "editor", [[0.0, 0.2], [0.4, 0.1]], [0.70, 0.85])
    base = method("Magnitude", "baseline", [[0.2, 0.15], [0.4, 0.05]], [0.80, 0.85])
    return ProtocolResult("adult", "prune", "weights_kept", "fraction of weights kept", 1.0,
                          {"GMN": editor, "Magnitude": base},
                          info=info if info is not None else {"majority_accuracy": {"validation": 0.75, "test": 0.75}})


def test_degenerate_points_are_marked_and_left_out_of_best_claims(tmp_path):
    res = hand_result()
    assert res.degenerate("GMN").tolist() == [True, False] and not res.degenerate("Magnitude").any()
    # with every point the editor leads; without its degenerate point it trails
    hv_all = 0.4 * (LN2 - 0.2) + 0.6 * (LN2 - 0.1)
    hv_ok = 0.6 * (LN2 - 0.1)
    hv_base = 0.2 * (LN2 - 0.15) + 0.6 * (LN2 - 0.05)
    assert res.hypervolume("GMN") == pytest.approx(hv_all) and hv_all > hv_base
    assert res.hypervolume("GMN", exclude_degenerate=True) == pytest.approx(hv_ok) and hv_ok < hv_base
    assert res.front_runs("GMN", exclude_degenerate=True).tolist() == [1]
    (c,) = res.comparison()
    assert c["editor_hv"] == pytest.approx(hv_ok) and c["editor_hv_all_points"] == pytest.approx(hv_all)
    assert c["best_baseline_hv"] == pytest.approx(hv_base) and not c["dominates_all_baselines"]
    assert c["editor_degenerate_points"] == 1
    table = res.hypervolume_table()
    assert table.loc["GMN", "degenerate"] == 1 and table.loc["GMN", "HV w/o degenerate"] == pytest.approx(hv_ok)
    pts = res.points_table("chosen")
    assert pts.loc["GMN", "degenerate"].tolist() == ["val, test", ""]
    assert pts.loc["GMN", "test accuracy"].tolist() == [0.70, 0.85]
    md = res.report_markdown()
    assert "does NOT dominate" in md and "Majority-class accuracy (a constant classifier): validation 0.7500" in md
    # the error front: degenerate points lie at or above the majority class's error
    err = res.front("GMN", "error")
    assert err[:, 1].tolist() == pytest.approx([0.30, 0.15])
    assert res.plot(tmp_path / "e.png", "error").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a result that does not record the majority class of a task hubedit does not know: nothing is degenerate
    unknown = hand_result(info={})
    unknown.task = "no-such-task"
    assert unknown.majority_accuracy is None and not unknown.degenerate("GMN").any()
    assert unknown.comparison()[0]["editor_hv"] == pytest.approx(hv_all)


def test_nonfinite_points_are_counted_not_silently_dropped(zoo, monkeypatch):
    from hubedit.evaluation import protocol

    evaluate = protocol._evaluate_unit

    def one_nan(work, unit):  # Magnitude's JSD at keep=0.1 on test model 0 is NaN
        out = evaluate(work, unit)
        if unit.kind == "baseline" and unit.split == "test" and unit.lo == 0:
            out["values"][1][1] = math.nan
        return out

    monkeypatch.setattr(protocol, "_evaluate_unit", one_nan)
    res = run_protocol(zoo, "prune", [], baselines=["magnitude"], max_models=2, prune_keeps=(0.5, 0.1),
                       timing_models=0, progress=False)
    m = res.methods["Magnitude"]
    assert np.isnan(m.test[1, 1]) and np.isfinite(m.test[0]).all() and np.isfinite(m.val).all()
    assert m.nonfinite_model_results == {"validation": 0, "test": 1}
    assert m.nonfinite_points("jsd") == {"validation": 0, "test": 1}
    assert m.chosen.tolist() == [1, 0]  # chosen on validation (finite there) ...
    assert res.front_runs("Magnitude").tolist() == [0]  # ... and left out of the test front
    assert res.nonfinite_total == 1
    nf = res.nonfinite_table()
    assert nf.loc["Magnitude", "jsd: test points left out"] == 1 and nf.loc["Magnitude", "jsd: validation points left out"] == 0
    assert "1 points (summed over methods, splits and fronts) are non-finite and left out" in res.report_markdown()
    back = ProtocolResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.nonfinite_total == 1 and back.methods["Magnitude"].nonfinite_model_results == {"validation": 0, "test": 1}
    # an infinite validation point is never chosen
    inf = MethodResult("x", "baseline", ["a", "b"], [[0.1, math.inf], [0.5, 0.2]], [[0.1, 0.3], [0.5, 0.2]],
                       [0.9, 0.9], [0.9, 0.9])
    assert inf.chosen.tolist() == [1] and inf.nonfinite_points() == {"validation": 1, "test": 0}


def test_fs_retrain_runs_at_every_fs_count_unless_told(zoo):
    from hubedit.evaluation.protocol import ProtocolConfig, _baselines

    task = zoo.task

    def counts(**kw):
        return {b.name: b.values for b in _baselines("minimise", ["FS", "FS & Retrain"], task, ProtocolConfig(**kw))}

    every = list(range(1, task.n_features))
    assert counts() == {"FS": every, "FS & Retrain": every}
    assert counts(dm_n_keep=(2, 7)) == {"FS": [2, 7], "FS & Retrain": [2, 7]}
    assert counts(dm_n_keep=(2, 7), fs_retrain_n_keep=(3,)) == {"FS": [2, 7], "FS & Retrain": [3]}
    res = run_protocol(zoo, "minimise", [], baselines=["fs", "fs-retrain"], max_models=1, dm_n_keep=(2, 7),
                       fs_retrain_epochs=1, pfi_repeats=1, timing_models=0, progress=False)
    np.testing.assert_array_equal(res.methods["FS & Retrain"].test[:, 0], [2, 7])
    assert res.methods["FS & Retrain"].strengths == res.methods["FS"].strengths
    assert res.info["majority_accuracy"]["test"] == pytest.approx(_majority(task.split("test")[1]))
    assert "test accuracy" in res.points_table("chosen").columns


@pytest.mark.parametrize("setting", ["dm-adult", "dm-bank", "fairness-adult", "prune-adult", "prune-bank"])
def test_results_written_before_the_new_fields_still_load(setting):
    from pathlib import Path

    from hubedit.tasks import load_task

    path = Path(__file__).resolve().parent / "data" / "results-2026-11-26" / f"{setting}-results.json"
    data = json.loads(path.read_text())
    assert "val_disagreement" not in next(iter(data["methods"].values()))  # an old file
    res = ProtocolResult.from_dict(data)
    assert res.hypervolumes == pytest.approx(data["hypervolumes"], abs=1e-12)
    assert res.common_hypervolumes == pytest.approx(data["common_hypervolumes"], abs=1e-12)
    assert not any(m.has_disagreement for m in res.methods.values())
    assert res.axes == (("jsd", "error") if res.requirement == "fairness" else ("jsd",))
    task = load_task(res.task)
    maj = res.majority_accuracy
    assert maj == pytest.approx({"validation": _majority(task.split("evaluation")[1]), "test": _majority(task.split("test")[1])})
    for name, m in res.methods.items():
        np.testing.assert_array_equal(res.degenerate(name), m.test_accuracy <= maj["test"] + 1e-9)
    # non-finite points counted from the file itself (null in a JSD row), per method and split
    for name, m in data["methods"].items():
        expected = {s: sum(None in row for row in m[k]) for s, k in (("validation", "val"), ("test", "test"))}
        assert res.methods[name].nonfinite_points("jsd") == expected, name
    if setting == "dm-adult":  # this run's FS & Retrain has a NaN validation JSD at 4, 7 and 11 features
        assert res.methods["FS & Retrain"].nonfinite_points("jsd") == {"validation": 3, "test": 0}
        assert res.front_runs("FS & Retrain").tolist() == [0]  # n_keep=2 alone can be chosen
    md = res.report_markdown()
    assert "not recorded in this result; computed from the task data" in md
    assert ("Every point of every method is finite" in md) == (res.nonfinite_total == 0)
    # on Bank the original models are no better than the majority class: no point is fit for a "best" claim
    assert ("The original models' mean accuracy is itself at or below the majority class" in md) == (res.task == "bank")
    if res.task == "bank":
        assert res.comparison() == [] and "No baseline has a non-degenerate point" in md
    again = ProtocolResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.hypervolumes_for(exclude_degenerate=True) == pytest.approx(res.hypervolumes_for(exclude_degenerate=True))


def test_pareto_cli_prints_the_fairness_fronts(tiny_adult_zoo_dir, tmp_path, capsys):
    from hubedit.cli import main

    out = tmp_path / "fair"
    assert main(["pareto", "--zoo", str(tiny_adult_zoo_dir), "--requirement", "fairness", "--baselines", "threshold-opt",
                 "--max-models", "1", "--timing-models", "0", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "eod vs label disagreement with the original" in printed and "majority-class accuracy" in printed
    assert "HV w/o degenerate" in printed
    assert {"pareto.png", "pareto-disagreement.png", "pareto-error.png"} <= {p.name for p in out.iterdir()}


# --------------------------------------------------------------------------------------------------
# the models evaluated: drawn with subset_seed, apart from the baselines' seed
# --------------------------------------------------------------------------------------------------
def test_subset_seed_draws_the_models_and_seed_does_not(zoo):
    from hubedit.evaluation.protocol import ProtocolConfig

    assert ProtocolConfig().subset_seed == 0
    old = {k: v for k, v in ProtocolConfig(seed=4).to_dict().items() if k != "subset_seed"}  # JSON written before
    assert ProtocolConfig.from_dict(old) == ProtocolConfig(seed=4, subset_seed=0)
    assert ProtocolConfig.from_dict(ProtocolConfig(seed=4, subset_seed=2).to_dict()).subset_seed == 2

    split = zoo["test"]
    assert len(split) > 2  # otherwise every subset is the whole split
    draws = {s: _subset(split, 2, s) for s in range(6)}
    assert len({tuple(v) for v in draws.values()}) > 1  # the subset seed matters on this zoo

    def ids(**options):
        res = run_protocol(zoo, "prune", [], baselines=["magnitude"], max_models=2, prune_keeps=(0.5,),
                           timing_models=0, progress=False, **options)
        assert res.info["config"]["subset_seed"] == options.get("subset_seed", 0)
        return res.info["test_model_ids"], res.info["val_model_ids"]

    base = ids(seed=0)
    other = next(s for s, v in draws.items() if v != draws[0])  # a seed that would draw other models
    assert ids(seed=other) == base  # as the run seed: the same models
    test_ids, _ = ids(seed=0, subset_seed=other)
    assert test_ids == [split[i].model_id for i in draws[other]] != base[0]


def test_matched_and_composition_draw_models_with_the_subset_seed(zoo, monkeypatch):
    from hubedit.evaluation import experiments, matched

    seen = []

    def spy(split, max_models, seed):
        seen.append(seed)
        return _subset(split, max_models, seed)

    monkeypatch.setattr(matched, "_subset", spy)
    monkeypatch.setattr(experiments, "_subset", spy)
    ref = zoo["test"][0].to_module()
    pr = half_mask_editor("prune", ref, variant="prune-edit")
    dm = half_mask_editor("minimise", ref, variant="gmn")
    assert matched.matched_comparison(zoo, [pr], "prune", max_models=2, seed=7, subset_seed=3).n_models == 2
    comp = run_composition(zoo, [dm], [pr], dm_baseline=None, max_models=2, seed=7, subset_seed=3, progress=False)
    assert seen == [3, 3]
    assert comp.info["model_ids"] == [zoo["test"][i].model_id for i in _subset(zoo["test"], 2, 3)]
    assert comp.info["seed"] == 7 and comp.info["subset_seed"] == 3


# --------------------------------------------------------------------------------------------------
# the JSD floor of label-outputting methods
# --------------------------------------------------------------------------------------------------
def test_label_jsd_is_the_floor_of_any_labelling():
    from hubedit.evaluation.protocol import label_jsd
    from hubedit.metrics.scores import jsd

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 200, 2, generator=g, dtype=torch.float64) * 2, -1)
    floor = label_jsd(probs)
    assert floor.shape == (3,)
    own = torch.nn.functional.one_hot(probs.argmax(-1), 2).double()
    torch.testing.assert_close(floor, jsd(probs, own).mean(-1))
    for _ in range(20):  # any other labelling, and labels flipped on part of the points, is at least the floor
        labels = torch.randint(0, 2, (3, 200), generator=g)
        other = jsd(probs, torch.nn.functional.one_hot(labels, 2).double()).mean(-1)
        assert (other >= floor - 1e-12).all()
    flipped = jsd(probs, 1.0 - own).mean(-1)
    assert (flipped > floor).all()
    # soft outputs can go below it (the original itself is at 0)
    assert float(jsd(probs, probs).mean()) < float(floor.min())


def test_protocol_records_the_label_jsd_floor_of_the_test_models(zoo):
    from hubedit.metrics.scores import jsd

    res = run_protocol(zoo, "prune", [], baselines=["magnitude"], max_models=2, prune_keeps=(0.5,), timing_models=0,
                       progress=False)
    X = zoo.task.split("test")[0]
    per_model = []
    with torch.no_grad():
        for i in _subset(zoo["test"], 2, 0):
            p = zoo["test"][i].to_module().predict_proba(X).double()
            per_model.append(float(jsd(p, torch.nn.functional.one_hot(p.argmax(-1), 2).double()).mean()))
    floor = float(np.mean(per_model))
    assert 0 < floor < LN2
    assert res.info["original"]["test_label_jsd"] == pytest.approx(floor, rel=1e-6)
    assert res.label_jsd_floor() == res.info["original"]["test_label_jsd"]
    # an older result without it: computed from the zoo (its recorded models), or unknown without one
    old = ProtocolResult.from_dict(json.loads(json.dumps(res.to_dict())))
    del old.info["original"]["test_label_jsd"]
    assert old.label_jsd_floor() is None
    assert old.label_jsd_floor("test", zoo) == pytest.approx(floor, rel=1e-6)
    old.info["test_model_ids"] = ["no-such-model"]
    with pytest.raises(ValueError, match="no-such-model"):
        old.label_jsd_floor("test", zoo)


def test_target_conditioned_editors_are_evaluated_at_the_baselines_levels(zoo):
    """A target-conditioned editor gets one run per baseline level inside its range, and each run meets its
    level exactly on every model (the protocol reads the metric off the edited weights)."""
    editor = Editor(requirement="prune", variant="prune-edit", task="adult", target_range=[0.05, 0.6], metanet=NET).eval()
    res = run_protocol(zoo, "prune", [editor], baselines=["Magnitude"], max_models=3, prune_keeps=(0.9, 0.5, 0.1),
                       timing_models=1, progress=False)
    method = res.methods["GMN - Prune & Edit (target-cond.)"]
    assert method.strengths == ["target=0.1", "target=0.5"]  # 0.9 lies outside the editor's range
    np.testing.assert_allclose(method.test[:, 0], [0.1, 0.5], atol=0.01)
    np.testing.assert_allclose(method.test[:, 0], res.methods["Magnitude"].test[1:, 0][::-1], atol=1e-12)
    assert res.to_dict()["info"]["editors"]["GMN - Prune & Edit (target-cond.)"][0]["target"] == 0.1
    back = ProtocolResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.methods["GMN - Prune & Edit (target-cond.)"].strengths == ["target=0.1", "target=0.5"]


def test_above_majority_evaluates_only_the_checkpoints_that_beat_the_majority_class(zoo, monkeypatch):
    """ProtocolConfig.above_majority: only the checkpoints whose accuracy on the editing split beats its majority
    class are evaluated. In the tiny Adult zoo every test checkpoint does and no validation checkpoint does (they
    are the early ones), which the protocol refuses with a message saying why; the selection is checked with the
    bar raised to the test checkpoints' median."""
    import numpy as np

    from hubedit.evaluation import protocol

    x, y, _ = zoo.task.split("editing")
    bar = protocol.majority_accuracy(y.numpy())
    acc = {}
    for split in ("validation", "test"):
        with torch.no_grad():
            acc[split] = [float((ck.to_module().predict_proba(x).argmax(-1) == y).double().mean()) for ck in zoo[split]]
        kept = protocol._above_majority(zoo[split], zoo.task)
        assert list(kept) == [i for i, a in enumerate(acc[split]) if a > bar]
        for i, module in kept.items():  # the modules it loaded, handed on so that they are not loaded again
            assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                          zoo[split][i].to_module().state_dict().values()))
    assert min(acc["test"]) > bar >= max(acc["validation"])
    with pytest.raises(ValueError, match="above_majority"):
        run_protocol(zoo, "prune", [], baselines=["magnitude"], prune_keeps=(0.5,), timing_models=0,
                     above_majority=True, progress=False)
    median = float(np.median(acc["test"]))
    monkeypatch.setattr(protocol, "majority_accuracy", lambda labels: median)
    chosen = protocol._above_majority(zoo["test"], zoo.task)
    assert list(chosen) == [i for i, a in enumerate(acc["test"]) if a > median] and 0 < len(chosen) < len(acc["test"])


def test_editor_run_labels_say_what_sets_the_trade_off():
    """Runs are labelled by their target, their lambda, or (EPO / scalarised editors, which have no lambda) their
    preference -- never ``lam=nan``."""
    from types import SimpleNamespace

    from hubedit.evaluation.protocol import EditorRun

    pref = SimpleNamespace(lam=None, settings={"preference": [0.3, 1.0]})
    plain = SimpleNamespace(lam=0.1, settings={"preference": None})
    assert EditorRun("EPO", pref, None).label == "pref=(0.3, 1)"
    assert EditorRun("GMN", plain, None).label == "lam=0.1"
    assert EditorRun("GMN (λ-cond.)", plain, 0.03).label == "lam=0.03"
    assert EditorRun("GMN (target-cond.)", plain, None, target=0.2).label == "target=0.2"
