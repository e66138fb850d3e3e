"""ONNX export: equivalence with onnxruntime, data minimisation, metadata, zero counts, failure paths."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import hubedit
from hubedit.errors import FeatureMismatchError, HubeditError
from hubedit.export import (
    DroppedFeatureInUseError,
    OnnxVerificationError,
    count_zero_weights,
    export_onnx,
    load_onnx_metadata,
)
from hubedit.export import onnx as onnx_export
from hubedit.mlp import MLP, MLPConfig

TOL = 1e-5


def _randomise(model: MLP, seed: int = 0) -> MLP:
    """Non-trivial norm parameters and BatchNorm running statistics; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in model.norms:
            norm.weight.copy_(1.0 + 0.3 * torch.randn(norm.weight.shape, generator=g))
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=g))
        if model.config.norm == "batchnorm":
            model.train()
            for _ in range(5):  # running stats far from (0, 1)
                model(2.0 * torch.randn(64, model.config.in_features, generator=g) + 1.5)
    return model.eval()


def _make(config: MLPConfig, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return _randomise(MLP(config), seed)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_outputs(model: MLP, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return logits.numpy(), torch.softmax(logits, -1).numpy()


def _torch_weight_zeros(model: MLP) -> tuple[int, int]:
    mats = [m.weight for m in [*model.layers, *model.skips.values()]]
    return sum(int((w == 0).sum()) for w in mats), sum(w.numel() for w in mats)


CONFIGS = [
    MLPConfig(4, (8,), 2, activation="relu", norm="none"),
    MLPConfig(5, (8, 6), 3, activation="leaky_relu", norm="batchnorm"),
    MLPConfig(6, (8, 8, 8), 2, activation="gelu", norm="layernorm", skips=((0, 2), (1, 3), (0, 3))),
    MLPConfig(7, (10, 8, 8, 6), 4, activation="silu", norm="batchnorm", skips=((0, 2), (1, 3), (0, 3), (2, 4))),
    MLPConfig(5, (8, 8, 8, 8), 2, activation="tanh", norm="layernorm", skips=((0, 2), (1, 3))),
    MLPConfig(6, (8, 8, 8), 3, activation="sigmoid", norm="none", skips=((0, 3),)),
    MLPConfig(5, (8, 8), 2, activation="relu", norm="batchnorm", dropout=0.3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.activation}-{c.norm}-d{c.depth}-s{len(c.skips)}")
def test_equivalence_with_onnxruntime(tmp_path, config):
    model = _make(config)
    model.train()  # export must be eval whatever the module's flag, and leave the flag alone
    path = tmp_path / "model.onnx"
    result = export_onnx(model, path)
    assert model.training
    assert result.path == path and path.is_file()
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL
    assert result.kept_features == tuple(range(config.in_features))

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["features"]
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == config.in_features
    assert proto.producer_name == "hubedit" and "MLP" in proto.doc_string
    # every weight matrix is its own initializer, named as in the state dict
    names = {t.name for t in proto.graph.initializer}
    assert {f"layers.{i}.weight" for i in range(config.depth + 1)} <= names
    assert {f"skips.{s}_{d}.weight" for s, d in config.skips} <= names
    assert not any(n.op_type == "Dropout" for n in proto.graph.node)

    # independent check on fresh inputs (not the verification batch), batch 256 and 1
    sess = _session(path)
    g = torch.Generator().manual_seed(123)
    x = 1.5 * torch.randn(256, config.in_features, generator=g)
    for xb in (x, x[:1]):
        want_logits, want_proba = _torch_outputs(model, xb)
        got_logits, got_proba = sess.run(None, {"features": xb.numpy()})
        assert got_logits.shape == (len(xb), config.out_features)
        np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=TOL)
        np.testing.assert_allclose(got_proba, want_proba, rtol=0, atol=TOL)
    model.eval()
    np.testing.assert_allclose(sess.run(["probabilities"], {"features": x.numpy()})[0], model.predict_proba(x).numpy(), atol=TOL)


def _minimisable_model(dropped=(1, 4)) -> MLP:
    config = MLPConfig(6, (8, 8, 6), 3, activation="gelu", norm="batchnorm", skips=((0, 2), (0, 3), (1, 3)))
    model = _make(config, seed=3)
    with torch.no_grad():
        model.layers[0].weight[:, list(dropped)] = 0.0
        for key in ("0_2", "0_3"):
            model.skips[key].weight[:, list(dropped)] = 0.0
    return model


FEATURES = ["age", "income", "height", "weight", "zip", "score"]


def test_kept_features_export_takes_only_kept_inputs(tmp_path):
    model = _minimisable_model()
    kept = [0, 2, 3, 5]
    path = tmp_path / "min.onnx"
    result = export_onnx(model, path, kept_features=kept, feature_names=FEATURES)
    assert result.max_abs_diff <= TOL
    assert result.kept_features == tuple(kept)
    assert result.input_names == ("age", "height", "weight", "score")

    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 4
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert inits["layers.0.weight"].shape == (8, 4)
    assert inits["skips.0_2.weight"].shape == (8, 4) and inits["skips.0_3.weight"].shape == (6, 4)
    assert inits["skips.1_3.weight"].shape == (6, 8)  # not from the input: untouched

    sess = _session(path)
    with pytest.raises(Exception):  # the full input is no longer accepted
        sess.run(None, {"features": np.zeros((2, 6), np.float32)})
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 6, generator=g)
    x[:, [1, 4]] = 1e3 * torch.randn(256, 2, generator=g)  # dropped columns: anything at all
    for xb in (x, x[:1]):
        want_logits, want_proba = _torch_outputs(model, xb)
        got_logits, got_proba = sess.run(None, {"features": xb[:, kept].numpy()})
        np.testing.assert_allclose(got_logits, want_logits, atol=TOL, rtol=0)
        np.testing.assert_allclose(got_proba, want_proba, atol=TOL, rtol=0)

    meta = load_onnx_metadata(path)
    assert meta["input_features"] == ["age", "height", "weight", "score"]
    assert meta["kept_features"] == kept
    assert meta["dropped_features"] == ["income", "zip"]
    assert meta["mlp_config"] == model.config.to_dict()
    assert "4 of the model's 6" in proto.doc_string
    # the dropped columns' (zero) weights are gone from the count
    assert result.n_weights == model.n_weights - 2 * (8 + 8 + 6)
    assert count_zero_weights(path) == (result.n_zero_weights, result.n_weights)


def test_kept_features_by_name_and_in_given_order(tmp_path):
    model = _minimisable_model()
    result = export_onnx(model, tmp_path / "m.onnx", kept_features=["score", "age", "weight", "height"], feature_names=FEATURES)
    assert result.kept_features == (5, 0, 3, 2)
    x = torch.randn(16, 6)
    got = _session(result.path).run(["logits"], {"features": x[:, [5, 0, 3, 2]].numpy()})[0]
    np.testing.assert_allclose(got, _torch_outputs(model, x)[0], atol=TOL, rtol=0)
    # without names the metadata lists indices
    r2 = export_onnx(model, tmp_path / "m2.onnx", kept_features=[0, 2, 3, 5])
    assert load_onnx_metadata(r2.path)["input_features"] == [0, 2, 3, 5]
    assert load_onnx_metadata(r2.path)["dropped_features"] == [1, 4]


def test_refuses_dropping_a_feature_still_in_use(tmp_path):
    model = _minimisable_model()
    with torch.no_grad():
        model.skips["0_3"].weight[2, 4] = 0.5  # "zip" still feeds a skip
    path = tmp_path / "bad.onnx"
    with pytest.raises(DroppedFeatureInUseError) as info:
        export_onnx(model, path, kept_features=[0, 2, 3, 5], feature_names=FEATURES)
    msg = str(info.value)
    assert "'zip'" in msg and "skips.0_3.weight" in msg and "income" not in msg
    assert isinstance(info.value, HubeditError) and isinstance(info.value, ValueError)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    # without names the index is named
    with pytest.raises(DroppedFeatureInUseError, match="input 4"):
        export_onnx(model, path, kept_features=[0, 2, 3, 5])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(kept_features=[0, 9]), FeatureMismatchError),
        (dict(kept_features=[0, 0, 2]), FeatureMismatchError),
        (dict(kept_features=[]), FeatureMismatchError),
        (dict(kept_features=[0.5]), TypeError),
        (dict(kept_features=["age"]), FeatureMismatchError),  # a name without feature_names
        (dict(feature_names=["a", "b"]), FeatureMismatchError),
        (dict(metadata={"mlp_config": "x"}), ValueError),
        (dict(metadata={"x": object()}), ValueError),
        (dict(metadata={"x": float("nan")}), ValueError),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, error):
    with pytest.raises(error):
        export_onnx(_minimisable_model(), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_metadata_round_trip(tmp_path):
    model = _make(CONFIGS[2])
    user = {
        "editor": "org/editor-minimisation",
        "lambda": 0.5,
        "n_edits": 3,
        "compliance": {"dropped_fraction": 0.25, "accuracy": 0.91},
        "tags": ["a", "b"],
        "numeric_string": "123",
    }
    path = tmp_path / "m.onnx"
    result = export_onnx(model, path, metadata=user, feature_names=[f"f{i}" for i in range(6)])
    meta = load_onnx_metadata(path)
    for k, v in user.items():
        assert meta[k] == v and type(meta[k]) is type(v)
    assert meta["hubedit_version"] == hubedit.__version__
    assert MLPConfig.from_dict(meta["mlp_config"]) == model.config
    assert meta["input_features"] == [f"f{i}" for i in range(6)]
    assert meta["n_weights"] == model.n_weights and meta["n_zero_weights"] == 0
    raw = load_onnx_metadata(path, raw=True)
    assert raw == result.metadata
    assert raw["editor"] == user["editor"] and json.loads(raw["compliance"]) == user["compliance"]
    assert all(isinstance(v, str) for v in raw.values())
    proto = onnx.load(str(path))
    assert proto.producer_name == "hubedit" and proto.producer_version == hubedit.__version__


def test_zero_count_matches_pruned_torch_weights(tmp_path):
    model = _make(CONFIGS[3], seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in [*model.layers, *model.skips.values()]:
            m.weight[torch.rand(m.weight.shape, generator=g) < 0.4] = 0.0
    zeros, total = _torch_weight_zeros(model)
    assert 0 < zeros < total and total == model.n_weights
    result = export_onnx(model, tmp_path / "pruned.onnx")
    assert (result.n_zero_weights, result.n_weights) == (zeros, total)
    assert count_zero_weights(result.path) == (zeros, total)
    assert count_zero_weights(onnx.load(str(result.path))) == (zeros, total)
    meta = load_onnx_metadata(result.path)
    assert (meta["n_zero_weights"], meta["n_weights"]) == (zeros, total)
    assert result.sparsity == pytest.approx(zeros / total)


def test_zero_count_survives_equal_weight_matrices(tmp_path):
    """Equal (e.g. fully pruned) matrices stay separate in the file: no dedup, no merged sub-graphs."""
    model = _make(MLPConfig(5, (8, 8, 8), 2, norm="layernorm", skips=((0, 2), (0, 3))), seed=2)
    with torch.no_grad():
        model.skips["0_2"].weight.zero_()
        model.skips["0_3"].weight.zero_()
        model.layers[2].weight.copy_(model.layers[1].weight)
    result = export_onnx(model, tmp_path / "m.onnx")
    assert (result.n_zero_weights, result.n_weights) == _torch_weight_zeros(model) == (80, model.n_weights)
    assert result.max_abs_diff <= TOL


def test_verification_failure_leaves_no_file(tmp_path):
    model = _make(CONFIGS[1])
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxVerificationError) as info:
        export_onnx(model, path, atol=-1.0)
    assert isinstance(info.value, HubeditError)
    assert info.value.max_abs_diff >= 0 and "max abs difference" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_verification_failure_keeps_previous_file_and_reports_diff(tmp_path, monkeypatch):
    model = _make(CONFIGS[0])
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    real = onnx_export._run_session

    def off_by(session, x):
        logits, proba = real(session, x)
        return [logits + 0.01, proba]

    monkeypatch.setattr(onnx_export, "_run_session", off_by)
    with pytest.raises(OnnxVerificationError, match="logits") as info:
        export_onnx(model, path)
    assert info.value.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert path.read_bytes() == b"previous"  # never replaced by an unverified file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

    monkeypatch.setattr(onnx_export, "_run_session", lambda s, x: [np.full((len(x), 2), np.nan, np.float32)] * 2)
    with pytest.raises(OnnxVerificationError):
        export_onnx(model, tmp_path / "nan.onnx")
    assert not (tmp_path / "nan.onnx").exists()


def test_no_verification_and_opset(tmp_path):
    model = _make(CONFIGS[2])
    result = export_onnx(model, tmp_path / "m.onnx", verify=False, opset=18)
    assert result.max_abs_diff is None and result.opset == 18
    x = torch.randn(5, 6)
    got = _session(result.path).run(["logits"], {"features": x.numpy()})[0]  # gelu decomposed for opset 18
    np.testing.assert_allclose(got, _torch_outputs(model, x)[0], atol=TOL, rtol=0)


def test_refuses_non_finite_model(tmp_path):
    model = _make(CONFIGS[0])
    with torch.no_grad():
        model.layers[0].weight[0, 0] = float("nan")
    with pytest.raises(hubedit.NonFiniteWeightsError):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_edited_model_export_runs_on_task_test_data_and_names_kept_features(tmp_path):
    import onnxruntime as ort

    from hubedit import load_task
    from hubedit.cli import main
    from hubedit.editor import EditedMLP
    from hubedit.export import load_onnx_metadata

    task = load_task("bank")
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=16, hidden=(8, 8), skips=((0, 2),)))
    kept = [0, 2, 5, 11]
    dropped = [i for i in range(16) if i not in kept]
    with torch.no_grad():
        model.layers[0].weight[:, dropped] = 0
        model.skips["0_2"].weight[:, dropped] = 0
    edited = EditedMLP.wrap(model, {"requirement": "minimise", "lam": 0.1, "task": "bank", "kept_features": kept})
    info = edited.export_onnx(tmp_path / "m.onnx", task=task)
    assert list(info.input_names) == [task.feature_names[i] for i in kept] and info.max_abs_diff <= 1e-5
    assert load_onnx_metadata(tmp_path / "m.onnx")["requirement"] == "minimise"
    X = task.split("test")[0]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {sess.get_inputs()[0].name: X[:, kept].numpy()})[0]
    np.testing.assert_allclose(got, edited.predict_proba(X).numpy(), atol=1e-5)
    edited.save(tmp_path / "m.safetensors")
    assert main(["export", "--model", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert (tmp_path / "cli.onnx").is_file()
