"""Models from outside the zoo (issue #13): a held-out population of MLP classifiers trained the way users
train theirs, to check whether learned editors generalise beyond the zoo's trainer.

The population differs from the zoo (hubedit/DESIGN.md, zoo table) in who trains and what is trained:

* **Trainers.** Slot ``k`` of a population is a scikit-learn ``MLPClassifier`` for even ``k`` and a plain
  torch loop over an ``nn.Sequential`` for odd ``k`` (half and half). scikit-learn: solvers adam / sgd with
  (Nesterov) momentum / lbfgs, L2 ``alpha`` in {1e-5 .. 1e-2}, early stopping sometimes, activations relu /
  tanh / logistic (its ``identity`` has no hubedit counterpart and is never drawn), scikit-learn's own
  initialisation. torch: SGD with momentum / AdamW / RMSprop, weight decay, a constant or cosine learning rate,
  label smoothing sometimes, a two-logit (cross-entropy) or one-logit (BCE) head, dropout, BatchNorm1d or
  LayerNorm sometimes, activations relu / leaky_relu (0.01) / gelu / silu / tanh, initialisation default /
  xavier / kaiming / orthogonal (biases zero for the non-default ones). The zoo trains with its own batched
  AdamW, default initialisation and cross-entropy.
* **Architectures.** Hidden widths from :data:`HIDDEN_SHAPES`: shrinking with depth or with widths the zoo never
  samples (the zoo's are non-decreasing from {8, 16, 32, 64}); depth 1-3; no skip connections.
* **Training length.** Each model draws a budget of optimiser steps (:data:`STEP_BUDGET`, scaled by
  ``training_scale``), turned into epochs for its batch size, so small and large tasks get similar training;
  lbfgs draws its iteration count. A model is trained on the task's ``train`` split, the split the zoo trains on
  (optionally a fixed seeded subset of it: ``max_train_rows``, as the zoo's presets do).

Every model is imported with :meth:`MLP.from_sklearn` / :meth:`MLP.from_torch`, and its probabilities must equal
the source model's (``predict_proba`` / softmax) within :data:`FIDELITY_TOL` on the test split, or the build
fails: the importers claim to be exact. A model whose accuracy is at or below the majority class's (degenerate,
hubedit/DESIGN.md "Evaluation"; the majority class of the train split) is skipped, recorded in the manifest with
the reason, and its slot is drawn again (up to :data:`MAX_ATTEMPTS` times). The rule reads the test split by
default, the split the design's rule is applied to (reported figures); ``filter_split="validation"`` reads the
validation split instead. On Bank that split is a poor filter: its majority class scores 0.876 there, the final
checkpoints of a ``small`` Bank zoo have a median validation accuracy of 0.876 (test: 0.891), and in a 24-model
Bank build (seed 1000) it rejected 15 of the 37 draws that beat the majority class on test.

Deterministic: slot ``k``'s attempt ``a`` is drawn from ``numpy.random.default_rng([seed, k, a, salt])`` alone
(so model ``k`` does not depend on how many models are built), torch trains under a forked, seeded RNG on one
thread, scikit-learn from its ``random_state``. The same seed gives the same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, CorruptFileError, NonFiniteWeightsError
from ..mlp import MLP
from ..tasks import Task, load_task
from ..version import __version__
from .sampling import DEPTHS as ZOO_DEPTHS
from .sampling import WIDTHS as ZOO_WIDTHS
from .trainer import training_data

__all__ = [
    "build_outside_population",
    "load_outside_population",
    "sample_spec",
    "fit_source",
    "source_proba",
    "import_source",
    "check_import_fidelity",
    "is_zoo_shape",
    "HIDDEN_SHAPES",
    "FIDELITY_TOL",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "hubedit.outside-population"
MANIFEST_VERSION = 1
#: largest |p_imported - p_source| allowed on any test point and class
FIDELITY_TOL = 1e-5
#: draws per slot before it is given up (each further draw replaces a degenerate model)
MAX_ATTEMPTS = 8
_SALT = 0x0575DE  # keeps these streams apart from the zoo's ([seed, config_id])

#: hidden widths of the population (depth 1-3): shrinking, or widths outside the zoo's {8, 16, 32, 64}
HIDDEN_SHAPES: tuple[tuple[int, ...], ...] = (
    (100,), (50,), (24,), (12,),
    (64, 32), (40, 20), (128, 64), (72, 36), (30, 15), (20, 10),
    (48, 24, 12), (96, 48, 24), (80, 40, 20), (60, 30, 15),
)
#: optimiser steps a model trains for (scikit-learn adam / sgd and torch; uniform integer)
STEP_BUDGET = (600, 2000)
#: lbfgs iterations (full-batch; uniform integer)
LBFGS_ITERATIONS = (40, 120)
BATCH_SIZES = (64, 128, 200, 256)
MAX_EPOCHS = 300

SKLEARN_SOLVERS = ("adam", "sgd", "lbfgs")
#: scikit-learn activations hubedit's MLP supports (``identity`` is not one of them)
SKLEARN_ACTIVATIONS = ("relu", "tanh", "logistic")
SKLEARN_ALPHAS = (1e-5, 1e-4, 1e-3, 1e-2)

TORCH_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
}
TORCH_OPTIMISERS = ("sgd_momentum", "adamw", "rmsprop")
TORCH_INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")
TORCH_NORMS = ("none", "none", "batchnorm", "layernorm")  # none half the time
TORCH_DROPOUTS = (0.0, 0.0, 0.1, 0.2, 0.3)
LABEL_SMOOTHINGS = (0.0, 0.0, 0.05, 0.1)

TRAINERS = {"sklearn": "scikit-learn MLPClassifier", "torch": "torch nn.Sequential training loop"}


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------
def is_zoo_shape(hidden: tuple[int, ...]) -> bool:
    """Whether the zoo could sample these hidden widths (non-decreasing, from its widths, its depths)."""
    return (
        len(hidden) in ZOO_DEPTHS and all(w in ZOO_WIDTHS for w in hidden) and list(hidden) == sorted(hidden)
    )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _epochs_for(steps: int, n_rows: int, batch_size: int) -> int:
    per_epoch = math.ceil(n_rows / batch_size)
    return int(min(MAX_EPOCHS, max(1, math.ceil(steps / per_epoch))))


def sample_spec(slot: int, attempt: int, seed: int, n_rows: int, training_scale: float = 1.0) -> dict[str, Any]:
    """The recipe of slot ``slot``'s draw ``attempt``: trainer, architecture and hyper-parameters, from
    ``default_rng([seed, slot, attempt, salt])`` alone. ``n_rows`` (training rows) turns the drawn step
    budget into epochs; ``training_scale`` shortens every run (tests)."""
    if not training_scale > 0:
        raise ConfigError(f"training_scale must be positive, got {training_scale}")
    rng = np.random.default_rng([int(seed), int(slot), int(attempt), _SALT])
    trainer = "sklearn" if slot % 2 == 0 else "torch"
    hidden = _choice(rng, HIDDEN_SHAPES)
    if is_zoo_shape(hidden) or not 1 <= len(hidden) <= 3:  # HIDDEN_SHAPES is built to avoid this
        raise ConfigError(f"hidden widths {hidden} could come from the zoo; outside models must differ")
    steps = int(rng.integers(STEP_BUDGET[0], STEP_BUDGET[1] + 1))
    batch_size = int(_choice(rng, BATCH_SIZES))
    model_seed = int(rng.integers(0, 2**31 - 1))
    spec: dict[str, Any] = {"trainer": trainer, "hidden": list(hidden), "seed": model_seed}
    if trainer == "sklearn":
        solver = _choice(rng, SKLEARN_SOLVERS)
        params: dict[str, Any] = {
            "hidden_layer_sizes": list(hidden),
            "activation": _choice(rng, SKLEARN_ACTIVATIONS),
            "solver": solver,
            "alpha": float(_choice(rng, SKLEARN_ALPHAS)),
            "random_state": model_seed,
        }
        if solver == "lbfgs":
            iters = int(rng.integers(LBFGS_ITERATIONS[0], LBFGS_ITERATIONS[1] + 1))
            params["max_iter"] = max(2, round(iters * training_scale))
        else:
            early = bool(rng.random() < 0.4)
            fit_rows = n_rows - math.ceil(0.1 * n_rows) if early else n_rows  # validation_fraction 0.1
            params.update(
                batch_size=batch_size,
                early_stopping=early,
                max_iter=_epochs_for(max(1, round(steps * training_scale)), fit_rows, batch_size),
            )
            if early:
                params["validation_fraction"] = 0.1
            if solver == "adam":
                params["learning_rate_init"] = _log_uniform(rng, 1e-3, 1e-2)
            else:
                params.update(
                    learning_rate_init=_log_uniform(rng, 1e-2, 1e-1),
                    momentum=float(_choice(rng, (0.8, 0.9, 0.95))),
                    nesterovs_momentum=bool(rng.random() < 0.5),
                    learning_rate=str(_choice(rng, ("constant", "adaptive"))),
                )
        spec.update(
            optimiser=solver if solver != "sgd" else "sgd with momentum",
            activation=params["activation"],
            norm="none",
            dropout=0.0,
            init="scikit-learn default (Glorot uniform)",
            hyperparameters=params,
        )
        return spec
    optimiser = _choice(rng, TORCH_OPTIMISERS)
    hp: dict[str, Any] = {"optimiser": optimiser, "batch_size": batch_size}
    if optimiser == "sgd_momentum":
        hp.update(lr=_log_uniform(rng, 1e-2, 1e-1), momentum=float(_choice(rng, (0.9, 0.95))),
                  nesterov=bool(rng.random() < 0.5), weight_decay=_log_uniform(rng, 1e-5, 1e-3))
    elif optimiser == "adamw":
        hp.update(lr=_log_uniform(rng, 5e-4, 5e-3), weight_decay=_log_uniform(rng, 1e-4, 1e-1))
    else:
        hp.update(lr=_log_uniform(rng, 1e-4, 2e-3), weight_decay=_log_uniform(rng, 1e-6, 1e-4))
    hp.update(
        schedule=str(_choice(rng, ("constant", "cosine"))),
        label_smoothing=float(_choice(rng, LABEL_SMOOTHINGS)),
        head=str(_choice(rng, ("two_logits", "one_logit"))),
        epochs=_epochs_for(max(1, round(steps * training_scale)), n_rows, batch_size),
    )
    spec.update(
        optimiser={"sgd_momentum": "SGD with momentum", "adamw": "AdamW", "rmsprop": "RMSprop"}[optimiser],
        activation=str(_choice(rng, tuple(TORCH_ACTIVATIONS))),
        norm=str(_choice(rng, TORCH_NORMS)),
        dropout=float(_choice(rng, TORCH_DROPOUTS)),
        init=str(_choice(rng, TORCH_INITS)),
        hyperparameters=hp,
    )
    return spec


# --------------------------------------------------------------------------------------------------
# training the sources
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_sequential(spec: dict[str, Any], in_features: int) -> nn.Sequential:
    hp, layers, width = spec["hyperparameters"], [], in_features
    for h in spec["hidden"]:
        layers.append(nn.Linear(width, h))
        if spec["norm"] == "batchnorm":
            layers.append(nn.BatchNorm1d(h))
        elif spec["norm"] == "layernorm":
            layers.append(nn.LayerNorm(h))
        layers.append(TORCH_ACTIVATIONS[spec["activation"]]())
        if spec["dropout"] > 0:
            layers.append(nn.Dropout(spec["dropout"]))
        width = h
    layers.append(nn.Linear(width, 1 if hp["head"] == "one_logit" else 2))
    model = nn.Sequential(*layers)
    init = spec["init"]
    if init != "default":
        gain_for = "tanh" if spec["activation"] == "tanh" else "relu"  # the relu gain for the relu-like ones
        for m in model:
            if not isinstance(m, nn.Linear):
                continue
            if init == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight)
            elif init == "xavier_normal":
                nn.init.xavier_normal_(m.weight)
            elif init == "kaiming_uniform":
                nn.init.kaiming_uniform_(m.weight, nonlinearity=gain_for)
            elif init == "kaiming_normal":
                nn.init.kaiming_normal_(m.weight, nonlinearity=gain_for)
            elif init == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=nn.init.calculate_gain(gain_for))
            else:
                raise ConfigError(f"unknown init {init!r}; expected one of {TORCH_INITS}")
            nn.init.zeros_(m.bias)
    return model


def _fit_torch(spec: dict[str, Any], X: torch.Tensor, y: torch.Tensor) -> tuple[nn.Sequential, int]:
    hp = spec["hyperparameters"]
    with torch.random.fork_rng(devices=[]), _one_torch_thread():
        torch.manual_seed(spec["seed"])  # default init and dropout draw from the (forked) global generator
        model = _torch_sequential(spec, X.shape[1])
        params = model.parameters()
        if hp["optimiser"] == "sgd_momentum":
            opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"],
                                  weight_decay=hp["weight_decay"])
        elif hp["optimiser"] == "adamw":
            opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        else:
            opt = torch.optim.RMSprop(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        cosine = hp["schedule"] == "cosine"
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp["epochs"]) if cosine else None
        shuffle = torch.Generator().manual_seed(spec["seed"] + 1)
        smoothing, n, bs, steps = hp["label_smoothing"], len(y), hp["batch_size"], 0
        model.train()
        for _ in range(hp["epochs"]):
            perm = torch.randperm(n, generator=shuffle)
            for a in range(0, n, bs):
                idx = perm[a : a + bs]
                if len(idx) < 2:  # BatchNorm cannot train on one row
                    continue
                out, target = model(X[idx]), y[idx]
                if hp["head"] == "one_logit":
                    soft = target.float() * (1 - smoothing) + smoothing / 2
                    loss = F.binary_cross_entropy_with_logits(out[:, 0], soft)
                else:
                    loss = F.cross_entropy(out, target, label_smoothing=smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            if sched is not None:
                sched.step()
    return model.eval(), steps


def _fit_sklearn(spec: dict[str, Any], X: torch.Tensor, y: torch.Tensor):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    params = dict(spec["hyperparameters"])
    params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    clf = MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few epochs on purpose
        clf.fit(X.numpy().astype(np.float64), y.numpy())  # float64, as from a user's pandas frame
    if params["solver"] == "lbfgs":
        return clf, int(clf.n_iter_)
    n_fit = len(y) - math.ceil(params["validation_fraction"] * len(y)) if params["early_stopping"] else len(y)
    return clf, int(clf.n_iter_) * math.ceil(n_fit / min(params["batch_size"], n_fit))


def fit_source(spec: dict[str, Any], X: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, Any]]:
    """Train the model ``spec`` describes (:func:`sample_spec`) on ``(X, y)``: a fitted ``MLPClassifier`` or an
    ``nn.Sequential`` in eval mode, and what the training did (epochs or iterations, steps, seconds)."""
    start = time.perf_counter()
    if spec["trainer"] == "sklearn":
        clf, steps = _fit_sklearn(spec, X, y)
        ran = {"epochs_or_iterations": int(clf.n_iter_), "optimiser_steps": steps}
        source: Any = clf
    elif spec["trainer"] == "torch":
        source, steps = _fit_torch(spec, X, y)
        ran = {"epochs_or_iterations": spec["hyperparameters"]["epochs"], "optimiser_steps": steps}
    else:
        raise ConfigError(f"unknown trainer {spec['trainer']!r}; expected one of {sorted(TRAINERS)}")
    ran["train_seconds"] = round(time.perf_counter() - start, 3)
    return source, ran


# --------------------------------------------------------------------------------------------------
# import and its check
# --------------------------------------------------------------------------------------------------
def source_proba(source: Any, X: torch.Tensor) -> np.ndarray:
    """The source model's own class probabilities ``(N, 2)`` in float64: ``predict_proba`` of a scikit-learn
    classifier (on float64 inputs), the softmax (or, for one logit ``z``, ``(1 - sigmoid(z), sigmoid(z))``) of
    an ``nn.Sequential`` in eval mode."""
    if isinstance(source, nn.Module):
        was_training = source.training
        source.eval()
        try:
            with torch.no_grad():
                out = source(X)
        finally:
            source.train(was_training)
        if out.shape[1] == 1:
            p1 = torch.sigmoid(out[:, 0])
            return torch.stack([1 - p1, p1], dim=1).double().numpy()
        return torch.softmax(out, dim=1).double().numpy()
    return np.asarray(source.predict_proba(X.numpy().astype(np.float64)), dtype=np.float64)


def _source_predict(source: Any, X: torch.Tensor) -> np.ndarray:
    """The source model's own labels: ``predict`` of scikit-learn, the argmax (or ``z > 0``) of torch."""
    if isinstance(source, nn.Module):
        with torch.no_grad():
            out = source.eval()(X)
        return (out[:, 0] > 0).long().numpy() if out.shape[1] == 1 else out.argmax(1).numpy()
    return np.asarray(source.predict(X.numpy().astype(np.float64)))


