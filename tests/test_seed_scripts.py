"""scripts/target_seeds.py: mean ± sd over editor seeds of matched comparisons."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(editor: str, jsds: list[float], ratio: float) -> dict:
    rows = [{"target": t, "n_models": 3, "editor_jsd": j, "FS": {"editor_over_baseline": ratio * (i + 1)}}
            for i, (t, j) in enumerate(zip([1.0, 2.0], jsds))]
    return {"editor": editor, "populations": [{"label": "zoo test models", "rows": rows}]}


def test_target_seeds_gives_mean_and_sample_sd_per_target(tmp_path):
    seeds = _script("target_seeds")
    folders = []
    for k, (jsds, ratio) in enumerate([([0.01, 0.004], 0.5), ([0.03, 0.006], 0.7), ([0.02, 0.005], 0.6)]):
        folder = tmp_path / f"s{k}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(_run(f"ed{k}", jsds, ratio)))
        folders.append(str(folder))
    seeds.main([*folders, "--out", str(tmp_path / "out.md")])
    text = (tmp_path / "out.md").read_text()
    assert "3 editor seeds" in text
    assert "| 1 | 0.02000 ± 0.01000 | 0.600 ± 0.100 |" in text  # mean, sd with ddof=1
    assert "| 2 | 0.00500 ± 0.00100 | 1.200 ± 0.200 |" in text
    bad = tmp_path / "bad"
    bad.mkdir()
    run = _run("x", [0.01, 0.004], 0.5)
    run["populations"][0]["rows"][1]["target"] = 3.0
    (bad / "results.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="do not share their targets"):
        seeds.main([folders[0], str(bad)])
