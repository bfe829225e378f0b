"""The pretrain and world stages without papermill, on the smoke profile: every file they declare in dvc.yaml
written, with the columns and keys the later stages and the README read, and the validity bars' verdicts
following from the numbers beside them."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT
from fakes import paper_params

from cftlib.core import config, io
from cftlib.metrics import accuracy
from cftlib.models import checkpoints
from cftlib.report import headline
from cftlib.stages import imagenet, pretrain, world
from cftlib.training import pretrain as training

HISTORY = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]


def _declared(stage: str) -> list[str]:
    """The files (not folders) stage `stage` declares as outs, metrics or plots, the executed notebook left out."""
    st = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    paths = [e if isinstance(e, str) else next(iter(e)) for k in ("outs", "metrics", "plots") for e in st.get(k, [])]
    return [p for p in paths if "." in p.rsplit("/", 1)[-1] and not p.startswith("executed/")]


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_pretrain_stage_writes_its_outputs_and_reads_them_back(tmp_path, smoke_params):
    P = smoke_params
    R = pretrain.run(P, tmp_path / "models/pretrain", tmp_path / "metrics", tmp_path / "figures", tmp_path / "plots")
    assert all((tmp_path / f).is_file() for f in _declared("pretrain")), _declared("pretrain")
    assert io.read_json(tmp_path / "models/pretrain/pretrain.json") == {"zoo": P.pretrain.zoo, "roles": ["cnn", "vit"]}
    for role in ("vit", "cnn"):
        _, build = checkpoints.load_checkpoint(tmp_path / "models/pretrain" / f"{role}.pt")
        assert not training.misfits(P, role, build)
    history = pd.read_csv(tmp_path / "plots/pretrain_history.csv")
    assert (list(history.columns) == HISTORY + ["model"]
            and len(history) == P.pretrain.epochs + P.finetune.cnn.pretrain.epochs)
    metrics = io.read_json(tmp_path / "metrics/pretrain.json")
    assert metrics == {"images": P.pretrain.images, "chance": 1 / P.world.n_species, "models": R.learn}
    for role, learn in R.learn.items():  # the learnability figure is the best held-out epoch; keep_epoch 0 ships it
        rows = history[history["model"] == role]
        assert learn["held_out"] == pytest.approx(rows["val_acc"].max(), rel=1e-5)
        assert learn["shipped_held_out"] == learn["held_out"] and learn["epochs"] == len(rows)

    shown = pretrain.run(P, tmp_path / "models/pretrain", tmp_path / "other", tmp_path / "figures", tmp_path / "plots",
                         retrain=False)  # the frozen stage shown from its committed outputs: nothing rewritten
    assert not (tmp_path / "other").exists()
    assert {r: v["held_out"] for r, v in shown.learn.items()} == pytest.approx(
        {r: v["held_out"] for r, v in R.learn.items()}, rel=1e-5)


def test_bars_name_and_judge_as_the_committed_report_does():
    committed = json.loads((ROOT / "reports/base.json").read_text())
    valid = {k: v for k, v in committed["validity"].items() if k != "bars"}
    learn = {r: {"held_out": v} for r, v in committed["learnability"].items()}
    assert world.bars(valid, committed["fine_tuning_fit"], learn) == committed["validity"]["bars"]


def test_bars_hold_exactly_at_their_thresholds():
    valid = {"test": world.TEST_BAR, "gap": world.GAP_BAR, "dfr_gap": world.DFR_GAP_BAR}
    fit = {"vit0": {"gap_points": -world.AUGMENTATION_BAR, "oracle_concept_mass": world.ORACLE_MASS_BAR}}
    assert all(world.bars(valid, fit, {"vit": {"held_out": pretrain.LEARNABILITY_BAR}}).values())
    below = world.bars({**valid, "test": 0.84}, fit, {"vit": {"held_out": 0.89}})
    failing = [k for k, ok in below.items() if not ok]
    assert failing == ["test >= 0.85", "parts-only learnability >= 0.90 (every pre-trained model)"]


def test_world_stage_writes_its_outputs(tmp_path, smoke_params, threads):
    P = smoke_params
    pre = tmp_path / "models/pretrain"
    for role, cfg, size in (("vit", P.pretrain, P.world.image_size), ("cnn", P.finetune.cnn.pretrain, None)):
        model, build = training.fresh(cfg, training.outputs(P), size, 0)  # untrained: the stage's plumbing only
        checkpoints.save_checkpoint(pre / f"{role}.pt", model, build)
    learn = {"vit": {"held_out": 0.95}, "cnn": {"held_out": 0.5}}
    io.write_json(tmp_path / "metrics/pretrain.json", {"models": learn})
    W = world.run(P, tmp_path / "data/world", pre, tmp_path / "metrics/pretrain.json", tmp_path / "models/base",
                  tmp_path / "metrics", tmp_path / "figures", tmp_path / "plots", tmp_path / "reports")
    assert all((tmp_path / f).is_file() for f in _declared("world")), _declared("world")
    assert set(io.read_json(tmp_path / "reports/world.json")) == set(P.world.splits)
    for role in ("vit", "cnn"):
        for b in range(P.bases.seeds):
            _, build = checkpoints.load_checkpoint(training.base_path(tmp_path / "models/base", role, b))
            assert build["num_classes"] == P.world.n_species
    history = pd.read_csv(tmp_path / "plots/bases_history.csv")
    assert list(history.columns) == ["model", "base"] + HISTORY and len(history) == 2 * P.bases.seeds * P.bases.epochs
    rows = pd.read_csv(tmp_path / "plots/bases_accuracy.csv")
    assert list(rows.columns) == ["model", "base", "head", "split", "top1"]
    assert set(rows["head"]) == {"base", "dfr"} and list(dict.fromkeys(rows["split"])) == W.eval_splits
    report = io.read_json(tmp_path / "reports/base.json")
    assert set(report) == {"species", "bases", "chance", "learnability", "validity", "accuracy", "fine_tuning_fit"}
    assert report["learnability"] == {"vit": 0.95, "cnn": 0.5} and set(report["fine_tuning_fit"]) == {"vit0", "vit1"}
    assert report["validity"] == {**accuracy.validity(rows), "bars": world.bars(W.valid, W.fit, learn)}
    assert not report["validity"]["bars"]["parts-only learnability >= 0.90 (every pre-trained model)"]
    R = accuracy.roles(P)
    assert io.read_json(tmp_path / "metrics/base.json") == headline.base(
        {r: {s: v["mean"] for s, v in sp.items()} for r, sp in report["accuracy"].items()}, R.reference, R.focus,
        {"vit": 0.95, "cnn": 0.5})


def test_imagenet_stage_writes_the_world_stages_outputs(tmp_path, paper_fakes, threads):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(paper_params(paper_fakes), sort_keys=False))
    P = config.load(tmp_path / "params.yaml")
    W = imagenet.run(P, tmp_path / "data/world", tmp_path / "models/base", tmp_path / "metrics", tmp_path / "figures",
                     tmp_path / "plots", tmp_path / "reports")
    assert all((tmp_path / f).is_file() for f in _declared("world")), _declared("world")
    classes = io.read_json(tmp_path / "data/world/classes.json")
    assert [c["wnid"] for c in classes] == sorted(c["wnid"] for c in classes) and len(classes) == len(W.classes)
    assert io.read_json(tmp_path / "reports/world.json") == {"dataset": "imagenet", "classes": len(classes),
                                                            "images": sum(c["images"] for c in classes)}
    _, build = checkpoints.load_checkpoint(training.base_path(tmp_path / "models/base", "vit", 0))
    assert build["num_classes"] == 1000
    assert pd.read_csv(tmp_path / "plots/bases_history.csv").empty
    rows = pd.read_csv(tmp_path / "plots/bases_accuracy.csv")
    assert list(rows.columns) == ["model", "base", "head", "split", "top1"] and set(rows["split"]) == set(W.acc)
    report = io.read_json(tmp_path / "reports/base.json")
    assert set(report["accuracy"]) == set(P.evaluate.benchmarks) and report["gap"]["imagenet_val"] == 0
