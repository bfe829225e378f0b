"""benchmarks/dose_response.py: the rule's epoch choices on known curves, and the whole study on the smoke world
(two epochs, one lr) writing the scores of every other epoch and of the selected ones, the report with its rule
first, and the figure."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from cftlib.core import config

spec = importlib.util.spec_from_file_location("dose_response", ROOT / "benchmarks" / "dose_response.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def _curve(val_loss, align, acc, conflict):
    return pd.DataFrame({"epoch": range(len(val_loss)), "val_loss": val_loss, "val_cft_align": align,
                         "val_acc": acc, "bg_conflict": conflict})


def test_candidates_read_validation_only_and_the_oracle_reads_the_ood_split():
    g = _curve([0.1, 0.2, 0.15, 0.15, 0.3], [0.30, 0.28, 0.20, 0.25, 0.10], [1.0, 1.0, 1.0, 1.0, 0.8],
               [0.5, 0.4, 0.6, 0.7, 0.9])
    # official: lowest total loss from epoch 1, later epochs winning ties; ours: lowest alignment where the
    # validation accuracy holds (epoch 4 has the lowest alignment but loses accuracy); oracle: best bg_conflict
    assert study.selected(g) == {"official": 3, "ours": 2, "oracle": 4}
    g["bg_conflict"] = [0.9, 0.1, 0.1, 0.1, 0.1]  # the OOD split changes the oracle only
    assert study.selected(g) == {"official": 3, "ours": 2, "oracle": 0}


def test_the_rule_picks_the_lowest_held_out_alignment_that_keeps_validation_accuracy():
    rows = [dict(zoom=1.0, lr=1e-4, arm="cft", candidate="official", val_cft_align=0.20, val_acc=1.0, base_val_acc=1.0),
            dict(zoom=1.0, lr=1e-4, arm="cft", candidate="ours", val_cft_align=0.20, val_acc=1.0, base_val_acc=1.0),
            dict(zoom=1.0, lr=3e-4, arm="cft", candidate="ours", val_cft_align=0.10, val_acc=0.9, base_val_acc=1.0),
            dict(zoom=1.1, lr=1e-4, arm="cft", candidate="oracle", val_cft_align=0.01, val_acc=1.0, base_val_acc=1.0),
            dict(zoom=1.1, lr=1e-4, arm="ce", candidate="official", val_cft_align=0.05, val_acc=1.0, base_val_acc=1.0)]
    pick = study.choose(pd.DataFrame(rows))
    assert (pick["zoom"], pick["lr"], pick["candidate"]) == (1.0, 1e-4, "official")  # a tie goes to official


@pytest.mark.slow
def test_the_study_on_the_smoke_world(tmp_path, monkeypatch, smoke_project):
    shutil.copytree(smoke_project, tmp_path, dirs_exist_ok=True)  # the study writes cache/, reports/, figures/
    monkeypatch.chdir(tmp_path)
    for name, value in (("EPOCHS", 2), ("LRS", (1e-3,)), ("ZOOMS", (1.0,)), ("IMAGES", 20), ("MAPS", 8)):
        monkeypatch.setattr(study, name, value)
    P = config.load("params.yaml")
    study.run(P, 0, 2)
    study.run(P, 1, 2)  # the two shards together: every run once
    files = sorted(study.OUT.glob("zoom*/lr*/vit/*/seed*/scores.csv"))
    assert len(files) == len(study.ARMS) * P.bases.seeds
    scores = pd.read_csv(files[0])
    assert scores["epoch"].tolist() == [0, 1, 2] and scores["steps"].iloc[0] == 0 < scores["steps"].iloc[1]
    scored = scores[["test", "bg_conflict", "color_conflict", "concept_mass"]].notna()
    want = {0, 2} | set(study.candidates(scores).values())  # every EVERY-th epoch, and the selected ones
    assert (scored.all(axis=1) == scores["epoch"].isin(want)).all() and (scored.any(axis=1) == scored.all(axis=1)).all()
    text = study.report(P)
    assert text.index("## The rule (fixed before the runs)") < text.index("## At the selected epochs")
    assert "The rule's choice" in text and (tmp_path / "figures" / "dose_response.png").is_file()
    per_run = pd.read_csv(tmp_path / "reports" / "dose_response.csv")
    assert (set(per_run["candidate"]) == {"official", "ours", "oracle"}
            and np.isfinite(per_run["bg_conflict gain"]).all())
