"""``hubedit quickstart``, ``hubedit card`` and ``hubedit publish-editors``.

Nothing here imports ``huggingface_hub`` at import time: ``hubedit quickstart`` must set ``HF_ENDPOINT``
(the embedded Hub's port) before the client is imported, which :func:`hubedit.quickstart.run` does first.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "quickstart",
        help="the whole path offline: embedded Hub, tiny zoo, editor, edit, ONNX, published card (~2-3 min)",
        description="Start a Hub (the embedded loopback server unless --endpoint/--token or HF_TOKEN says otherwise), "
        "build and publish a tiny zoo, train and publish a small demo editor, publish the reference editor shipped "
        "with hubedit (prune-edit-adult) and load it back, edit a held-out model with it (the demo editor where the "
        "installation ships none), export and verify ONNX, publish the edited model with its generated card, and "
        "print where to look.",
    )
    q.add_argument("--out", default="hubedit-quickstart", help="output folder (default: ./hubedit-quickstart)")
    q.add_argument("--endpoint", default=None, help="a real Hub (e.g. https://huggingface.co); needs a write token")
    q.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN; its presence selects a real Hub)")
    q.add_argument("--namespace", default=None, help="user or org for the repos (default: the token's user)")
    q.add_argument("--private", action="store_true", default=None,
                   help="make the repos private (the default on a real Hub)")
    q.add_argument("--keep-server", action="store_true", help="keep serving the embedded Hub afterwards (Ctrl-C stops)")
    q.add_argument("--port", type=int, default=None, help="port of the embedded Hub (default: a free one)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--quiet", action="store_true", help="print only errors (the summary goes to OUT/quickstart.json)")
    q.set_defaults(func=_quickstart)

    c = sub.add_parser(
        "card",
        help="(re)generate the model card and Pareto plot of a saved edited model",
        description="Re-render README.md and pareto.png of an edited-model folder (written by `hubedit edit --push`, "
        "EditedMLP.save_pretrained or the quickstart) from its config.json and metrics.json. With --reference, first "
        "recompute the metrics (before/after, Pareto position) from the folder's weights and the original model.",
    )
    c.add_argument("folder", help="edited-model folder (model.safetensors, config.json, metrics.json)")
    c.add_argument("--reference", default=None, help="the original model (.safetensors) to recompute the metrics")
    c.add_argument("--editor", default=None, help="the editor (folder or repo id) for its validation front")
    c.add_argument("--editor-revision", default=None)
    c.add_argument("--repo-id", default=None, help="repo id to name in the card's usage snippets")
    c.add_argument("--revision", default=None, help="revision to name in the card's usage snippets")
    c.add_argument("--license", default=None)
    c.add_argument("--no-baselines", action="store_true", help="with --reference: skip the baselines")
    c.set_defaults(func=_card)

    p = sub.add_parser(
        "publish-editors",
        help="publish every editor folder under FOLDER to ORG/<folder name> (one repo, one commit each)",
        description="Find the editor folders directly under FOLDER (config.json naming a requirement, and "
        "model.safetensors; other subfolders are skipped and listed), check the org and every repo id and load every "
        "editor (Editor.from_pretrained validates it) before the first push, then publish each with "
        "Editor.push_to_hub to ORG/<folder name> (weights, config, generated card and Pareto plot). The token is "
        "HF_TOKEN's (or the cached login's); the Hub HF_ENDPOINT's.",
    )
    p.add_argument("folder", help="folder holding one subfolder per editor (e.g. model_cards)")
    p.add_argument("--org", required=True, help="user or organisation to publish under")
    p.add_argument("--private", action="store_true", default=None, help="create the repos private")
    p.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (created where missing)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="publish only these editor folders")
    p.add_argument("--dry-run", action="store_true", help="check everything and list what would be published")
    p.set_defaults(func=_publish_editors)


def _quickstart(args: argparse.Namespace) -> int:
    from ..quickstart import run  # sets HF_* before huggingface_hub is imported

    run(args.out, endpoint=args.endpoint, token=args.token, keep_server=args.keep_server, namespace=args.namespace,
        private=args.private, port=args.port, progress=not args.no_progress, quiet=args.quiet)
    return 0


def _card(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..publish import build_report, render_card

    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder / 'config.json'} not found: not an edited-model folder")
    if args.reference:
        from ..editor import Editor
        from ..mlp import MLP
        from ..publish import load_edited
        from ..tasks import load_task

        edited = load_edited(folder)
        config = json.loads((folder / "config.json").read_text())
        edited.record = config.get("edit_record") or edited.record
        task = load_task(edited.record["task"])
        reference = MLP.load(args.reference)
        editor = None
        if args.editor:  # a folder, or a repo id; a mistyped path is an error, not a Hub lookup
            from ..hub import local_folder_or_repo_id

            editor_folder = local_folder_or_repo_id(args.editor, "editor")
            editor = Editor.from_pretrained(editor_folder or args.editor, revision=args.editor_revision)
        old = {}
        if (folder / "metrics.json").is_file():
            old = json.loads((folder / "metrics.json").read_text())
        report = build_report(edited, task, reference, editor=editor, compute_baselines=not args.no_baselines)
        if old.get("onnx"):
            report["onnx"] = old["onnx"]
        (folder / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    render_card(folder, repo_id=args.repo_id, revision=args.revision, license=args.license)
    print(f"card written to {folder / 'README.md'}")
    return 0


def _publish_editors(args: argparse.Namespace) -> int:
    from ..publish_editors import publish_editors

    def published(item) -> None:
        print(f"published {item.name:<24} {item.repo_id} @ {item.commit}", flush=True)

    report = publish_editors(args.folder, args.org, private=args.private, revision=args.revision, only=args.only,
                             dry_run=args.dry_run, on_published=published)
    for skipped in report.skipped:
        print(f"skipped   {skipped.folder.name:<24} {skipped.reason}")
    if report.dry_run:
        for item in report.editors:
            print(f"would publish {item.name:<20} -> {item.repo_id}"
                  f"{' (branch ' + args.revision + ')' if args.revision else ''}: {item.describe()}")
        print(f"dry run: {len(report.editors)} editor(s) checked, nothing published")
    else:
        print(f"{len(report.editors)} editor(s) published under {args.org}/")
    return 0
