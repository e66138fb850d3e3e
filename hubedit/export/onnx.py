"""Export of an :class:`~hubedit.mlp.MLP` to ONNX, verified against onnxruntime.

The exported graph takes one float32 input ``features`` of shape ``(batch, n_inputs)`` and gives two
outputs, ``logits`` and ``probabilities`` (softmax over the classes). The model is always exported in
eval mode (dropout off, BatchNorm running statistics).

Data minimisation: with ``kept_features`` the exported graph takes *only* those input columns; the
columns of the first layer's weight and of every skip out of the input layer are sliced. The export
refuses when a dropped feature still carries a non-zero weight (the model must already ignore it).

Exporter: ``torch.onnx.export(..., dynamo=True, optimize=False)`` (the torch.export based exporter,
the default since torch 2.9; the TorchScript one is deprecated). ``optimize=False`` because the
optimiser deduplicates equal initializers and even eliminates equal sub-graphs (two all-zero skips of
one shape become one), which would make the weights in the file disagree with the model's: without
it every parameter stays one initializer named as in the module's ``state_dict``
(``layers.{i}.weight``, ``skips.{s}_{d}.weight``, ``norms.{i}.running_mean``, ...). The graph is
still small: one ``Gemm`` per linear map, the norm op, the activation, ``Add`` and ``Softmax``.

Provenance and compliance figures go into ``metadata_props``; :func:`load_onnx_metadata` reads them
back and :func:`count_zero_weights` counts the zeros of the weight matrices in a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import FeatureMismatchError, HubeditError
from ..mlp import MLP, MLPConfig, skip_key

INPUT_NAME = "features"
OUTPUT_NAMES = ("logits", "probabilities")
PRODUCER_NAME = "hubedit"

# metadata keys written by every export (user metadata may not use them)
RESERVED_KEYS = (
    "hubedit_version",
    "mlp_config",
    "input_features",
    "kept_features",
    "dropped_features",
    "n_weights",
    "n_zero_weights",
    "hubedit_json_keys",
)
_JSON_KEYS_KEY = "hubedit_json_keys"  # which props hold JSON (so that reading them back is exact)

VERIFY_ROWS = 256
VERIFY_SEED = 0

_WEIGHT_OPS = ("Gemm", "MatMul")  # ops whose 2-D initializer inputs are weight matrices
_PASS_THROUGH_OPS = ("Identity", "Transpose")  # followed back to the initializer they read


class OnnxExportError(HubeditError, RuntimeError):
    """The exporter, the ONNX checker or onnxruntime failed on a model."""


class OnnxVerificationError(OnnxExportError):
    """onnxruntime's outputs differ from the torch model's by more than the tolerance."""

    def __init__(self, message: str, max_abs_diff: float):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


class DroppedFeatureInUseError(FeatureMismatchError):
    """A feature left out of a data-minimised export still has non-zero weights in the model."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    input_names: tuple[str, ...]  # names (or indices as strings) of the graph's input columns, in order
    kept_features: tuple[int, ...]  # indices into the model's inputs of those columns
    max_abs_diff: float | None  # largest |torch - onnxruntime| over logits and probabilities; None if not verified
    n_zero_weights: int  # exact zeros in the weight matrices of the file
    n_weights: int  # entries of the weight matrices of the file (biases and norm parameters excluded)
    metadata: dict[str, str] = field(default_factory=dict)  # the metadata_props written, as strings
    opset: int | None = None
    seconds: float = 0.0  # wall time of the whole call (export + verification)

    @property
    def n_inputs(self) -> int:
        return len(self.kept_features)

    @property
    def sparsity(self) -> float:
        return self.n_zero_weights / self.n_weights if self.n_weights else 0.0


class _ExportMLP(MLP):
    """The MLP as exported: eval only, dropout removed, outputs ``(logits, probabilities)``.

    A subclass (not a wrapper) so that parameter names, and so initializer names, equal the MLP's.
    """

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.dropout = nn.Identity()  # eval-mode dropout is the identity; avoids Identity nodes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(x)
        return logits, torch.softmax(logits, dim=-1)


