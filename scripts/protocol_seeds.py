#!/usr/bin/env python
"""Mean ± sd over seeds of protocol runs (`hubedit pareto --seed S`, one output folder per seed and setting).

Per setting: the best editor against the best baseline without degenerate points
(:func:`hubedit.evaluation.seeds.summary_seed_table`), then every method's hypervolumes
(:func:`~hubedit.evaluation.seeds.protocol_seed_table`) on the JSD front.

    python scripts/protocol_seeds.py --out results/targets/protocol-refit/SUMMARY.md \\
        prune-adult=results/targets/protocol-refit/prune-adult-seed0,results/targets/protocol-refit/prune-adult-seed1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubedit.evaluation.protocol import ProtocolResult  # noqa: E402
from hubedit.evaluation.seeds import protocol_seed_table, summary_seed_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", metavar="SETTING=FOLDER,FOLDER,...")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runs: dict[str, list[ProtocolResult]] = {}
    for item in args.settings:
        name, _, folders = item.partition("=")
        if not folders:
            ap.error(f"expected SETTING=FOLDER,FOLDER,..., got {item!r}")
        runs[name] = [ProtocolResult.load(Path(f) / "results.json") for f in folders.split(",")]
    lines = ["# Protocol hypervolumes over seeds", "",
             "Command: `python scripts/protocol_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`", "",
             "## Best editor against best baseline (test, degenerate points left out)", "",
             summary_seed_table(runs).markdown(), ""]
    for name, rs in runs.items():
        lines += [f"## {name}: every method (JSD front, {len(rs)} seeds)", "", protocol_seed_table(rs).markdown(), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