def import_source(source: Any) -> MLP:
    """``MLP.from_sklearn`` or ``MLP.from_torch``, whichever fits the source."""
    return MLP.from_torch(source) if isinstance(source, nn.Module) else MLP.from_sklearn(source)


def check_import_fidelity(mlp: MLP, source: Any, X: torch.Tensor, tol: float = FIDELITY_TOL) -> dict[str, float]:
    """Compare the imported model's probabilities with the source's on ``X``; raise ``AssertionError`` (the
    importers claim exactness, so a difference is a bug) when any differs by more than ``tol``. Returns the
    largest difference and the fraction of equal labels."""
    expected = source_proba(source, X)
    got = mlp.predict_proba(X).double().numpy()
    if got.shape != expected.shape:
        raise AssertionError(f"imported model gives probabilities of shape {got.shape}, the source {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= tol:  # NaN fails too
        raise AssertionError(
            f"imported model differs from its source by {diff:.3g} in probability on {len(X)} inputs; expected at "
            f"most {tol:g} ({type(source).__name__} -> MLP{list(mlp.config.hidden)})"
        )
    agree = float(np.mean(got.argmax(1) == expected.argmax(1))) if len(got) else 1.0
    return {"max_abs_prob_diff": diff, "label_agreement": agree}


# --------------------------------------------------------------------------------------------------
# the population
# --------------------------------------------------------------------------------------------------
def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write the outside population into {out}: it is a file; give a new folder")
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise FileExistsError(
                f"cannot write the outside population into {out}: the folder is not empty (it holds {shown}), "
                "and a build never overwrites files. Give a new or empty folder, or move those files away first"
            )


def _majority(y_train: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of always predicting the training split's majority class."""
    majority = int(torch.bincount(y_train, minlength=2).argmax())
    return float((y == majority).double().mean())


def _versions() -> dict[str, str]:
    import sklearn

    return {"hubedit": __version__, "torch": torch.__version__, "scikit-learn": sklearn.__version__,
            "numpy": np.__version__}


def build_outside_population(
    task_name: str,
    n_models: int,
    seed: int,
    out: Path | None = None,
    *,
    max_train_rows: int | None = None,
    training_scale: float = 1.0,
    filter_split: str = "test",
) -> list[tuple[MLP, dict]]:
    """Train ``n_models`` MLP classifiers outside the zoo trainer (half scikit-learn, half torch; see the module
    docstring), import them into :class:`MLP` (checked against their sources) and return ``(model, record)``
    pairs, one per kept model, in slot order. ``record`` is the model's manifest entry.

    With ``out``, also writes ``out/outside-NNN.safetensors`` (:meth:`MLP.save`, provenance in the header) and
    ``out/manifest.json`` (every kept model's record, every skipped draw with its reason, versions, timing).
    ``out`` must not exist or be empty (:class:`FileExistsError`, checked before anything is trained); the files
    are written to a temporary sibling folder that is renamed into place at the end, so a failed build leaves
    nothing under ``out``. ``max_train_rows`` trains on a fixed seeded subset of the train split (as the zoo's
    presets do); ``training_scale`` scales every model's training length (tests use a small one);
    ``filter_split`` is the split whose accuracy must beat the majority class (``"test"`` or ``"validation"``).
    """
    if n_models < 1:
        raise ConfigError(f"n_models must be at least 1, got {n_models}")
    if filter_split not in ("validation", "test"):
        raise ConfigError(f"filter_split must be 'validation' or 'test', got {filter_split!r}")
    out = Path(out) if out is not None else None
    if out is not None:
        _check_out(out)
    task: Task = load_task(task_name)
    X_train, y_train = training_data(task, max_train_rows)
    X_val, y_val, _ = task.split("validation")
    X_test, y_test, _ = task.split("test")
    majority = {"validation": _majority(y_train, y_val), "test": _majority(y_train, y_test)}
    start = time.perf_counter()
    kept: list[tuple[MLP, dict]] = []
    skipped: list[dict] = []
    given_up: list[int] = []
    for slot in range(n_models):
        for attempt in range(MAX_ATTEMPTS):
            spec = sample_spec(slot, attempt, seed, len(y_train), training_scale)
            source, ran = fit_source(spec, X_train, y_train)
            record: dict[str, Any] = {
                "id": f"outside-{slot:03d}",
                "slot": slot,
                "attempt": attempt,
                "trainer": TRAINERS[spec["trainer"]],
                "optimiser": spec["optimiser"],
                "hyperparameters": spec["hyperparameters"],
                "seed": spec["seed"],
                "hidden": spec["hidden"],
                "widths": [task.n_features, *spec["hidden"], 2],
                "activation": spec["activation"],
                "norm": spec["norm"],
                "dropout": spec["dropout"],
                "init": spec["init"],
                **ran,
                "train_rows": len(y_train),
            }
            mlp = import_source(source)
            record["hubedit_activation"] = mlp.config.activation
            try:
                mlp.check_finite()
            except NonFiniteWeightsError as exc:
                skipped.append({**record, "status": "skipped", "reason": f"training diverged: {exc}"})
                continue
            record.update(check_import_fidelity(mlp, source, X_test))
            record["test_accuracy"] = mlp.accuracy(X_test, y_test)
            record["original_test_accuracy"] = float(np.mean(_source_predict(source, X_test) == y_test.numpy()))
            record["validation_accuracy"] = mlp.accuracy(X_val, y_val)
            record["majority_class_accuracy"] = dict(majority)
            accuracy = record[f"{filter_split}_accuracy"]
            if accuracy <= majority[filter_split]:
                skipped.append({**record, "status": "skipped", "reason": (
                    f"degenerate: {filter_split} accuracy {accuracy:.4f} is at or below the majority class's "
                    f"{majority[filter_split]:.4f}")})
                continue
            record["status"] = "kept"
            kept.append((mlp, record))
            break
        else:
            given_up.append(slot)
    build_seconds = time.perf_counter() - start
    if out is not None:
        accs = [r["test_accuracy"] for _, r in kept]
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "task": task.name,
            "schema": task.schema(),
            "seed": seed,
            "n_models": n_models,
            "n_kept": len(kept),
            "n_skipped": len(skipped),
            "slots_given_up": given_up,
            "max_attempts": MAX_ATTEMPTS,
            "train_split": "train",
            "max_train_rows": max_train_rows,
            "training_scale": training_scale,
            "fidelity_tolerance": FIDELITY_TOL,
            "degenerate_rule": f"{filter_split} accuracy at or below the majority class's (of the train split)",
            "majority_class_accuracy": majority,
            "build_seconds": round(build_seconds, 2),
            "test_accuracy": ({"mean": float(np.mean(accs)), "min": float(min(accs)), "max": float(max(accs))}
                              if accs else None),
            "versions": _versions(),
        }
        _write(out, manifest, kept, skipped)
    return kept


def _write(out: Path, manifest: dict[str, Any], kept: list[tuple[MLP, dict]], skipped: list[dict]) -> None:
    """Write the models and the manifest into a temporary sibling of ``out``, then rename it into place."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # this process's own leftover
    tmp.mkdir(parents=True)
    try:
        for mlp, record in kept:
            record["file"] = f"{record['id']}.safetensors"
            path = mlp.save(tmp / record["file"], metadata={
                "source": MANIFEST_FORMAT, "task": manifest["task"], "trainer": record["trainer"],
                "id": record["id"], "population_seed": str(manifest["seed"])})
            record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest = {**manifest, "models": [r for _, r in kept], "skipped": skipped}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _check_out(out)  # still absent or empty
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_outside_population(path: str | os.PathLike) -> list[tuple[MLP, dict]]:
    """The ``(model, record)`` pairs a build wrote to ``path``, each file checked against its SHA-256."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no outside population at {path}: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise CorruptFileError(f"{manifest_path} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptFileError(f"{manifest_path} is not an outside population's manifest (format {MANIFEST_FORMAT!r})")
    pairs = []
    for record in manifest["models"]:
        file = path / record["file"]
        if Path(record["file"]).name != record["file"]:
            raise CorruptFileError(f"{manifest_path}: model file {record['file']!r} is not a plain name in the folder")
        blob = file.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != record["sha256"]:
            raise CorruptFileError(f"{file} has sha256 {digest}, the manifest says {record['sha256']}")
        pairs.append((MLP.from_bytes(blob, source=str(file)), record))
    return pairs
