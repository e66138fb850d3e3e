"""``MLP``: the classifier family hubedit edits, with safetensors persistence."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes
from torch import nn

from ..errors import CorruptFileError, FeatureMismatchError, NonFiniteWeightsError
from .config import LEAKY_RELU_SLOPE, MLPConfig

FILE_FORMAT = "hubedit.mlp"
FILE_FORMAT_VERSION = "1"
# dtype names of the safetensors header format -> torch dtypes (those a hubedit file can hold)
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


def activation_fn(name: str):
    """The activation of a config as a plain function (one place, shared by every forward we write)."""
    return {
        "relu": F.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, LEAKY_RELU_SLOPE),
        "gelu": F.gelu,
        "silu": F.silu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
    }[name]


def skip_key(src: int, dst: int) -> str:
    return f"{src}_{dst}"


class MLP(nn.Module):
    """An MLP classifier described by an :class:`MLPConfig`.

    Parameters: ``layers.{i}`` (``nn.Linear``, ``i = 0..depth``, the last is the output layer),
    ``norms.{i}`` (``BatchNorm1d``/``LayerNorm`` of hidden layer ``i+1``), ``skips.{src}_{dst}``
    (bias-free ``nn.Linear``). Outputs logits; ``predict_proba`` gives softmax probabilities.
    """

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.layers = nn.ModuleList(nn.Linear(w[i], w[i + 1]) for i in range(config.depth + 1))
        if config.norm == "batchnorm":
            self.norms = nn.ModuleList(nn.BatchNorm1d(h, eps=config.norm_eps) for h in config.hidden)
        elif config.norm == "layernorm":
            self.norms = nn.ModuleList(nn.LayerNorm(h, eps=config.norm_eps) for h in config.hidden)
        else:
            self.norms = nn.ModuleList()
        self.skips = nn.ModuleDict({skip_key(s, d): nn.Linear(w[s], w[d], bias=False) for s, d in config.skips})
        self.dropout = nn.Dropout(config.dropout)
        self._act = activation_fn(config.activation)

    # --- forward ---------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.config.in_features:
            raise FeatureMismatchError(
                f"model expects input of shape (batch, {self.config.in_features}), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        acts = [x]
        for li in range(1, self.config.depth + 1):
            z = self.layers[li - 1](acts[-1])
            for s in self.config.skips_into(li):
                z = z + self.skips[skip_key(s, li)](acts[s])
            if len(self.norms):
                z = self.norms[li - 1](z)
            acts.append(self.dropout(self._act(z)))
        return self.layers[-1](acts[-1])

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities in eval mode (the module's train/eval flag is restored)."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self(x), dim=-1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_proba(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of correct argmax predictions in eval mode (how every recorded accuracy is computed)."""
        return float((self.predict(x) == y).double().mean())

    # --- checks ----------------------------------------------------------------------------------
    def check_finite(self) -> None:
        """Raise :class:`NonFiniteWeightsError` naming the first tensor holding NaN or Inf."""
        named = (*self.named_parameters(), *self.named_buffers())  # the state dict's tensors, without detaching
        tensors = {name: t.detach() for name, t in named if t.is_floating_point()}
        if not tensors or bool(torch.isfinite(torch.cat([t.reshape(-1) for t in tensors.values()])).all()):
            return  # one check for the whole model (called on every edit)
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteWeightsError(f"tensor {name!r} holds {bad} NaN/Inf values; expected finite weights")

    @property
    def n_weights(self) -> int:
        """Number of weights (linear and skip matrices; biases and norm parameters excluded)."""
        return sum(m.weight.numel() for m in [*self.layers, *self.skips.values()])

    # --- persistence -------------------------------------------------------------------------------
    def to_bytes(self, metadata: dict[str, str] | None = None) -> bytes:
        """The model as a safetensors blob, its config in the header metadata."""
        meta = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION, "config": self.config.to_json()}
        for k, v in (metadata or {}).items():
            if k in meta:
                raise ValueError(f"metadata key {k!r} is reserved")
            meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        return canonical_safetensors(st_save_bytes(tensors, metadata=meta))

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``path`` (a ``.safetensors`` file) atomically: a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes(metadata))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_bytes(cls, blob: bytes, *, source: str = "<bytes>") -> "MLP":
        """Read a model written by :meth:`to_bytes`. The config in the header is checked against the tensor
        names, shapes and dtypes the header lists *before* anything is built or read, so a small file whose
        config claims a huge model is refused at once, without allocating it."""
        entries, meta = read_safetensors_header(blob, source)
        if meta.get("format") != FILE_FORMAT or "config" not in meta:
            raise CorruptFileError(
                f"{source} is a safetensors file but not a hubedit MLP: expected metadata format={FILE_FORMAT!r} "
                f"and a 'config' entry, got keys {sorted(meta)}"
            )
        config = MLPConfig.from_json(meta["config"])
        if config.depth + len(config.skips) > len(entries):  # bounds the layout computed below by the header's size
            raise CorruptFileError(
                f"{source}: its config ({config.depth} hidden layers, {len(config.skips)} skips) needs at least "
                f"{2 * (config.depth + 1) + len(config.skips)} tensors, the file holds {len(entries)}"
            )
        check_header_tensors(state_layout(config), entries, source, "its config")
        tensors = _load_safetensors(blob, source)
        model = cls(config)  # as large as the file's own tensors: the header matched the config
        model.load_state_dict(tensors, strict=True)
        model.check_finite()
        model.metadata = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config")}
        return model.eval()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MLP":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no MLP file at {path}")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    # --- import of users' models -----------------------------------------------------------------
    @classmethod
    def from_torch(cls, module: nn.Module) -> "MLP":
        """Import an ``nn.Sequential`` of Linear / activation / BatchNorm1d / LayerNorm / Dropout."""
        from .importers import from_torch

        return from_torch(module)

    @classmethod
    def from_sklearn(cls, clf) -> "MLP":
        """Import a fitted ``sklearn.neural_network.MLPClassifier``."""
        from .importers import from_sklearn

        return from_sklearn(clf)

    def extra_repr(self) -> str:
        c = self.config
        return f"hidden={list(c.hidden)}, activation={c.activation}, norm={c.norm}, skips={[list(s) for s in c.skips]}"


