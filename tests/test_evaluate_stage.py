"""The evaluate, figures and ablations stages run end to end on the smoke profile (after world, concepts, masks and
fine-tuning), write every declared output, and give byte-identical metrics, tables, claims and executed
notebooks when run twice (slow: papermill)."""

import json
import os
import shutil

import pytest
import yaml

from cftlib import finetune, nbrun
from conftest import ROOT


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


@pytest.mark.slow
def test_evaluate_figures_ablations_on_smoke_profile_deterministically(tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(ROOT / "profiles" / "smoke.yaml", proj / "params.yaml")
    for nb in ("00_world", "01_concepts", "02_masks"):
        nbrun.run(proj / "notebooks" / f"{nb}.ipynb", proj / "executed" / f"{nb}.ipynb", {"progress": False}, cwd=proj)
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        finetune.main(["--params", "params.yaml"])
    finally:
        os.chdir(cwd)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = _outs(stages["evaluate"]) + _outs(stages["figures"]) + _outs(stages["ablations"])
    outs.remove("models/ablations")  # checkpoints: torch.save is not byte-stable; their metrics are compared
    runs = []
    for _ in range(2):
        nbrun.run(proj / "notebooks" / "04_evaluate.ipynb", proj / "executed" / "04_evaluate.ipynb",
                  {"progress": False}, cwd=proj)
        nbrun.run(proj / "notebooks" / "05_figures.ipynb", proj / "executed" / "05_figures.ipynb", cwd=proj)
        nbrun.run(proj / "notebooks" / "06_ablations.ipynb", proj / "executed" / "06_ablations.ipynb",
                  {"progress": False}, cwd=proj)
        files = {}
        for out in outs:
            p = proj / out
            assert p.exists(), out
            for f in sorted(p.rglob("*") if p.is_dir() else [p]):
                files[str(f.relative_to(proj))] = f.read_bytes()
        runs.append(files)
    assert runs[0] == runs[1], "evaluate/figures outputs must be byte-identical for identical inputs"
    metrics = json.loads((proj / "metrics" / "evaluate.json").read_text())
    assert set(metrics) == {"vit", "cnn"} and "cft" in metrics["vit"]
    assert metrics["vit"]["none"]["accuracy"]["test"]["all"]["top1_ci"] == 0.0  # the base model: identical seeds
    claims = (proj / "reports" / "claims.md").read_text()
    assert set(json.loads((proj / "metrics" / "ablations.json").read_text())) == {"k", "mask noise", "relevance"}
    assert claims.count("| holds |") + claims.count("| does not hold |") + claims.count("| not testable here |") == 10