# --- public API ------------------------------------------------------------------------------------
def export_onnx(
    model: MLP,
    path: str | os.PathLike,
    *,
    kept_features: Sequence[int | str] | None = None,
    feature_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    verify: bool = True,
    verify_data: torch.Tensor | None = None,
    opset: int | None = None,
    atol: float = 1e-5,
    rtol: float = 0.0,
) -> OnnxExport:
    """Export ``model`` to ONNX at ``path``; return what was written.

    ``kept_features``: indices (or names, with ``feature_names``) of the inputs the exported model takes,
    in that order; all when ``None``. Every dropped feature must have zero weight in the first layer and
    in every skip out of the input, else :class:`DroppedFeatureInUseError`.
    ``feature_names``: names of *all* the model's input features (``config.in_features`` of them).
    ``metadata``: extra ``metadata_props``; non-string values are stored as JSON.
    ``verify_data``: extra full-feature rows (e.g. the task's test split) that verification also runs.
    ``verify``: run ``onnx.checker`` and compare onnxruntime with torch on a fixed batch of
    ``VERIFY_ROWS`` standard-normal rows (seed ``VERIFY_SEED``) and on a batch of one; a difference above
    ``atol + rtol * |torch|`` raises :class:`OnnxVerificationError` and nothing is left at ``path``.
    The file is written to a temporary name next to ``path`` and moved into place only when done.
    """
    t0 = time.perf_counter()
    if not isinstance(model, MLP):
        raise TypeError(f"export_onnx expects a hubedit MLP, got {type(model).__name__}")
    model.check_finite()
    config = model.config
    path = Path(path)
    names = _check_feature_names(feature_names, config.in_features)
    kept = _resolve_kept(kept_features, names, config.in_features)
    dropped = [j for j in range(config.in_features) if j not in set(kept)]
    _check_dropped_unused(model, dropped, names)
    user_meta = _encode_user_metadata(metadata)

    export_model = _build_export_model(model, kept)
    proto = _torch_export(export_model, opset)

    n_zero, n_total = count_zero_weights(proto)
    input_names = tuple(names[j] for j in kept) if names is not None else tuple(str(j) for j in kept)
    props, json_keys = {}, []

    def put(key: str, value: Any) -> None:
        if isinstance(value, str):
            props[key] = value
        else:
            props[key] = json.dumps(value, sort_keys=True)
            json_keys.append(key)

    put("hubedit_version", _hubedit_version())
    put("mlp_config", config.to_dict())  # the model's own architecture (its full input)
    put("input_features", list(input_names) if names is not None else list(kept))
    put("kept_features", list(kept))
    if dropped:
        put("dropped_features", [names[j] for j in dropped] if names is not None else dropped)
    put("n_weights", n_total)
    put("n_zero_weights", n_zero)
    for k, (value, is_json) in user_meta.items():
        props[k] = value
        if is_json:
            json_keys.append(k)
    props[_JSON_KEYS_KEY] = json.dumps(sorted(json_keys))

    existing = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**existing, **props})  # set_model_props replaces: merge first
    proto.producer_name = PRODUCER_NAME
    proto.producer_version = _hubedit_version()
    proto.doc_string = _doc_string(config, len(kept), names is not None and bool(dropped))
    opset_written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # same folder: atomic move
    max_diff: float | None = None
    try:
        onnx.save_model(proto, str(tmp))
        if verify:
            max_diff = _verify(tmp, model, kept, atol=atol, rtol=rtol, data=verify_data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

    return OnnxExport(
        path=path,
        input_names=input_names,
        kept_features=tuple(kept),
        max_abs_diff=max_diff,
        n_zero_weights=n_zero,
        n_weights=n_total,
        metadata=dict(props),
        opset=opset_written,
        seconds=time.perf_counter() - t0,
    )


def load_onnx_metadata(path: str | os.PathLike | onnx.ModelProto, *, raw: bool = False) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file.

    Values written as JSON by :func:`export_onnx` (non-string values, ``mlp_config``, feature lists) are
    decoded unless ``raw``; strings come back as written. The bookkeeping key ``hubedit_json_keys`` is
    left out unless ``raw``.
    """
    proto = _load_proto(path, load_weights=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if raw:
        return props
    json_keys = set(json.loads(props.pop(_JSON_KEYS_KEY, "[]")))
    return {k: (json.loads(v) if k in json_keys else v) for k, v in props.items()}


def count_zero_weights(path: str | os.PathLike | onnx.ModelProto) -> tuple[int, int]:
    """``(zeros, total)`` over the weight matrices of an ONNX model.

    A weight matrix is a 2-D initializer read (directly or through ``Identity``/``Transpose``) by a
    ``Gemm`` or ``MatMul`` node: linear and skip weights, not biases or normalisation parameters. Each
    node counts its matrix, so a matrix shared by two nodes counts twice, as it would in the model.
    """
    proto = _load_proto(path, load_weights=True)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    zeros = total = 0
    for node in graph.node:
        if node.op_type not in _WEIGHT_OPS:
            continue
        for name in node.input[:2]:
            src = _follow_to_initializer(name, producers, inits)
            if src is None or len(src.dims) != 2:
                continue
            arr = numpy_helper.to_array(src)
            zeros += int(arr.size - np.count_nonzero(arr))
            total += int(arr.size)
    return zeros, total


# --- helpers ---------------------------------------------------------------------------------------
def _hubedit_version() -> str:
    from ..version import __version__

    return __version__


def _load_proto(path: str | os.PathLike | onnx.ModelProto, *, load_weights: bool) -> onnx.ModelProto:
    if isinstance(path, onnx.ModelProto):
        return path
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no ONNX file at {p}")
    try:
        return onnx.load(str(p), load_external_data=load_weights)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxExportError(f"{p} is not a readable ONNX model: {exc}") from exc


def _follow_to_initializer(name: str, producers: dict, inits: dict) -> onnx.TensorProto | None:
    seen = set()
    while name not in inits:
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH_OPS or name in seen:
            return None
        seen.add(name)
        name = node.input[0]
    return inits[name]


def _check_feature_names(feature_names: Sequence[str] | None, n: int) -> list[str] | None:
    if feature_names is None:
        return None
    if isinstance(feature_names, str):
        raise TypeError("feature_names must be a sequence of strings, got one string")
    names = list(feature_names)
    if len(names) != n:
        raise FeatureMismatchError(
            f"feature_names must name all {n} inputs of the model, got {len(names)} names"
        )
    if not all(isinstance(s, str) for s in names):
        raise TypeError(f"feature_names must be strings, got {[type(s).__name__ for s in names]}")
    if len(set(names)) != n:
        dups = sorted({s for s in names if names.count(s) > 1})
        raise FeatureMismatchError(f"feature_names must be unique, repeated: {dups}")
    return names


def _resolve_kept(kept: Sequence[int | str] | None, names: list[str] | None, n: int) -> list[int]:
    if kept is None:
        return list(range(n))
    if isinstance(kept, str):
        raise TypeError("kept_features must be a sequence of indices or names, got one string")
    out: list[int] = []
    for k in kept:
        if isinstance(k, str):
            if names is None:
                raise FeatureMismatchError(f"kept feature {k!r} is a name but no feature_names were given")
            if k not in names:
                raise FeatureMismatchError(f"kept feature {k!r} is not one of the feature names {names}")
            out.append(names.index(k))
        elif isinstance(k, (bool, np.bool_)) or not isinstance(k, (numbers.Integral, np.integer)):
            raise TypeError(f"kept_features must hold ints (or names), got {k!r} of type {type(k).__name__}")
        else:
            if not 0 <= int(k) < n:
                raise FeatureMismatchError(f"kept feature index {int(k)} is out of range for a model with {n} inputs")
            out.append(int(k))
    if not out:
        raise FeatureMismatchError("kept_features is empty; an exported model needs at least one input")
    if len(set(out)) != len(out):
        raise FeatureMismatchError(f"kept_features has repeated features: {out}")
    return out


def _input_weights(model: MLP) -> list[tuple[str, torch.Tensor]]:
    """The weight matrices that read the model's input: ``layers.0`` and every skip out of layer 0."""
    mats = [("layers.0.weight", model.layers[0].weight)]
    for s, d in model.config.skips:
        if s == 0:
            mats.append((f"skips.{skip_key(s, d)}.weight", model.skips[skip_key(s, d)].weight))
    return mats


def _check_dropped_unused(model: MLP, dropped: list[int], names: list[str] | None) -> None:
    if not dropped:
        return
    used: dict[int, list[str]] = {}
    with torch.no_grad():
        for tname, w in _input_weights(model):
            nz = (w[:, dropped] != 0).any(dim=0)
            for j, flag in zip(dropped, nz.tolist()):
                if flag:
                    used.setdefault(j, []).append(tname)
    if used:
        desc = ", ".join(
            f"{names[j]!r} (input {j}; in {', '.join(ts)})" if names else f"input {j} (in {', '.join(ts)})"
            for j, ts in sorted(used.items())
        )
        raise DroppedFeatureInUseError(
            f"cannot export without {len(used)} feature(s) the model still uses: {desc}. Dropped features "
            "must have zero weight in the first layer and in every skip from the input (edit the model first)."
        )


def _encode_user_metadata(metadata: Mapping[str, Any] | None) -> dict[str, tuple[str, bool]]:
    """User metadata as ``{key: (string, was_json)}``; strings as they are, anything else as JSON."""
    out: dict[str, tuple[str, bool]] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"metadata keys must be non-empty strings, got {k!r}")
        if k in RESERVED_KEYS:
            raise ValueError(f"metadata key {k!r} is reserved for hubedit's own provenance; reserved: {list(RESERVED_KEYS)}")
        if isinstance(v, str):
            out[k] = (v, False)
            continue
        try:
            out[k] = (json.dumps(v, sort_keys=True, allow_nan=False), True)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"metadata value for {k!r} must be a string or JSON-serialisable (finite numbers, dicts, lists), "
                f"got {type(v).__name__}: {exc}"
            ) from exc
    return out


