"""``hubedit quickstart``: the whole path, end to end, with nothing set up and no network.

1. start a Hub: the embedded Hub-compatible server (:class:`hubedit.testing.HubServer`) on a free loopback
   port, storage under ``OUT/hub`` -- or, with ``endpoint`` / ``token`` (or ``HF_TOKEN`` set), a real Hub;
2. build a tiny zoo and publish it as a dataset repo; read it back with ``datasets.load_dataset`` and
   :meth:`Zoo.from_hub` at the pinned commit;
3. train a small demo editor briefly on it (to show training) and publish it (``Editor.push_to_hub``,
   generated card + Pareto plot);
4. load the demo editor back with ``Editor.from_pretrained`` at the pinned commit;
5. publish the reference editor shipped with the package (:mod:`hubedit.reference`, ``prune-edit-adult``,
   trained on a full zoo, unlike the 120-step demo editor) with :func:`hubedit.publish_editors.publish_editors`
   and load it back from the Hub;
6. edit a held-out model (the zoo's test split) with the reference editor -- at a target fraction of weights
   kept when it is target-conditioned -- export it to ONNX and check onnxruntime against torch on the whole
   test split; an installation without the reference editor edits with the demo editor instead (and says so);
7. publish the edited model (weights, config, ONNX, card, Pareto plot: one commit);
8. print what was published, which editor edited the model, and where to look.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_DISABLE_XET`` when it is imported, so
:func:`configure_hub` sets them before anything imports it; :func:`run` does that first. Called in a process
that already imported ``huggingface_hub`` with another endpoint, :func:`run` re-runs itself in a fresh
process (``python -m hubedit quickstart``) instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["run", "configure_hub", "HubTarget", "QUICKSTART"]

#: Sizes of the quickstart (tiny on purpose: about 2-3 minutes on 2 CPU cores).
QUICKSTART: dict[str, Any] = {
    "task": "adult",
    "zoo": {"preset": "tiny", "n_configs": 12, "epochs": 3, "seed": 0},
    "editor": {"requirement": "prune", "variant": "prune-edit", "lam": 0.02, "steps": 120, "models_per_step": 8,
               "points_per_step": 256, "hidden": 32, "layers": 2, "eval_every": 20, "lr": 1e-2, "seed": 0},
    # the shipped reference editor (hubedit/reference/<name>) edits the held-out model; a target-conditioned one at
    # this fraction of weights kept (clipped into its target_range)
    "reference": {"target": 0.2},
}
EMBEDDED_NAMESPACE = "hubedit-quickstart"


@dataclass
class HubTarget:
    """Where the quickstart publishes."""

    endpoint: str
    embedded: bool
    server: Any = None  # the HubServer when embedded
    token: str | None = None
    storage: Path | None = None
    notes: list[str] = field(default_factory=list)


def _hub_imported_elsewhere(endpoint: str) -> bool:
    """``huggingface_hub`` is imported already, with another endpoint (it reads HF_ENDPOINT on import)."""
    if "huggingface_hub" not in sys.modules:
        return False
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/") != endpoint.rstrip("/")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wants_external(endpoint: str | None, token: str | None) -> bool:
    return bool(endpoint or token or os.environ.get("HF_TOKEN"))


def configure_hub(out: Path, *, endpoint: str | None = None, token: str | None = None,
                  port: int | None = None) -> HubTarget:
    """Choose the Hub and set the ``HF_*`` variables (before ``huggingface_hub`` is imported).

    A real (or any external) Hub when ``endpoint`` or ``token`` is given or ``HF_TOKEN`` is set; else the
    embedded server, started on ``port`` (default: a free loopback port) with its storage in ``out/hub``,
    ``HF_HUB_DISABLE_XET=1`` and, unless the user set one, ``HF_HOME=out/hf-home`` (so that the user's own
    cache never mixes with repos of a local server).
    """
    token = token or os.environ.get("HF_TOKEN") or None
    if _wants_external(endpoint, token):
        url = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        os.environ["HF_ENDPOINT"] = url
        if token:
            os.environ["HF_TOKEN"] = token
        return HubTarget(endpoint=url, embedded=False, token=token)
    from .testing.hub_server import HubServer  # stdlib only: does not import huggingface_hub

    storage = out / "hub"
    server = HubServer(storage, port=port or 0).start()
    os.environ["HF_ENDPOINT"] = server.url
    os.environ["HF_HUB_DISABLE_XET"] = "1"  # plain LFS (the embedded server does not speak Xet)
    notes = []
    if os.environ.pop("HF_HUB_OFFLINE", None):
        notes.append("HF_HUB_OFFLINE was set: ignored for this run (the embedded Hub is local)")
    if not os.environ.get("HF_HOME"):
        os.environ["HF_HOME"] = str(out / "hf-home")
    return HubTarget(endpoint=server.url, embedded=True, server=server, storage=storage, notes=notes)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


class _Steps:
    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.k = total, quiet, 0
        self.timings: dict[str, float] = {}
        self._t0 = 0.0
        self._name = ""

    def start(self, name: str, text: str) -> None:
        self.k += 1
        self._name, self._t0 = name, time.perf_counter()
        if not self.quiet:
            print(f"[{self.k}/{self.total}] {text}", flush=True)

    def done(self, text: str = "") -> float:
        dt = time.perf_counter() - self._t0
        self.timings[self._name] = dt
        if not self.quiet:
            print(f"      {text + ' ' if text else ''}({_fmt_s(dt)})", flush=True)
        return dt


def run(out: str | os.PathLike = "hubedit-quickstart", *, endpoint: str | None = None, token: str | None = None,
        keep_server: bool = False, namespace: str | None = None, private: bool | None = None,
        port: int | None = None, progress: bool = True, quiet: bool = False) -> dict:
    """Run the quickstart (see the module docstring); return the summary (also written to ``OUT/quickstart.json``).

    ``endpoint`` / ``token`` (or ``HF_TOKEN``): publish to that Hub instead of the embedded one. ``port``: the
    embedded server's port (default: a free one). ``keep_server``: keep serving the embedded Hub afterwards.
    """
    t_start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not progress or quiet:  # read on import too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if _wants_external(endpoint, token):
        url = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    else:
        port = port or _free_port()
        url = f"http://127.0.0.1:{port}"
    if _hub_imported_elsewhere(url):
        # huggingface_hub fixed its endpoint when it was imported: run in a fresh process whose environment
        # names the right endpoint from the start
        return _rerun_in_subprocess(out, url, endpoint=endpoint, token=token, keep_server=keep_server,
                                    namespace=namespace, private=private, port=port, progress=progress, quiet=quiet)
    hub = configure_hub(out, endpoint=endpoint, token=token, port=port)
    try:
        try:
            summary = _run(out, hub, namespace=namespace, private=private, progress=progress, quiet=quiet,
                           t_start=t_start)
        except Exception as exc:  # the client's HTTP / connection errors: say which Hub, keep the cause
            if type(exc).__module__.split(".")[0] in ("huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2",
                                                       "requests", "urllib3"):
                from .hub import HubError

                raise HubError(f"the Hub at {hub.endpoint} failed during the quickstart: {exc}") from exc
            raise
        if keep_server and hub.embedded:
            _serve_forever(hub)
        return summary
    finally:
        if hub.server is not None:
            hub.server.stop()


def _rerun_in_subprocess(out: Path, url: str, **kw) -> dict:
    cmd = [sys.executable, "-m", "hubedit", "quickstart", "--out", str(out)]
    env = dict(os.environ, HF_ENDPOINT=url)
    if kw.get("endpoint"):
        cmd += ["--endpoint", kw["endpoint"]]
    if kw.get("token"):
        env["HF_TOKEN"] = kw["token"]  # not on the command line, where other users could read it
    if kw.get("port"):
        cmd += ["--port", str(kw["port"])]
        env["HF_HUB_DISABLE_XET"] = "1"
        env.setdefault("HF_HOME", str(out / "hf-home"))
    if kw.get("keep_server"):
        cmd.append("--keep-server")
    if kw.get("namespace"):
        cmd += ["--namespace", kw["namespace"]]
    if kw.get("private"):
        cmd.append("--private")
    if not kw.get("progress", True):
        cmd.append("--no-progress")
    if kw.get("quiet"):
        cmd.append("--quiet")
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        from .errors import HubeditError

        raise HubeditError(f"the quickstart failed in its subprocess (exit code {proc.returncode})")
    return json.loads((out / "quickstart.json").read_text())


def _serve_forever(hub: HubTarget) -> None:
    import threading

    print(f"\nServing the embedded Hub at {hub.endpoint} (storage {hub.storage}); Ctrl-C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopped", flush=True)


def _run(out: Path, hub: HubTarget, *, namespace, private, progress, quiet, t_start) -> dict:
    import torch

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    from . import reference

    cfg = QUICKSTART
    task_name = cfg["task"]
    reference_name = reference.QUICKSTART_EDITOR
    reference_folder = reference.editor_folder(reference_name)
    # hub, zoo, train, editor, [reference], edit, publish
    steps = _Steps(6 if reference_folder is None else 7, quiet)
    if hub.embedded:
        say(f"hubedit quickstart: embedded Hub at {hub.endpoint} (storage {hub.storage}); output in {out}")
    else:
        say(f"hubedit quickstart: Hub at {hub.endpoint}; output in {out}")
    notes = list(hub.notes)
    if reference_folder is None:
        notes.append(f"no reference editor in this installation ({reference.REFERENCE_DIR / reference_name}): "
                     "the held-out model is edited with the small demo editor trained below instead (120 steps on "
                     "a tiny zoo: the card's Pareto position says how it compares with magnitude pruning)")
    for note in notes:
        say(f"  note: {note}")

    # --- 1. the Hub is there
    steps.start("hub", "Hub: checking the endpoint")
    from huggingface_hub import HfApi

    from .hub import HubError, timeouts

    api = HfApi(token=hub.token)
    try:  # the embedded server takes any token; the client wants one for whoami
        with timeouts():  # bounded by HUBEDIT_HUB_TIMEOUT, as every Hub call of the quickstart
            user = api.whoami(token=hub.token or ("hubedit-quickstart" if hub.embedded else None))["name"]
    except Exception as exc:
        raise HubError(f"the Hub at {hub.endpoint} did not answer whoami ({type(exc).__name__}: {exc}); check the "
                       "endpoint and token") from exc
    if namespace is None:
        namespace = EMBEDDED_NAMESPACE if hub.embedded else user
    if private is None:
        private = not hub.embedded  # demo repos on a real Hub stay private unless asked otherwise
    repos = {
        "zoo": f"{namespace}/{task_name}-tiny-zoo",
        "editor": f"{namespace}/{cfg['editor']['variant']}-{task_name}-editor",
        "edited": f"{namespace}/{task_name}-mlp-pruned",
    }
    if reference_folder is not None:
        repos["reference_editor"] = f"{namespace}/{reference_name}"
    steps.done(f"signed in as {user!r}; repos under {namespace}/ ({'private' if private else 'public'})")

    # --- 2. zoo
    from .zoo import Zoo
    from .zoo.build import build_zoo

    zc = cfg["zoo"]
    steps.start("zoo", f"Zoo: building a tiny {task_name} zoo ({zc['n_configs']} configurations x {zc['epochs']} epochs) "
                "and publishing it as a dataset")
    zoo_local = build_zoo(task_name, zc["preset"], out / "zoo", seed=zc["seed"], progress=progress and not quiet,
                          n_configs=zc["n_configs"], epochs=zc["epochs"])
    zoo_commit = zoo_local.push_to_hub(repos["zoo"], private=private, token=hub.token).oid
    import datasets

    with timeouts():
        ds = datasets.load_dataset(repos["zoo"], revision=zoo_commit, token=hub.token)
    n_rows = {k: len(v) for k, v in ds.items()}
    zoo = Zoo.from_hub(repos["zoo"], revision=zoo_commit, token=hub.token)
    steps.done(f"{len(zoo)} checkpoints; {repos['zoo']} @ {zoo_commit[:10]}; load_dataset rows {n_rows}")

    # --- 3-4. editor
    ec = dict(cfg["editor"])
    requirement, variant, lam = ec.pop("requirement"), ec.pop("variant"), ec.pop("lam")
    steps.start("train", f"Editor: training a {variant} editor (lambda={lam}, {ec['steps']} steps) on the zoo")
    editor_dir, trained = _train_editor_in(out, zoo, requirement, variant=variant, lam=lam,
                                           progress=progress and not quiet, say=say, **ec)
    vf = trained.settings["validation_front"]
    steps.done("validation: " + ", ".join(f"weights kept {p['metric']:.3f}, JSD {p['jsd']:.4f}" for p in vf))

    steps.start("editor", f"Editor: publishing to {repos['editor']} and loading it back with Editor.from_pretrained")
    from .editor import Editor

    editor_commit = trained.push_to_hub(repos["editor"], private=private, token=hub.token,
                                        model_card_kwargs={"repo_id": repos["editor"]},
                                        commit_message=f"Upload {variant} editor for {task_name} with hubedit").oid
    editor = Editor.from_pretrained(repos["editor"], revision=editor_commit, token=hub.token)
    same = all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), editor.state_dict().values()))
    if not same:
        raise RuntimeError("the editor loaded back from the Hub differs from the one published")
    steps.done(f"{repos['editor']} @ {editor_commit[:10]}, weights identical")
    edit_with = {"which": "demo", "repo_id": repos["editor"], "commit": editor_commit, "target": None,
                 "target_range": None}

    # --- 5. the reference editor: published from the package, loaded back from the Hub
    reference_commit = None
    if reference_folder is not None:
        steps.start("reference", f"Reference editor: publishing the shipped {reference_name} to "
                                 f"{repos['reference_editor']} and loading it back with Editor.from_pretrained")
        editor, reference_commit, target = _publish_reference_editor(
            reference_folder, namespace, repos["reference_editor"], task_name, cfg["reference"]["target"],
            private=private, token=hub.token)
        target_range = None if editor.target_range is None else list(editor.target_range)
        edit_with = {"which": "reference", "repo_id": repos["reference_editor"], "commit": reference_commit,
                     "target": target, "target_range": target_range}
        at = f"; edits at target {target:g} ({editor.requirement.target_name})" if target is not None else ""
        steps.done(f"{repos['reference_editor']} @ {reference_commit[:10]}, weights identical{at}")

    # --- 6. edit a held-out model, export and check ONNX, write the card
    by = "the demo editor"
    if edit_with["which"] == "reference":
        by = "the reference editor" + ("" if edit_with["target"] is None else f" at target {edit_with['target']:g}")
    steps.start("edit", f"Edit: a held-out model (zoo test split, final checkpoint) with {by}; ONNX export checked "
                        "with onnxruntime; card")
    ckpt = zoo["test"].stage("final")[0]
    model = ckpt.to_module()
    model.source = {**(getattr(model, "source", None) or {}), "zoo": dict(zoo.source)}
    edited = editor.edit(model, target=edit_with["target"])
    task = zoo.task
    from .publish import publish_edited_folder, save_edited

    edited_dir = out / "edited"
    saved = save_edited(edited, edited_dir, task=task, reference=model, editor=editor, repo_id=repos["edited"],
                        license="cc-by-4.0")
    report = saved.report
    onnx_check = _check_onnx(edited_dir / "model.onnx", edited, task)
    steps.done(f"{ckpt.model_id}: weights kept {report['after']['weights_kept']:.3f}, JSD {report['after']['jsd']:.4f}; "
               f"onnxruntime max |diff| {onnx_check['test_max_abs_diff']:.1e} on {onnx_check['test_rows']} test rows")

    # --- 7. publish it
    steps.start("publish", f"Publish: the edited model to {repos['edited']} (card validated by the Hub first, one commit)")
    commit = publish_edited_folder(edited_dir, repos["edited"], private=private, token=hub.token)
    steps.done(f"{repos['edited']} @ {commit.oid[:10]}: {', '.join(saved.files)}")

    after, before = report["after"], report["before"]
    total = time.perf_counter() - t_start
    url = hub.endpoint.rstrip("/")

    def web(repo_id: str, repo_type: str, sha: str) -> str:
        prefix = "datasets/" if repo_type == "dataset" else ""
        if hub.embedded:  # the embedded server has no web pages: link the card at the commit
            return f"{url}/{prefix}{repo_id}/resolve/{sha}/README.md"
        return f"{url}/{prefix}{repo_id}"
    summary = {
        "endpoint": hub.endpoint,
        "embedded": hub.embedded,
        "storage": str(hub.storage) if hub.storage else None,
        "hf_home": os.environ.get("HF_HOME"),
        "out": str(out),
        "repos": {
            "zoo": {"repo_id": repos["zoo"], "repo_type": "dataset", "commit": zoo_commit,
                    "url": web(repos["zoo"], "dataset", zoo_commit)},
            "editor": {"repo_id": repos["editor"], "repo_type": "model", "commit": editor_commit,
                       "url": web(repos["editor"], "model", editor_commit)},
            "edited": {"repo_id": repos["edited"], "repo_type": "model", "commit": commit.oid,
                       "url": web(repos["edited"], "model", commit.oid)},
        },
        "notes": notes,
        "zoo": {"checkpoints": len(zoo), "load_dataset_rows": n_rows},
        "editor": {"validation_front": vf, "folder": str(editor_dir)},
        "edited": {
            "original": ckpt.model_id,
            "editor": edit_with,
            "before": {k: before[k] for k in ("accuracy", "eod", "weights_kept")},
            "after": {k: after[k] for k in ("accuracy", "jsd", "eod", "weights_kept")},
            "pareto": report["pareto"]["sentence"] if report.get("pareto") else None,
            "onnx": {**report["onnx"], **onnx_check},
            "folder": str(edited_dir),
            "card": str(edited_dir / "README.md"),
            "plot": str(edited_dir / "pareto.png"),
        },
        "timings": {k: round(v, 2) for k, v in steps.timings.items()} | {"total": round(total, 2)},
    }
    if reference_commit is not None:
        summary["repos"]["reference_editor"] = {
            "repo_id": repos["reference_editor"], "repo_type": "model", "commit": reference_commit,
            "url": web(repos["reference_editor"], "model", reference_commit)}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
    if not quiet:
        print(_summary_text(summary), flush=True)
    return summary


def _publish_reference_editor(folder: Path, namespace: str, repo_id: str, task_name: str, target: float, *,
                              private: bool | None, token: str | None) -> tuple[Any, str, float | None]:
    """Publish the shipped reference editor in ``folder`` to ``repo_id`` (``namespace/<folder name>``) with
    :func:`hubedit.publish_editors.publish_editors` and load it back from the Hub at that commit.

    Returns ``(editor, commit, target)``: ``target`` is the fraction of weights kept to edit at -- ``target``
    clipped into the editor's ``target_range`` -- or ``None`` for an editor trained for one trade-off."""
    import torch

    from .editor import Editor
    from .errors import ConfigError
    from .publish_editors import publish_editors

    shipped = Editor.from_pretrained(folder)  # checked before anything is published
    s = shipped.settings
    if s["task"] != task_name or s["requirement"] != "prune":
        raise ConfigError(f"the reference editor {folder} is a {s['requirement']!r} editor for {s['task']!r}; the "
                          f"quickstart prunes {task_name!r} models")
    if shipped.lam_range is not None:
        raise ConfigError(f"the reference editor {folder} is lambda-conditioned (lam_range {list(shipped.lam_range)}); "
                          "the quickstart edits with a target-conditioned editor or one trained for one trade-off")
    if shipped.target_range is not None:
        lo, hi = shipped.target_range
        target = min(max(float(target), lo), hi)
    else:
        target = None
    report = publish_editors(folder.parent, namespace, only=[folder.name], private=private, token=token)
    (published,) = report.editors
    if published.repo_id != repo_id:  # publish_editors names the repo after the folder
        raise RuntimeError(f"the reference editor went to {published.repo_id}, expected {repo_id}")
    editor = Editor.from_pretrained(repo_id, revision=published.commit, token=token)
    a, b = shipped.state_dict(), editor.state_dict()
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        raise RuntimeError("the reference editor loaded back from the Hub differs from the one published")
    return editor, published.commit, target


