"""Editor training on ``accelerate``: ``loss = JSD(f_theta, f_theta') + lambda * R(theta')`` (paper eq. 14).

Each step draws zoo models (one global draw, split across processes) and data points from the task's
*editing* split, edits the models with soft (straight-through) masks, and back-propagates through the
edited models' outputs. Every ``eval_every`` steps the editor is scored with hard edits on the zoo's
validation split and the task's *evaluation* split; the best state (by the same objective) is kept.
Runs unchanged under ``accelerate launch --num_processes N`` (data parallel over zoo models).

Checkpoints are safetensors (editor and optimizer tensors) plus JSON (step, best score): resuming never
unpickles anything, and the per-step sampling is a function of (seed, step), so a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Batch

from ..editor.editing import evaluate_edits, refit_edit, run_edit, score
from ..editor.editor import Editor
from ..errors import ConfigError
from ..graph import mlp_to_graph
from .sampling import sample_lambdas, sample_models, sample_points, step_generator


@dataclass
class EditorTrainingConfig:
    """Hyper-parameters of editor training (hubedit/DESIGN.md reference values)."""

    requirement: str
    variant: str | None = None
    lam: float | None = None
    lam_range: tuple[float, float] | None = None
    target_range: tuple[float, float] | None = None  # target-conditioned: loss = JSD at a target met exactly
    preference: tuple[float, float] | None = None  # (r_jsd, r_requirement) of scalarisation "epo" / "linear"
    scalarisation: str = "lambda"  # "lambda": JSD + lam * R; "epo" / "linear": hubedit.train.scalarisation
    epo_eps: float = 1e-4
    steps: int = 1000
    models_per_step: int = 32
    points_per_step: int = 512
    lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": decay to lr_min_ratio * lr over the run, after warmup_steps
    warmup_steps: int = 0
    lr_min_ratio: float = 0.05
    edge_hidden: int | None = None  # metanetwork edge width (default: hidden // 2)
    film: bool = False  # the condition also scales and shifts every layer's node representations
    calibration: int = 0  # points of the editing split whose per-weight features the editor reads (0: none)
    calibration_rounds: int = 0  # target-conditioned pruning: rounds of iterative saliency pruning as features
    prior_masks: bool = False  # masks from the calibration prior alone (not learned); the editor learns the edit
    feature_importance: bool = False  # data minimisation: permutation importance on the calibration batch as prior
    refit: float | None = None  # ridge: every edit refit to the original on the calibration batch, in training too
    weight_decay: float = 1e-3
    grad_clip: float = 10.0
    hidden: int = 64
    layers: int = 4
    temperature: float = 1.0
    eval_every: int = 100
    eval_lambdas: tuple[float, ...] = ()  # lambda grid of validation for conditioned editors
    zoo_fraction: float = 1.0  # sample-efficiency studies: train on a fraction of the zoo's train split
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.scalarisation not in ("lambda", "epo", "linear"):
            raise ConfigError(f"scalarisation must be 'lambda', 'epo' or 'linear', got {self.scalarisation!r}")
        if (self.scalarisation == "lambda") != (self.preference is None):
            raise ConfigError(f"scalarisation {self.scalarisation!r} "
                              + ("needs a preference (r_jsd, r_requirement)" if self.preference is None
                                 else f"takes no preference, got {self.preference!r}; use scalarisation 'epo' or 'linear'"))
        if sum(v is not None for v in (self.lam, self.lam_range, self.target_range, self.preference)) != 1:
            raise ConfigError("give exactly one of lam, lam_range, target_range or preference (with scalarisation "
                              "'epo' / 'linear')")
        if self.preference is not None:
            from .scalarisation import check_preference

            check_preference(self.preference, 2)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or not 0 <= self.lr_min_ratio <= 1:
            raise ConfigError(f"warmup_steps must be >= 0 and lr_min_ratio in [0, 1], got {self.warmup_steps}, "
                              f"{self.lr_min_ratio}")
        if not 0 < self.zoo_fraction <= 1:
            raise ConfigError(f"zoo_fraction must be in (0, 1], got {self.zoo_fraction}")
        if self.refit is not None and not (self.calibration and self.refit > 0):
            raise ConfigError(f"refit needs a calibration batch and a ridge > 0, got calibration={self.calibration}, "
                              f"refit={self.refit}")
        if self.steps < 1 or self.models_per_step < 1 or self.points_per_step < 1:
            raise ConfigError("steps, models_per_step and points_per_step must be positive")


def _graphs(split) -> list:
    return [mlp_to_graph(ckpt.to_module()) for ckpt in split]


def _default_eval_lambdas(lam_range) -> tuple[float, ...]:
    lo, hi = math.log(lam_range[0]), math.log(lam_range[1])
    return tuple(float(math.exp(lo + (hi - lo) * k / 4)) for k in range(5))


def lr_factor(cfg: EditorTrainingConfig, step: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then constant or cosine decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _objective(metric: torch.Tensor, jsd: torch.Tensor, lam: float, scale: float) -> float:
    return float(jsd.mean() + lam * (metric / scale).mean())


RESUMABLE_CHANGES = ("steps",)  # what a resumed run may change: train for more (or as many) steps
CHECKPOINT_DIR = "checkpoint"  # in ``out``: the run's checkpoint (state.json, editor / optimizer / best tensors)
LOG_NAME = "train_log.jsonl"  # in ``out``: one JSON line per step
EDITOR_FILES = ("config.json", "model.safetensors", "README.md", "pareto.png")  # in ``out``: save_pretrained's


def has_checkpoint(out: str | os.PathLike) -> bool:
    """``out`` holds a run's checkpoint that ``resume=True`` continues (``checkpoint/state.json``)."""
    return (Path(out) / CHECKPOINT_DIR / "state.json").is_file()


