"""Import users' own models into the MLP family: ``nn.Sequential`` and scikit-learn's ``MLPClassifier``.

Both importers are exact: the imported :class:`MLP` gives the source model's probabilities (to float32
rounding). Anything the family cannot express is refused with an error naming the layer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from .config import LEAKY_RELU_SLOPE, MLPConfig
from .module import MLP


def _activation_name(m: nn.Module) -> str | None:
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.LeakyReLU):
        if m.negative_slope != LEAKY_RELU_SLOPE:
            raise UnsupportedArchitectureError(
                f"LeakyReLU with negative_slope={m.negative_slope}: hubedit supports only {LEAKY_RELU_SLOPE}"
            )
        return "leaky_relu"
    if isinstance(m, nn.GELU):
        if m.approximate != "none":
            raise UnsupportedArchitectureError(f"GELU(approximate={m.approximate!r}): only the exact GELU is supported")
        return "gelu"
    if isinstance(m, nn.SiLU):
        return "silu"
    if isinstance(m, nn.Tanh):
        return "tanh"
    if isinstance(m, nn.Sigmoid):
        return "sigmoid"
    return None


def _refuse(i: int, m: nn.Module, expected: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"unsupported layer at position {i}: {m.__class__.__name__} ({m}); expected {expected}. hubedit imports "
        "nn.Sequential models of the form [Linear, (BatchNorm1d|LayerNorm)?, activation, Dropout?]* Linear "
        "with one activation (ReLU, LeakyReLU(0.01), GELU, SiLU, Tanh, Sigmoid) and one norm type throughout"
    )


def from_torch(module: nn.Module) -> MLP:
    """Import an ``nn.Sequential``; a final ``Linear`` with one output is read as a sigmoid logit ``z``
    and becomes the two logits ``(0, z)`` (same probabilities)."""
    if isinstance(module, MLP):
        clone = MLP(module.config)
        clone.load_state_dict(module.state_dict())
        return clone.eval()
    if not isinstance(module, nn.Sequential):
        raise UnsupportedArchitectureError(
            f"MLP.from_torch expects an nn.Sequential, got {module.__class__.__name__}; wrap your layers in "
            "nn.Sequential or build a hubedit.MLP directly"
        )
    mods = [(i, m) for i, m in enumerate(module) if not isinstance(m, nn.Identity)]
    linears, norms, acts, drops = [], [], [], []
    k = 0
    while k < len(mods):
        i, m = mods[k]
        if not isinstance(m, nn.Linear):
            raise _refuse(i, m, "Linear")
        linears.append(m)
        k += 1
        if k == len(mods):
            break
        i, m = mods[k]
        if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
            norms.append(m)
            k += 1
            if k == len(mods):
                raise _refuse(i, m, "an activation after the normalisation")
            i, m = mods[k]
        if _activation_name(m) is None:
            raise _refuse(i, m, "a normalisation or an activation after Linear")
        acts.append(_activation_name(m))
        k += 1
        if k < len(mods) and isinstance(mods[k][1], nn.Dropout):
            drops.append(mods[k][1].p)
            k += 1
    if len(linears) < 2:
        raise UnsupportedArchitectureError(
            f"expected at least one hidden layer (two Linear layers), found {len(linears)} Linear layer(s)"
        )
    if len(acts) != len(linears) - 1:
        raise UnsupportedArchitectureError("the model must end with a Linear layer producing the logits")
    if len(set(acts)) > 1:
        raise UnsupportedArchitectureError(f"all hidden layers must share one activation, found {acts}")
    if norms and len(norms) != len(acts):
        raise UnsupportedArchitectureError(
            f"either every hidden layer is normalised or none is; found {len(norms)} norms for {len(acts)} hidden layers"
        )
    if len({type(n) for n in norms}) > 1:
        raise UnsupportedArchitectureError("all hidden layers must use the same normalisation type")
    if len(set(drops)) > 1:
        raise UnsupportedArchitectureError(f"all hidden layers must share one dropout rate, found {drops}")
    eps = {float(n.eps) for n in norms}
    if len(eps) > 1:
        raise UnsupportedArchitectureError(f"all normalisation layers must share one eps, found {sorted(eps)}")
    for n in norms:
        if isinstance(n, nn.BatchNorm1d) and not n.track_running_stats:
            raise UnsupportedArchitectureError("BatchNorm1d without running statistics cannot be evaluated per sample")
        if isinstance(n, nn.LayerNorm) and len(n.normalized_shape) != 1:
            raise UnsupportedArchitectureError(f"LayerNorm over {n.normalized_shape}: only 1-d normalisation is supported")
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise UnsupportedArchitectureError(f"Linear sizes do not chain: {a} then {b}")

    one_logit = linears[-1].out_features == 1
    norm = "none" if not norms else ("batchnorm" if isinstance(norms[0], nn.BatchNorm1d) else "layernorm")
    config = MLPConfig(
        in_features=linears[0].in_features,
        hidden=tuple(l.out_features for l in linears[:-1]),
        out_features=2 if one_logit else linears[-1].out_features,
        activation=acts[0],
        norm=norm,
        dropout=drops[0] if drops else 0.0,
        norm_eps=eps.pop() if eps else 1e-5,
    )
    mlp = MLP(config)
    with torch.no_grad():
        for dst, src in zip(mlp.layers[:-1], linears[:-1]):
            _copy_linear(dst, src.weight, src.bias)
        if one_logit:
            w, b = linears[-1].weight, linears[-1].bias
            zero_w = torch.zeros_like(w)
            zero_b = torch.zeros(1) if b is None else torch.zeros_like(b)
            _copy_linear(mlp.layers[-1], torch.cat([zero_w, w]), torch.cat([zero_b, zero_b if b is None else b]))
        else:
            _copy_linear(mlp.layers[-1], linears[-1].weight, linears[-1].bias)
        for dst, src in zip(mlp.norms, norms):
            if src.weight is not None:
                dst.weight.copy_(src.weight)
            if src.bias is not None:
                dst.bias.copy_(src.bias)
            if isinstance(src, nn.BatchNorm1d):
                dst.running_mean.copy_(src.running_mean)
                dst.running_var.copy_(src.running_var)
                dst.num_batches_tracked.copy_(src.num_batches_tracked)
    return mlp.eval()


def _copy_linear(dst: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    dst.weight.copy_(weight.detach().float())
    if bias is None:
        dst.bias.zero_()
    else:
        dst.bias.copy_(bias.detach().float())


_SKLEARN_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid"}


def from_sklearn(clf) -> MLP:
    """Import a fitted ``MLPClassifier``. Binary classifiers (one logistic output ``z``) become two logits
    ``(0, z)``, so the softmax equals scikit-learn's ``predict_proba``."""
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("MLP.from_sklearn needs scikit-learn") from exc
    if not isinstance(clf, MLPClassifier):
        raise UnsupportedArchitectureError(
            f"MLP.from_sklearn expects a fitted sklearn.neural_network.MLPClassifier, got {clf.__class__.__name__}"
        )
    if not hasattr(clf, "coefs_"):
        raise UnsupportedArchitectureError("the MLPClassifier is not fitted (no coefs_): call fit() first")
    if clf.activation not in _SKLEARN_ACTIVATIONS:
        raise UnsupportedArchitectureError(
            f"MLPClassifier(activation={clf.activation!r}) is not supported; expected one of "
            f"{sorted(_SKLEARN_ACTIVATIONS)}"
        )
    if clf.out_activation_ not in ("logistic", "softmax") or (clf.out_activation_ == "logistic" and clf.n_outputs_ != 1):
        raise UnsupportedArchitectureError(
            f"only single-label classifiers are supported (out_activation_={clf.out_activation_!r}, "
            f"n_outputs_={clf.n_outputs_})"
        )
    coefs = [np.asarray(c, dtype=np.float64) for c in clf.coefs_]
    biases = [np.asarray(b, dtype=np.float64) for b in clf.intercepts_]
    binary = clf.out_activation_ == "logistic"
    if binary:
        coefs[-1] = np.concatenate([np.zeros_like(coefs[-1]), coefs[-1]], axis=1)
        biases[-1] = np.concatenate([np.zeros_like(biases[-1]), biases[-1]])
    config = MLPConfig(
        in_features=coefs[0].shape[0],
        hidden=tuple(c.shape[1] for c in coefs[:-1]),
        out_features=coefs[-1].shape[1],
        activation=_SKLEARN_ACTIVATIONS[clf.activation],
    )
    mlp = MLP(config)
    with torch.no_grad():
        for layer, w, b in zip(mlp.layers, coefs, biases):
            _copy_linear(layer, torch.from_numpy(w.T.copy()), torch.from_numpy(b))
    return mlp.eval()