def _train_editor_in(out: Path, zoo, requirement: str, *, say, **train_kwargs) -> tuple[Path, Any]:
    """Train the quickstart's editor in ``out/editor``, resuming the run there when it is this one (a rerun); an
    earlier run of other settings (another Hub's zoo, other sizes) is kept, and this one trains in the first
    ``out/editor-N`` free for it. Returns ``(folder, editor)``."""
    from .train import train_editor
    from .train.loop import NotResumableError

    folder = out / "editor"
    for n in range(2, 1000):
        try:
            return folder, train_editor(zoo, requirement, out=folder, resume=True, **train_kwargs)
        except (NotResumableError, FileExistsError):  # raised before anything is written
            kept, folder = folder, out / f"editor-{n}"
            say(f"      note: {kept} holds an earlier run of other settings, kept as it is; this one trains in "
                f"{folder}")
    raise FileExistsError(f"{out} holds 999 editor folders of earlier runs; give the quickstart another --out")


def _check_onnx(path: Path, edited, task) -> dict:
    """onnxruntime on the task's whole test split (only the kept columns) against torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    X, _, _ = task.split("test")
    kept = edited.kept_features
    kept = list(range(X.shape[1])) if kept is None else (kept or [0])  # as save_edited exported it
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"features": X[:, kept].numpy().astype(np.float32)})
    with torch.no_grad():
        ref = edited.predict_proba(X).numpy()
    diff = float(np.abs(probs.astype(np.float64) - ref).max())
    agree = float((probs.argmax(-1) == ref.argmax(-1)).mean())
    if not diff < 1e-4:
        from .export.onnx import OnnxVerificationError

        raise OnnxVerificationError(f"onnxruntime and torch differ by {diff:.3g} on the test split", diff)
    return {"test_rows": int(len(X)), "test_max_abs_diff": diff, "test_label_agreement": agree}


def _summary_text(s: dict) -> str:
    r, e = s["repos"], s["edited"]
    b, a = e["before"], e["after"]
    t = s["timings"]
    by = e["editor"]
    if by["which"] == "reference":
        at = "" if by["target"] is None else f" at target {by['target']:g} (fraction of weights kept)"
        edited_by = f"the reference editor {by['repo_id']}{at}"
    else:
        edited_by = f"the demo editor {by['repo_id']} (no reference editor in this installation)"
    reference_line = []
    if "reference_editor" in r:
        ref = r["reference_editor"]
        reference_line = [f"  editor  model   {ref['repo_id']:<44} @ {ref['commit'][:10]}  (reference editor shipped "
                          "with hubedit; card)"]
    lines = [
        "",
        f"hubedit quickstart finished in {_fmt_s(t['total'])}"
        + (f" -- embedded Hub at {s['endpoint']}" if s["embedded"] else f" -- Hub {s['endpoint']}"),
        "",
        "Published (one commit each):",
        f"  zoo     dataset {r['zoo']['repo_id']:<44} @ {r['zoo']['commit'][:10]}  ({s['zoo']['checkpoints']} checkpoints)",
        f"  editor  model   {r['editor']['repo_id']:<44} @ {r['editor']['commit'][:10]}  (demo editor trained here; card + "
        "validation Pareto plot)",
        *reference_line,
        f"  edited  model   {r['edited']['repo_id']:<44} @ {r['edited']['commit'][:10]}  (safetensors, ONNX, card, Pareto plot)",
        "",
        f"Edited model ({e['original']}, test split), edited by {edited_by}:",
        f"  accuracy          {b['accuracy']:.4f} -> {a['accuracy']:.4f}",
        f"  weights kept      {b['weights_kept']:.4f} -> {a['weights_kept']:.4f}",
        f"  JSD to original   {a['jsd']:.5f}",
        f"  equalised odds    {b['eod']:.4f} -> {a['eod']:.4f}",
        f"  ONNX              {e['onnx']['file']}: onnxruntime vs torch on {e['onnx']['test_rows']} test rows, max |diff| "
        f"{e['onnx']['test_max_abs_diff']:.2e}; {e['onnx']['n_zero_weights']}/{e['onnx']['n_weights']} weights zero",
        f"  Pareto position   {e['pareto']}",
        "",
        "Timings: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in t.items() if k != "total"),
        "",
        "Where to look:",
        f"  card          {e['card']}",
        f"  Pareto plot   {e['plot']}",
        f"  edited model  {e['folder']}/ (model.safetensors, model.onnx, config.json, metrics.json)",
        f"  editor        {s['editor']['folder']}/ (README.md, pareto.png, config.json)",
        f"  summary       {s['out']}/quickstart.json",
        f"  repos         {r['edited']['url']}",
        f"                {r['editor']['url']}",
        *([f"                {r['reference_editor']['url']}"] if "reference_editor" in r else []),
        f"                {r['zoo']['url']}",
    ]
    if s["embedded"]:
        lines += [
            f"                (served while this command runs; serve them again with: python -m hubedit.testing.hub_server "
            f"--root {s['storage']} --port PORT, or rerun with --keep-server)",
            f"  Hub cache     {s['hf_home']}",
            "",
            "Next: the same against a real Hub: hubedit quickstart --endpoint https://huggingface.co --token hf_...",
        ]
    return "\n".join(lines)
