"""The two tabular tasks of the paper (UCI Adult and Bank Marketing), loaded from data shipped in the package.

The files are the pre-processed sets of Fernández-Delgado et al. (2014) that the paper used, kept
xz-compressed next to this module with their provenance (``data/PROVENANCE.md``, CC BY 4.0). Every
file's SHA-256 is checked on load against the published table, so a damaged install fails loudly.
"""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd
import torch

from ..errors import CorruptFileError, UnknownTaskError

__all__ = ["Task", "load_task", "TASKS", "read_shipped_file"]

# sha256 of the *decompressed* files, as published in PROVENANCE.md
_SHA256 = {
    "adult/adult_py.dat": "35a66da5ddc67bbf3885e71efe9a9af350c068e7543297a298cc8473e0b7b950",
    "adult/folds_py.dat": "5173db1b45dd4439d96f07d856e30f49f2f8a43ea5119b8f6f0c3348d84114f9",
    "adult/labels_py.dat": "1ab2c3874973f6a5daf4c51fd31d805762ebd0724b331a2b5b66b3e6b28fbee9",
    "adult/validation_folds_py.dat": "87823a743dcb96de98755969e83c9b4c7ccb892befe9b7c37d49a5e48f406219",
    "adult/uci_raw/adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult/uci_raw/adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
    "bank/bank_py.dat": "8de965d37754d37fd2df7037987029a8b264e8a8c7c4d844933248d085313bbe",
    "bank/folds_py.dat": "8241a208f3c6114051ad19429fddebbeaf159f7784581ec96bfebc7ef73e514a",
    "bank/labels_py.dat": "6f6431eeaaa2042c3c3dcc090d058c8be97eaeadf1c23bd41296d726381911fc",
    "bank/validation_folds_py.dat": "351880c361b6fdc791de5e5f8c79dc5640e30354b83039ea4e6ac49debd12391",
    "bank/uci_raw/bank.csv": "dc8d576e9bda0f41ee891251bd84bab9a39ce576cba715aac08adc2374a01fde",
}

#: Column names in file order (the raw UCI order, kept by Delgado's encoding).
FEATURE_NAMES = {
    "adult": [
        "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
        "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
    ],
    "bank": [
        "age", "job", "marital", "education", "default", "balance", "housing", "loan", "contact", "day",
        "month", "duration", "campaign", "pdays", "previous", "poutcome",
    ],
}

#: Sensitive attribute per task: (feature name, column, group names (0, 1), rule for group 1).
SENSITIVE = {
    "adult": ("sex", 9, ("male", "female"), "x[:, 9] > 0  (female)"),
    "bank": ("marital", 2, ("not married", "married"), "x[:, 2] < 0  (married)"),
}

TASKS = tuple(FEATURE_NAMES)

#: Fraction of the validation split that an editor may see while it trains (the rest is for evaluation
#: and model selection). Fixed, with a fixed seed, so every editor of a task sees the same points.
EDITING_FRACTION = 0.5
_EDIT_SPLIT_SEED = 20240


def read_shipped_file(relpath: str) -> bytes:
    """Decompressed bytes of a shipped data file, verified against its published SHA-256."""
    if relpath not in _SHA256:
        raise KeyError(f"no shipped data file {relpath!r}; known: {sorted(_SHA256)}")
    blob = resources.files(__package__).joinpath("data", relpath + ".xz").read_bytes()
    try:
        data = lzma.decompress(blob)
    except lzma.LZMAError as exc:
        raise CorruptFileError(f"shipped data file {relpath}.xz is not valid xz: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != _SHA256[relpath]:
        raise CorruptFileError(
            f"shipped data file {relpath} has sha256 {digest}, expected {_SHA256[relpath]}: "
            "the installation is damaged; reinstall hubedit"
        )
    return data


def _read_matrix(relpath: str, dtype) -> np.ndarray:
    frame = pd.read_csv(io.BytesIO(read_shipped_file(relpath)), header=None, dtype=dtype)
    return frame.to_numpy()


@dataclass(frozen=True)
class Task:
    """Features, labels, splits and sensitive attribute of one tabular task (fold 0)."""

    name: str
    X: torch.Tensor  # (N, F) float32
    y: torch.Tensor  # (N,) int64
    sensitive: torch.Tensor  # (N,) int64, 1 = the group named sensitive_groups[1]
    feature_names: tuple[str, ...]
    sensitive_name: str
    sensitive_groups: tuple[str, str]
    splits: dict[str, np.ndarray] = field(repr=False)  # train / validation / test / editing / evaluation

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_classes(self) -> int:
        return 2

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(X, y, sensitive)`` of one split: train, validation, test, editing or evaluation."""
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; expected one of {sorted(self.splits)}")
        idx = torch.from_numpy(self.splits[name])
        return self.X[idx], self.y[idx], self.sensitive[idx]

    def schema(self) -> dict:
        """What a model of this task takes as input: stored in editor configs and cards, checked on edit."""
        return {
            "task": self.name,
            "n_features": self.n_features,
            "feature_names": list(self.feature_names),
            "n_classes": self.n_classes,
            "sensitive": {"name": self.sensitive_name, "groups": list(self.sensitive_groups)},
        }

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Task({self.name!r}, n={len(self.y)}, features={self.n_features}, {sizes})"


@functools.lru_cache(maxsize=None)
def load_task(name: str) -> Task:
    """Load ``"adult"`` or ``"bank"``: fold 0 of the shipped fold files, validation split further
    divided into an *editing* part (``EDITING_FRACTION``) and an *evaluation* part."""
    key = str(name).lower()
    if key not in FEATURE_NAMES:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    X = _read_matrix(f"{key}/{key}_py.dat", np.float32)
    y = _read_matrix(f"{key}/labels_py.dat", np.int64)[:, 0]
    test = _read_matrix(f"{key}/folds_py.dat", np.int64)[:, 0] == 1
    val = _read_matrix(f"{key}/validation_folds_py.dat", np.int64)[:, 0] == 1
    if X.shape[1] != len(FEATURE_NAMES[key]) or not (len(X) == len(y) == len(test) == len(val)):
        raise CorruptFileError(f"{key}: inconsistent shapes X={X.shape} y={y.shape} folds={test.shape}")
    train = ~(test | val)
    val_idx = np.flatnonzero(val)
    perm = np.random.default_rng(_EDIT_SPLIT_SEED).permutation(len(val_idx))
    n_edit = int(round(EDITING_FRACTION * len(val_idx)))
    splits = {
        "train": np.flatnonzero(train),
        "validation": val_idx,
        "test": np.flatnonzero(test),
        "editing": np.sort(val_idx[perm[:n_edit]]),
        "evaluation": np.sort(val_idx[perm[n_edit:]]),
    }
    sens_name, col, groups, _ = SENSITIVE[key]
    sensitive = X[:, col] > 0 if key == "adult" else X[:, col] < 0
    return Task(
        name=key,
        X=torch.from_numpy(np.ascontiguousarray(X)),
        y=torch.from_numpy(y.copy()),
        sensitive=torch.from_numpy(sensitive.astype(np.int64)),
        feature_names=tuple(FEATURE_NAMES[key]),
        sensitive_name=sens_name,
        sensitive_groups=groups,
        splits=splits,
    )
