"""Fine-tuning keeps the paper's promises on tiny models: the alignment loss falls under one step, the `ce` arm is
plain cross-entropy, a killed run resumes to the same result, two processes take the steps one takes, and a
wrong setup fails before any work, naming what is wrong."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from cftlib.core import config, launch
from cftlib.data import fewshot, world
from cftlib.grounding import GroundingError
from cftlib.metrics.runs import seen_classes
from cftlib.models import checkpoints
from cftlib.stages import finetune, nbrun, params
from cftlib.training import dfr, pretrain, runspec, trainer


@pytest.fixture(scope="module")
def project(smoke_project):
    return smoke_project


def _params(root, **kw):
    P = config.load(root / "params.yaml")
    return P.model_copy(update=dict(finetune=P.finetune.model_copy(update=kw)))


def _setup(root, **kw):
    P = _params(root, **kw)
    runs, data, bases = finetune.setup(P, root / "data" / "masks", root / "data" / "world", root / "models" / "base",
                                       root / "runs", root / "data" / "concepts")
    return P, runs, data, bases


def _batch(data, n=4):
    t = data["train"]
    return t["x"][:n], t["concept"][:n], t["y"][:n]


def _vit(root):
    return checkpoints.load_checkpoint(pretrain.base_path(root / "models" / "base", "vit", 0))[0]


# ----------------------------------------------------------------------------- one step

@pytest.mark.parametrize("method", ["attnlrp", "cplrp", "gae_rollout", "grad_x_input"])
def test_one_step_lowers_the_alignment_loss_on_a_fixed_batch(project, method):
    P, _, data, _ = _setup(project, arms=["cft"], seeds=1, cnn=config.FinetuneCNN().model_copy(update=dict(arms=[])))
    cfg = P.finetune.model_copy(update=dict(relevance=method))
    model, (x, m, y) = _vit(project), _batch(data)
    arm = runspec.ARMS["cft"]
    before = trainer.batch_loss(model, arm, x, m, y, cfg, method)[0]["align"].item()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)  # a step along the gradient (Adam's first is sign-like)
    row = trainer.train_step(model, opt, arm, x, m, y, len(y), cfg, method, torch.autocast("cpu", enabled=False))
    after = trainer.batch_loss(model, arm, x, m, y, cfg, method)[0]["align"].item()
    assert not row["skipped"] and after < before


def test_one_step_lowers_the_alignment_loss_of_the_cnn_on_gradcam(project):
    P, _, data, bases = _setup(project, arms=[], seeds=1)
    model, (x, m, y), arm = bases["cnn", 0][0], _batch(data), runspec.ARMS["cft"]
    cfg = P.finetune
    before = trainer.batch_loss(model, arm, x, m, y, cfg, "gradcam")[0]["align"].item()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    trainer.train_step(model, opt, arm, x, m, y, len(y), cfg, "gradcam", torch.autocast("cpu", enabled=False))
    assert trainer.batch_loss(model, arm, x, m, y, cfg, "gradcam")[0]["align"].item() < before


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["attnlrp", "gae_rollout"])
def test_a_bfloat16_step_on_cuda_follows_the_float32_gradient(project, method):
    """finetune.amp: the CFT loss under bfloat16 autocast on CUDA gives a finite gradient pointing where the float32
    CPU gradient points (on an H200, ViT-B: cosine 0.99985 AttnLRP, 0.99957 GAE rollout; gpu_h200.md)."""
    P, _, data, _ = _setup(project, arms=["cft"], seeds=1, cnn=config.FinetuneCNN().model_copy(update=dict(arms=[])))
    (x, m, y), arm = _batch(data), runspec.ARMS["cft"]

    def gradient(device, amp):
        model = _vit(project).to(device)
        with amp:
            terms, _ = trainer.batch_loss(model, arm, x.to(device), m.to(device), y.to(device), P.finetune, method)
        terms["loss"].backward()
        return torch.cat([p.grad.float().flatten().cpu() for p in model.parameters() if p.grad is not None])

    cpu = gradient("cpu", torch.autocast("cpu", enabled=False))
    gpu = gradient("cuda", torch.autocast("cuda", dtype=torch.bfloat16))
    assert torch.isfinite(gpu).all() and F.cosine_similarity(cpu, gpu, dim=0) > 0.99


def test_ce_arm_step_is_plain_cross_entropy(project):
    P, _, data, _ = _setup(project, arms=["ce"], seeds=1)
    (x, m, y), a, b = _batch(data), _vit(project), _vit(project)
    trainer.train_step(a, torch.optim.SGD(a.parameters(), lr=1.0), runspec.ARMS["ce"], x, m, y, len(y), P.finetune,
                        "attnlrp", torch.autocast("cpu", enabled=False))
    F.cross_entropy(b(x), y).backward()
    torch.optim.SGD(b.parameters(), lr=1.0).step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_confidence_arm_trains_on_the_confidence_term_alone(project):
    """λ_align = 0: its loss is λ_acc · CE(z, argmax z) whatever the mask, and one step moves the weights as a
    step on that term alone does."""
    P, _, data, _ = _setup(project, arms=["none", "cft", "confidence"], seeds=1)
    (x, m, y), arm, cfg = _batch(data), runspec.ARMS["confidence"], P.finetune
    terms, logits = trainer.batch_loss(_vit(project), arm, x, m, y, cfg, "attnlrp")
    flipped, _ = trainer.batch_loss(_vit(project), arm, x, 1 - m, y, cfg, "attnlrp")
    assert torch.allclose(terms["loss"], cfg.loss.lambda_acc * F.cross_entropy(logits, logits.argmax(1)))
    assert torch.allclose(terms["loss"], flipped["loss"]) and terms["align"] > 0  # the map is still measured
    assert not terms["align"].requires_grad  # ... but not differentiated: no second-order graph to pay for
    a, b = _vit(project), _vit(project)
    trainer.train_step(a, torch.optim.SGD(a.parameters(), lr=1.0), arm, x, m, y, len(y), cfg, "attnlrp",
                       torch.autocast("cpu", enabled=False))
    z = b(x)
    (cfg.loss.lambda_acc * F.cross_entropy(z, z.detach().argmax(1))).backward()
    torch.optim.SGD(b.parameters(), lr=1.0).step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_lr_decays_by_the_official_step():
    cfg = config.Finetune()
    assert [trainer.step_decay_lr(e, 1.0, cfg) for e in range(5)] == [1.0, 1.0, 0.85, 0.85, 0.85 ** 2]


# ----------------------------------------------------------------------------- runs

def _fit(root, spec, out, **kw):
    P, _, data, bases = _setup(root, **kw)
    return trainer.fit(spec, *bases[spec.model, spec.base], data, P.finetune, out), data


SPEC = runspec.RunSpec("vit", "cft", 0, "attnlrp", 1e-4)


def test_select_epoch_official_and_alignment_rules():
    rows = [{"epoch": 0, "val_loss": 0.5, "val_cft_align": 0.30, "val_acc": 1.0},
            {"epoch": 1, "val_loss": 0.4, "val_cft_align": 0.28, "val_acc": 1.0},
            {"epoch": 2, "val_loss": 0.4, "val_cft_align": 0.25, "val_acc": 0.9},  # below the base's top-1
            {"epoch": 3, "val_loss": 0.6, "val_cft_align": 0.28, "val_acc": 1.0}]
    assert trainer.select_epoch(rows, "val_loss") == 2  # the lowest loss, the later of a tie (official <=)
    assert trainer.select_epoch(rows, "alignment") == 1  # epoch 2 loses top-1; of the tie 1/3 the earlier
    worse = [rows[0]] + [{**r, "val_acc": 0.5} for r in rows[1:]]
    assert trainer.select_epoch(worse, "alignment") == 0 and trainer.select_epoch(worse, "val_loss") == 2
    assert trainer.select_epoch(rows[:1], "alignment") == trainer.select_epoch(rows[:1], "val_loss") == 0


def test_alignment_selection_keeps_the_base_when_every_epoch_loses_top1(project, tmp_path, monkeypatch):
    real = trainer.validate

    def losing(*args, **kwargs):
        v = real(*args, **kwargs)
        losing.calls += 1
        return v if losing.calls == 1 else {**v, "val_acc": v["val_acc"] - 0.5}  # epoch 0 is the base

    losing.calls = 0
    monkeypatch.setattr(trainer, "validate", losing)
    s, _ = _fit(project, SPEC, tmp_path, epochs=2, selection="alignment")
    ep = pd.read_csv(SPEC.folder(tmp_path) / "epochs.csv")
    assert s["best_epoch"] == 0 and ep["best"].tolist() == [1, 0, 0]
    assert s["best_val_loss"] == pytest.approx(ep["val_loss"][0], rel=1e-5) and s["steps"] == 4
    base, (best, build) = _vit(project).state_dict(), checkpoints.load_checkpoint(SPEC.folder(tmp_path) / "best.pt")
    assert build["epoch"] == 0 and all(torch.equal(base[k], best.state_dict()[k]) for k in base)


def test_run_folder_layout_and_reuse(project, tmp_path):
    s, _ = _fit(project, SPEC, tmp_path, epochs=3, selection="val_loss")
    folder = SPEC.folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epochs.csv", "history.csv", "last.pt", "run.json"]
    hist, ep = pd.read_csv(folder / "history.csv"), pd.read_csv(folder / "epochs.csv")
    assert list(hist.columns) == list(trainer.STEP_COLUMNS) and list(ep.columns) == list(trainer.EPOCH_COLUMNS)
    assert ep["epoch"].tolist() == [0, 1, 2, 3] and len(hist) == 3 * 2 == s["steps"]  # 6 images, batch 4
    trained = ep[ep["epoch"] > 0]  # selection: lowest val loss, later epochs winning ties (official <=)
    assert s["best_epoch"] == trained["epoch"][trained["val_loss"] == trained["val_loss"].min()].max()
    assert ep["best"].tolist() == [int(e == s["best_epoch"]) for e in ep["epoch"]]
    model, cfg = checkpoints.load_checkpoint(folder / "best.pt")
    assert cfg["run"]["arm"] == "cft" and cfg["epoch"] == s["best_epoch"]
    assert json.loads((folder / "run.json").read_text())["counts"]["train"]["images"] == 6
    stamp = (folder / "run.json").stat().st_mtime_ns
    _fit(project, SPEC, tmp_path, epochs=3, selection="val_loss")  # same config: reused, not re-run
    assert (folder / "run.json").stat().st_mtime_ns == stamp
    s2, _ = _fit(project, SPEC, tmp_path, epochs=3)  # another selection: another config, run again
    assert s2["config"]["hash"] != s["config"]["hash"] and (folder / "run.json").stat().st_mtime_ns != stamp


def test_none_arm_is_the_base_model(project, tmp_path):
    spec = runspec.RunSpec("vit", "none", 0, "attnlrp", 1e-4)
    s, _ = _fit(project, spec, tmp_path)
    base = _vit(project).state_dict()
    best = checkpoints.load_checkpoint(spec.folder(tmp_path) / "best.pt")[0].state_dict()
    assert s["steps"] == 0 and all(torch.equal(base[k], best[k]) for k in base)


def test_dfr_arm_is_the_base_with_its_head_refitted_on_the_dfr_split(project, tmp_path):
    spec = runspec.RunSpec("vit", "dfr", 0, "attnlrp", 1e-4)
    s, _ = _fit(project, spec, tmp_path)
    base = _vit(project)
    b = base.state_dict()
    got = checkpoints.load_checkpoint(spec.folder(tmp_path) / "best.pt")[0].state_dict()
    head = {"head.weight", "head.bias"}
    assert s["steps"] == 0 and all(torch.equal(b[k], got[k]) for k in b if k not in head)  # features frozen
    d = world.load_split(project / "data" / "world", "dfr")
    want = dfr.reweight(base, d["images"], d["label"].astype(np.int64),
                        config.load(project / "params.yaml").bases.dfr_l2)
    assert all(torch.allclose(want.state_dict()[k], got[k]) for k in head)
    assert not torch.equal(b["head.weight"], got["head.weight"])


def test_the_dfr_refit_is_made_once_per_base_and_reused_by_its_other_class_subsets(project, tmp_path, monkeypatch):
    calls, real = [], dfr.reweight
    monkeypatch.setattr(dfr, "reweight", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(trainer, "_PROBES", {})
    P, _, data, bases = _setup(project)
    for seed, base, subset in ((0, 0, 0), (1, 0, 1), (2, 1, 0)):
        trainer.fit(runspec.RunSpec("vit", "dfr", seed, "attnlrp", 1e-4, base, subset), *bases["vit", base], data,
                    P.finetune, tmp_path)
    assert len(calls) == 2  # bases 0 and 1
    heads = [checkpoints.load_checkpoint(tmp_path / "vit" / "dfr" / f"seed{s}" / "best.pt")[0]
             .state_dict()["head.weight"] for s in (0, 1, 2)]
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


@pytest.mark.parametrize("role", ["vit", "cnn"])
def test_a_probe_scored_on_the_shared_backbone_scores_as_the_probe_model_does(project, role):
    """The world stage scores a base and its DFR probe in one backbone pass: each as its own forward would."""
    from cftlib.metrics import accuracy
    from cftlib.models.factory import predict

    base = checkpoints.load_checkpoint(pretrain.base_path(project / "models" / "base", role, 0))[0]
    d = world.load_split(project / "data" / "world", "dfr")
    probe = dfr.reweight(base, d["images"], d["label"].astype(np.int64), 1e-3)
    splits = ["test", "bg_conflict"]
    got = accuracy.split_accuracy(base, project / "data" / "world", splits, {"dfr": probe.get_classifier()})
    for name, model in (("base", base), ("dfr", probe)):
        for split in splits:
            a = world.load_split(project / "data" / "world", split)
            assert got[name][split] == np.mean(predict(model, a["images"]).argmax(1) == a["label"]), (name, split)
    assert got["base"] != got["dfr"]


def test_dfr_arm_needs_the_worlds_balanced_split():
    import yaml

    data = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    data["finetune"]["arms"] = [*data["finetune"]["arms"], "dfr"]
    with pytest.raises(config.ConfigError, match="finetune.arms: dfr refits the head on the world's habitat-balanced"):
        params.parse(data, "paper.yaml")


def _paths(root, out):
    return ["--masks", root / "data" / "masks", "--data", root / "data" / "world", "--base", root / "models" / "base",
            "--out", out, "--concepts", root / "data" / "concepts"]


def test_runs_side_by_side_equal_the_runs_one_by_one(project, tmp_path):
    only = ["--model", "vit", "--arm", "ce", "--arm", "cft"]
    launch.side_by_side("cftlib.stages.finetune", project / "params.yaml", 2, 1,
                        [*_paths(project, tmp_path / "two"), *only])
    threads = torch.get_num_threads()
    try:
        finetune.main(["--params", str(project / "params.yaml"), *map(str, _paths(project, tmp_path / "one")),
                       *only, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    one = sorted(p.parent.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("run.json"))
    two = sorted(p.parent.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("run.json"))
    assert one == two and len(one) >= 2  # both shards' runs, none twice
    for run in one:
        a = checkpoints.load_checkpoint(tmp_path / "one" / run / "best.pt")[0].state_dict()
        b = checkpoints.load_checkpoint(tmp_path / "two" / run / "best.pt")[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), run


def test_a_failed_side_by_side_worker_names_its_command(project, tmp_path):
    with pytest.raises(launch.LaunchError, match="--shard 1/2.*unknown arm|unknown arm.*--shard 1/2|--arm nope"):
        launch.side_by_side("cftlib.stages.finetune", project / "params.yaml", 2, 1,
                            [*_paths(project, tmp_path), "--arm", "nope"])
    with pytest.raises(argparse.ArgumentTypeError, match="need 0 <= i < n"):
        launch.shard("2/2")


def test_resume_after_kill_equals_uninterrupted_run(project, tmp_path, monkeypatch):
    whole, _ = _fit(project, SPEC, tmp_path / "whole", epochs=3)
    real, calls = trainer.train_step, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # in the third epoch (two steps per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        _fit(project, SPEC, tmp_path / "killed", epochs=3)
    folder = SPEC.folder(tmp_path / "killed")
    assert (folder / "state.pt").is_file() and not (folder / "run.json").exists()
    monkeypatch.setattr(trainer, "train_step", real)
    resumed, _ = _fit(project, SPEC, tmp_path / "killed", epochs=3)
    for name in ("history.csv", "epochs.csv"):
        assert (SPEC.folder(tmp_path / "whole") / name).read_text() == (folder / name).read_text(), name
    for name in ("best.pt", "last.pt"):
        a = checkpoints.load_checkpoint(SPEC.folder(tmp_path / "whole") / name)[0].state_dict()
        b = checkpoints.load_checkpoint(folder / name)[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not (folder / "state.pt").exists() and resumed["best_epoch"] == whole["best_epoch"]


def test_nonfinite_step_is_skipped_and_counted_and_persistent_ones_stop(project, tmp_path, monkeypatch):
    real, calls = trainer.batch_loss, []

    def nan_once(*args, **kwargs):
        terms, logits = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the first training step (call 1 is no step: validation does not use batch_loss)
            terms["loss"] = terms["loss"] * float("nan")
        return terms, logits

    monkeypatch.setattr(trainer, "batch_loss", nan_once)
    s, _ = _fit(project, SPEC, tmp_path / "once", epochs=2)
    hist = pd.read_csv(SPEC.folder(tmp_path / "once") / "history.csv")
    assert s["nonfinite_steps"] == 1 and hist["skipped"].sum() == 1

    def always_nan(*args, **kwargs):
        terms, logits = real(*args, **kwargs)
        terms["loss"] = terms["loss"] * float("nan")
        return terms, logits

    monkeypatch.setattr(trainer, "batch_loss", always_nan)
    with pytest.raises(trainer.NonFiniteLoss, match="2 consecutive"):  # within the first epoch's 2 steps
        _fit(project, SPEC, tmp_path / "always", epochs=3, max_nonfinite=2)
    # fewer steps in an epoch than max_nonfinite: the first epoch, all skipped, stops the run (not "no checkpoint")
    with pytest.raises(trainer.NonFiniteLoss, match=r"every one of the \d+ training steps so far \(epoch 1\)"):
        _fit(project, SPEC, tmp_path / "every", epochs=3, max_nonfinite=10_000)
    assert not (SPEC.folder(tmp_path / "every") / "best.pt").exists()


# ----------------------------------------------------------------------------- data and errors

def test_fewshot_data_respects_the_stores_policy_and_counts_it(project, tmp_path):
    store = tmp_path / "masks"
    shutil.copytree(project / "data" / "masks", store)
    manifest = json.loads((store / "manifest.json").read_text())
    first = next(r for r in manifest["items"] if r["split"] == "train")
    first.update(flag="empty", action="dropped")
    (store / "train" / f"{first['id']}.npz").unlink()
    (store / "manifest.json").write_text(json.dumps(manifest))
    pool = fewshot.Pool("world", project / "data" / "world")
    data = fewshot.load_data(store, pool, 3, 32)
    assert data["counts"]["train"]["actions"]["dropped"] == 1 and data["counts"]["train"]["flags"]["empty"] == 1
    assert data["counts"]["train"]["images"] == 4 * 3 - 1 and first["id"] not in data["train"]["ids"]
    fewer = fewshot.load_data(store, pool, 1, 32)
    assert fewer["counts"]["train"]["images"] + fewer["counts"]["train"]["actions"]["dropped"] == 4
    for subset in range(4):  # a run counts its own classes' images: the dropped one only where its class trains
        mine = fewshot.for_subset(data, subset)
        trains = first["label"] in mine["train_classes"]
        assert mine["counts"]["train"]["images"] == 2 * 3 - trains == len(mine["train"]["y"])
        assert mine["counts"]["train"]["actions"]["dropped"] == trains
        assert set(mine["val"]["labels"]) == set(data["classes"]) - set(mine["train_classes"])


def test_foreground_masks_are_the_silhouette(project):
    _, _, data, _ = _setup(project)
    fg, concept = data["train"]["foreground"], data["train"]["concept"]
    assert fg.shape == concept.shape and fg.sum() > 0 and not torch.equal(fg, concept)


def test_missing_masks_are_clear_errors(project, tmp_path):
    pool = fewshot.Pool("world", project / "data" / "world")
    with pytest.raises(GroundingError, match="no mask store; run the masks stage"):
        fewshot.load_data(tmp_path / "nowhere", pool, 3, 32)
    store = tmp_path / "masks"
    shutil.copytree(project / "data" / "masks", store)
    next((store / "train").glob("*.npz")).unlink()
    with pytest.raises(GroundingError, match="missing"):
        fewshot.load_data(store, pool, 3, 32)
    old = tmp_path / "old"  # a store from before per-seed class subsets: refused by name, before any image is read
    shutil.copytree(project / "data" / "masks", old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["header"]["classes"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GroundingError, match=r"old/manifest.json: a mask store without `classes`.*dvc repro masks"):
        fewshot.load_data(old, pool, 3, 32)
    with pytest.raises(GroundingError, match="without `classes`"):
        seen_classes(old, 0)


def test_k_larger_than_the_images_of_a_class_is_a_clear_error(project, tmp_path):
    pool = fewshot.Pool("world", project / "data" / "world")
    with pytest.raises(fewshot.FewShotError, match="finetune.k=4.*fewer images of class"):
        fewshot.load_data(project / "data" / "masks", pool, 4, 32)
    (tmp_path / "p.yaml").write_text("finetune: {k: 5}\n")
    with pytest.raises(config.ConfigError, match="finetune.k 5 is larger than masks.k 3"):
        params.load(tmp_path / "p.yaml")


@pytest.mark.parametrize("data, key", [
    ({"finetune": {"arms": ["cft", "cft2"]}}, "finetune.arms"),
    ({"finetune": {"relevance": "lrp"}}, "finetune.relevance"),
    ({"finetune": {"cnn": {"arms": ["robust"]}}}, "finetune.cnn.arms"),
    ({"finetune": {"loss": {"squeeze": 0.5}}}, "finetune.loss.squeeze"),
    ({"finetune": {"loss": {"reverse_mask": "1-M"}}}, "finetune.loss.reverse_mask"),
    ({"finetune": {"arms": "cft"}}, "finetune.arms"),
])
def test_wrong_arm_or_relevance_name_fails_naming_the_key(tmp_path, data, key):
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(config.ConfigError, match=key):
        params.load(tmp_path / "p.yaml")


def test_wrong_names_fail_in_the_library_too():
    with pytest.raises(runspec.FinetuneError, match="unknown arm 'cft2'"):
        runspec.get_arm("cft2")
    with pytest.raises(runspec.FinetuneError, match="attnlrp.*not a cnn"):
        runspec.plan(config.Finetune(cnn=config.FinetuneCNN(relevance="attnlrp")), 0)
    with pytest.raises(KeyError, match="unknown relevance method 'lrp'"):
        runspec.plan(config.Finetune(relevance="lrp"), 0)


def test_plan_is_every_model_arm_base_seed():
    vit_arms = len(config.Finetune().arms)
    runs = runspec.plan(config.Finetune(seeds=3, arm_seeds={}), 7)
    assert len(runs) == vit_arms * 3 + 3 * 3 and {r.seed for r in runs} == {7, 8, 9} and {r.base for r in runs} == {0}
    assert {r.relevance for r in runs if r.model == "cnn"} == {"gradcam"}
    runs = runspec.plan(config.Finetune(seeds=2, arm_seeds={}), 7, bases=3)
    assert len(runs) == (vit_arms + 3) * 3 * 2
    for arm in ("none", "cft"):  # seeds are numbered across bases: the seed alone names the (base, subset) pair
        mine = [(r.base, r.seed, r.subset) for r in runs if r.model == "vit" and r.arm == arm]
        assert mine == [(0, 7, 7), (0, 8, 8), (1, 9, 7), (1, 10, 8), (2, 11, 7), (2, 12, 8)]  # subsets crossed
    assert len({r.folder("out") for r in runs}) == len(runs)


def test_a_secondary_arm_runs_on_the_first_class_subsets_of_every_base(tmp_path):
    runs = runspec.plan(config.Finetune(seeds=5, arm_seeds={"robustvit": 2}), 0, bases=3)
    mine = [(r.base, r.subset) for r in runs if r.arm == "robustvit"]
    assert mine == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    cft = {r.seed for r in runs if r.arm == "cft"}
    assert len(cft) == 15 and {r.seed for r in runs if r.arm == "robustvit"} < cft  # paired with CFT by seed
    for bad, why in (("{rrx: 1}", "unknown arm 'rrx'"), ("{robustvit: 6}", "robustvit: 6 must be a whole number")):
        (tmp_path / "p.yaml").write_text(f"finetune:\n  arm_seeds: {bad}\n")
        with pytest.raises(config.ConfigError, match=f"finetune.arm_seeds.*{why}"):
            params.load(tmp_path / "p.yaml")


# ----------------------------------------------------------------------------- processes

def _cli(root, out, *extra, nproc=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--params", "params.yaml", "--masks", "data/masks", "--data", "data/world", "--base", "models/base",
            "--out", str(out), "--model", "vit", "--arm", "cft", "--seed", "0", *extra]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
           if nproc > 1 else [sys.executable]) + ["-m", "cftlib.stages.finetune", *args]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(project, tmp_path):
    """torchrun with 2 CPU processes (gloo): the batch is sharded, gradients summed with shard weights, rank 0
    writes; the history and weights equal a single process's within float tolerance."""
    _cli(project, tmp_path / "one")
    _cli(project, tmp_path / "two", nproc=2)
    one, two = (SPEC.folder(tmp_path / d) for d in ("one", "two"))
    for name in ("history.csv", "epochs.csv"):
        a, b = pd.read_csv(one / name), pd.read_csv(two / name)
        assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-4, atol=1e-6, equal_nan=True), name
    a, b = (checkpoints.load_checkpoint(f / "last.pt")[0].state_dict() for f in (one, two))
    for k in a:
        if k.endswith("attn.qkv.bias"):  # the key bias: zero gradient in exact arithmetic (softmax is shift
            a[k], b[k] = a[k].view(3, -1)[0::2], b[k].view(3, -1)[0::2]  # invariant); Adam scales its noise
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert json.loads((two / "run.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_finetune_stage_runs_on_smoke_profile_deterministically(tmp_path, small_world):
    """Notebooks 01-03 on the smoke world (00's outputs made by the fixture): runs, plots, metrics, figures, and
    a byte-identical executed notebook when re-run (finished runs are reused, their files unchanged)."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(ROOT / "profiles" / "smoke.yaml", proj / "params.yaml")
    shutil.copytree(small_world[2], proj / "data" / "world")
    P = config.load(proj / "params.yaml")
    for b in range(P.bases.seeds):
        for role, cfg, size in (("vit", P.pretrain, P.world.image_size), ("cnn", P.finetune.cnn.pretrain, None)):
            model, build = pretrain.fresh(cfg, P.world.n_species, size, b)
            checkpoints.save_checkpoint(pretrain.base_path(proj / "models" / "base", role, b), model, build)
    out = []
    for name in ("01_concepts", "02_masks", "03_finetune", "03_finetune"):
        nbrun.run(proj / "notebooks" / f"{name}.ipynb", proj / "executed" / f"{name}.ipynb", {"progress": False},
                  cwd=proj)
        out.append((proj / "executed" / f"{name}.ipynb").read_bytes())
    assert out[2] == out[3], "executed notebook must be byte-identical for identical inputs"
    m = json.loads((proj / "reports" / "finetune.json").read_text())
    assert len(m["runs"]) == len(runspec.plan(P.finetune, P.base.seed, P.bases.seeds))
    assert json.loads((proj / "metrics" / "finetune.json").read_text())["runs"]["runs"] == len(m["runs"])
    for f in ("plots/finetune_steps.csv", "plots/finetune_epochs.csv", "plots/finetune_val_align.csv",
              "figures/finetune_curves.png", "figures/relevance_methods.png", "figures/relevance_cnn.png",
              "figures/relevance_arms.png", "models/finetune/vit/cft/seed0/best.pt",
              "models/finetune/cnn/cft/seed1/best.pt"):
        assert (proj / f).is_file(), f


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_uninterrupted_result(project, tmp_path):
    """A real kill -9 of the CLI mid-run: the atomic per-epoch state survives, and the re-run resumes from it
    to the same files as a run never interrupted."""
    import time

    import yaml

    long = yaml.safe_load((project / "params.yaml").read_text())
    long["finetune"]["epochs"] = 8
    (project / "long.yaml").write_text(yaml.safe_dump(long))
    _cli(project, tmp_path / "whole", "--params", "long.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cftlib.stages.finetune", "--params", "long.yaml", "--masks", "data/masks", "--data",
           "data/world", "--base", "models/base", "--out", str(tmp_path / "killed"), "--model", "vit", "--arm", "cft",
           "--seed", "0"]
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = SPEC.folder(tmp_path / "killed") / "state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert state.exists() and not (SPEC.folder(tmp_path / "killed") / "run.json").exists(), "killed too late"
    _cli(project, tmp_path / "killed", "--params", "long.yaml")
    whole, killed = SPEC.folder(tmp_path / "whole"), SPEC.folder(tmp_path / "killed")
    for name in ("history.csv", "epochs.csv"):
        assert (whole / name).read_text() == (killed / name).read_text(), name


def test_distributed_is_a_no_op_outside_torchrun_and_refuses_more_processes_than_gpus(monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with launch.distributed(cuda=False, what="finetune.processes"):
        assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(launch.LaunchError, match=r"finetune.processes: 2 processes, one per GPU.*has 1"):
        with launch.distributed(cuda=True, what="finetune.processes"):
            pass


def test_device_resolves_auto_and_names_the_key_when_cuda_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch.device("auto", "finetune.device") == torch.device("cpu")
    with pytest.raises(launch.LaunchError, match="evaluate.device: cuda, but torch sees no CUDA"):
        launch.device("cuda", "evaluate.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch.device("auto", "finetune.device") == torch.device("cuda", 1)  # this torchrun process's GPU

