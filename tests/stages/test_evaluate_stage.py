"""The evaluate, figures and ablations stages run end to end on the smoke profile (after world, concepts, masks and
fine-tuning), write every declared output, and give byte-identical metrics, tables, claims and executed
notebooks when run twice (slow: papermill)."""

import json
import os
import shutil

import pandas as pd
import pytest
import yaml
from conftest import ROOT
from smoke_stages import declared, evaluated

from cftlib.report import headline
from cftlib.report.claims import VERDICTS
from cftlib.stages import evaluate, finetune, nbrun


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


@pytest.mark.slow
def test_evaluate_figures_ablations_on_smoke_profile_deterministically(tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(ROOT / "profiles" / "smoke.yaml", proj / "params.yaml")
    for nb in ("00_pretrain", "00_world", "01_concepts", "02_masks"):
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
    metrics = json.loads((proj / "reports" / "evaluate.json").read_text())
    assert set(metrics) == {"vit", "cnn"} and "cft" in metrics["vit"]
    assert metrics["vit"]["none"]["accuracy"]["test"]["all"]["top1_ci"] == 0.0  # the base model: identical seeds
    claims = (proj / "reports" / "claims.md").read_text()
    assert set(json.loads((proj / "reports" / "ablations.json").read_text())) == {
        "k", "mask noise", "relevance", "loss", "concept validation", "reference"}
    verdicts = json.loads((proj / "reports" / "claims.json").read_text())
    assert len(verdicts["claims"]) == 14 and sum(verdicts["counts"].values()) == 14
    small = {f: headline.check(json.loads((proj / "metrics" / f"{f}.json").read_text()), f)
             for f in ("evaluate", "claims", "ablations")}
    assert small["evaluate"]["vit_none"]["test_top1"] == round(
        100 * metrics["vit"]["none"]["accuracy"]["test"]["all"]["top1"], 1)
    assert sum(small["claims"]["verdicts"].values()) == 14
    assert all(f"| {c['claim']} | {c['verdict']}" in claims for c in verdicts["claims"])  # the report shows the same


@pytest.mark.slow
def test_evaluate_and_figures_at_paper_scale_write_every_declared_output(tmp_path):
    """Notebooks 04 and 05 on a tiny paper-scale tree (test_benchmarks._paper_tree: ImageNet val, -A, ObjectNet,
    ImageNet-Segmentation fakes, tiny timm runs): every declared output written, from the benchmarks."""
    from test_benchmarks import _paper_tree

    flags = _paper_tree(tmp_path)
    args = dict(zip(flags[::2], flags[1::2]))
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(args["--params"], proj / "params.yaml")
    (proj / "models").mkdir()
    (proj / "data").mkdir()
    shutil.move(args["--runs"], proj / "models" / "finetune")
    shutil.move(args["--masks"], proj / "data" / "masks")
    shutil.move(tmp_path / "concepts", proj / "data" / "concepts")
    nbrun.run(proj / "notebooks" / "04_evaluate.ipynb", proj / "executed" / "04_evaluate.ipynb", {"progress": False},
              cwd=proj)
    nbrun.run(proj / "notebooks" / "05_figures.ipynb", proj / "executed" / "05_figures.ipynb", cwd=proj)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for out in _outs(stages["evaluate"]) + _outs(stages["figures"]):
        assert (proj / out).exists(), out
    acc = pd.read_csv(proj / "plots" / "evaluate_accuracy.csv")
    assert set(acc["split"]) == {"imagenet_val", "imagenet_a", "objectnet"} and set(acc["model"]) == {"vit", "cnn"}
    gaps = pd.read_csv(proj / "plots" / "evaluate_gaps.csv")
    assert set(gaps["split"]) == {"imagenet_a", "objectnet"}
    assert set(pd.read_csv(proj / "plots" / "evaluate_alignment.csv")["split"]) == {"imagenet_segmentation"}
    tables = {p.name for p in (proj / "reports" / "tables").iterdir()}
    assert {"accuracy.md", "accuracy_standard.md", "gaps.md", "alignment.md", "seen_unseen.md"} <= tables
    usage = pd.read_csv(proj / "plots" / "evaluate_usage.csv")  # from the grounded masks: real images have no parts
    assert set(usage["split"]) == {"masks_val"} and set(usage["label"]) == {1}
    assert "great white shark" in (proj / "reports" / "tables" / "concept_usage_masks.md").read_text()
    claims = (proj / "reports" / "claims.md").read_text()
    assert "OOD accuracy on ImageNet-A" in claims and "not testable at this scale" in claims
    metrics = json.loads((proj / "reports" / "evaluate.json").read_text())
    assert "imagenet_segmentation" in metrics["vit"]["cft"]["alignment"]


def test_evaluate_stage_function_writes_every_declared_output(smoke_project, tmp_path_factory):
    """Without papermill, on the finetune stage's function's runs (tests/smoke_stages.py): the per-run rows with
    their columns, the tables, the metrics and the claims, as the notebook shows them."""
    root, result = evaluated(smoke_project, tmp_path_factory)
    for out in declared("evaluate"):
        assert (root / out).exists(), out
    acc = pd.read_csv(root / "plots" / "evaluate_accuracy.csv")
    assert list(acc.columns)[:3] == ["model", "arm", "seed"] and {"split", "group", "top1", "top5"} <= set(acc.columns)
    assert list(pd.read_csv(root / "plots" / "evaluate_flips.csv").columns) == evaluate.FLIP_COLUMNS
    assert list(pd.read_csv(root / "plots" / "evaluate_gaps.csv").columns)[-1] == "gap"
    assert pd.read_csv(root / "plots" / "evaluate_benchmarks.csv").empty  # no benchmarks on the world
    assert {p.stem for p in (root / "reports" / "tables").glob("*.md")} == {
        "accuracy", "accuracy_top5", "seen_unseen", "gaps", "alignment", "concept_usage", "concept_usage_masks"}
    metrics = json.loads((root / "reports" / "evaluate.json").read_text())
    assert set(metrics) == {"vit", "cnn"} and set(metrics["vit"]) == {"none", "ce", "cft"}
    assert headline.check(json.loads((root / "metrics" / "evaluate.json").read_text())) == result["metrics"]
    verdicts = json.loads((root / "reports" / "claims.json").read_text())
    assert [c["claim"] for c in verdicts["claims"]] == [c["claim"] for c in result["claims"]]
    assert json.loads((root / "metrics" / "claims.json").read_text()) == headline.claims(
        [c["verdict"] for c in result["claims"]], VERDICTS)
    assert all(f"| {c['claim']} | {c['verdict']}" in (root / "reports" / "claims.md").read_text()
               for c in result["claims"])
