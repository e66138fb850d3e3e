"""Cards and the saved edited-model folder, without a Hub.

* ONNX equivalence on every test-split model of a tiny zoo after editing, for all three requirements;
* the card's metrics against independent recomputations: fairlearn's equalised-odds difference and
  per-group rates, onnxruntime outputs (accuracy, JSD with scipy), zero counts in the ONNX file;
* the Pareto position (dominance sentence), YAML validation, re-rendering, the editor card.

Editors are fresh ones whose heads are randomised and whose mask-head biases are centred so that they
drop about half of the features / weights of the zoo's test models (deterministic, no training).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from huggingface_hub import ModelCard

from hubedit.cards import (
    CardValidationError,
    ParetoPosition,
    pareto_position,
    requirement_metric,
    validate_card,
)
from hubedit.editor import EditedMLP, Editor
from hubedit.export import count_zero_weights, export_onnx, load_onnx_metadata
from hubedit.graph import mlps_to_batch
from hubedit.publish import PublishError, render_card, save_edited
from hubedit.zoo import Zoo

NET = {"hidden": 16, "layers": 2}
VARIANTS = {"minimise": "gmn", "fairness": "gmn", "prune": "prune-edit"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def zoo(tiny_adult_zoo):
    return tiny_adult_zoo


def perturbed_editor(requirement: str, models, seed: int = 0, scale: float = 0.5) -> Editor:
    """A fresh editor (the identity) with random residual heads and mask heads centred on ``models``."""
    editor = Editor(requirement=requirement, variant=VARIANTS[requirement], task="adult", lam=1.0, metanet=NET)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in editor.named_parameters():
            if "heads" in name or "classifier" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        out = editor.metanet(mlps_to_batch(list(models)))
        for head, logits in ((editor.metanet.edge_classifier, out.edge_logits),
                             (editor.metanet.input_classifier, out.input_node_logits)):
            head[-1].bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    return editor.eval()


@pytest.fixture(scope="module")
def test_models(zoo):
    return [c.to_module() for c in zoo["test"]]


@pytest.fixture(scope="module")
def editors(test_models):
    return {r: perturbed_editor(r, test_models) for r in VARIANTS}


def _ort_probs(path, X: torch.Tensor, kept) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"features": X[:, kept].numpy().astype(np.float32)})
    return probs.astype(np.float64)


# --- ONNX equivalence ------------------------------------------------------------------------------------
@pytest.mark.parametrize("requirement", ["minimise", "fairness", "prune"])
def test_onnx_equivalence_on_every_test_model(requirement, zoo, test_models, editors, tmp_path):
    task = zoo.task
    X, _, _ = task.split("test")
    edited = editors[requirement].edit_many(test_models)
    assert len(edited) == len(zoo["test"]) >= 2
    changed = 0
    for k, (orig, e) in enumerate(zip(test_models, edited)):
        kept = e.kept_features if e.kept_features is not None else list(range(task.n_features))
        kept = kept or [0]  # a model that dropped every feature: one zero-weighted input (as save_edited does)
        info = export_onnx(e, tmp_path / f"{requirement}-{k}.onnx", kept_features=kept,
                           feature_names=task.feature_names)
        assert info.max_abs_diff is not None and info.max_abs_diff <= 1e-5
        with torch.no_grad():
            ref = e.predict_proba(X).double().numpy()
        got = _ort_probs(info.path, X, kept)
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
        assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.999
        assert list(info.input_names) == [task.feature_names[i] for i in kept]
        with torch.no_grad():
            changed += int(not torch.equal(orig(X[:64]), e(X[:64])))
    assert changed >= 1, "the perturbed editor must actually edit"
    if requirement == "minimise":
        assert any(len(e.kept_features) < task.n_features for e in edited)
    if requirement == "prune":
        assert all(e.weight_sparsity() > 0 for e in edited)


# --- card metrics against independent recomputation ------------------------------------------------------
@pytest.fixture(scope="module")
def saved(zoo, test_models, editors, tmp_path_factory):
    """One saved folder per requirement (test model 0), with the baselines computed."""
    out = {}
    for requirement in VARIANTS:
        model = test_models[0]
        edited = editors[requirement].edit(model)
        folder = tmp_path_factory.mktemp(f"saved-{requirement}")
        result = edited.save_pretrained(folder, reference=model, editor=editors[requirement])
        out[requirement] = (folder, edited, model, result)
    return out


@pytest.mark.parametrize("requirement", ["minimise", "fairness", "prune"])
def test_card_metrics_equal_independent_recomputation(requirement, saved, zoo):
    from fairlearn.metrics import MetricFrame, equalized_odds_difference, false_positive_rate, true_positive_rate
    from scipy.spatial.distance import jensenshannon

    folder, edited, model, result = saved[requirement]
    task = zoo.task
    X, y, s = task.split("test")
    report = json.loads((folder / "metrics.json").read_text())
    after, before = report["after"], report["before"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.safetensors", "config.json", "metrics.json", "model.onnx", "pareto.png", "README.md"])

    # predictions from the ONNX file, with onnxruntime only
    kept = after["kept_features"]
    onnx_kept = report["onnx"]["kept_features"]
    assert onnx_kept == (kept or [0])
    probs = _ort_probs(folder / "model.onnx", X, onnx_kept)
    pred = probs.argmax(-1)
    y_np, s_np = y.numpy(), s.numpy()
    assert after["accuracy"] == pytest.approx(float((pred == y_np).mean()), abs=1e-12)
    assert after["eod"] == pytest.approx(equalized_odds_difference(y_np, pred, sensitive_features=s_np), abs=1e-12)
    frame = MetricFrame(metrics={"tpr": true_positive_rate, "fpr": false_positive_rate}, y_true=y_np, y_pred=pred,
                        sensitive_features=s_np)
    names = list(task.sensitive_groups)
    for g, row in frame.by_group.iterrows():
        assert after["group_rates"][names[int(g)]]["tpr"] == pytest.approx(row["tpr"], abs=1e-12)
        assert after["group_rates"][names[int(g)]]["fpr"] == pytest.approx(row["fpr"], abs=1e-12)
    with torch.no_grad():
        ref = model.predict_proba(X).double().numpy()
    js = jensenshannon(ref, probs, axis=1) ** 2  # scipy gives the distance (sqrt of the divergence), natural log
    assert after["jsd"] == pytest.approx(float(np.mean(js)), rel=1e-4, abs=1e-7)
    ref_pred = ref.argmax(-1)
    assert before["eod"] == pytest.approx(equalized_odds_difference(y_np, ref_pred, sensitive_features=s_np), abs=1e-12)
    assert before["accuracy"] == pytest.approx(float((ref_pred == y_np).mean()), abs=1e-12)

    # zeros: the model's, and the ONNX file's (a minimised export drops the all-zero input columns)
    zeros = sum(int((m.weight == 0).sum()) for m in [*edited.layers, *edited.skips.values()])
    assert (after["n_zero_weights"], after["n_weights"]) == (zeros, edited.n_weights)
    assert after["weights_kept"] == pytest.approx(1 - zeros / edited.n_weights)
    onnx_zeros, onnx_total = count_zero_weights(folder / "model.onnx")
    assert (report["onnx"]["n_zero_weights"], report["onnx"]["n_weights"]) == (onnx_zeros, onnx_total)
    dropped = task.n_features - len(onnx_kept)
    assert (dropped > 0) == (requirement == "minimise")  # the perturbed heads drop features (only) when minimising
    assert (zeros > 0) == (requirement != "fairness")
    rows = edited.layers[0].weight.shape[0] + sum(edited.skips[f"{a}_{b}"].weight.shape[0]
                                                  for a, b in edited.config.skips if a == 0)
    assert onnx_total == edited.n_weights - dropped * rows
    assert onnx_zeros == zeros - dropped * rows

    # the card says the same: model-index, tables, ONNX metadata
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == pytest.approx(after["accuracy"])
    assert results["jsd"] == pytest.approx(after["jsd"])
    assert {r.dataset_type for r in card.data.eval_results} == {"adult"}
    metric_type = {"minimise": "kept_features", "fairness": "equalized_odds_difference", "prune": "weights_kept"}
    assert results[metric_type[requirement]] == pytest.approx(requirement_metric(requirement, after))
    text = card.text
    assert f"| {zeros} / {edited.n_weights} |" in text
    assert "![Pareto position of this model](pareto.png)" in text
    assert report["pareto"]["sentence"] in text
    for section in ("## The edit", "## Compliance metrics", "## Pareto position", "## Usage", "## Framework versions",
                    "## Limitations", "## Human review before deployment"):
        assert section in text
    assert '"features"' in text and "onnxruntime" in text and "EditedMLP.from_bytes" in text
    if len(kept) < task.n_features:
        for name in after["kept_feature_names"]:
            assert f"`{name}`" in text
        assert f"Kept features ({len(kept)})" in text
    else:
        assert f"All {task.n_features} input features are kept." in text
    meta = load_onnx_metadata(folder / "model.onnx")
    assert meta["compliance_metrics"]["accuracy"] == pytest.approx(after["accuracy"])
    assert meta["compliance_metrics"]["eod"] == pytest.approx(after["eod"])
    assert json.loads(meta["hubedit_edit_record"]) == json.loads((folder / "config.json").read_text())["edit_record"]
    assert meta["kept_features"] == onnx_kept
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    validate_card(card)


def test_pareto_position_and_baselines(saved):
    for requirement, (_, _, _, result) in saved.items():
        pos = ParetoPosition.from_dict(result.report["pareto"])
        assert "editor (validation)" not in pos.fronts or pos.fronts["editor (validation)"]
        expected = {"minimise": {"FS"}, "fairness": {"ThresholdOpt", "CalEqOdds"},
                    "prune": {"Magnitude", "Random"}}[requirement]
        assert expected <= set(pos.fronts)
        px, py = pos.point
        for name, pts in pos.fronts.items():
            dominates = any(x <= px and y <= py and (x < px or y < py) for x, y in pts)
            assert (name in pos.dominated_by) == dominates


def test_dominance_sentence():
    none = pareto_position((0.5, 0.01), {"A": [[0.6, 0.02], [0.5, 0.01]], "B": [[0.4, 0.05]]}, None, "prune")
    assert none.dominated_by == [] and none.sentence.startswith("No other method's point dominates")
    some = pareto_position((0.5, 0.01), {"A": [[0.5, 0.005]], "B": [[0.9, 0.0]], "C": [[0.4, 0.01]]}, None, "prune")
    assert some.dominated_by == ["A", "C"]
    assert "**A** and **C** dominate" in some.sentence
    assert pareto_position((3.0, 0.1), {}, None, "minimise").dominated_by == []


def test_render_card_is_deterministic_and_cli_regenerates(saved):
    from hubedit.cli import main

    folder = saved["prune"][0]
    before = (folder / "README.md").read_text()
    (folder / "README.md").unlink()
    assert main(["card", str(folder)]) == 0
    assert (folder / "README.md").read_text() == before
    render_card(folder, repo_id="org/name", revision="v1")
    text = (folder / "README.md").read_text()
    assert 'hf_hub_download("org/name", "model.onnx", revision="v1")' in text
    render_card(folder)  # back to local paths for the other tests


def test_card_yaml_validation():
    good = ModelCard("---\nlibrary_name: hubedit\n---\n\n# x\n")
    assert validate_card(good) == {"library_name": "hubedit"}
    with pytest.raises(CardValidationError, match="does not parse"):
        validate_card("---\nlibrary_name: [unclosed\n---\n\n# x\n")
    with pytest.raises(CardValidationError, match="mapping"):
        validate_card("---\n- a list\n---\n\n# x\n")
    with pytest.raises(CardValidationError, match="front matter"):
        validate_card("# no metadata\n")


def test_card_without_reference(zoo, test_models, editors, tmp_path):
    edited = editors["fairness"].edit(test_models[1])
    result = save_edited(edited, tmp_path)
    assert result.report["before"] is None and result.report["pareto"] is None
    assert "pareto.png" not in result.files and not (tmp_path / "pareto.png").exists()
    text = (tmp_path / "README.md").read_text()
    assert "original model was not given" in text
    validate_card(ModelCard(text))


def test_minimised_model_without_any_feature(zoo, test_models, tmp_path):
    model = test_models[0]
    edited = EditedMLP.wrap(model, {"requirement": "minimise", "variant": "gmn", "lam": 1.0, "task": "adult",
                                    "kept_features": [], "kept_feature_names": []})
    with torch.no_grad():
        edited.layers[0].weight.zero_()
        for (a, b) in edited.config.skips:
            if a == 0:
                edited.skips[f"{a}_{b}"].weight.zero_()
    result = save_edited(edited, tmp_path, reference=model, compute_baselines=False)
    assert result.report["after"]["kept_features"] == []
    assert result.onnx.n_inputs == 1  # one zero-weighted input keeps the graph valid
    assert "none" in (tmp_path / "README.md").read_text()


def test_card_failure_never_loses_the_weights(zoo, test_models, editors, tmp_path, monkeypatch):
    import hubedit.cards.edited_card as edited_card

    def broken(*a, **k):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(edited_card, "edited_model_card", broken)
    edited = editors["prune"].edit(test_models[0])
    with pytest.raises(PublishError, match="model card failed.*template exploded") as info:
        save_edited(edited, tmp_path / "out", reference=test_models[0], compute_baselines=False)
    assert info.value.folder == tmp_path / "out"
    back = EditedMLP.from_bytes((tmp_path / "out" / "model.safetensors").read_bytes())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), edited.state_dict().values()))
    assert back.record["requirement"] == "prune"
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "README.md").exists()


def test_editor_card(test_models, tmp_path):
    editor = perturbed_editor("minimise", test_models, seed=1)
    editor.settings["validation_front"] = [{"lam": 1.0, "metric": 6.5, "jsd": 0.012}]
    editor.settings["zoo"] = {"repo_id": "org/adult-zoo", "revision": "a" * 40}
    tags_before = list(Editor._hub_mixin_info.model_card_data.tags)
    editor.save_pretrained(tmp_path, model_card_kwargs={"repo_id": "org/dm-adult"})
    assert Editor._hub_mixin_info.model_card_data.tags == tags_before  # the class-wide card data is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors", "pareto.png"]
    card = ModelCard.load(tmp_path / "README.md")
    validate_card(card)
    assert card.data.library_name == "hubedit" and card.data.datasets == ["org/adult-zoo"]
    assert "data-minimisation" in card.data.tags
    values = {(r.metric_type, r.dataset_split): r.metric_value for r in card.data.eval_results}
    assert values[("kept_features", "validation")] == 6.5 and values[("jsd", "validation")] == 0.012
    text = card.text
    for piece in ("## Validation Pareto points", "![Validation Pareto points](pareto.png)", "## Task and feature schema",
                  "`org/adult-zoo` at commit `" + "a" * 40 + "`", "## Metanetwork", 'Editor.from_pretrained("org/dm-adult")',
                  "## Limitations", "## Human review before deployment", "| 13 | native-country |"):
        assert piece in text, piece
    back = Editor.from_pretrained(tmp_path)
    assert back.settings["validation_front"] == editor.settings["validation_front"]


def test_cli_card_recomputes_from_the_reference(zoo, test_models, editors, tmp_path):
    from hubedit.cli import main

    model = test_models[1]
    edited = editors["minimise"].edit(model)
    save_edited(edited, tmp_path / "folder", compute_baselines=False)  # no reference: no before, no Pareto
    assert json.loads((tmp_path / "folder" / "metrics.json").read_text())["before"] is None
    model.save(tmp_path / "original.safetensors")
    assert main(["card", str(tmp_path / "folder"), "--reference", str(tmp_path / "original.safetensors"),
                 "--repo-id", "org/dm"]) == 0
    report = json.loads((tmp_path / "folder" / "metrics.json").read_text())
    assert report["before"]["accuracy"] == pytest.approx(model.accuracy(*zoo.task.split("test")[:2]))
    assert report["onnx"]["file"] == "model.onnx"  # the export's figures are kept
    assert set(report["pareto"]["fronts"]) == {"FS"}
    text = (tmp_path / "folder" / "README.md").read_text()
    assert "## Pareto position" in text and "![Pareto position of this model](pareto.png)" in text
    assert (tmp_path / "folder" / "pareto.png").is_file() and 'hf_hub_download("org/dm"' in text
