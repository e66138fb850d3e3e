#!/usr/bin/env python
"""Validation curves of the target-conditioned editor runs side by side (the ablation table of results/targets).

Reads each run's ``train_log.jsonl`` (``hubedit train`` writes one line per step, with the validation front every
``--eval-every`` steps) and its checkpoint's best state (which includes step 0, the untrained editor), and writes
a markdown table: validation objective (mean JSD over the validation targets, lower is better) per evaluated step,
the best step, and the run's settings. Stopped runs count: their rows end where they were stopped.

    python scripts/target_ablations.py --runs runs/targets --out results/targets/ablations.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETTINGS = ("requirement", "variant", "target_range", "lr", "lr_schedule", "steps", "calibration", "calibration_rounds",
            "prior_masks", "feature_importance", "refit", "film", "seed")


def run_rows(folder: Path) -> dict | None:
    log = folder / "train_log.jsonl"
    state = folder / "checkpoint" / "state.json"
    if not log.is_file() or not state.is_file():
        return None
    meta = json.loads(state.read_text())
    run = meta.get("run", {})
    curve = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "val_objective" in rec:
            curve[rec["step"]] = rec["val_objective"]
    best = meta["best"]
    if best["step"] == 0:
        curve[0] = best["objective"]
    return {"name": folder.name, "stopped": "stopped" in folder.parts, "steps_run": meta["step"],
            "best_step": best["step"], "best": best["objective"], "curve": curve, "task": run.get("task"),
            "settings": {k: run.get(k) for k in SETTINGS}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/targets")
    ap.add_argument("--out", default="results/targets/ablations.md")
    args = ap.parse_args(argv)
    root = Path(args.runs)
    rows = [r for f in sorted([*root.glob("*"), *root.glob("stopped/*")]) if f.is_dir() and (r := run_rows(f))]
    steps = sorted({s for r in rows for s in r["curve"]})
    lines = ["# Target-conditioned editors: validation curves of every run", "",
             f"Made by `python scripts/target_ablations.py --runs {args.runs} --out {args.out}`. Validation objective = "
             "mean JSD over the validation targets on the zoo's validation models (task evaluation split); lower is "
             "better; step 0 is the untrained editor (shown where it was the best state). 'stopped': stopped by hand "
             "before its last step (see results/targets/README.md for why).", ""]
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        header = ["run", "settings", "status", *(str(s) for s in steps), "best (step)"]
        lines += [f"## {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in sub:
            st = r["settings"]
            text = ", ".join(f"{k}={v}" for k, v in st.items() if v not in (None, False, 0) and k not in ("seed",))
            cells = [f"{r['curve'][s]:.5f}" if s in r["curve"] else "" for s in steps]
            status = f"stopped at {r['steps_run']}" if r["stopped"] else f"{r['steps_run']} steps"
            lines.append("| " + " | ".join([r["name"], text, status, *cells, f"{r['best']:.5f} ({r['best_step']})"]) + " |")
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
