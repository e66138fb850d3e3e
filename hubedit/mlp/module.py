"""``MLP``: the classifier family hubedit edits, with safetensors persistence."""

from __future__ import annotations

import json
import os
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
        for name, t in self.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
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
        tensors, meta = _read_safetensors(blob, source)
        if meta.get("format") != FILE_FORMAT or "config" not in meta:
            raise CorruptFileError(
                f"{source} is a safetensors file but not a hubedit MLP: expected metadata format={FILE_FORMAT!r} "
                f"and a 'config' entry, got keys {sorted(meta)}"
            )
        model = cls(MLPConfig.from_json(meta["config"]))
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CorruptFileError(f"{source}: tensors do not match its config: missing {missing}, unexpected {unexpected}")
        for k, t in tensors.items():
            if t.shape != expected[k].shape or t.dtype != expected[k].dtype:
                raise CorruptFileError(
                    f"{source}: tensor {k!r} is {tuple(t.shape)} {t.dtype}, config needs "
                    f"{tuple(expected[k].shape)} {expected[k].dtype}"
                )
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


def _read_safetensors(blob: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse a safetensors blob; any damage becomes :class:`CorruptFileError` naming the source."""
    if len(blob) < 8:
        raise CorruptFileError(f"{source} is not a safetensors file: {len(blob)} bytes")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len <= 0 or 8 + header_len > len(blob):
        raise CorruptFileError(f"{source} is not a safetensors file (header length {header_len}, size {len(blob)})")
    try:
        header = json.loads(blob[8 : 8 + header_len])
        tensors = st_load_bytes(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{source} is not a valid safetensors file: {exc}") from exc
    return tensors, dict(header.get("__metadata__") or {})
