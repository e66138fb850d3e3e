"""``MLPConfig``: the architecture of one MLP classifier of the family (JSON round trip)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")
NORMS = ("none", "batchnorm", "layernorm")
LEAKY_RELU_SLOPE = 0.01


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of an MLP: ``h_l = dropout(act(norm(W_l h_{l-1} + sum_s S_{s->l} h_s + b_l)))``.

    Layers are numbered 0 (the input) .. ``depth`` (last hidden layer); the output layer is linear.
    ``skips`` lists ``(src, dst)`` pairs: a learned bias-free linear map from layer ``src`` into hidden
    layer ``dst``, added before the normalisation. ``src <= dst - 2`` (``dst - 1`` is the ordinary
    connection), so the first hidden layer has no skips.
    """

    in_features: int
    hidden: tuple[int, ...]
    out_features: int = 2
    activation: str = "relu"
    norm: str = "none"
    dropout: float = 0.0
    skips: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # normalise containers so that equal configs compare and hash equal, whatever came in (lists from JSON)
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        object.__setattr__(self, "skips", tuple(sorted((int(s), int(d)) for s, d in self.skips)))
        self.validate()

    @property
    def depth(self) -> int:
        return len(self.hidden)

    @property
    def widths(self) -> tuple[int, ...]:
        """Sizes of all layers: input, hidden..., output."""
        return (self.in_features, *self.hidden, self.out_features)

    def skips_into(self, dst: int) -> list[int]:
        return [s for s, d in self.skips if d == dst]

    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid MLPConfig: {msg}")

        if self.in_features < 1 or self.out_features < 2:
            raise bad(f"expected in_features >= 1 and out_features >= 2, got {self.in_features}, {self.out_features}")
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise bad(f"expected at least one hidden layer of positive width, got hidden={list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise bad(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.norm not in NORMS:
            raise bad(f"norm {self.norm!r} is not one of {NORMS}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0:
            raise bad(f"norm_eps must be positive, got {self.norm_eps}")
        if len(set(self.skips)) != len(self.skips):
            raise bad(f"duplicate skip connections in {list(self.skips)}")
        for s, d in self.skips:
            if not (2 <= d <= self.depth and 0 <= s <= d - 2):
                raise bad(
                    f"skip ({s}, {d}) must go into a hidden layer 2..{self.depth} from a layer at least two "
                    "below it (0 = input)"
                )

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["skips"] = [list(p) for p in self.skips]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "MLPConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown MLPConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        missing = {"in_features", "hidden"} - set(d)
        if missing:
            raise ConfigError(f"MLPConfig is missing required fields {sorted(missing)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "MLPConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"MLPConfig JSON does not parse: {exc}") from exc
        if not isinstance(d, dict):
            raise ConfigError(f"MLPConfig JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)
