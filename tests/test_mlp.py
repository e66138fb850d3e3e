import math

import numpy as np
import pytest
import torch
from torch import nn

from hubedit import MLP, MLPConfig
from hubedit.errors import (
    ConfigError,
    CorruptFileError,
    FeatureMismatchError,
    NonFiniteWeightsError,
    UnsupportedArchitectureError,
)
from hubedit.mlp import ACTIVATIONS, NORMS

ACT = {
    "relu": lambda x: x.clamp_min(0),
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "tanh": lambda x: (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1),
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
}


def randomise(model: MLP, seed: int) -> MLP:
    """Random values in every tensor, BatchNorm running statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            vals = torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5
            t.copy_(vals.abs() + 0.5 if "running_var" in name else vals)
    return model.eval()


def hand_forward(model: MLP, x: torch.Tensor) -> torch.Tensor:
    """The MLP family's equation written out with plain tensor algebra (float64)."""
    c = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    acts = [x.double()]
    for l in range(1, c.depth + 1):
        z = acts[-1] @ sd[f"layers.{l-1}.weight"].T + sd[f"layers.{l-1}.bias"]
        for s, d in c.skips:
            if d == l:
                z = z + acts[s] @ sd[f"skips.{s}_{d}.weight"].T
        if c.norm == "batchnorm":
            p = f"norms.{l-1}."
            z = (z - sd[p + "running_mean"]) / torch.sqrt(sd[p + "running_var"] + c.norm_eps) * sd[p + "weight"] + sd[p + "bias"]
        elif c.norm == "layernorm":
            p = f"norms.{l-1}."
            mu = z.mean(-1, keepdim=True)
            var = ((z - mu) ** 2).mean(-1, keepdim=True)
            z = (z - mu) / torch.sqrt(var + c.norm_eps) * sd[p + "weight"] + sd[p + "bias"]
        acts.append(ACT[c.activation](z))
    return acts[-1] @ sd[f"layers.{c.depth}.weight"].T + sd[f"layers.{c.depth}.bias"]