def check_out_folder(out: str | os.PathLike, resume: bool) -> None:
    """Refuse an output folder where training would overwrite an earlier run's files, before anything is built.

    Without ``resume``, ``out`` must hold none of them: a checkpoint, a (non-empty) training log, an editor.
    With ``resume``, a checkpoint is continued; without one the run starts afresh, which may replace the log
    and checkpoint files of a run stopped before its first checkpoint -- but not an editor. Raises
    :class:`FileExistsError` naming what is there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"the output folder {out} is a file; give a new folder, or an earlier run's to resume")
    if not out.is_dir() or (resume and has_checkpoint(out)):
        return
    editor = [name for name in EDITOR_FILES if (out / name).exists() or (out / name).is_symlink()]
    if resume:
        if editor:
            raise FileExistsError(
                f"cannot resume in {out}: it holds an editor ({', '.join(editor)}) but no checkpoint to continue from "
                f"({CHECKPOINT_DIR}/state.json); training afresh would overwrite it. Train into another folder, or "
                "move the editor away first"
            )
        return
    ckpt, log = out / CHECKPOINT_DIR, out / LOG_NAME
    found = list(editor)
    if log.is_symlink() or (log.exists() and (not log.is_file() or log.stat().st_size > 0)):
        found.insert(0, LOG_NAME)
    if ckpt.is_symlink() or (ckpt.exists() and (not ckpt.is_dir() or any(ckpt.iterdir()))):
        found.insert(0, f"{CHECKPOINT_DIR}/" + (" (a resumable run)" if has_checkpoint(out) else ""))
    if found:
        raise FileExistsError(
            f"{out} already holds a training run's files: {', '.join(found)}; training afresh would overwrite them. "
            "Pass --resume (resume=True) to continue that run, or train into another folder"
        )


def _run_settings(cfg: EditorTrainingConfig, zoo, world: int) -> dict:
    """What makes a run this run, as JSON: every training setting but the step count, the task, the zoo and the
    number of processes (the per-step draw of zoo models depends on it). Recorded in each checkpoint."""
    settings: dict[str, Any] = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    source = dict(zoo.source)
    if "path" in source:
        source["path"] = str(Path(source["path"]).resolve())  # the same folder, however it was spelled
    settings.update(task=zoo.task_name, zoo=source, processes=world)
    return json.loads(json.dumps(settings, default=str))  # JSON's view: tuples are lists


class NotResumableError(ConfigError):
    """``resume=True`` met a checkpoint that these settings cannot continue (another run's, or unreadable);
    raised before anything is built or written."""


def _check_same_run(ckpt_dir: Path, current: dict) -> None:
    """Refuse to resume the run checkpointed in ``ckpt_dir`` with other settings: the output would carry the
    new settings' labels over the old run's weights and validation front."""
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotResumableError(f"cannot resume: {ckpt_dir / 'state.json'} does not read as JSON ({exc})") from exc
    recorded = state.get("run") if isinstance(state, dict) else None
    if not isinstance(recorded, dict):
        raise NotResumableError(
            f"cannot resume from {ckpt_dir}: the checkpoint does not record its run's settings (an older hubedit "
            "wrote it), so a resumed run could not be checked to be the same run; train afresh in a new --out folder"
        )
    differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differ:
        changes = "; ".join(f"{k}: {recorded.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differ)
        raise NotResumableError(
            f"--resume continues the run checkpointed in {ckpt_dir}, but these settings differ from it: {changes}. "
            "Resume with the run's own settings (only the number of steps may change), or train afresh in a new "
            "--out folder"
        )


def _save_checkpoint(folder: Path, editor: Editor, optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "editor.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in editor.state_dict().items()}, str(tmp))
    os.replace(tmp, folder / "editor.safetensors")
    opt_state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in opt_state["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val.contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    save_file(tensors, str(folder / "optimizer.safetensors.tmp"))
    os.replace(folder / "optimizer.safetensors.tmp", folder / "optimizer.safetensors")
    meta = dict(state, optimizer_scalars=scalars, param_groups=opt_state["param_groups"])
    (folder / "state.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(folder / "state.json.tmp", folder / "state.json")


def _load_checkpoint(folder: Path, editor: Editor, optimizer) -> dict:
    from safetensors.torch import load_file

    from ..editor.editor import _load_strict

    _load_strict(editor, folder / "editor.safetensors")
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    for name, v in meta.pop("optimizer_scalars").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def train_editor(
    zoo,
    requirement: str,
    *,
    variant: str | None = None,
    lam: float | None = None,
    lam_range: tuple[float, float] | None = None,
    target_range: tuple[float, float] | None = None,
    preference: tuple[float, float] | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    accelerator=None,
    progress: bool = True,
    log: list | None = None,
    **hyper: Any,
) -> Editor:
    """Train an editor on ``zoo`` (a :class:`~hubedit.zoo.Zoo`) for ``requirement``.

    Give ``lam`` for one trade-off, ``lam_range=(low, high)`` for a lambda-conditioned editor that
    takes lambda at edit time, or ``target_range=(low, high)`` for a target-conditioned editor: each model of
    a step gets a target level drawn from the range (fraction of weights kept, log-uniform; number of kept
    features, uniform), the masks keep exactly that much (top-k with a straight-through gradient) and the loss
    is the JSD alone; validation scores a grid of targets. Other keyword arguments are :class:`EditorTrainingConfig` fields. With
    ``out``, the best editor is saved there (``save_pretrained`` layout) and checkpoints go to
    ``out/checkpoint`` (``resume=True`` continues from it, with the same settings but ``steps``; without a
    checkpoint there it starts afresh). A folder that holds an earlier run's files is refused with
    :class:`FileExistsError` unless ``resume`` continues that run (:func:`check_out_folder`), before anything
    is trained. Returns the best editor (on every process).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    cfg = EditorTrainingConfig(
        requirement=requirement, variant=variant, lam=lam,
        lam_range=None if lam_range is None else tuple(float(v) for v in lam_range),
        target_range=None if target_range is None else tuple(float(v) for v in target_range),
        preference=None if preference is None else tuple(float(v) for v in preference), **hyper,
    )
    cfg.validate()
    if out is not None:
        check_out_folder(out, resume)  # on every process, before any of them writes
    if accelerator is None:
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    run = _run_settings(cfg, zoo, world)
    ckpt_dir = Path(out) / CHECKPOINT_DIR if out is not None else None
    resuming = bool(resume and out is not None and has_checkpoint(out))
    if resuming:
        _check_same_run(ckpt_dir, run)  # before anything is built or written
    if out is not None:
        accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    torch.manual_seed(cfg.seed)
    task = zoo.task
    train_split = zoo["train"]
    n_train = max(1, int(round(cfg.zoo_fraction * len(train_split))))
    # the fraction is a fixed, seeded subset so that sample-efficiency runs are nested and reproducible
    order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    train_graphs = _graphs([train_split[i] for i in sorted(order[:n_train])])
    if not len(zoo["validation"]):
        raise ConfigError("the zoo has no validation models: model selection needs them")
    # validation runs on the main process only; the others receive its result
    val_graphs = _graphs(zoo["validation"]) if accelerator.is_main_process else []
    Xe, ye, se = task.split("editing")
    Xv, yv, sv = task.split("evaluation")

    editor = Editor(
        requirement=requirement, task=zoo.task_name, variant=variant, lam=cfg.lam,
        lam_range=None if cfg.lam_range is None else list(cfg.lam_range), feature_schema=task.schema(),
        target_range=None if cfg.target_range is None else list(cfg.target_range),
        preference=None if cfg.preference is None else list(cfg.preference),
        metanet={"hidden": cfg.hidden, "layers": cfg.layers, "edge_hidden": cfg.edge_hidden,
                 **({"film": True} if cfg.film else {}),
                 **({"calibration": cfg.calibration} if cfg.calibration else {}),
                 **({"calibration_rounds": cfg.calibration_rounds} if cfg.calibration_rounds else {}),
                 **({"prior_masks": True} if cfg.prior_masks else {}),
                 **({"feature_importance": True} if cfg.feature_importance else {})},
        temperature=cfg.temperature, refit=cfg.refit,
        zoo=dict(zoo.source) or {"task": zoo.task_name}, training={},
    )
    req = editor.requirement
    scale = req.metric_scale(task.n_features)
    optimizer = torch.optim.AdamW(editor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(editor, optimizer)
    device = accelerator.device
    target_range = editor.target_range
    if target_range is not None:
        eval_lams = tuple(cfg.eval_lambdas) or req.target_grid(target_range)  # validation targets
    elif cfg.preference is not None:
        eval_lams = (None,)  # one point: the editor's own trade-off
    else:
        eval_lams = cfg.eval_lambdas or ((cfg.lam,) if cfg.lam is not None else _default_eval_lambdas(cfg.lam_range))
    scal = None
    if cfg.preference is not None:
        from .scalarisation import Scalarisation

        scal = Scalarisation(cfg.scalarisation, cfg.preference, eps=cfg.epo_eps)

    start_step, best = 0, {"objective": math.inf, "step": -1, "front": []}
    if resuming:
        meta = _load_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer)
        start_step, best = meta["step"], meta["best"]
    if out is not None and accelerator.is_main_process:
        Path(out).mkdir(parents=True, exist_ok=True)
        log_path = Path(out) / LOG_NAME
        if start_step == 0:
            log_path.write_text("")  # a fresh run starts a fresh log
        elif log_path.is_file():  # keep the lines of the steps the checkpoint covers
            kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= start_step]
            log_path.write_text("".join(ln + "\n" for ln in kept))
    best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    if best["step"] >= 0 and ckpt_dir is not None and (ckpt_dir / "best.safetensors").is_file():
        from safetensors.torch import load_file

        best_state = load_file(str(ckpt_dir / "best.safetensors"))

    def validate() -> tuple[float, list[dict]]:
        """Score the editor on the validation models, on the main process; every process gets the result."""
        result = [_validate() if accelerator.is_main_process else None]
        if world > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(result, from_process=0)  # the other processes wait here
        return result[0]

    def _validate() -> tuple[float, list[dict]]:
        net = accelerator.unwrap_model(model)
        net.eval()
        points, objective = [], 0.0
        for lam_v in eval_lams:
            if target_range is not None:  # the target is met exactly: the objective is the JSD
                metric, jsd = evaluate_edits(net.metanet, req, val_graphs, Xv, yv, sv, lam=None, lam_range=None,
                                             target=lam_v, target_range=target_range, refit=cfg.refit)
                points.append({"target": lam_v, "metric": float(metric.mean()), "jsd": float(jsd.mean())})
                objective += float(jsd.mean()) / len(eval_lams)
                continue
            if scal is not None:  # weighted Chebyshev value: on a front crossing the preference ray, its minimiser
                metric, jsd = evaluate_edits(net.metanet, req, val_graphs, Xv, yv, sv, lam=None, lam_range=None)
                r_jsd, r_req = cfg.preference  # is the exact Pareto optimal point EPO aims at
                points.append({"preference": list(cfg.preference), "metric": float(metric.mean()), "jsd": float(jsd.mean())})
                objective = max(r_jsd * float(jsd.mean()), r_req * float(metric.mean()) / scale)
                continue
            metric, jsd = evaluate_edits(net.metanet, req, val_graphs, Xv, yv, sv, lam=lam_v, lam_range=cfg.lam_range)
            points.append({"lam": lam_v, "metric": float(metric.mean()), "jsd": float(jsd.mean())})
            objective += _objective(metric, jsd, lam_v, scale) / len(eval_lams)
        net.train()
        return objective, points

    history = log if log is not None else []
    bar = tqdm(total=cfg.steps, initial=start_step, disable=not progress or not accelerator.is_local_main_process,
               desc=f"train {requirement} editor", unit="step")
    t0 = time.perf_counter()
    if start_step == 0:  # the initial state is a candidate too (an editor may start from a strong prior)
        objective, front = validate()
        best = {"objective": objective, "step": 0, "front": front}
        if out is not None and accelerator.is_main_process:  # step 0 of the log: the untrained editor
            with open(Path(out) / LOG_NAME, "a") as fh:
                fh.write(json.dumps({"step": 0, "val_objective": objective, "val_front": front}) + "\n")
    model.train()
    for step in range(start_step, cfg.steps):
        idx = sample_models(len(train_graphs), cfg.models_per_step, cfg.seed, step, rank, world)
        batch = Batch.from_data_list([train_graphs[i] for i in idx]).to(device)
        pts = sample_points(len(ye), cfg.points_per_step, cfg.seed, step, rank)
        x, y, s = Xe[pts].to(device), ye[pts].to(device), se[pts].to(device)
        m = len(idx)
        target_t = None
        if target_range is not None:
            target_t = req.sample_targets(m, target_range, step_generator(cfg.seed, step, 201 + rank)).to(device)
            lam_t = torch.zeros(m, device=device)  # the target replaces the requirement term
        else:
            lam_t = (sample_lambdas(m, cfg.lam_range, cfg.seed, step, rank) if cfg.lam_range is not None
                     else torch.full((m,), float(cfg.lam if cfg.lam is not None else 1.0))).to(device)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step)
        # through the prepared (possibly DDP-wrapped) module, so that gradients are synchronised
        _, edit = run_edit(model, req, batch, lam=lam_t, lam_range=cfg.lam_range, hard=False,
                           target=target_t, target_range=target_range)
        if cfg.refit is not None:  # trained through the refit the editor applies at edit time
            calib = accelerator.unwrap_model(model).metanet.calibration_inputs
            edit = refit_edit(batch, edit, calib[:, : x.shape[1]], cfg.refit)
        outcome, jsd = score(req, batch, edit, x, y, s)
        penalty = req.penalty(outcome)
        optimizer.zero_grad(set_to_none=True)
        if scal is None:
            loss = (jsd + lam_t * penalty).mean()
        else:  # objectives (JSD, requirement); with several processes the weights come from averaged gradients
            loss = scal.combine(torch.stack([jsd.mean(), penalty.mean()]), model.parameters(),
                                reduce=(lambda t: accelerator.reduce(t, "mean")) if world > 1 else None)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        terms = accelerator.gather(torch.stack([loss.detach(), jsd.detach().mean(), penalty.detach().mean()]).reshape(1, 3))
        terms = terms.reshape(-1, 3).mean(0)
        record = {"step": step + 1, "loss": float(terms[0]), "jsd": float(terms[1]), "requirement": float(terms[2])}
        if scal is not None and scal.last is not None:
            record.update(scalarisation_mode=scal.last.mode, mu=float(scal.last.mu),
                          weights=[float(w) for w in scal.last.weights])
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", jsd=f"{record['jsd']:.4f}", R=f"{record['requirement']:.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            objective, front = validate()
            record.update(val_objective=objective, val_front=front)
            if objective < best["objective"]:
                best = {"objective": objective, "step": step + 1, "front": front}
                best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            if ckpt_dir is not None:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    from safetensors.torch import save_file

                    _save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer,
                                     {"step": step + 1, "best": best, "run": run})
                    save_file({k: v.contiguous() for k, v in best_state.items()}, str(ckpt_dir / "best.safetensors"))
        history.append(record)
        if ckpt_dir is not None and accelerator.is_main_process:
            with open(Path(out) / LOG_NAME, "a") as fh:
                fh.write(json.dumps(record) + "\n")
    bar.close()

    final = accelerator.unwrap_model(model)
    final.load_state_dict(best_state, strict=True)
    final.eval()
    final.settings["validation_front"] = best["front"]
    final.settings["training"] = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "best_step": best["step"],
        "best_objective": best["objective"],
        "train_models": len(train_graphs),
        "processes": world,
        "seconds": time.perf_counter() - t0,
    }
    if out is not None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final.save_pretrained(out)
    return final