def state_layout(config: MLPConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in the ``state_dict`` of ``MLP(config)``, in its order, computed
    without building the module (what a file's header is checked against before anything is allocated)."""
    w, real = config.widths, torch.get_default_dtype()
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for i in range(config.depth + 1):
        layout[f"layers.{i}.weight"] = ((w[i + 1], w[i]), real)
        layout[f"layers.{i}.bias"] = ((w[i + 1],), real)
    norm_tensors = {"batchnorm": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
                    "layernorm": ("weight", "bias"), "none": ()}[config.norm]
    for i, h in enumerate(config.hidden):
        for name in norm_tensors:
            layout[f"norms.{i}.{name}"] = ((), torch.int64) if name == "num_batches_tracked" else ((h,), real)
    for s, d in config.skips:
        layout[f"skips.{skip_key(s, d)}.weight"] = ((w[d], w[s]), real)
    return layout


def canonical_safetensors(blob: bytes) -> bytes:
    """A safetensors blob with its ``__metadata__`` keys in sorted order.

    ``safetensors`` writes the metadata map in hash order, which varies from call to call, so two
    serialisations of the same model could differ in their header bytes. Tensor entries and data are kept;
    the header stays compact JSON padded with spaces to 8 bytes, as safetensors writes it.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def read_safetensors_header(
    data: bytes | str | os.PathLike, source: str | None = None
) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensor entries (``{name: {"dtype", "shape", "data_offsets"}}``) and ``__metadata__`` of a
    safetensors blob or file, from its header alone: no tensor is read or allocated. Any damage is a
    :class:`CorruptFileError` naming ``source`` (default: the path, or ``<bytes>``)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        source = source or "<bytes>"
        size, prefix = len(data), bytes(data[:8])
    else:
        source = source or str(data)
        with open(data, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
    if len(prefix) < 8:
        raise CorruptFileError(f"{source} is not a safetensors file: {size} bytes")
    header_len = int.from_bytes(prefix, "little")
    if header_len <= 0 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise CorruptFileError(f"{source} is not a safetensors file (header length {header_len}, size {size})")
    if isinstance(data, (bytes, bytearray, memoryview)):
        text = bytes(data[8 : 8 + header_len])
    else:
        with open(data, "rb") as fh:
            fh.seek(8)
            text = fh.read(header_len)
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{source} is not a valid safetensors file: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{source} is not a valid safetensors file: its header is a {type(header).__name__}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptFileError(f"{source} is not a valid safetensors file: __metadata__ must map strings to strings")
    for name, entry in header.items():
        entry_ok = (
            isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
        )
        if not entry_ok:
            raise CorruptFileError(
                f"{source} is not a valid safetensors file: tensor entry {name!r} is {entry!r}; "
                "expected {'dtype': str, 'shape': [int, ...], 'data_offsets': [begin, end]}"
            )
    return header, dict(meta)


def check_header_tensors(
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]], entries: Mapping[str, dict], source: str,
    described_by: str,
) -> None:
    """Compare the tensors a module needs (``expected``: name -> (shape, dtype), e.g. :func:`state_layout`)
    with the entries of a safetensors header (:func:`read_safetensors_header`). The first difference is a
    :class:`CorruptFileError` naming the tensor, what the file holds and what ``described_by`` needs."""
    missing, unexpected = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
    if missing or unexpected:
        more = lambda names: f"{names[:8]}{' and %d more' % (len(names) - 8) if len(names) > 8 else ''}"  # noqa: E731
        raise CorruptFileError(
            f"{source}: tensors do not match {described_by}: missing {more(missing)}, unexpected {more(unexpected)}"
        )
    for name, (shape, dtype) in expected.items():
        entry = entries[name]
        if tuple(entry["shape"]) != tuple(shape):
            raise CorruptFileError(
                f"{source}: tensor {name!r} is {tuple(entry['shape'])} in the file, {described_by} needs {tuple(shape)}"
            )
        found = SAFETENSORS_DTYPES.get(entry["dtype"])
        if found != dtype:
            found_name = entry["dtype"] if found is None else str(found).removeprefix("torch.")
            raise CorruptFileError(
                f"{source}: tensor {name!r} is stored as {found_name}, expected {str(dtype).removeprefix('torch.')}"
            )


def _load_safetensors(blob: bytes, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors blob whose header was already checked; damage is a CorruptFileError."""
    try:
        return st_load_bytes(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{source} is not a valid safetensors file: {exc}") from exc
