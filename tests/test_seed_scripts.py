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


def test_epo_vs_linear_nested_hypervolumes_choose_on_validation():
    """scripts/epo_vs_linear.py: the front of the first n preferences is chosen on validation, scored on test."""
    import numpy as np

    from hubedit.evaluation.protocol import MethodResult
    from hubedit.metrics.pareto import hypervolume

    epo = _script("epo_vs_linear")
    val = [[0.10, 0.01], [0.05, 0.02], [0.06, 0.03]]  # run 2 is dominated on validation
    test = [[0.10, 0.012], [0.05, 0.025], [0.01, 0.001]]  # ... though it would be best on test
    m = MethodResult("EPO", "editor", ["a", "b", "c"], val, test, [0.8] * 3, [0.8] * 3)
    got = epo.nested_hypervolumes(m, [0, 1, 2], "jsd", (1.0, 0.69), 1.0)
    assert got[0] == pytest.approx(hypervolume([[0.10, 0.012]], ref=(1.0, 0.69)))
    assert got[1] == pytest.approx(hypervolume([[0.10, 0.012], [0.05, 0.025]], ref=(1.0, 0.69)))
    assert got[2] == pytest.approx(got[1])  # run 2 never chosen
    assert np.all(np.diff(got) >= 0)


def test_epo_vs_linear_runs_end_to_end(tmp_path, tiny_adult_zoo_dir):
    epo = _script("epo_vs_linear")
    out = tmp_path / "report"
    args = ["--zoo", str(tiny_adult_zoo_dir), "--rhos", "0.3,3", "--steps", "2", "--max-models", "2",
            "--editors", str(tmp_path / "editors"), "--out", str(out)]
    epo.main(args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["EPO", "Linear scalarisation"]
    for axis in ("jsd", "disagreement", "error"):
        for m in summary["methods"]:
            assert len(summary["fronts"][axis]["nested"][m]) == 2
    cfg = json.loads((tmp_path / "editors" / "epo-rho3" / "config.json").read_text())
    assert cfg["preference"] == [1.0, 3.0] and cfg["training"]["scalarisation"] == "epo"
    assert "EPO against linear scalarisation" in (out / "REPORT.md").read_text()
    mtime = (tmp_path / "editors" / "linear-rho0.3" / "model.safetensors").stat().st_mtime
    epo.main(args)  # resumes: the editors are found, not trained again
    assert (tmp_path / "editors" / "linear-rho0.3" / "model.safetensors").stat().st_mtime == mtime
