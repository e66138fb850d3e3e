#!/usr/bin/env python
"""Mean and standard deviation over editor seeds of `scripts/target_editors.py` results (one folder per seed).

The baselines are the same runs in every seed's file (same models, same levels, cached), so the spread is the
editors'. Per population and target: the editor's mean JSD (mean ± sd over seeds of the per-seed mean over
models) and, per baseline, the ratio editor / baseline (mean ± sd over seeds). Where the files hold per-model
results, a second table per population gives what a mean can hide: per baseline, the geometric mean over models
of the per-model ratio editor JSD / baseline JSD, and the share of models where the editor's JSD is lower (each
mean ± sd over seeds).

    python scripts/target_seeds.py results/targets/prune-adult-refit results/targets/seeds/prune-adult-s1-refit \\
        results/targets/seeds/prune-adult-s2-refit --out results/targets/seeds/prune-adult.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubedit.evaluation.seeds import format_mean_sd  # noqa: E402


def summary(runs: list[dict]) -> str:
    lines = [f"{len(runs)} editor seeds: " + ", ".join(f"`{r['editor']}`" for r in runs), ""]
    for p, pop in enumerate(runs[0]["populations"]):
        rows = pop["rows"]
        names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
        lines += [f"**{pop['label']}** ({rows[0]['n_models']} models)", "",
                  "| target | editor JSD | " + " | ".join(f"ratio vs {n}" for n in names) + " |",
                  "|" + "---|" * (len(names) + 2)]
        for i, row in enumerate(rows):
            per_seed = [run["populations"][p]["rows"][i] for run in runs]
            if any(abs(r["target"] - row["target"]) > 1e-12 for r in per_seed):
                raise ValueError(f"the runs do not share their targets ({[r['target'] for r in per_seed]})")
            jsd = np.array([r["editor_jsd"] for r in per_seed])
            cells = [f"{row['target']:g}", fmt(jsd, ".5f")]
            for n in names:
                cells.append(fmt(np.array([r[n]["editor_over_baseline"] for r in per_seed]), ".3f"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if all("models" in run["populations"][p]["rows"][0] for run in runs):
            lines += per_model_table(runs, p, names)
    return "\n".join(lines)


def per_model_table(runs: list[dict], p: int, names: list[str]) -> list[str]:
    """Markdown lines: per target and baseline, the geometric mean of per-model ratios and the editor's win share."""
    lines = ["Per model (geometric mean of editor JSD / baseline JSD over models; share of models where the editor's "
             "JSD is lower):", "", "| target | " + " | ".join(f"{n}: geo-mean ratio | {n}: wins" for n in names) + " |",
             "|" + "---|" * (2 * len(names) + 1)]
    for i, row in enumerate(runs[0]["populations"][p]["rows"]):
        cells = [f"{row['target']:g}"]
        for n in names:
            geo, wins = [], []
            for run in runs:
                models = run["populations"][p]["rows"][i]["models"]
                e = np.array([m["editor_jsd"] for m in models])
                b = np.array([m[n]["jsd"] for m in models])
                ok = (e > 0) & (b > 0)
                geo.append(float(np.exp(np.mean(np.log(e[ok] / b[ok])))) if ok.any() else float("nan"))
                wins.append(float(np.mean(e < b)))
            cells += [fmt(np.array(geo), ".3f"), fmt(np.array(wins), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def fmt(values: np.ndarray, floatfmt: str) -> str:
    sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return format_mean_sd(float(values.mean()), sd, len(values), floatfmt=floatfmt)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="target_editors.py output folders, one per editor seed")
    ap.add_argument("--out", default=None, help="write the markdown here (default: print it)")
    args = ap.parse_args(argv)
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in args.folders]
    text = summary(runs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
