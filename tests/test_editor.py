"""Requirements' hard metrics, the Editor's contract (edit, save/load, errors) and composition."""

import json

import numpy as np
import pytest
import torch

from hubedit import MLP, MLPConfig, load_task
from hubedit.editor import Editor, EditedMLP
from hubedit.editor.editing import evaluate_edits, folded_values, run_edit, score
from hubedit.errors import ConfigError, CorruptFileError, FeatureMismatchError, NonFiniteWeightsError, UnsupportedArchitectureError
from hubedit.graph import batch_to_mlps, mlp_to_graph, mlps_to_batch
from hubedit.requirements import get_requirement

ADULT = load_task("adult")


def make_models(n=6, seed=0, in_features=14):
    g = torch.Generator().manual_seed(seed)
    models = []
    for i in range(n):
        cfg = MLPConfig(
            in_features=in_features, hidden=[(8,), (16, 16), (8, 16, 32)][i % 3],
            activation=["relu", "tanh", "gelu"][i % 3], norm=["none", "layernorm", "batchnorm"][i % 3],
            skips=((0, 2),) if i % 3 == 1 else (),
        )
        torch.manual_seed(int(torch.randint(10**6, (1,), generator=g)))
        models.append(MLP(cfg).eval())
    return models


def randomise_heads(editor: Editor, seed: int = 0, scale: float = 0.5) -> Editor:
    """A fresh editor is the identity and keeps everything; give it non-trivial residual heads, and mask
    heads centred so that about half of the inputs / weights of the test models are dropped."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in editor.named_parameters():
            if "heads" in name or "classifier" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        cond = torch.zeros(6, 1) if editor.metanet.cond_dim else None
        out = editor.metanet(mlps_to_batch(make_models()), cond=cond)
        for head, logits in ((editor.metanet.edge_classifier, out.edge_logits),
                             (editor.metanet.input_classifier, out.input_node_logits)):
            head[-1].bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    return editor


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def models():
    return make_models()


def test_fresh_editor_is_identity(models):
    editor = Editor(requirement="fairness", task="adult", lam=1.0, metanet={"hidden": 16, "layers": 2})
    X = ADULT.split("test")[0][:256]
    for orig, edited in zip(models, editor.edit_many(models)):
        assert isinstance(edited, EditedMLP)
        assert torch.equal(orig(X), edited(X))


def test_prune_metric_equals_zero_count_of_written_back_model(models):
    editor = randomise_heads(Editor(requirement="prune", variant="prune-edit", task="adult", lam=1.0,
                                    metanet={"hidden": 16, "layers": 2}))
    batch = mlps_to_batch(models)
    _, edit = run_edit(editor.metanet, editor.requirement, batch, lam=torch.ones(len(models)), lam_range=None, hard=True)
    X, y, s = ADULT.split("evaluation")
    outcome, _ = score(editor.requirement, batch, edit, X[:128], y[:128], s[:128])
    metric = editor.requirement.metric(outcome)
    edited = editor.edit_many(models)
    for k, m in enumerate(edited):
        zeros = sum(int((layer.weight == 0).sum()) for layer in [*m.layers, *m.skips.values()])
        assert metric[k].item() == pytest.approx(1 - zeros / m.n_weights, abs=1e-12)
        assert 0 < metric[k] < 1
        # biases are never pruned: the written-back biases equal the edited node values
    # the edited module computes exactly what training's functional forward computes with the hard mask
    from hubedit.graph import functional_forward

    logits = functional_forward(batch, X[:64], edit.edge_values, edit.node_values, edge_mask=edit.edge_mask)
    for k, m in enumerate(edited):
        torch.testing.assert_close(m(X[:64]), logits[k], rtol=1e-5, atol=1e-5)


def test_minimise_metric_counts_kept_features_and_dropped_inputs_are_ignored(models):
    editor = randomise_heads(Editor(requirement="minimise", variant="gmn", task="adult", lam=1.0,
                                    metanet={"hidden": 16, "layers": 2}), seed=3)
    edited = editor.edit_many(models)
    X = ADULT.split("test")[0][:200]
    batch = mlps_to_batch(models)
    _, edit = run_edit(editor.metanet, editor.requirement, batch, lam=torch.ones(len(models)), lam_range=None, hard=True)
    outcome, _ = score(editor.requirement, batch, edit, X, ADULT.y[:200], ADULT.sensitive[:200])
    counts = editor.requirement.metric(outcome)
    for k, m in enumerate(edited):
        kept = m.kept_features
        assert counts[k] == len(kept)
        dropped = sorted(set(range(14)) - set(kept))
        assert dropped, "random heads should drop some features"
        noisy = X.clone()
        noisy[:, dropped] = torch.randn(len(X), len(dropped)) * 100
        assert torch.equal(m(X), m(noisy))  # dropped features cannot influence the output
        assert m.record["kept_feature_names"] == [ADULT.feature_names[i] for i in kept]


def test_fairness_metric_equals_fairlearn(models):
    from fairlearn.metrics import equalized_odds_difference

    editor = randomise_heads(Editor(requirement="fairness", task="adult", lam=1.0, metanet={"hidden": 16, "layers": 2}),
                             scale=0.05)
    X, y, s = ADULT.split("evaluation")
    batch = mlps_to_batch(models)
    _, edit = run_edit(editor.metanet, editor.requirement, batch, lam=torch.ones(len(models)), lam_range=None, hard=True)
    outcome, _ = score(editor.requirement, batch, edit, X, y, s)
    ours = editor.requirement.metric(outcome)
    for k, m in enumerate(editor.edit_many(models)):
        pred = m.predict(X).numpy()
        ref = equalized_odds_difference(y.numpy(), pred, sensitive_features=s.numpy())
        assert ours[k].item() == pytest.approx(ref, abs=1e-12)
        assert m.evaluate(ADULT, "evaluation", reference=models[k])["eod"] == pytest.approx(ref, abs=1e-12)


def test_save_and_load_give_bit_identical_edits(tmp_path, models):
    editor = randomise_heads(Editor(requirement="prune", task="adult", lam=0.5, metanet={"hidden": 16, "layers": 2}))
    editor.save_pretrained(tmp_path / "ed")
    config = json.loads((tmp_path / "ed" / "config.json").read_text())
    assert config["requirement"] == "prune" and config["lam"] == 0.5 and config["task"] == "adult"
    assert config["feature_schema"]["n_features"] == 14 and config["metanet"]["hidden"] == 16
    loaded = Editor.from_pretrained(tmp_path / "ed")
    X = ADULT.split("test")[0][:100]
    for a, b in zip(editor.edit_many(models), loaded.edit_many(models)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k])
        assert torch.equal(a(X), b(X))


def test_corrupt_or_mismatched_editor_files_are_refused(tmp_path):
    editor = Editor(requirement="prune", task="adult", lam=0.5, metanet={"hidden": 16, "layers": 2})
    editor.save_pretrained(tmp_path / "ed")
    (tmp_path / "ed" / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CorruptFileError, match="safetensors"):
        Editor.from_pretrained(tmp_path / "ed")
    # weights of a differently sized editor: strict keys/shapes
    Editor(requirement="prune", task="adult", lam=0.5, metanet={"hidden": 8, "layers": 2}).save_pretrained(tmp_path / "small")
    (tmp_path / "ed" / "model.safetensors").write_bytes((tmp_path / "small" / "model.safetensors").read_bytes())
    with pytest.raises(CorruptFileError, match="layers|tensor"):
        Editor.from_pretrained(tmp_path / "ed")
    cfg = json.loads((tmp_path / "small" / "config.json").read_text())
    del cfg["requirement"]
    (tmp_path / "small" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="requirement"):
        Editor.from_pretrained(tmp_path / "small")
    cfg["requirement"], cfg["lam"] = "prune", None
    (tmp_path / "small" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="exactly one of lam"):
        Editor.from_pretrained(tmp_path / "small")


def test_bad_models_are_refused_with_clear_errors():
    editor = Editor(requirement="fairness", task="adult", lam=1.0, metanet={"hidden": 8, "layers": 1})
    with pytest.raises(FeatureMismatchError, match="14 input features.*got a model with 16"):
        editor.edit(MLP(MLPConfig(in_features=16, hidden=(8,))))
    with pytest.raises(FeatureMismatchError, match="output classes"):
        editor.edit(MLP(MLPConfig(in_features=14, hidden=(8,), out_features=3)))
    deep = MLP(MLPConfig(in_features=14, hidden=(8,) * (editor.metanet.max_depth + 1)))
    with pytest.raises(UnsupportedArchitectureError, match="hidden layers"):
        editor.edit(deep)
    nan = MLP(MLPConfig(in_features=14, hidden=(8,)))
    with torch.no_grad():
        nan.layers[0].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match="layers.0.weight"):
        editor.edit(nan)
    with pytest.raises(UnsupportedArchitectureError, match="Sequential"):
        editor.edit(torch.nn.Sequential(torch.nn.Linear(14, 2)))
    with pytest.raises(ConfigError, match="trained for lam=1.0"):
        editor.edit(make_models(1)[0], lam=0.3)
    with pytest.raises(ConfigError, match="unknown requirement"):
        Editor(requirement="unlearn", task="adult", lam=1.0)
    with pytest.raises(ConfigError, match="variants"):
        Editor(requirement="prune", variant="gmn", task="adult", lam=1.0)


def test_lambda_conditioned_editor_needs_lambda_in_range(models):
    editor = randomise_heads(Editor(requirement="prune", task="adult", lam_range=[0.01, 10.0],
                                    metanet={"hidden": 16, "layers": 2}))
    with pytest.raises(ConfigError, match="pass lam"):
        editor.edit(models[0])
    with pytest.raises(ConfigError, match="outside the range"):
        editor.edit(models[0], lam=100.0)
    low, high = editor.edit(models[0], lam=0.01), editor.edit(models[0], lam=10.0)
    assert low.record["lam"] == 0.01 and high.record["lam"] == 10.0
    # the condition reaches the output: different lambdas give different edits
    assert any(not torch.equal(a, b) for a, b in zip(low.state_dict().values(), high.state_dict().values()))


def test_composition_keeps_dropped_features_dropped(models):
    dm = randomise_heads(Editor(requirement="minimise", task="adult", lam=1.0, metanet={"hidden": 16, "layers": 2}), 3)
    pr = randomise_heads(Editor(requirement="prune", task="adult", lam=1.0, metanet={"hidden": 16, "layers": 2}), 4)
    edited = dm.then(pr).edit(models[1])
    first = dm.edit(models[1])
    assert edited.kept_features == first.kept_features
    dropped = sorted(set(range(14)) - set(edited.kept_features))
    assert bool((edited.layers[0].weight[:, dropped] == 0).all())
    assert edited.weight_sparsity() > first.weight_sparsity()
    assert edited.record["requirement"] == "minimise+prune" and len(edited.record["composed"]) == 2


def test_edited_model_save_load_keeps_record(tmp_path, models):
    editor = randomise_heads(Editor(requirement="minimise", task="adult", lam=1.0, metanet={"hidden": 16, "layers": 2}), 3)
    edited = editor.edit(models[0])
    path = edited.save(tmp_path / "m.safetensors")
    again = EditedMLP.from_bytes(path.read_bytes())
    assert again.record == edited.record
    assert torch.equal(again(ADULT.X[:10]), edited(ADULT.X[:10]))


def test_topk_mask_keeps_exactly_k_per_group_with_a_straight_through_gradient():
    from hubedit.requirements.base import topk_mask

    g = torch.Generator().manual_seed(0)
    group = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    logits = torch.randn(15, 2, generator=g, requires_grad=True)
    k = torch.tensor([3, 0, 5])
    mask = topk_mask(logits, group, k, temperature=1.0, hard=False)
    assert [int(mask[group == i].sum()) for i in range(3)] == [3, 0, 5]
    score = (logits[:, 1] - logits[:, 0]).detach()
    for i in range(3):  # the kept ones are the highest-scoring of their group
        s, m = score[group == i], mask[group == i].detach()
        if 0 < int(m.sum()) < len(s):
            assert s[m > 0.5].min() > s[m < 0.5].max()
    mask.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # the soft part carries the gradient
    hard = topk_mask(logits.detach(), group, torch.tensor([10, 1, 2]), 1.0, hard=True)
    assert [int(hard[group == i].sum()) for i in range(3)] == [7, 1, 2]  # k clamped to the group size


def test_target_conditioned_editors_meet_the_target_exactly(models, tmp_path):
    from hubedit.baselines import n_kept
    from hubedit.evaluation.protocol import kept_features, nonzero_weights

    prune = randomise_heads(Editor(requirement="prune", task="adult", target_range=[0.05, 0.8],
                                   metanet={"hidden": 16, "layers": 2}))
    for target in (0.05, 0.1, 0.2, 0.5, 0.8):
        for model, edited in zip(models, prune.edit_many(models, target=target)):
            assert nonzero_weights(edited) == max(1, n_kept(model.n_weights, target))  # the baselines' count
            assert edited.record["target"] == target
    dm = randomise_heads(Editor(requirement="minimise", task="adult", target_range=[1, 13],
                                metanet={"hidden": 16, "layers": 2}))
    for count in (1, 4, 13):
        assert [kept_features(e) for e in dm.edit_many(models, target=count)] == [count] * len(models)
    with pytest.raises(ConfigError, match="pass target"):
        prune.edit(models[0])
    with pytest.raises(ConfigError, match="outside the range"):
        prune.edit(models[0], target=0.9)
    with pytest.raises(ConfigError, match="not lam"):
        prune.edit(models[0], lam=1.0, target=0.2)
    with pytest.raises(ConfigError, match="exactly one of"):
        Editor(requirement="prune", task="adult", lam=1.0, target_range=[0.1, 0.5])
    with pytest.raises(ConfigError, match="0 < low < high <= 1"):
        Editor(requirement="prune", task="adult", target_range=[0.1, 1.5])
    with pytest.raises(ConfigError, match="no target form"):
        Editor(requirement="fairness", task="adult", target_range=[0.01, 0.1])
    with pytest.raises(ConfigError, match="takes no target"):
        Editor(requirement="prune", task="adult", lam=1.0).edit(models[0], target=0.2)
    prune.save_pretrained(tmp_path / "p")
    again = Editor.from_pretrained(tmp_path / "p")
    assert again.target_range == (0.05, 0.8)
    a, b = prune.edit(models[1], target=0.3), again.edit(models[1], target=0.3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    card = (tmp_path / "p" / "README.md").read_text()
    assert "target-conditioned" in card and "target=" in card


def test_calibration_priors_start_the_editor_at_iterative_snip_and_permutation_importance(models):
    """An untrained editor with a calibration batch starts from its priors: with calibration rounds and prior
    masks it prunes exactly as iterative SNIP on the model's own labels over the stored calibration points; with
    feature importance it keeps the features of highest permutation importance on those points."""
    from hubedit import baselines
    from hubedit.graph.calibration import permutation_importance

    prune = Editor(requirement="prune", variant="prune", task="adult", target_range=[0.05, 0.8],
                   metanet={"hidden": 16, "layers": 2, "calibration": 64, "calibration_rounds": 3, "prior_masks": True})
    x_cal = prune.metanet.calibration_inputs
    assert torch.equal(x_cal, prune.metanet.calibration_inputs) and x_cal.abs().sum() > 0  # data, not zeros
    for model, edited in zip(models, prune.edit_many(models, target=0.3)):
        with torch.no_grad():
            own = model(x_cal).argmax(-1)
        snip = baselines.snip_prune(model, 0.3, x_cal, own, iterations=3)
        assert all(torch.equal(a, b) for a, b in zip(baselines.masks_of(edited).values(), baselines.masks_of(snip).values()))
    assert "calibration_prior" not in dict(prune.metanet.named_parameters())  # fixed with prior_masks

    dm = Editor(requirement="minimise", task="adult", target_range=[1, 13],
                metanet={"hidden": 16, "layers": 2, "calibration": 64, "feature_importance": True})
    with torch.no_grad():  # an untrained input head adds the same small noise to every feature: remove it
        dm.metanet.input_classifier[-1].weight.zero_()
    importance = permutation_importance(mlps_to_batch(models), dm.metanet.calibration_inputs)
    for i, edited in enumerate(dm.edit_many(models, target=4)):
        assert sorted(edited.record["kept_features"]) == sorted(importance[i].topk(4).indices.tolist())
    with pytest.raises(ConfigError, match="calibration_rounds"):
        Editor(requirement="minimise", task="adult", target_range=[1, 13],
               metanet={"hidden": 16, "layers": 2, "calibration": 64, "calibration_rounds": 2})


def test_wrap_copies_unless_told_it_may_take_the_model():
    torch.manual_seed(3)
    model = MLP(MLPConfig(14, (8, 4), 2, norm="batchnorm")).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copied = EditedMLP.wrap(model, {"requirement": "prune"})
    assert copied is not model and type(model) is MLP
    assert all(a.data_ptr() != b.data_ptr()  # a copy shares no storage
               for a, b in zip(copied.state_dict().values(), model.state_dict().values()) if a.numel())
    taken = EditedMLP.wrap(model, {"requirement": "prune"}, copy=False)
    assert taken is model and isinstance(taken, EditedMLP) and taken.record == {"requirement": "prune"}
    for k, v in taken.state_dict().items():
        assert torch.equal(v, state[k]) and torch.equal(copied.state_dict()[k], v), k
    x = torch.randn(5, 14)
    assert torch.equal(taken(x), copied(x))