def _build_export_model(model: MLP, kept: list[int]) -> _ExportMLP:
    full = model.config
    config = full if kept == list(range(full.in_features)) else MLPConfig.from_dict({**full.to_dict(), "in_features": len(kept)})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    idx = torch.tensor(kept, dtype=torch.long)
    for tname, _ in _input_weights(model):
        state[tname] = state[tname].index_select(1, idx).contiguous()
    out = _ExportMLP(config)
    out.load_state_dict(state, strict=True)
    return out.eval()


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress lines, deprecation warnings and 'torchvision missing' logs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _torch_export(export_model: _ExportMLP, opset: int | None) -> onnx.ModelProto:
    n_in = export_model.config.in_features
    example = (torch.zeros(2, n_in),)  # batch 2: a batch of 1 would be specialised by torch.export
    batch = torch.export.Dim("batch")
    kwargs: dict[str, Any] = dict(
        dynamo=True,
        optimize=False,  # the optimiser merges equal weights / sub-graphs (see the module docstring)
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(export_model, example, None, **kwargs)
        proto = program.model_proto
    except Exception as exc:
        raise OnnxExportError(f"torch.onnx.export failed for {export_model.extra_repr()}: {exc}") from exc
    return proto


def _doc_string(config: MLPConfig, n_inputs: int, minimised: bool) -> str:
    arch = " -> ".join(str(w) for w in (n_inputs, *config.hidden, config.out_features))
    text = (
        f"hubedit MLP classifier ({arch}; activation={config.activation}, norm={config.norm}, "
        f"skips={[list(s) for s in config.skips]}). Input '{INPUT_NAME}': float32 (batch, {n_inputs}). "
        f"Outputs 'logits' and 'probabilities' (softmax): float32 (batch, {config.out_features}). "
        "Feature order and provenance in metadata_props."
    )
    if minimised or n_inputs != config.in_features:
        text += f" Data-minimised: takes {n_inputs} of the model's {config.in_features} features."
    return text


def _verify(file: Path, model: MLP, kept: list[int], *, atol: float, rtol: float,
            data: torch.Tensor | None = None) -> float:
    """Check the file and compare onnxruntime with torch; return the max abs difference."""
    try:
        onnx.checker.check_model(str(file), full_check=True)
    except Exception as exc:
        raise OnnxExportError(f"onnx.checker rejected the exported model: {exc}") from exc

    import onnxruntime as ort  # lazy: only verification needs it

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxExportError(f"onnxruntime cannot load the exported model: {exc}") from exc

    gen = torch.Generator().manual_seed(VERIFY_SEED)
    x = torch.randn(VERIFY_ROWS, model.config.in_features, generator=gen)
    batches = [x, x[:1]]
    if data is not None:  # e.g. the task's test split: verification on the data the model will see
        batches.append(data.to(torch.float32))
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for xb in batches:
            with torch.no_grad():
                logits = model(xb)  # full input: the dropped columns hold noise, which must not matter
                ref = (logits.numpy(), torch.softmax(logits, dim=-1).numpy())
            got = _run_session(session, xb[:, kept].contiguous().numpy())
            for name, r, g in zip(OUTPUT_NAMES, ref, got):
                if g.shape != r.shape:
                    raise OnnxVerificationError(
                        f"onnxruntime output {name!r} has shape {g.shape}, torch gives {r.shape}", math.inf
                    )
                diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
                d = float(diff.max()) if diff.size else 0.0
                if not np.isfinite(g).all():
                    d = math.inf
                worst = max(worst, d)
                if not (diff <= atol + rtol * np.abs(r)).all() or not math.isfinite(d):
                    raise OnnxVerificationError(
                        f"onnxruntime and torch disagree on {name!r} (batch of {len(xb)}): max abs difference "
                        f"{d:.3g} > atol {atol:g} (rtol {rtol:g}); the file was not written",
                        d,
                    )
    finally:
        model.train(was_training)
    return worst


def _run_session(session, x: np.ndarray) -> list[np.ndarray]:
    return session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.astype(np.float32, copy=False)})


__all__ = [
    "OnnxExport",
    "OnnxExportError",
    "OnnxVerificationError",
    "DroppedFeatureInUseError",
    "export_onnx",
    "load_onnx_metadata",
    "count_zero_weights",
    "INPUT_NAME",
    "OUTPUT_NAMES",
]