SKIPPY = [
    ((8, 16, 16, 32), ((0, 2), (0, 3), (1, 3), (0, 4), (2, 4))),
    ((16, 16), ((0, 2),)),
    ((32,), ()),
]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("hidden, skips", SKIPPY)
def test_forward_matches_hand_written_equation(norm, activation, hidden, skips):
    cfg = MLPConfig(in_features=14, hidden=hidden, activation=activation, norm=norm, skips=skips, dropout=0.2)
    model = randomise(MLP(cfg), seed=len(hidden) + len(skips))
    x = torch.randn(64, 14, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out.shape == (64, 2)
    torch.testing.assert_close(out.double(), hand_forward(model, x), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    model = randomise(MLP(MLPConfig(in_features=5, hidden=(16,), dropout=0.5)), 0)
    x = torch.randn(8, 5)
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_config_json_round_trip_and_validation():
    cfg = MLPConfig(in_features=16, hidden=[8, 16, 64], activation="silu", norm="batchnorm", skips=[[1, 3], [0, 2]], dropout=0.1)
    again = MLPConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg) and again.skips == ((0, 2), (1, 3))
    for bad, match in [
        (dict(hidden=()), "at least one hidden layer"),
        (dict(hidden=(8,), activation="swish"), "activation 'swish'"),
        (dict(hidden=(8,), norm="groupnorm"), "norm 'groupnorm'"),
        (dict(hidden=(8, 8), skips=((1, 2),)), r"skip \(1, 2\)"),
        (dict(hidden=(8, 8), skips=((0, 1),)), r"skip \(0, 1\)"),
        (dict(hidden=(8,), dropout=1.0), "dropout"),
    ]:
        with pytest.raises(ConfigError, match=match):
            MLPConfig(in_features=4, **bad)
    with pytest.raises(ConfigError, match="unknown MLPConfig fields"):
        MLPConfig.from_dict({"in_features": 3, "hidden": [4], "colour": "red"})
    with pytest.raises(ConfigError, match="does not parse"):
        MLPConfig.from_json("{not json")


def test_wrong_feature_count_is_refused():
    model = MLP(MLPConfig(in_features=14, hidden=(8,)))
    with pytest.raises(FeatureMismatchError, match=r"\(batch, 14\), got \(3, 16\)"):
        model(torch.zeros(3, 16))


def test_save_load_is_exact_and_keeps_metadata(tmp_path):
    cfg = MLPConfig(in_features=14, hidden=(16, 32), norm="batchnorm", activation="gelu", skips=((0, 2),))
    model = randomise(MLP(cfg), 3)
    path = model.save(tmp_path / "m.safetensors", metadata={"epoch": 7, "note": "hello"})
    loaded = MLP.load(path)
    assert loaded.config == cfg and loaded.metadata == {"epoch": "7", "note": "hello"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randn(10, 14)
    assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    model = randomise(MLP(MLPConfig(in_features=4, hidden=(8,))), 0)
    blob = model.to_bytes()
    with pytest.raises(CorruptFileError, match="not a safetensors file"):
        MLP.from_bytes(b"\x00\x01garbage")
    with pytest.raises(CorruptFileError):
        MLP.from_bytes(blob[: len(blob) // 2])
    from safetensors.torch import save

    foreign = save({"weight": torch.zeros(2, 2)})
    with pytest.raises(CorruptFileError, match="not a hubedit MLP"):
        MLP.from_bytes(foreign)
    sd = {k: v for k, v in model.state_dict().items()}
    meta = {"format": "hubedit.mlp", "format_version": "1", "config": model.config.to_json()}
    sd_missing = {k: v for k, v in sd.items() if k != "layers.1.bias"}
    with pytest.raises(CorruptFileError, match=r"missing \['layers.1.bias'\]"):
        MLP.from_bytes(save(sd_missing, metadata=meta))
    sd_shape = dict(sd, **{"layers.0.weight": torch.zeros(8, 5)})
    with pytest.raises(CorruptFileError, match="layers.0.weight"):
        MLP.from_bytes(save(sd_shape, metadata=meta))
    with pytest.raises(FileNotFoundError):
        MLP.load(tmp_path / "absent.safetensors")


def test_non_finite_weights_are_refused():
    model = MLP(MLPConfig(in_features=4, hidden=(8,)))
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="layers.1.weight"):
        model.check_finite()
    with pytest.raises(NonFiniteWeightsError):
        MLP.from_bytes(model.to_bytes())


# --- import from torch ----------------------------------------------------------------------------

def _trained_bn(seq: nn.Sequential) -> nn.Sequential:
    seq.train()
    with torch.no_grad():
        for _ in range(3):
            seq(torch.randn(32, seq[0].in_features) * 2 + 1)
    return seq.eval()


TORCH_MODELS = [
    lambda: nn.Sequential(nn.Linear(14, 16), nn.ReLU(), nn.Linear(16, 2)),
    lambda: nn.Sequential(nn.Linear(14, 16), nn.BatchNorm1d(16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 32),
                          nn.BatchNorm1d(32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 3)),
    lambda: nn.Sequential(nn.Linear(14, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2)),
    lambda: nn.Sequential(nn.Linear(14, 8), nn.SiLU(), nn.Linear(8, 1)),
    lambda: nn.Sequential(nn.Linear(14, 8, bias=False), nn.LeakyReLU(), nn.Identity(), nn.Linear(8, 2)),
    lambda: nn.Sequential(nn.Linear(14, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.Sigmoid(), nn.Linear(64, 2)),
]


@pytest.mark.parametrize("make", TORCH_MODELS)
def test_from_torch_matches_source_probabilities(make):
    torch.manual_seed(0)
    seq = _trained_bn(make())
    mlp = MLP.from_torch(seq)
    x = torch.randn(200, 14)
    with torch.no_grad():
        logits = seq(x)
    ref = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, -1)[:, 1]
    torch.testing.assert_close(mlp.predict_proba(x)[:, 1], ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "seq, match",
    [
        (nn.Sequential(nn.Linear(4, 8), nn.Conv1d(1, 1, 1), nn.Linear(8, 2)), "Conv1d"),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2)), "BatchNorm1d"),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)), "one activation"),
        (nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2)), "negative_slope=0.2"),
        (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Softmax(-1)), "Softmax"),
        (nn.Sequential(nn.Linear(4, 2)), "at least one hidden layer"),
        (nn.LSTM(4, 4), "expects an nn.Sequential"),
    ],
)
def test_from_torch_refuses_what_it_cannot_express(seq, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        MLP.from_torch(seq)


# --- import from scikit-learn ----------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_from_sklearn_matches_predict_proba(activation, n_classes):
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (n_classes == 3) * (X[:, 2] > 1)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), activation=activation, max_iter=60, random_state=0).fit(X, y)
    mlp = MLP.from_sklearn(clf)
    assert mlp.config.out_features == n_classes
    ours = mlp.predict_proba(torch.from_numpy(X)).double().numpy()
    np.testing.assert_allclose(ours, clf.predict_proba(X), atol=1e-6, rtol=0)


def test_from_sklearn_refuses_unsupported():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    with pytest.raises(UnsupportedArchitectureError, match="not fitted"):
        MLP.from_sklearn(MLPClassifier())
    X, y = np.random.default_rng(0).normal(size=(50, 3)), np.arange(50) % 2
    with pytest.raises(UnsupportedArchitectureError, match="identity"):
        MLP.from_sklearn(MLPClassifier(activation="identity", max_iter=5).fit(X, y))
    with pytest.raises(UnsupportedArchitectureError, match="LogisticRegression"):
        MLP.from_sklearn(LogisticRegression().fit(X, y))


def test_serialisation_is_byte_deterministic():
    model = randomise(MLP(MLPConfig(in_features=6, hidden=(8, 8), norm="batchnorm", skips=((0, 2),))), 5)
    blobs = {model.to_bytes(metadata={"b": "2", "a": "1", "z": "x"}) for _ in range(20)}
    assert len(blobs) == 1
    again = MLP.from_bytes(blobs.pop())
    assert again.metadata == {"a": "1", "b": "2", "z": "x"}
