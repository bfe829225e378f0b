"""benchmarks/baselines.py: the rule on known tables, and the sweep on the smoke world writing its report and the
chosen values."""

from __future__ import annotations

import importlib.util
import shutil

import pandas as pd
import pytest
from conftest import ROOT

from cftlib.core import config, io

spec = importlib.util.spec_from_file_location("baselines_sweep", ROOT / "benchmarks" / "baselines.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def _row(arm, value, lr, align, acc, base_acc=1.0, weight="rrr_lambda"):
    return dict(arm=arm, weight=weight, value=value, lr=lr, val_cft_align=align, val_acc=acc, base_val_acc=base_acc)


def test_the_rule_keeps_validation_top1_then_takes_the_lowest_held_out_alignment():
    mean = pd.DataFrame([_row("rrr", 1e-2, 1e-4, 0.10, 0.9),  # lowest alignment, but loses validation top-1
                         _row("rrr", 1e-3, 1e-4, 0.20, 1.0),
                         _row("rrr", 1e-4, 3e-5, 0.20, 1.0),  # tie on alignment: the smaller lr wins
                         _row("rrda", 0.5, 1e-4, 0.30, 0.8, weight="rrda_prob"),
                         _row("rrda", 1.0, 1e-4, 0.25, 0.7, weight="rrda_prob")])
    chosen = sweep.choose(mean)
    assert chosen["rrr"] == {"lr": 3e-5, "rrr_lambda": 1e-4, "keeps_base_top1": True}
    # no RRDA setting keeps the base's top-1: the one that loses least of it
    assert chosen["rrda"] == {"lr": 1e-4, "rrda_prob": 0.5, "keeps_base_top1": False}


@pytest.mark.slow
def test_the_sweep_on_the_smoke_world(tmp_path, monkeypatch, smoke_project):
    shutil.copytree(smoke_project, tmp_path, dirs_exist_ok=True)  # the sweep writes cache/ and reports/
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "LRS", (1e-3,))
    monkeypatch.setattr(sweep, "GRID", {"gradmask": ("gradmask_lambda", (1e-2,)), "rrr": ("rrr_lambda", (1e-3,)),
                                        "rrda": ("rrda_prob", (0.5, 1.0))})
    P = config.load("params.yaml")
    sweep.run(P, 0, 2)
    sweep.run(P, 1, 2)  # the two shards together: every run once
    text = sweep.report(P)
    assert text.index("## The rule") < text.index("## Chosen")
    chosen = io.read_json("reports/baselines.json")
    assert set(chosen) == {"gradmask", "rrr", "rrda"} and chosen["rrda"]["rrda_prob"] in (0.5, 1.0)
    assert len(list(sweep.OUT.glob("w*/lr*/vit/*/seed*/run.json"))) == 4 * P.bases.seeds
