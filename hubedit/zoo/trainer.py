"""Population training: many zoo configurations trained as one batched computation.

A per-model Python loop spends most of its time in per-step overhead (the MLPs are tiny), so building the
paper's 4,000-configuration populations that way takes more than a day per task on a 2-core machine.
:func:`train_group` trains a *group* of configurations that share a batch size (so they take the same
number of steps) as one computation in which every tensor has a leading model axis ``G``:

* **Parameters** are padded to the group's widest layer at each depth. Parameter ``i`` of all models is
  one contiguous ``(G, *shape)`` block of a 1-D buffer (so it is a standard tensor for ``bmm`` and the
  whole optimiser state is a few buffers). Hidden layer ``l`` has one weight ``(G, K_l, W_l)`` over the
  concatenation of its inputs -- the previous layer and every skip source used by some model of the
  group -- so a layer is one batched matrix product (the input block padded to 16 features, which keeps
  the products' inner sizes multiples of 16). Padded units, absent skips and layers beyond a model's
  depth hold exact zeros, kept there by a gradient mask; nothing padded reaches a real unit.
* **Per-model architecture**: a shallower model passes its last hidden layer through the extra layers
  unchanged (``torch.where``). Each model has its own normalisation: BatchNorm with its own batch
  statistics and running statistics (momentum 0.1, unbiased running variance, as ``nn.BatchNorm1d``),
  LayerNorm over its *real* width, or none; and its own activation. The fused kernels (below) apply each
  model's kinds to its block; the torch formulation selects them with per-model coefficients
  (:meth:`ModelGroup._norm`, :meth:`ModelGroup._act`). Either way groups can mix kinds and be formed by shape.
* **Data**: each model draws its own permutation of the training rows every epoch from its own
  generator (the same permutations :func:`train_single` uses); batches are gathered into ``(G, B, F)``.
* **Dropout**: per-model rates; keep-masks from a counter-based hash of (model's dropout seed, step, layer,
  row, unit), so a model's masks do not depend on its group or padding.
* **Loss**: per-model mean cross-entropy, summed over models (the gradients do not interact); for two
  classes computed as ``softplus`` of the logit difference (equal to rounding, and vectorised).
* **Optimiser**: a vectorised AdamW with per-model learning rate and weight decay, matching
  ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8, decoupled decay applied to every parameter -- biases
  and norm affine parameters included, as torch does by default).
* **Initialisation**: per model from its own seed, exactly ``nn.Linear``'s default (kaiming-uniform with
  ``a = sqrt(5)`` for weights, uniform ``±1/sqrt(fan_in)`` for biases): independent of the group.
* **Divergence**: a model whose loss becomes non-finite is zeroed and frozen (every operation is per model,
  so it cannot contaminate the others; a test checks the others stay bit-identical) and reported in
  :attr:`GroupResult.diverged`; *all* of its checkpoints are dropped, so every configuration in a zoo has
  its full set of checkpoints.
* **Speed**: where the C++ kernels are built (:mod:`hubedit.zoo.fused`), a whole training step of the
  group -- every model's forward pass, loss, backward pass and AdamW update -- is one call of the
  whole-step kernel (:func:`fused.group_step`, backend ``"native"``). It trains each model at its *real*
  size on its own blocks of the padded buffers (padded entries are never touched), in cache, with small
  register-blocked matrix products: no padded multiply-adds, no compilation, and a model's result does not
  depend on its group. The planner then only cuts groups of similar models to at most ``max_group_size``.
  Without a C++ compiler (or with ``HUBEDIT_FUSED_KERNELS=0``) the torch formulation above trains instead:
  groups large enough to repay it under ``torch.compile`` (~10-25 s to compile a group), small ones eagerly
  (:func:`choose_backend`, decided from the configurations only), with :func:`plan_groups` choosing groups
  by dynamic programming over a calibrated cost model (padding matters there); its hidden layers' bias,
  norm, activation and dropout also run in fused per-layer kernels where those are available. It is the
  reference the kernels are tested against.
  Training runs on one thread with denormals flushed and freed memory kept in the process (no page
  faults on every step's activation buffers); a build runs one worker process per core.

At each checkpoint epoch every model is extracted, unpadded, into a real :class:`~hubedit.mlp.MLP` (eval
mode, BatchNorm running statistics included), serialised with :meth:`MLP.to_bytes` (byte-deterministic:
metadata keys in canonical order), and its train / validation / test accuracies are computed with
``MLP.from_bytes(blob).accuracy(X, y)`` -- the path a user takes when reloading a checkpoint, so the
recorded accuracies reproduce exactly.

:func:`train_single` is the plain per-model loop (``torch.optim.AdamW`` on a real ``MLP``) with the same
initial weights and data order: the reference and the benchmark baseline.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, NonFiniteWeightsError
from ..mlp import ACTIVATIONS, MLP, NORMS, MLPConfig, activation_fn, skip_key
from ..mlp.config import LEAKY_RELU_SLOPE
from ..tasks import Task, load_task
from . import fused
from .records import Checkpoint, ZooConfig, model_id

__all__ = [
    "TRAINER_REVISION",
    "ModelGroup",
    "GroupResult",
    "train_group",
    "train_single",
    "plan_groups",
    "derive_seeds",
    "init_state_dict",
    "training_data",
    "evaluation_data",
    "evaluate_blob",
    "steps_per_epoch",
    "gather_batch",
    "choose_backend",
    "native_available",
    "compile_available",
    "group_cost",
    "CostModel",
]

#: Changes whenever the trainer's arithmetic changes (the same seed then gives other bytes); a zoo build
#: refuses to resume groups trained by another revision. 2: two-class loss as softplus of the logit difference.
#: 3: hidden layers' norm / activation / dropout by the fused kernels (hubedit.zoo.fused).
#: 4: whole training steps by the whole-step kernel (hubedit.zoo.fused.group_step), each model at its real size.
TRAINER_REVISION = 4

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
BN_MOMENTUM = 0.1
_SUBSET_SEED = 0x7A5  # fixed seed of the training-row subset used when max_train_rows caps the data

EvalSets = dict[str, tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------
# seeds, initialisation, data
# --------------------------------------------------------------------------------------------------
def derive_seeds(seed: int) -> tuple[int, int, int]:
    """(init, shuffle, dropout) seeds of one configuration, derived from its training seed."""
    s = np.random.SeedSequence(int(seed)).generate_state(6, np.uint32).astype(np.uint64)
    return tuple(int(((s[2 * i] << np.uint64(32)) | s[2 * i + 1]) & np.uint64(2**63 - 1)) for i in range(3))


def init_state_dict(config: MLPConfig, seed: int) -> dict[str, torch.Tensor]:
    """Initial weights of an :class:`MLP` from ``seed`` alone: ``nn.Linear``'s default initialisation
    (kaiming-uniform, ``a = sqrt(5)``; bias uniform ``±1/sqrt(fan_in)``), norms at weight 1 / bias 0.

    Drawn in module order (``layers.0`` weight, bias, ..., then the skips in config order) from one
    ``torch.Generator``; keys and shapes are those of ``MLP(config).state_dict()``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    w = config.widths
    sd: dict[str, torch.Tensor] = {}

    def linear(out_f: int, in_f: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = torch.empty(out_f, in_f)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
        if not bias:
            return weight, None
        bound = 1.0 / math.sqrt(in_f)
        return weight, torch.empty(out_f).uniform_(-bound, bound, generator=gen)

    for i in range(config.depth + 1):
        sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"] = linear(w[i + 1], w[i], True)
    for i, h in enumerate(config.hidden):
        if config.norm in ("batchnorm", "layernorm"):
            sd[f"norms.{i}.weight"] = torch.ones(h)
            sd[f"norms.{i}.bias"] = torch.zeros(h)
        if config.norm == "batchnorm":
            sd[f"norms.{i}.running_mean"] = torch.zeros(h)
            sd[f"norms.{i}.running_var"] = torch.ones(h)
            sd[f"norms.{i}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    for s, d in config.skips:
        sd[f"skips.{skip_key(s, d)}.weight"], _ = linear(w[d], w[s], False)
    return sd


def _as_task(task: "str | Task") -> Task:
    return task if isinstance(task, Task) else load_task(task)


def training_data(task: "str | Task", max_train_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` the zoo is trained on: the task's train split, or a fixed seeded subset of
    ``max_train_rows`` of its rows (same subset for every configuration and every build)."""
    X, y, _ = _as_task(task).split("train")
    if max_train_rows is not None and max_train_rows < len(y):
        if max_train_rows < 2:
            raise ConfigError(f"max_train_rows must be at least 2, got {max_train_rows}")
        keep = np.sort(np.random.default_rng(_SUBSET_SEED).permutation(len(y))[:max_train_rows])
        idx = torch.from_numpy(keep)
        X, y = X[idx], y[idx]
    return X.contiguous(), y.contiguous()


def evaluation_data(task: "str | Task") -> EvalSets:
    """The splits every checkpoint is scored on (always the full train / validation / test splits)."""
    t = _as_task(task)
    out = {}
    for name in ("train", "validation", "test"):
        X, y, _ = t.split(name)
        out[name] = (X.contiguous(), y.contiguous())
    return out




def evaluate_blob(blob: bytes, eval_sets: EvalSets) -> dict[str, float]:
    """Accuracies of a serialised MLP, computed exactly as a user would after reloading it."""
    model = MLP.from_bytes(blob)
    return {f"{name}_accuracy": model.accuracy(X, y) for name, (X, y) in eval_sets.items()}


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Optimiser steps per epoch: batches of ``batch_size`` in a fresh permutation; a final batch of a
    single row is dropped (BatchNorm cannot train on it), any larger remainder is kept."""
    full, rest = divmod(n_rows, batch_size)
    return full + (1 if rest >= 2 else 0)


def gather_batch(X: torch.Tensor, y: torch.Tensor, perms: torch.Tensor, a: int, b: int):
    """Rows ``a:b`` of every model's permutation ``perms (G, N)``: ``(G, b - a, F)`` inputs, ``(G, b - a)`` labels."""
    idx = perms[:, a:b].reshape(-1)
    G = perms.shape[0]
    return X.index_select(0, idx).view(G, b - a, -1), y.index_select(0, idx).view(G, b - a)


def _batches(n_rows: int, batch_size: int) -> list[tuple[int, int]]:
    out = [(s, min(s + batch_size, n_rows)) for s in range(0, n_rows, batch_size)]
    return [(a, b) for a, b in out if b - a >= 2]


# --------------------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------------------
def _group_key(c: ZooConfig) -> tuple:
    return (c.train.batch_size, c.train.epochs, tuple(c.checkpoint_epochs), c.mlp.in_features, c.mlp.out_features)


@dataclass(frozen=True)
class CostModel:
    """Rough CPU seconds of one training step of a group, for planning groups (measured on a 2-core
    Xeon with AVX-512; only the relative sizes matter).

    ``step = overhead + G * B * (per_param * P + per_unit * U) * mix * cache + per_adam * G * P``
    with ``P`` / ``U`` the group's padded parameters / hidden units per model, ``mix`` growing with the
    number of distinct activations in the group, ``cache`` > 1 once a layer's activations ``(G, B, W)``
    no longer fit in a core's L2 cache; plus a one-off ``compile`` cost per group.
    """

    overhead: float
    per_param: float
    per_unit: float
    per_adam: float
    mix: float
    cache_bytes: float
    cache: float
    compile: float


#: fitted (least squares on relative error) to the step times of the 16 groups that
#: scripts/bench_zoo_training.py timed with the fused kernels (within 7% each); mixing activations costs
#: nothing there, and no cache cliff showed up in that range; compilation ~11 s per group
COMPILED_COST = CostModel(1.8e-3, 0.061e-9, 2.1e-9, 1.6e-9, 0.0, 2.5e6, 1.0, 11.0)
EAGER_COST = CostModel(4e-3, 0.07e-9, 40e-9, 3e-9, 0.1, 2.5e6, 1.5, 0.0)
#: the whole-step kernel (:func:`fused.group_step`): the same form, over each model's *real* parameters
#: and units (padding costs nothing there) summed over the group; fitted to measured steps (see
#: :data:`COMPILED_COST`: 16 groups of the paper plans, within 20% each); mixing and cache terms unused
NATIVE_COST = CostModel(2.2e-4, 0.047e-9, 2.8e-9, 1.0e-9, 0.0, 0.0, 1.0, 0.0)


def _real_size(c: ZooConfig) -> tuple[int, int]:
    """(parameters, hidden units) of one configuration's MLP, unpadded."""
    m = c.mlp
    w = m.widths
    P = sum(w[i] * w[i + 1] + w[i + 1] for i in range(m.depth + 1)) + sum(w[s] * w[d] for s, d in m.skips)
    if m.norm != "none":
        P += 2 * sum(m.hidden)
    return P, sum(m.hidden)


def _native_cost(cs: Sequence[ZooConfig], n_rows: int) -> float:
    """Estimated CPU seconds to train ``cs`` as one group with the whole-step kernel."""
    B = cs[0].train.batch_size
    k = NATIVE_COST
    step = k.overhead + sum(B * (k.per_param * P + k.per_unit * U) + k.per_adam * P for P, U in map(_real_size, cs))
    return step * steps_per_epoch(n_rows, B) * max(c.train.epochs for c in cs)


class _ShapeAcc:
    """Running padded shape of a would-be group (configurations added one at a time)."""

    def __init__(self, F_in: int, out_features: int):
        self.in_features, self.out_features = F_in, out_features
        self.depth = 0
        self.widths = [F_in, 0, 0, 0, 0]
        self.srcs: list[set[int]] = [set() for _ in range(5)]
        self.has_norm = False
        self.acts: set[str] = set()
        self.n_models = 0
        self.epochs = 0

    def add(self, c: ZooConfig) -> None:
        m = c.mlp
        if len(self.widths) <= m.depth:  # deeper than the table: grow it
            self.widths += [0] * (m.depth + 1 - len(self.widths))
            self.srcs += [set() for _ in range(m.depth + 1 - len(self.srcs))]
        self.depth = max(self.depth, m.depth)
        for l in range(1, len(self.widths)):
            self.widths[l] = max(self.widths[l], m.hidden[min(l, m.depth) - 1])
        for s_, d in m.skips:
            self.srcs[d].add(s_)
        self.has_norm |= m.norm != "none"
        self.acts.add(m.activation)
        self.n_models += 1
        self.epochs = max(self.epochs, c.train.epochs)

    def shape(self) -> tuple[int, int, int]:
        W, D = self.widths, self.depth
        P = sum(W[l] * (sum(W[s] for s in {l - 1} | self.srcs[l]) + (3 if self.has_norm else 1)) for l in range(1, D + 1))
        P += self.out_features * (W[D] + 1)
        return P, sum(W[1 : D + 1]), max(W[1 : D + 1])

    def cost(self, batch_size: int, n_rows: int, cost: CostModel) -> float:
        P, U, Wmax = self.shape()
        G, B = self.n_models, batch_size
        cache = cost.cache if G * B * Wmax * 4 > cost.cache_bytes else 1.0
        step = cost.overhead + G * B * (cost.per_param * P + cost.per_unit * U) * (1 + cost.mix * (len(self.acts) - 1)) * cache
        step += cost.per_adam * G * P
        return step * steps_per_epoch(n_rows, B) * self.epochs + cost.compile


def _best(acc: _ShapeAcc, batch_size: int, n_rows: int) -> tuple[float, str]:
    eager = acc.cost(batch_size, n_rows, EAGER_COST)
    compiled = acc.cost(batch_size, n_rows, COMPILED_COST)
    return (compiled, "compiled") if compiled < eager else (eager, "eager")


def _acc_of(cs: Sequence[ZooConfig]) -> _ShapeAcc:
    acc = _ShapeAcc(cs[0].mlp.in_features, cs[0].mlp.out_features)
    for c in cs:
        acc.add(c)
    return acc


def group_cost(cs: Sequence[ZooConfig], n_rows: int, cost: CostModel | None = None) -> float:
    """Estimated CPU seconds to train ``cs`` as one group on ``n_rows`` rows (see :class:`CostModel`);
    without ``cost``, with the backend :func:`choose_backend` picks (``"auto"``: the whole-step kernel,
    else the cheaper of eager and compiled training, compilation included)."""
    if cost is NATIVE_COST or (cost is None and native_available(cs)):
        return _native_cost(cs, n_rows)
    acc = _acc_of(cs)
    if cost is None:
        return _best(acc, cs[0].train.batch_size, n_rows)[0]
    return acc.cost(cs[0].train.batch_size, n_rows, cost)


def _plan_key(c: ZooConfig) -> tuple:
    return (
        c.mlp.depth,
        c.mlp.hidden[::-1],
        tuple(sorted(((d, s) for s, d in c.mlp.skips), reverse=True)),
        ACTIVATIONS.index(c.mlp.activation),
        c.config_id,
    )


def plan_groups(configs: Sequence[ZooConfig], n_rows: int, max_group_size: int = 256) -> list[list[int]]:
    """Partition configurations into training groups (lists of ``config_id``), from the list alone.

    Configurations that can train together (same batch size, epochs, checkpoints, input/output sizes)
    are sorted by depth, widths (last hidden layer first), skip connections and activation, and the
    sorted list is cut into consecutive groups of at most ``max_group_size`` by dynamic programming,
    minimising the estimated training time (:func:`group_cost`): large groups amortise per-step and
    compilation overheads, homogeneous ones waste less on padding (and a little on mixed activations).
    Where the whole-step kernel trains them (:func:`native_available`), padding costs nothing and the sorted
    list is cut into near-equal groups of at most ``max_group_size``. The plan depends only on the
    configurations, ``n_rows`` and whether the kernels are built, so an interrupted build resumes the same
    plan (a build records the last and refuses to resume under the other).
    """
    if max_group_size < 1:
        raise ConfigError(f"max_group_size must be positive, got {max_group_size}")
    buckets: dict[tuple, list[ZooConfig]] = {}
    for c in configs:
        buckets.setdefault(_group_key(c), []).append(c)
    groups: list[list[int]] = []
    for key in sorted(buckets):
        members = sorted(buckets[key], key=_plan_key)
        n = len(members)
        if native_available(members):
            k = -(-n // max_group_size)
            bounds = [round(i * n / k) for i in range(k + 1)]
            groups += [[c.config_id for c in members[a:b]] for a, b in zip(bounds, bounds[1:])]
            continue
        B = members[0].train.batch_size
        best = [0.0] + [math.inf] * n
        cut = [0] * (n + 1)
        for i in range(n):  # forward DP over where the next group starts
            acc = _ShapeAcc(members[0].mlp.in_features, members[0].mlp.out_features)
            for j in range(i + 1, min(n, i + max_group_size) + 1):
                acc.add(members[j - 1])
                c_cost = best[i] + _best(acc, B, n_rows)[0]
                if c_cost < best[j]:
                    best[j], cut[j] = c_cost, i
        bounds = []
        j = n
        while j > 0:
            bounds.append((cut[j], j))
            j = cut[j]
        for i, j in reversed(bounds):
            groups.append([c.config_id for c in members[i:j]])
    return groups


# --------------------------------------------------------------------------------------------------
# the batched model
# --------------------------------------------------------------------------------------------------
_M31 = 0x7FFFFFFF
_INPUT_ALIGN = 16
_POS_STRIDE = 1024  # dropout position of (row r, unit u) is r * 1024 + u: independent of the group's padding


def _hash31(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer mixer (xorshift-multiply, lowbias32 constants) on int64 tensors in ``[0, 2^31)``.

    Every product stays below ``2^63``, so the result is exact (no overflow) in eager and compiled code.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M31
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M31
    return x ^ (x >> 16)


def _adamw_update(flat, grad, exp_avg, exp_avg_sq, pmask, decay, lr, scale: float, eps_term) -> None:
    """One AdamW step on the 1-D state buffers (eager path); ``decay = 1 - lr wd`` and ``lr`` per element,
    ``scale = -sqrt(bc2) / bc1``, ``eps_term = eps sqrt(bc2)``. Equal to torch's
    ``p <- p (1 - lr wd) - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``."""
    grad.mul_(pmask)
    flat.mul_(decay)
    exp_avg.lerp_(grad, 1 - BETAS[0])
    exp_avg_sq.mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
    denom = exp_avg_sq.sqrt().add_(eps_term)
    flat.addcmul_(exp_avg.div(denom), lr, value=scale)


def _adamw_update_lists(ps, gs, ms, vs, masks, decays, lrs, scale, eps_term) -> None:
    """:func:`_adamw_update` over lists of per-parameter tensors (the compiled path: one fused loop
    each); ``lrs`` per model, ``scale = -sqrt(bc2) / bc1`` a 0-d tensor."""
    for p, grad, m, v, mask, decay, lr in zip(ps, gs, ms, vs, masks, decays, lrs):
        g = grad * mask
        p.mul_(decay)
        m.lerp_(g, 1 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        p.addcmul_(m / (v.sqrt() + eps_term), lr * scale)


def compile_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here (inductor and a C++ compiler)."""
    import shutil

    try:
        import torch._inductor  # noqa: F401
    except Exception:  # pragma: no cover - depends on the torch build
        return False
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


class ModelGroup:
    """``n_models`` MLP configurations held as padded, stacked tensors (see the module docstring).

    Shapes: ``in_features``/``out_features`` of every model; ``depth`` the deepest model's; ``widths[l]`` the padded
    width of layer ``l`` (0 = input); ``real_widths[g][l]`` model ``g``'s own; ``fan_in[l]`` the rows of layer
    ``l``'s stacked weight (previous layer plus skip sources); ``n_params`` one model's padded parameter count.

    ``configs`` is the group in its internal order (by normalisation, activation, config id). ``p`` maps
    parameter names (``w{l}`` weights stored as ``(G, in, out)``, ``b{l}``, ``g{l}``/``n{l}`` norm scale
    and shift, ``wout``/``bout``) to the per-parameter views; :meth:`extract` gives one model as an MLP.
    """

    def __init__(self, configs: Sequence[ZooConfig]):
        if not configs:
            raise ConfigError("a model group needs at least one configuration")
        cfgs = sorted(
            configs, key=lambda c: (NORMS.index(c.mlp.norm), ACTIVATIONS.index(c.mlp.activation), c.config_id)
        )
        keys = {_group_key(c) for c in cfgs}
        if len(keys) != 1:
            raise ConfigError(f"a model group needs one batch size, epoch plan and input/output size; got {sorted(keys)}")
        eps = {c.mlp.norm_eps for c in cfgs}
        if len(eps) != 1:
            raise ConfigError(f"a model group needs one norm_eps, got {sorted(eps)}")
        self.configs: list[ZooConfig] = list(cfgs)
        self.n_models = G = len(cfgs)
        self.norm_eps = eps.pop()
        self.batch_size = cfgs[0].train.batch_size
        self.epochs = cfgs[0].train.epochs
        self.checkpoint_epochs = tuple(cfgs[0].checkpoint_epochs)
        self.in_features = cfgs[0].mlp.in_features
        self.out_features = cfgs[0].mlp.out_features
        depths = [c.mlp.depth for c in cfgs]
        self.depth = D = max(depths)
        self.depths = depths
        # effective width of model g at layer l: its real width, or its last hidden width past its depth
        self.real_widths = [[self.in_features] + [c.mlp.hidden[min(l, c.mlp.depth) - 1] for l in range(1, D + 1)] for c in cfgs]
        self.widths = W = [max(r[l] for r in self.real_widths) for l in range(D + 1)]
        # the input block padded to a multiple of 16 features (zero columns, zero weights): matrix products
        # whose inner size is not a multiple of 16 run up to 2x slower (measured: Adult's 14 features)
        W[0] = -(-self.in_features // _INPUT_ALIGN) * _INPUT_ALIGN
        # inputs of hidden layer l: the previous layer, then every skip source used by a model of the group
        self.in_blocks: dict[int, list[tuple[int, int]]] = {}
        for l in range(1, D + 1):
            srcs = [l - 1] + sorted({s for c in cfgs for s, d in c.mlp.skips if d == l})
            offs, o = [], 0
            for s in srcs:
                offs.append((s, o))
                o += W[s]
            self.in_blocks[l] = offs
        self.fan_in = {l: sum(W[s] for s, _ in self.in_blocks[l]) for l in range(1, D + 1)}
        self.has_norm_params = any(c.mlp.norm != "none" for c in cfgs)

        # ---- flat parameter layout
        specs: list[tuple[str, tuple[int, ...]]] = []
        for l in range(1, D + 1):
            specs += [(f"w{l}", (self.fan_in[l], W[l])), (f"b{l}", (W[l],))]  # weights stored transposed
            if self.has_norm_params:
                specs += [(f"g{l}", (W[l],)), (f"n{l}", (W[l],))]
        specs += [("wout", (W[D], self.out_features)), ("bout", (self.out_features,))]
        self.offsets: dict[str, tuple[int, tuple[int, ...]]] = {}
        P = 0
        for name, shape in specs:
            self.offsets[name] = (P, shape)
            P += int(np.prod(shape))
        self.n_params = P  # per model, padded layout
        # Blocked layout: parameter i of every model is one contiguous (G, *shape) block of a 1-D buffer,
        # so each parameter is a standard contiguous tensor (bmm needs no copies) and the whole state is
        # one buffer for the eager optimiser.
        self.flat = torch.zeros(G * P)
        self.grad = torch.zeros(G * P)
        self.pmask = torch.zeros(G * P)
        self.exp_avg = torch.zeros(G * P)
        self.exp_avg_sq = torch.zeros(G * P)
        # one leaf per parameter, a view of `flat`; the eager path accumulates into a view of `grad`
        self.p: dict[str, torch.Tensor] = {}
        for name in self.offsets:
            leaf = self._view(self.flat, name)
            leaf.requires_grad_(True)
            leaf.grad = self._view(self.grad, name)
            self.p[name] = leaf
        self._grad_views = {name: leaf.grad for name, leaf in self.p.items()}
        self._mask_views = {name: self._view(self.pmask, name) for name in self.offsets}
        # ---- BatchNorm running statistics (per model, per padded unit)
        self.bn_steps = 0
        self.running_mean = {l: torch.zeros(G, W[l]) for l in range(1, D + 1)}
        self.running_var = {l: torch.ones(G, W[l]) for l in range(1, D + 1)}

        # ---- per-model architecture plan
        self._act_onehot = {
            a: torch.tensor([c.mlp.activation == a for c in cfgs], dtype=torch.float32).view(G, 1, 1)
            for a in ACTIVATIONS
            if any(c.mlp.activation == a for c in cfgs)
        }
        self._act_fns = {a: activation_fn(a) for a in ACTIVATIONS}
        # relu and leaky relu as max(z, slope z): same values (relu gives -0.0 for z < 0), and inductor
        # fuses it far better than the masked forms (2x faster steps for relu groups when compiled)
        self._act_fns["relu"] = lambda z: torch.maximum(z, z * 0.0)
        self._act_fns["leaky_relu"] = lambda z: torch.maximum(z, z * LEAKY_RELU_SLOPE)
        acts = [c.mlp.activation for c in cfgs]

        def col(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(G, 1, 1)

        self._act_coef: dict[str, torch.Tensor] = {}
        if {"sigmoid", "silu", "tanh"} & set(acts):
            self._act_coef["sig_scale"] = col([2.0 if a == "tanh" else 1.0 for a in acts])
            for a in ("sigmoid", "silu", "tanh"):
                if a in acts:
                    self._act_coef[a] = col([float(x == a) for x in acts])
        if {"relu", "leaky_relu"} & set(acts):
            self._act_coef["relu_like"] = col([float(a in ("relu", "leaky_relu")) for a in acts])
            self._act_coef["slope"] = col([LEAKY_RELU_SLOPE if a == "leaky_relu" else 0.0 for a in acts])
        if "gelu" in acts:
            self._act_coef["gelu"] = col([float(a == "gelu") for a in acts])
        # normalisation: each kind's one-hot column (only where the group mixes kinds), and LayerNorm's
        # statistics over each model's real width: per layer (mask (G, 1, W_l), count (G, 1, 1)), or None
        # where every LayerNorm model is W_l wide there
        norms = [c.mlp.norm for c in cfgs]
        kinds = sorted(set(norms), key=NORMS.index)
        self._norm_sel = {k: col([float(n == k) for n in norms]) for k in kinds} if len(kinds) > 1 else {k: None for k in kinds}
        self._ln_mask: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        if "layernorm" in kinds:
            for l in range(1, D + 1):
                if all(self.real_widths[g][l] == W[l] for g in range(G) if norms[g] == "layernorm"):
                    self._ln_mask[l] = None
                    continue
                m = torch.zeros(G, 1, W[l])
                for g in range(G):
                    m[g, 0, : self.real_widths[g][l]] = 1.0
                self._ln_mask[l] = (m, col([self.real_widths[g][l] for g in range(G)]))
        # ---- fused kernels (training mode): per-model codes of norm, activation and real width per layer
        self.use_fused = fused.available() and max(W[1:]) <= fused.max_width()
        self._norm_code = torch.tensor([fused.NORM_CODES[n] for n in norms], dtype=torch.int32)
        self._act_code = torch.tensor([fused.ACT_CODES[a] for a in acts], dtype=torch.int32)
        self._width_code = {l: torch.tensor([self.real_widths[g][l] for g in range(G)], dtype=torch.int32) for l in range(1, D + 1)}
        self._store_slope = fused.stores_slope(acts)
        # layers some models skip (pass-through)
        self.active = {
            l: torch.tensor([d >= l for d in depths]).view(G, 1, 1) for l in range(1, D + 1) if min(depths) < l
        }
        # ---- dropout: per-model rate; keep-masks from a counter-based hash of
        #      (model's dropout seed, optimiser step, layer, row, unit): independent of the group
        p = torch.tensor([c.mlp.dropout for c in cfgs], dtype=torch.float64).view(G, 1, 1)
        self.has_dropout = bool((p > 0).any())
        self.drop_scale = (1.0 / (1.0 - p)).float()
        self._drop_thr = torch.round(p * 2**31).to(torch.int64)
        self._drop_base = torch.tensor([derive_seeds(c.seed)[2] & _M31 for c in cfgs], dtype=torch.int64).view(G, 1, 1)
        Wmax = max(W[1:])
        self._pos = (
            torch.arange(self.batch_size, dtype=torch.int64).view(1, -1, 1) * _POS_STRIDE
            + torch.arange(Wmax, dtype=torch.int64).view(1, 1, -1)
        )
        # ---- per-model optimiser hyper-parameters
        self.lr = torch.tensor([c.train.lr for c in cfgs], dtype=torch.float64).view(G, 1)
        wd = torch.tensor([c.train.weight_decay for c in cfgs], dtype=torch.float64).view(G, 1)
        self.decay = (1.0 - self.lr * wd).float()
        self._refresh_hyper()
        self.step_count = 0
        self.alive = torch.ones(G, dtype=torch.bool)
        self.diverged: dict[int, str] = {}
        self._compiled: tuple[Callable, Callable] | None = None
        # ---- initial weights, per model from its own seed
        for g, c in enumerate(cfgs):
            self.load_model(g, init_state_dict(c.mlp, derive_seeds(c.seed)[0]))
        # ---- the whole-step kernel: every model's step at its real size (see train_step)
        self.use_native = native_available(cfgs)
        self._native: tuple | None = None

    def _view(self, buf: torch.Tensor, name: str) -> torch.Tensor:
        """Parameter ``name`` of every model: a contiguous ``(G, *shape)`` block of a 1-D state buffer."""
        off, shape = self.offsets[name]
        return buf[self.n_models * off : self.n_models * (off + math.prod(shape))].view(self.n_models, *shape)

    def _per_element(self, values: torch.Tensor) -> torch.Tensor:
        """Per-model values ``(G, 1)`` spread over the 1-D blocked buffer layout."""
        v = values.reshape(self.n_models, 1)
        return torch.cat([v.expand(self.n_models, math.prod(shape)).reshape(-1) for _, shape in self.offsets.values()])

    def _refresh_hyper(self) -> None:
        self._hyper_full: tuple[torch.Tensor, torch.Tensor] | None = None  # rebuilt on the eager path's next step

    def _per_element_hyper(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Learning rate and decay per element of the 1-D buffers (the eager optimiser's operands; built on
        first use, so groups trained by the whole-step kernel never allocate them)."""
        if self._hyper_full is None:
            self._hyper_full = (self._per_element(self.lr.float()), self._per_element(self.decay))
        return self._hyper_full

    def _real_segments(self, g: int) -> list[tuple[int, int]]:
        """``(offset, length)`` runs of model ``g``'s real entries in the 1-D state buffers (the entries
        ``pmask`` marks), for the whole-step kernel's optimiser."""
        segs = []
        for _, name, idx in self._slots(g):
            off, shape = self.offsets[name]
            base = self.n_models * off + g * math.prod(shape)
            if len(idx) == 1:
                segs.append((base + (idx[0].start or 0), len(range(*idx[0].indices(shape[0])))))
                continue
            rows, cols = range(*idx[0].indices(shape[0])), range(*idx[1].indices(shape[1]))
            if len(cols) == shape[1]:  # whole rows: one run
                segs.append((base + rows.start * shape[1], len(rows) * shape[1]))
            else:
                segs += [(base + r * shape[1] + cols.start, len(cols)) for r in rows]
        return segs

    def _native_plan(self) -> tuple:
        """The ``GroupPlan`` / ``GroupState`` structures of :func:`fused.group_step` (built once; they point
        into this group's tensors, which are kept alive with them)."""
        if self._native is not None:
            return self._native
        G, D = self.n_models, self.depth
        plan = fused.GroupPlan(G=G, F=self.in_features, O=self.out_features, D=D, eps=self.norm_eps)
        plan.W[0] = self.widths[0]
        for l in range(1, D + 1):
            plan.W[l], plan.K[l] = self.widths[l], self.fan_in[l]
            plan.off_w[l], plan.off_b[l] = self.offsets[f"w{l}"][0], self.offsets[f"b{l}"][0]
            plan.off_g[l] = self.offsets[f"g{l}"][0] if self.has_norm_params else -1
            plan.off_n[l] = self.offsets[f"n{l}"][0] if self.has_norm_params else -1
            plan.nblk[l] = len(self.in_blocks[l])
            for j, (src, row) in enumerate(self.in_blocks[l]):
                plan.blk_src[l][j], plan.blk_row[l][j] = src, row
            plan.running_mean[l] = self.running_mean[l].data_ptr()
            plan.running_var[l] = self.running_var[l].data_ptr()
        plan.off_wout, plan.off_bout = self.offsets["wout"][0], self.offsets["bout"][0]
        used = torch.zeros(G, D + 1, dtype=torch.int32)
        for g, c in enumerate(self.configs):
            for l in range(1, c.mlp.depth + 1):
                srcs = [s for s, _ in self.in_blocks[l]]
                used[g, l] = 1 | sum(1 << srcs.index(s) for s in c.mlp.skips_into(l))
        segs = [self._real_segments(g) for g in range(G)]
        keep = {
            "depth": torch.tensor(self.depths, dtype=torch.int32),
            "rw": torch.tensor(self.real_widths, dtype=torch.int32),
            "blk_used": used,
            "norm": self._norm_code,
            "act": self._act_code,
            "drop_base": self._drop_base.view(-1).contiguous(),
            "drop_thr": self._drop_thr.view(-1).contiguous(),
            "drop_scale": self.drop_scale.view(-1).contiguous(),
            "seg": torch.tensor([s for ss in segs for s in ss], dtype=torch.int64).view(-1, 2),
            "seg_ptr": torch.tensor(np.cumsum([0] + [len(ss) for ss in segs]), dtype=torch.int64),
        }
        for name, t in keep.items():
            setattr(plan, name, t.data_ptr())
        # learning rates as float32, fixed here: kill() changes only frozen models', which the kernel skips
        keep["lr"] = self.lr.float().view(-1).contiguous()
        state = fused.GroupState(
            flat=self.flat.data_ptr(), grad=self.grad.data_ptr(), exp_avg=self.exp_avg.data_ptr(),
            exp_avg_sq=self.exp_avg_sq.data_ptr(), lr=keep["lr"].data_ptr(), decay=self.decay.data_ptr(),
            alive=self.alive.data_ptr(),
        )
        self._native = (plan, state, keep)
        return self._native

    # ---- mapping between one model's state dict and its slots in the padded tensors ---------------
    def _slots(self, g: int):
        """Yield ``(state_dict key, param name, index)`` of every real parameter of model ``g``.

        Weights are stored transposed (``(in, out)``, so a layer is ``x @ w``): their index is in that
        layout and the state-dict tensor is its transpose."""
        c = self.configs[g].mlp
        d = c.depth
        rw = self.real_widths[g]
        for l in range(1, d + 1):
            blocks = dict(self.in_blocks[l])
            yield f"layers.{l - 1}.weight", f"w{l}", (slice(0, rw[l - 1]), slice(0, rw[l]))
            yield f"layers.{l - 1}.bias", f"b{l}", (slice(0, rw[l]),)
            for s in c.skips_into(l):
                o = blocks[s]
                yield f"skips.{skip_key(s, l)}.weight", f"w{l}", (slice(o, o + rw[s]), slice(0, rw[l]))
            if c.norm != "none":
                yield f"norms.{l - 1}.weight", f"g{l}", (slice(0, rw[l]),)
                yield f"norms.{l - 1}.bias", f"n{l}", (slice(0, rw[l]),)
        yield f"layers.{d}.weight", "wout", (slice(0, rw[d]), slice(None))
        yield f"layers.{d}.bias", "bout", (slice(None),)

    @torch.no_grad()
    def load_model(self, g: int, state: dict[str, torch.Tensor]) -> None:
        """Write one model's state dict into slot ``g`` (and mark its real entries trainable)."""
        seen = set()
        for name in self.offsets:
            self._view(self.flat, name)[g].zero_()
            self._view(self.pmask, name)[g].zero_()
        for key, name, idx in self._slots(g):
            self.p[name][g][idx] = state[key].t() if len(idx) == 2 else state[key]
            self._mask_views[name][g][idx] = 1.0
            seen.add(key)
        c = self.configs[g].mlp
        if c.norm == "batchnorm":
            for l in range(1, c.depth + 1):
                w = self.real_widths[g][l]
                self.running_mean[l][g, :w] = state[f"norms.{l - 1}.running_mean"]
                self.running_var[l][g, :w] = state[f"norms.{l - 1}.running_var"]
                seen |= {f"norms.{l - 1}.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
        missing = set(state) - seen
        if missing:
            raise ConfigError(f"state dict keys not placed in the group: {sorted(missing)}")

    @torch.no_grad()
    def state_dict_of(self, g: int) -> dict[str, torch.Tensor]:
        """Model ``g``'s unpadded state dict (keys of ``MLP(config).state_dict()``)."""
        sd = {
            key: (self.p[name][g][idx].t() if len(idx) == 2 else self.p[name][g][idx]).detach().clone(memory_format=torch.contiguous_format)
            for key, name, idx in self._slots(g)
        }
        c = self.configs[g].mlp
        if c.norm == "batchnorm":
            for l in range(1, c.depth + 1):
                w = self.real_widths[g][l]
                sd[f"norms.{l - 1}.running_mean"] = self.running_mean[l][g, :w].clone()
                sd[f"norms.{l - 1}.running_var"] = self.running_var[l][g, :w].clone()
                sd[f"norms.{l - 1}.num_batches_tracked"] = torch.tensor(self.bn_steps, dtype=torch.long)
        return sd

    def extract(self, g: int) -> MLP:
        """Model ``g`` as a real :class:`MLP` in eval mode."""
        with torch.random.fork_rng(devices=[]):  # MLP() draws a throw-away init from the global RNG
            model = MLP(self.configs[g].mlp)
        model.load_state_dict(self.state_dict_of(g), strict=True)
        return model.eval()

    # ---- forward ------------------------------------------------------------------------------------
    def _act(self, z: torch.Tensor) -> torch.Tensor:
        """Each model's activation, as one formula for the whole group (no per-model branching).

        With ``s = sigmoid(a z)`` (``a = 2`` for tanh models, else 1):
        ``h = c_sigmoid s + c_silu z s + c_tanh (2 s - 1) + c_relu max(z, slope z) + c_gelu gelu(z)``
        where the ``c`` are each model's one-hot choice and ``slope`` is 0 (relu) or 0.01 (leaky relu).
        Unselected terms are exact zeros (finite inputs), so a model computes its own activation (tanh as
        ``2 sigmoid(2z) - 1``, equal to ``tanh`` to float rounding). One transcendental (two if some model
        uses gelu) per element: mixing activations in a group costs little, so groups can be formed by
        shape, which is what padding cost depends on."""
        if len(self._act_onehot) == 1:
            return self._act_fns[next(iter(self._act_onehot))](z)
        c = self._act_coef
        out = None

        def acc(term):
            nonlocal out
            out = term if out is None else out + term

        if "sig_scale" in c:
            s = torch.sigmoid(z * c["sig_scale"])
            if "sigmoid" in c:
                acc(s * c["sigmoid"])
            if "silu" in c:
                acc(z * s * c["silu"])
            if "tanh" in c:
                acc((2 * s - 1) * c["tanh"])
        if "relu_like" in c:
            acc(torch.maximum(z, z * c["slope"]) * c["relu_like"])
        if "gelu" in c:
            acc(F.gelu(z) * c["gelu"])
        return out

    @torch.no_grad()
    def _update_running_stats(self, l: int, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """BatchNorm running statistics of layer ``l`` from a batch's mean and biased variance ``(G, W)``
        (momentum 0.1, unbiased running variance, as ``nn.BatchNorm1d``); other models' stay as they are."""
        rm, rv = self.running_mean[l], self.running_var[l]
        new_m = rm * (1 - BN_MOMENTUM) + mean * BN_MOMENTUM
        new_v = rv * (1 - BN_MOMENTUM) + var * (BN_MOMENTUM * n / (n - 1))
        if self._norm_sel["batchnorm"] is not None:
            is_bn = self._norm_sel["batchnorm"].view(-1, 1) > 0
            new_m, new_v = torch.where(is_bn, new_m, rm), torch.where(is_bn, new_v, rv)
        rm.copy_(new_m)
        rv.copy_(new_v)

    def _norm(self, params: dict[str, torch.Tensor], z: torch.Tensor, l: int, training: bool) -> torch.Tensor:
        """Each model's normalisation of layer ``l``'s pre-activations ``z`` (G, B, W_l), for the whole group
        at once: ``(z - mean) * rstd * gamma + beta`` with each model's statistics selected by its kind
        (BatchNorm: over the batch, or the running statistics in eval mode; LayerNorm: over the model's real
        width; none: ``mean = rstd = 0``, ``gamma = beta = 0``, plus ``z``). The torch formulation: eval
        mode, and training where the fused kernels (:meth:`_fused_layer`) are unavailable."""
        if not self.has_norm_params:
            return z
        sel = self._norm_sel
        mean = rstd = None

        def add(m, r, kind):
            nonlocal mean, rstd
            if sel[kind] is not None:
                m, r = m * sel[kind], r * sel[kind]
            mean, rstd = (m, r) if mean is None else (mean + m, rstd + r)

        if "batchnorm" in sel:
            if training:
                var, mu = torch.var_mean(z, dim=1, keepdim=True, correction=0)
                self._update_running_stats(l, mu.squeeze(1), var.squeeze(1), z.shape[1])
            else:
                mu, var = self.running_mean[l].unsqueeze(1), self.running_var[l].unsqueeze(1)
            add(mu, torch.rsqrt(var + self.norm_eps), "batchnorm")
        if "layernorm" in sel:
            mask = self._ln_mask[l]
            if mask is None:
                var, mu = torch.var_mean(z, dim=-1, keepdim=True, correction=0)
            else:
                m, cnt = mask
                mu = z.sum(-1, keepdim=True) / cnt
                dev = (z - mu) * m
                var = (dev * dev).sum(-1, keepdim=True) / cnt
            add(mu, torch.rsqrt(var + self.norm_eps), "layernorm")
        out = (z - mean) * rstd * params[f"g{l}"].unsqueeze(1) + params[f"n{l}"].unsqueeze(1)
        if "none" in sel:
            out = out + z * sel["none"]
        return out

    def _fused_layer(self, params: dict[str, torch.Tensor], z: torch.Tensor, l: int, step: torch.Tensor | None) -> torch.Tensor:
        """Norm, activation and dropout (of optimiser step ``step``; None: none) of hidden layer ``l`` in
        training mode by the fused kernels (:mod:`hubedit.zoo.fused`), from the layer's product ``z``
        without its bias: the function of ``_act(_norm(z + b)) * _dropout_keep(...)``, with the bias added
        and the dropout drawn inside the kernel."""
        norm = self.has_norm_params
        h, _, bn_mean, bn_var, _, _ = torch.ops.hubedit.group_layer(
            z, params[f"b{l}"], params[f"g{l}"] if norm else None, params[f"n{l}"] if norm else None,
            self._dropout_key(step, l).view(-1) if step is not None else None, self._drop_thr.view(-1),
            self.drop_scale.view(-1), self._norm_code, self._act_code, self._width_code[l], self.norm_eps,
            self._store_slope,
        )
        if "batchnorm" in self._norm_sel:
            self._update_running_stats(l, bn_mean, bn_var, z.shape[1])
        return h

    def _dropout_key(self, step: torch.Tensor, l: int) -> torch.Tensor:
        """Each model's dropout hash key for optimiser step ``step`` and hidden layer ``l`` ``(G, 1, 1)``."""
        return _hash31((self._drop_base + step * 0x9E3779B1 + l * 0x632BE5AB) & _M31)

    def _dropout_keep(self, step: torch.Tensor, l: int, B: int) -> torch.Tensor:
        """``keep / (1 - p)`` of every model at hidden layer ``l`` for optimiser step ``step``: ``(G, B, W_l)``.

        ``keep = hash(model's dropout seed, step, layer, row * 1024 + unit) >= p * 2^31``: a counter-based
        draw, so a model's masks do not depend on its group (nor on the padding)."""
        pos = self._pos
        if B > pos.shape[1]:  # a batch larger than the group's batch size (forward() on other data)
            pos = torch.arange(B, dtype=torch.int64).view(1, -1, 1) * _POS_STRIDE + torch.arange(pos.shape[2]).view(1, 1, -1)
        u = _hash31((self._dropout_key(step, l) + pos[:, :B, : self.widths[l]]) & _M31)
        return torch.where(u >= self._drop_thr, self.drop_scale, 0.0)

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, training: bool, step: torch.Tensor | None):
        """Logits; in training mode, the dropout of optimiser ``step`` (a 0-d int64 tensor; None: no dropout)."""
        if x.shape[-1] < self.widths[0]:
            x = F.pad(x, (0, self.widths[0] - x.shape[-1]))
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_models, -1, -1)
        W = self.widths
        dropout = training and step is not None and self.has_dropout
        hs = [x]
        for l in range(1, self.depth + 1):
            blocks = self.in_blocks[l]
            inp = hs[l - 1] if len(blocks) == 1 else torch.cat([hs[s] for s, _ in blocks], -1)
            if training and self.use_fused:  # the kernel adds the bias
                h = self._fused_layer(params, torch.bmm(inp, params[f"w{l}"]), l, step if dropout else None)
            else:
                z = torch.baddbmm(params[f"b{l}"].unsqueeze(1), inp, params[f"w{l}"])
                h = self._act(self._norm(params, z, l, training))
                if dropout:
                    h = h * self._dropout_keep(step, l, x.shape[1])
            if l in self.active:
                prev = hs[l - 1] if W[l] == W[l - 1] else F.pad(hs[l - 1], (0, W[l] - W[l - 1]))
                h = torch.where(self.active[l], h, prev)
            hs.append(h)
        return torch.baddbmm(params["bout"].unsqueeze(1), hs[self.depth], params["wout"])

    def forward(self, x: torch.Tensor, training: bool = False, step: int = 0) -> torch.Tensor:
        """Logits ``(G, B, out)`` for inputs ``(G, B, F)`` (one batch per model) or ``(B, F)`` (shared).

        ``training``: batch statistics (and running-statistics updates) for BatchNorm, and the dropout
        masks of optimiser step ``step``. Otherwise eval mode: the function of the extracted MLPs.
        """
        return self._forward(self.p, x, training, torch.tensor(step, dtype=torch.int64))

    def _per_model_loss(self, params, x: torch.Tensor, y: torch.Tensor, step: torch.Tensor | None) -> torch.Tensor:
        """Each model's mean training loss on its batch (``step`` as in :meth:`_forward`)."""
        G, B = y.shape
        logits = self._forward(params, x, True, step)
        if logits.shape[-1] == 2:
            # two classes: cross-entropy is softplus of the other logit minus the true one. Equal to
            # F.cross_entropy to float rounding, and one vectorised elementwise op, where inductor's
            # log-softmax over a dimension of 2 is a scalar loop (7-16% of a step at large batches).
            d = logits[..., 1] - logits[..., 0]
            return F.softplus(torch.where(y == 1, -d, d)).mean(1)
        return F.cross_entropy(logits.reshape(G * B, -1), y.reshape(G * B), reduction="none").view(G, B).mean(1)

    def _loss_from_list(self, plist: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: torch.Tensor):
        return self._per_model_loss(dict(zip(self.offsets, plist)), x, y, step)

    # ---- training -------------------------------------------------------------------------------------
    def enable_compile(self) -> None:
        """Use ``torch.compile`` (fused CPU kernels) for full-size batches and the optimiser."""
        import torch._dynamo

        torch._dynamo.reset()  # one group at a time per process: never hit the recompile limit
        self._compiled = (
            torch.compile(self._loss_from_list, fullgraph=True, dynamic=False),
            torch.compile(_adamw_update_lists, fullgraph=True, dynamic=False),
        )
        names = list(self.offsets)
        self._plist = [self.p[n] for n in names]
        self._lists = (
            [self._view(self.flat, n) for n in names],
            [self._view(self.exp_avg, n) for n in names],
            [self._view(self.exp_avg_sq, n) for n in names],
            [self._view(self.pmask, n) for n in names],
        )
        self._refresh_lists()

    def _refresh_lists(self) -> None:
        """Per-parameter views of the per-model decay and learning rate (broadcast shapes)."""
        if self._compiled is None:
            return
        shapes = [(self.n_models,) + (1,) * len(shape) for _, shape in self.offsets.values()]
        self._decays = [self.decay.view(sh) for sh in shapes]
        lr = self.lr.float()
        self._lrs = [lr.view(sh) for sh in shapes]

    @torch.no_grad()
    def kill(self, gs: Sequence[int], reason: str) -> None:
        """Freeze models ``gs`` at zero: no further updates, finite outputs, no effect on the others."""
        for g in gs:
            g = int(g)
            if not bool(self.alive[g]):
                continue
            self.alive[g] = False
            self.diverged[self.configs[g].config_id] = reason
            for t in (self.flat, self.grad, self.pmask, self.exp_avg, self.exp_avg_sq):
                for name in self.offsets:
                    self._view(t, name)[g].zero_()
            for leaf in self.p.values():
                if leaf.grad is not None:
                    leaf.grad[g].zero_()
            self.lr[g] = 0.0
            self.decay[g] = 1.0
            self._refresh_hyper()
            self._refresh_lists()
            for l in self.running_mean:
                self.running_mean[l][g].zero_()
                self.running_var[l][g].fill_(1.0)

    def _native_step(self, xb: torch.Tensor, yb: torch.Tensor, where: str) -> None:
        """:meth:`train_step` by the whole-step kernel (:func:`fused.group_step`)."""
        plan, state, _ = self._native_plan()
        t = self.step_count + 1
        bc1, bc2 = 1 - BETAS[0] ** t, 1 - BETAS[1] ** t
        per = fused.group_step(
            plan, state, xb.contiguous(), yb.to(torch.int64).contiguous(), self.step_count,
            -math.sqrt(bc2) / bc1, ADAM_EPS * math.sqrt(bc2),
        )
        self.bn_steps += 1
        finite = torch.isfinite(per)
        if not bool(finite.all()):
            self.kill(torch.nonzero(~finite & self.alive).flatten().tolist(), f"non-finite loss at {where}")
        self.step_count += 1

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, where: str = "", compiled: bool = False) -> None:
        """One optimiser step on per-model batches ``xb (G, B, F)``, ``yb (G, B)``: by the whole-step kernel
        where :attr:`use_native`, else by the torch formulation (``compiled``: its ``torch.compile`` d form,
        see :meth:`enable_compile`)."""
        if self.use_native:
            return self._native_step(xb, yb, where)
        step = torch.tensor(self.step_count, dtype=torch.int64)
        compiled = compiled and self._compiled is not None and yb.shape[1] == self.batch_size
        if compiled:
            for leaf in self._plist:
                leaf.grad = None
            per = self._compiled[0](self._plist, xb, yb, step)
        else:
            for name, leaf in self.p.items():  # gradients accumulate into views of self.grad
                leaf.grad = self._grad_views[name]
            self.grad.zero_()
            per = self._per_model_loss(self.p, xb, yb, step)
        self.bn_steps += 1
        finite = torch.isfinite(per)
        bad = None
        if not bool(finite.all()):
            bad = torch.nonzero(~finite & self.alive).flatten().tolist()
            per = torch.where(finite, per, torch.zeros((), dtype=per.dtype))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            per.sum().backward()
        with torch.no_grad():
            if bad is not None:
                for leaf in self.p.values():
                    leaf.grad[~finite] = 0.0
                self.kill(bad, f"non-finite loss at {where}")
            self.step_count += 1
            t = self.step_count
            bc1, bc2 = 1 - BETAS[0] ** t, 1 - BETAS[1] ** t
            eps_term = torch.tensor(ADAM_EPS * math.sqrt(bc2), dtype=torch.float32)
            if compiled:
                ps, ms, vs, masks = self._lists
                grads = [leaf.grad for leaf in self._plist]
                scale = torch.tensor(-math.sqrt(bc2) / bc1, dtype=torch.float32)
                self._compiled[1](ps, grads, ms, vs, masks, self._decays, self._lrs, scale, eps_term)
            else:
                lr_full, decay_full = self._per_element_hyper()
                _adamw_update(
                    self.flat, self.grad, self.exp_avg, self.exp_avg_sq, self.pmask, decay_full, lr_full,
                    -math.sqrt(bc2) / bc1, eps_term,
                )


@dataclass
class GroupResult:
    """What :func:`train_group` returns: checkpoints of the models that trained to the end, the configs
    that diverged (``config_id -> reason``; none of their checkpoints are kept) and timings."""

    checkpoints: list[Checkpoint]
    diverged: dict[int, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    config_ids: list[int] = field(default_factory=list)
    backend: str = "eager"


def native_available(configs: Sequence[ZooConfig]) -> bool:
    """Whether the whole-step kernel (:func:`fused.group_step`) can train these configurations here: the
    kernels are built, and depth and widths are within its limits (always, for the zoo table)."""
    return (
        fused.available()
        and max(c.mlp.depth for c in configs) <= fused.MAX_LAYERS
        and max(max(c.mlp.hidden) for c in configs) <= fused.max_width()
    )


def choose_backend(configs: Sequence[ZooConfig], n_rows: int, compile: "bool | str" = "auto") -> str:
    """``"native"``, ``"compiled"`` or ``"eager"`` for a group.

    ``"native"`` (the whole-step kernel, :func:`native_available`) wherever it can, unless ``compile`` is
    True. ``compile`` is about the torch formulation, which trains where the kernel cannot: True compiles
    it (and asks for it even where the kernel could train), False never does, ``"auto"`` compiles when the
    cost model expects compilation (~10-20 s) to pay for itself. A function of the configurations, the
    data size and the environment (a C++ compiler), never of timing, so a rebuild makes the same choice."""
    if compile is not True and native_available(configs):
        return "native"
    if compile == "auto":
        compile = _best(_acc_of(configs), configs[0].train.batch_size, n_rows)[1] == "compiled"
    return "compiled" if compile and compile_available() else "eager"


@functools.cache
def _keep_freed_memory() -> None:
    """Make glibc's ``malloc`` keep freed memory in the process (once per process; no-op elsewhere).

    A training step allocates and frees the same few-MB activation buffers every step. By default glibc
    serves such blocks with ``mmap`` and returns them to the system on ``free``, so every step pays
    hundreds of page faults (the kernel zeroes each page again): measured 160-330 minor faults and
    0.2-0.4 ms of system time per step of a 32-model group. Serving them from the heap and not trimming
    it (what jemalloc / tcmalloc do, and what PyTorch's CPU tuning guide recommends them for) removes
    that, 5-15% of a step. The price is that the process keeps its peak heap until it exits, which is
    how training workers behave anyway.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): leave the allocator alone
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 256 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_TOP_PAD, 64 << 20)


class _single_thread:
    """Train on one thread with denormals flushed to zero (restored afterwards), and with freed memory
    kept in the process (:func:`_keep_freed_memory`, process-wide).

    One thread makes results independent of how many worker processes a build uses (a build runs one
    process per core instead); flushing denormals avoids a 10-30x slowdown of the optimiser on tiny
    second moments (values below 1.2e-38 become 0).
    """

    def __enter__(self):
        _keep_freed_memory()
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
        return self

    def __exit__(self, *exc):
        torch.set_flush_denormal(False)
        torch.set_num_threads(self.threads)
        return False


def train_group(
    task: "str | Task",
    configs: "Sequence[ZooConfig] | ModelGroup",
    *,
    max_train_rows: int | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    evaluate: bool = True,
    max_steps_per_epoch: int | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_sets: EvalSets | None = None,
    compile: "bool | str" = "auto",
) -> GroupResult:
    """Train configurations that share a batch size and epoch plan as one batched computation.

    ``configs`` may be a prepared :class:`ModelGroup` (tests use this to tamper with one model).
    ``on_epoch(epoch, n_models)`` is called after every epoch. ``max_steps_per_epoch`` truncates epochs
    (benchmarks only). ``data`` / ``eval_sets`` override :func:`training_data` / :func:`evaluation_data`.
    ``compile``: True, False or "auto" (see :func:`choose_backend`: the whole-step kernel unless True or
    unavailable); the kernel, compiled and eager training agree to float rounding, not bitwise. If
    compilation fails, the group is retrained eagerly from the start.
    """
    t = _as_task(task)
    X, y = data if data is not None else training_data(t, max_train_rows)
    group_in = configs
    cfgs = configs.configs if isinstance(configs, ModelGroup) else list(configs)
    backend = choose_backend(cfgs, len(y), compile)
    if isinstance(configs, ModelGroup) and not configs.use_native and backend == "native":
        backend = "eager"  # a prepared group that was told not to use the kernel
    with _single_thread():
        if backend == "compiled":
            try:
                return _train_group(t, group_in, X, y, on_epoch, evaluate, max_steps_per_epoch, eval_sets, backend)
            except Exception as exc:  # compilation problems surface on the first compiled step
                if isinstance(configs, ModelGroup) or not _is_compile_error(exc):
                    raise
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); training this group eagerly")
                backend = "eager"
        return _train_group(t, group_in, X, y, on_epoch, evaluate, max_steps_per_epoch, eval_sets, backend)


def _is_compile_error(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "compile" in str(exc).lower()


def _train_group(t, configs, X, y, on_epoch, evaluate, max_steps_per_epoch, eval_sets, backend: str) -> GroupResult:
    group = configs if isinstance(configs, ModelGroup) else ModelGroup(configs)
    if X.shape[1] != group.in_features:
        raise ConfigError(f"task {t.name!r} has {X.shape[1]} features, the configurations expect {group.in_features}")
    group.use_native = backend == "native"
    compiled = backend == "compiled"
    if compiled:
        group.enable_compile()
    sets = eval_sets if eval_sets is not None else (evaluation_data(t) if evaluate else {})
    N = len(y)
    shufflers = [torch.Generator().manual_seed(derive_seeds(c.seed)[1]) for c in group.configs]
    batches = _batches(N, group.batch_size)
    if max_steps_per_epoch is not None:
        batches = batches[:max_steps_per_epoch]
    blobs: dict[tuple[int, int], tuple[bytes, dict]] = {}
    train_s = eval_s = 0.0
    for epoch in range(1, group.epochs + 1):
        t0 = time.perf_counter()
        perms = torch.stack([torch.randperm(N, generator=gen) for gen in shufflers])
        for a, b in batches:
            xb, yb = gather_batch(X, y, perms, a, b)
            group.train_step(xb, yb, where=f"epoch {epoch}, rows {a}:{b}", compiled=compiled)
        t1 = time.perf_counter()
        train_s += t1 - t0
        if epoch in group.checkpoint_epochs:
            for g, c in enumerate(group.configs):
                if not bool(group.alive[g]):
                    continue
                model = group.extract(g)
                try:
                    model.check_finite()
                except NonFiniteWeightsError as exc:
                    group.kill([g], f"non-finite weights at epoch {epoch}: {exc}")
                    continue
                blob = model.to_bytes()
                metrics = evaluate_blob(blob, sets) if evaluate else {}
                blobs[(c.config_id, epoch)] = (blob, metrics)
            eval_s += time.perf_counter() - t1
        if on_epoch is not None:
            on_epoch(epoch, group.n_models)
    checkpoints = []
    for c in sorted(group.configs, key=lambda c: c.config_id):
        if c.config_id in group.diverged:
            continue
        for epoch in c.checkpoint_epochs:
            blob, metrics = blobs[(c.config_id, epoch)]
            checkpoints.append(
                Checkpoint(
                    model_id=model_id(t.name, c.config_id, epoch),
                    task=t.name,
                    config=c,
                    epoch=epoch,
                    weights=blob,
                    metrics=metrics,
                )
            )
    return GroupResult(
        checkpoints=checkpoints,
        diverged=dict(group.diverged),
        train_seconds=train_s,
        eval_seconds=eval_s,
        config_ids=sorted(c.config_id for c in group.configs),
        backend=backend,
    )


# --------------------------------------------------------------------------------------------------
# the plain per-model loop (reference and benchmark baseline)
# --------------------------------------------------------------------------------------------------
def train_single(
    config: ZooConfig,
    task: "str | Task",
    *,
    max_train_rows: int | None = None,
    evaluate: bool = True,
    max_steps_per_epoch: int | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_sets: EvalSets | None = None,
) -> list[Checkpoint]:
    """Train one configuration with a plain loop: a real :class:`MLP`, ``torch.optim.AdamW``, and the
    same initial weights and per-epoch row permutations as the batched trainer (dropout masks differ).
    Runs on one thread, like the batched trainer (tiny models gain nothing from more, and a busy machine
    makes idle OpenMP threads spin).

    Returns its checkpoints; training stops early (fewer checkpoints) if the loss becomes non-finite.
    """
    t = _as_task(task)
    X, y = data if data is not None else training_data(t, max_train_rows)
    sets = eval_sets if eval_sets is not None else (evaluation_data(t) if evaluate else {})
    init_seed, shuffle_seed, dropout_seed = derive_seeds(config.seed)
    with torch.random.fork_rng(devices=[]):
        model = MLP(config.mlp)
    model.load_state_dict(init_state_dict(config.mlp, init_seed), strict=True)
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.train.lr, betas=BETAS, eps=ADAM_EPS, weight_decay=config.train.weight_decay
    )
    shuffle = torch.Generator().manual_seed(shuffle_seed)
    batches = _batches(len(y), config.train.batch_size)
    if max_steps_per_epoch is not None:
        batches = batches[:max_steps_per_epoch]
    out: list[Checkpoint] = []
    with _single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(dropout_seed)
        for epoch in range(1, config.train.epochs + 1):
            model.train()
            perm = torch.randperm(len(y), generator=shuffle)
            for a, b in batches:
                idx = perm[a:b]
                loss = F.cross_entropy(model(X[idx]), y[idx])
                if not torch.isfinite(loss):
                    return out
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if epoch in config.checkpoint_epochs:
                model.eval()
                blob = model.to_bytes()
                out.append(
                    Checkpoint(
                        model_id=model_id(t.name, config.config_id, epoch),
                        task=t.name,
                        config=config,
                        epoch=epoch,
                        weights=blob,
                        metrics=evaluate_blob(blob, sets) if evaluate else {},
                    )
                )
    return out
