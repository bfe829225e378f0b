"""The metrics files hold the headline only: a shape a reviewer can diff (tests here), built from the full
reports by small functions with known answers."""

import json

import pytest
import yaml
from conftest import ROOT

from cftlib.report import headline


def _declared() -> list[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [next(iter(m)) if isinstance(m, dict) else m for st in stages.values() for m in st.get("metrics", [])]


def test_committed_metrics_fit_the_budget_in_the_headline_shape():
    declared = _declared()
    assert sorted(declared) == sorted(f"metrics/{n}.json" for n in
                                      ("base", "concepts", "masks", "finetune", "evaluate", "claims", "ablations"))
    total = 0
    for path in declared:
        total += headline.count(headline.check(json.loads((ROOT / path).read_text()), path))
    assert 30 <= total <= headline.BUDGET, total


def test_every_json_under_metrics_is_a_declared_metric_or_the_frozen_pretrain_record():
    files = {f"metrics/{p.name}" for p in (ROOT / "metrics").glob("*.json")}
    assert files == set(_declared()) | {"metrics/pretrain.json"}


@pytest.mark.parametrize("bad, says", [
    ({"Vit": {"top1": 1.0}}, "group 'Vit'"),
    ({"vit": {"top1 ci": 1.0}}, "vit.top1 ci is not a snake_case"),
    ({"vit": {"top1": 97.25}}, "round to one decimal"),
    ({"vit": {"top1": "97"}}, "need a number"),
    ({"vit": {"top1": True}}, "need a number"),
    ({"vit": {"test": {"top1": 1.0}}}, "need a number"),  # a third level
    ({"vit": 1.0}, "holding a mapping"),
])
def test_check_refuses_what_is_not_the_headline_shape(bad, says):
    with pytest.raises(ValueError, match=says):
        headline.check(bad, "m.json")


def test_names_and_percent():
    assert headline.name("mask noise") == "mask_noise" and headline.name("×2") == "2"
    assert headline.name("does not hold") == "does_not_hold"
    assert headline.percent(0.97049) == 97.0 and headline.percent(-0.0349) == -3.5
    assert headline.percent(float("nan")) is None and headline.percent(None) is None


def test_base_gap_in_points_and_missing_learnability_left_out():
    out = headline.base({"vit": {"test": 0.9861, "bg_conflict": 0.608}}, "test", "bg_conflict")
    assert out == {"vit": {"test_top1": 98.6, "shortcut_gap": 37.8}}
    out = headline.base({"vit": {"imagenet_val": 0.8}}, "imagenet_val", "imagenet_a", {"vit": 0.5})
    assert out == {"vit": {"imagenet_val_top1": 80.0, "pretrain_held_out": 50.0}}


def test_evaluate_means_the_ood_splits_present_and_skips_missing_alignment():
    def arm(acc, mass=None):
        return {"accuracy": {s: {"all": {"top1": v}} for s, v in acc.items()},
                **({"alignment": {"test": {"concept_mass": mass}}} if mass is not None else {})}
    full = {"vit": {"cft": arm({"test": 0.9, "a": 0.5, "b": 0.6}, 0.2234)},
            "cnn": {"none": arm({"test": 0.8, "a": 0.4})}}
    out = headline.evaluate(full, "test", ["a", "b", "c"], "test")
    assert out == {"vit_cft": {"test_top1": 90.0, "ood_mean_top1": 55.0, "test_concept_mass": 22.3},
                   "cnn_none": {"test_top1": 80.0, "ood_mean_top1": 40.0}}
    headline.check(out)


def test_finetune_ablations_and_claims_from_their_full_reports():
    full = {"data": {"train": {"images": 75}, "val": {"images": 25}},
            "runs": {"vit/cft/seed0": {"nonfinite_steps": 2, "saturated_steps": 1},
                     "vit/none/seed0": {"nonfinite_steps": None, "saturated_steps": 0}}}
    assert headline.finetune(full) == {"runs": {"runs": 2, "train_images": 75, "val_images": 25,
                                                "nonfinite_steps": 2, "saturated_steps": 1}}
    abl = {"k": {"1": {"bg_conflict": 0.598, "test": 0.9}}, "mask noise": {"×0": {"bg_conflict": 0.5}}}
    assert headline.ablations(abl, "bg_conflict") == {"k_1": {"bg_conflict_top1": 59.8},
                                                      "mask_noise_0": {"bg_conflict_top1": 50.0}}
    kinds = ("holds", "does not hold", "not testable here")
    assert headline.claims(["holds", "does not hold", "does not hold"], kinds) == {
        "verdicts": {"holds": 1, "does_not_hold": 2, "not_testable_here": 0}}


def test_write_refuses_before_writing(tmp_path):
    with pytest.raises(ValueError, match="round to one decimal"):
        headline.write(tmp_path / "m.json", {"vit": {"top1": 0.123}})
    assert not (tmp_path / "m.json").exists()
    headline.write(tmp_path / "m.json", {"vit": {"top1": 12.3}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"vit": {"top1": 12.3}}
