#!/usr/bin/env python
"""Assemble a reference editor as a Hub-ready folder under ``model_cards/`` (and, optionally, the package copy).

Loads a trained editor (a ``hubedit train --out`` folder), records where its zoo came from (a relative path and
the command that builds it, instead of this machine's absolute path), and writes it with ``save_pretrained``:
``model.safetensors``, ``config.json`` and the generated card with its validation front and plot, plus a
"Test results" section rendered from ``scripts/target_editors.py``'s ``results.json`` (the same editor on the
zoo's test models and on models trained outside the zoo, against the per-model baselines at its exact level).

    python scripts/reference_editors.py --editor runs/targets/prune-adult-priormask --name prune-edit-adult \\
        --zoo-path runs/zoos/adult-small --zoo-command "hubedit zoo build --task adult --preset small" \\
        --results results/targets/prune-adult-priormask/results.json --package
    hubedit publish-editors model_cards --org ORG       # all of them, one repo each
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hubedit import Editor  # noqa: E402
from hubedit.reference import REFERENCE_DIR  # noqa: E402


def test_section(results: dict) -> str:
    """Markdown of a target_editors.py results file: per population, target, editor and baseline JSD."""
    requirement = results["requirement"]
    lines = [f"Measured by `{results['command']}` (this editor, best validation step {results['best_step']}). "
             "Mean JSD to the original on the task's test split; every baseline runs at this editor's exact "
             "per-model level on the same models; ratio = editor / baseline (below 1: the editor is better).", ""]
    for pop in results["populations"]:
        rows = pop["rows"]
        names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
        level = "weights kept" if requirement == "prune" else "kept features"
        header = ["target", level, "editor JSD", "editor acc."] + [f"{n} JSD (ratio)" for n in names]
        lines += [f"**{pop['label']}** ({rows[0]['n_models']} models, original accuracy "
                  f"{rows[0]['original_accuracy']:.4f})", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for r in rows:
            cells = [f"{r['target']:g}", f"{r['level']:.4g}", f"{r['editor_jsd']:.5f}", f"{r['editor_accuracy']:.4f}"]
            cells += [f"{r[n]['jsd']:.5f} ({r[n]['editor_over_baseline']:.2f})" for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def refit_section(selection: dict) -> str:
    """Markdown of a select_refit.py file: mean validation JSD per ridge and target, the chosen ridge."""
    table = selection["per_target"]
    targets = list(next(iter(table.values())))
    how = " with reselect" if selection.get("chosen_reselect") else ""
    if selection.get("chosen_greedy_features"):
        how += (f" and greedy feature selection up to {selection['chosen_greedy_features']} features (the counts "
                "where it is at least as good as the editor's own features there)")
    lines = [f"Chosen by `{selection['command']}`: ridge **{selection['chosen']:g}**{how}, the lowest mean JSD on "
             f"{selection['n_models']} of the zoo's validation models (task's validation split); 'none' is this "
             "editor without the refit.", "", "| ridge | " + " | ".join(targets) + " | mean |", "|" + "---|" * (len(targets) + 2)]
    for ridge, row in table.items():
        lines.append(f"| {ridge} | " + " | ".join(f"{row[t]:.5f}" for t in targets)
                     + f" | {selection['mean_validation_jsd'][ridge]:.5f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editor", required=True)
    ap.add_argument("--name", required=True, help="folder / repo name, e.g. prune-edit-adult")
    ap.add_argument("--zoo-path", required=True, help="the zoo's folder, relative to the repository")
    ap.add_argument("--zoo-command", required=True, help="the command that builds that zoo")
    ap.add_argument("--results", default=None, help="scripts/target_editors.py results.json of this editor")
    ap.add_argument("--refit-selection", default=None,
                    help="scripts/select_refit.py output: the editor refits every edit with the ridge chosen there")
    ap.add_argument("--note", default=None, help="a paragraph for the card: what the editor is fit for, what not")
    ap.add_argument("--out", default=str(HERE.parent / "model_cards"))
    ap.add_argument("--package", action="store_true", help="also copy weights and config to hubedit/reference/NAME")
    ap.add_argument("--replace", action="store_true", help="replace an existing folder of that name")
    args = ap.parse_args(argv)

    editor = Editor.from_pretrained(args.editor)
    selection = json.loads(Path(args.refit_selection).read_text()) if args.refit_selection else None
    if selection is not None:
        editor = editor.with_refit(selection["chosen"], reselect=selection.get("chosen_reselect", False),
                                   greedy_features=selection.get("chosen_greedy_features", 0))
    editor.settings["zoo"] = {"path": args.zoo_path, "built_by": args.zoo_command}
    folder = Path(args.out) / args.name
    if folder.exists() and not args.replace:
        ap.error(f"{folder} exists; pass --replace to write over it")
    sections = {}
    if args.note:
        sections["Fit for"] = args.note
    if selection is not None:
        sections["Refit ridge (chosen on validation)"] = refit_section(selection)
    if args.results:
        sections["Test results"] = test_section(json.loads(Path(args.results).read_text()))
    if folder.exists():
        shutil.rmtree(folder)
    editor.save_pretrained(folder, model_card_kwargs={"repo_id": None, "extra_sections": sections})
    print(f"wrote {folder}")
    if args.package:
        target = REFERENCE_DIR / args.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(folder / name, target / name)
        print(f"copied weights and config to {target}")
    again = Editor.from_pretrained(folder)
    assert all(a.equal(b) for a, b in zip(again.state_dict().values(), editor.state_dict().values()))


if __name__ == "__main__":
    main()
