"""scripts/bench_zoo_training.py on a smoke plan (one Bank group, a few steps): it trains the batched group
and the per-model loop on the same configurations and prints the throughput, ratio and projection tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_zoo_training_smoke():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_zoo_training.py"), "--tasks", "bank", "--groups", "1",
           "--steps", "2", "--plain", "1", "--plain-steps", "3", "--warm-cache"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for heading in ("Measured groups of the paper plan", "Throughput on the same configurations", "By batch size",
                    "Projected `paper` preset build"):
        assert heading in out, heading
    ratio = re.search(r"^bank\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+1$", out, re.M)
    assert ratio, out
    batched, plain, r = map(float, ratio.groups())
    assert batched > 0 and plain > 0 and abs(r - batched / plain) < 0.06 * r + 0.05
