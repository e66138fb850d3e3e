"""scripts/reproduce.py end to end on a smoke plan (`--preset tiny --quick`, Bank settings only): the report has
every section, the matched comparison agrees with the per-setting results, and a second run reuses the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(work: Path, results: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--preset", "tiny", "--quick",
           "--settings", "prune-bank,dm-bank", "--skip", "composition,sample-efficiency", "--editors", "both",
           "--variants", "main", "--threads", "1", "--no-progress", "--work", str(work), "--results", str(results)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    first = _run(base / "work", base / "results")
    return base, first


def test_report_has_every_section(run):
    base, _ = run
    report = (base / "results" / "REPORT.md").read_text()
    for heading in ("## Summary: hypervolume on the test split", "## Timing: seconds to edit one model",
                    "## Requirement metric against lambda (validation)",
                    "## One lambda-conditioned editor against per-lambda editors",
                    "## Matched comparisons", "### prune-bank", "### dm-bank", "## prune-bank:", "## dm-bank:"):
        assert heading in report, heading
    assert "python scripts/reproduce.py --preset tiny --quick" in report.replace(str(ROOT / "scripts") + "/", "scripts/")
    for setting in ("prune-bank", "dm-bank"):
        assert (base / "results" / f"{setting}-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_matched_comparison_levels_agree_with_the_protocol(run):
    """The matched comparison edits the protocol's test models: its mean level per per-lambda editor equals the
    protocol's test metric of the same editor."""
    base, _ = run
    for setting in ("prune-bank", "dm-bank"):
        matched = json.loads((base / "work" / "eval" / f"{setting}-matched.json").read_text())
        proto = json.loads((base / "work" / "eval" / f"{setting}.json").read_text())
        methods = proto["methods"] if isinstance(proto["methods"], list) else list(proto["methods"].values())
        per_lambda = next(m for m in methods if m["kind"] == "editor" and "λ-cond" not in m["name"])
        rows = [r for r in matched["rows"] if r["method"] == per_lambda["name"]]
        assert len(rows) == len(per_lambda["test"]) > 0
        for row, (metric, _jsd) in zip(sorted(rows, key=lambda r: r["lambda"]), per_lambda["test"]):
            assert row["level"] == pytest.approx(metric, abs=1e-9)
            assert 0 <= row["editor_better_share"] <= 1


def test_second_run_reuses_the_cache(run):
    base, _ = run
    before = {p.name: p.read_text() for p in (base / "work" / "eval").iterdir()}
    second = _run(base / "work", base / "results2")
    assert "reusing evaluation" in second.stdout and "reusing matched comparison" in second.stdout
    assert "trained " not in second.stdout
    assert {p.name: p.read_text() for p in (base / "work" / "eval").iterdir()} == before
