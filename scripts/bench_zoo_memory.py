#!/usr/bin/env python
"""Benchmark the memory of reading a saved zoo: peak RSS and wall time of opening it with ``Zoo.load`` and
of opening it and iterating every checkpoint of every split (each materialised as an ``MLP``).

Each step runs in a fresh subprocess, so one step's peak does not hide another's. Peak RSS is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the step; the second column subtracts the peak
after the imports (torch, hubedit, pyarrow), i.e. what the zoo itself cost. The iteration also hashes every
checkpoint's weights bytes in order (sha256): the same digest from two hubedit versions means they load the same
models in the same order. hubedit is imported from whatever is on the path (``PYTHONPATH``); the file it
came from is printed, so "before" and "after" runs can be told apart.

Run:  python scripts/bench_zoo_memory.py ZOO_DIR [--steps open iterate]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STEPS = ("open", "iterate")


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _child(step: str, zoo_dir: str) -> dict:
    """One step in this (fresh) process; returns its measurements."""
    import hashlib
    import time

    import pyarrow  # noqa: F401  (imported by the zoo module anyway: part of the baseline)
    import torch  # noqa: F401

    import hubedit
    import hubedit.mlp  # noqa: F401
    from hubedit.zoo import Zoo

    after_imports = _peak_mb()
    t0 = time.perf_counter()
    zoo = Zoo.load(zoo_dir)
    n, digest = len(zoo), None
    if step == "iterate":
        h, n = hashlib.sha256(), 0
        for split in zoo.splits.values():
            for ckpt in split:
                ckpt.to_module()
                h.update(ckpt.weights)
                n += 1
        digest = h.hexdigest()
    seconds = time.perf_counter() - t0
    return {"step": step, "peak_mb": _peak_mb(), "after_imports_mb": after_imports, "seconds": seconds,
            "checkpoints": n, "sha256": digest, "hubedit": hubedit.__file__}


def _size_on_disk(zoo_dir: Path) -> int:
    """Bytes of the zoo's own files (zoo.json, README.md, data/), not of any build state beside them."""
    files = [zoo_dir / "zoo.json", zoo_dir / "README.md", *sorted((zoo_dir / "data").glob("*"))]
    return sum(f.stat().st_size for f in files if f.is_file())


def run_step(step: str, zoo_dir: Path) -> dict:
    """``step`` in a fresh interpreter with this environment (and so the same ``PYTHONPATH``)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", step, str(zoo_dir)], capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
    )
    if proc.returncode != 0:
        raise SystemExit(f"step {step!r} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", type=Path, help="a saved zoo folder (with zoo.json)")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, str(args.zoo))))
        return 0
    if not (args.zoo / "zoo.json").is_file():
        ap.error(f"{args.zoo} is not a saved zoo: it has no zoo.json")
    results = [run_step(s, args.zoo) for s in args.steps]
    size_mb = _size_on_disk(args.zoo) / 2**20
    print(f"hubedit: {results[0]['hubedit']}")
    print(f"zoo: {args.zoo} ({results[0]['checkpoints']} checkpoints, {size_mb:.1f} MB on disk)")
    for r in results:
        if r["sha256"]:
            print(f"weights sha256 ({r['step']}, {r['checkpoints']} checkpoints in order): {r['sha256']}")
    print()
    print("| step | peak RSS (MB) | peak RSS above imports (MB) | wall (s) | zoo on disk (MB) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['step']} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['after_imports_mb']:.0f} | "
              f"{r['seconds']:.2f} | {size_mb:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
