#!/usr/bin/env python
"""Save a copy of an editor that refits every edit with RIDGE (``Editor.with_refit``; weights unchanged).

For evaluating trained editors with a refit in `hubedit pareto` / `scripts/target_editors.py`, e.g. the other
seeds of a setting with the ridge `scripts/select_refit.py` chose for it:

    python scripts/with_refit.py runs/targets/prune-adult-s1 0.01 runs/refit/prune-adult-s1-r
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubedit import Editor  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("editor")
    ap.add_argument("ridge", type=float)
    ap.add_argument("out")
    ap.add_argument("--reselect", action="store_true", help="pruning: also re-choose the mask within each layer for "
                    "the refit, keeping per model the better of the two (Editor reselect)")
    ap.add_argument("--greedy-features", type=int, default=0, metavar="N",
                    help="data minimisation: at up to N kept features, choose them greedily by the refit (Editor "
                         "greedy_features)")
    args = ap.parse_args(argv)
    if Path(args.out).exists():
        ap.error(f"{args.out} exists; choose a new folder")
    Editor.from_pretrained(args.editor).with_refit(args.ridge, reselect=args.reselect, greedy_features=args.greedy_features).save_pretrained(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
