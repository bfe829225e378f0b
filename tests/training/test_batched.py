"""Runs trained batched (one stacked model, one step for all) end as the same runs trained one by one: the stacked
model computes each copy's outputs, maps and gradients; M runs give `trainer.fit`'s weights and files; a killed
batch resumes to the uninterrupted result; a non-finite step skips only its run."""

import dataclasses

import pandas as pd
import pytest
import torch

from cftlib import relevance
from cftlib.core import config
from cftlib.models import checkpoints, stacked
from cftlib.stages import finetune
from cftlib.training import batched, pretrain, runspec, trainer


@pytest.fixture(scope="module")
def project(smoke_project):
    return smoke_project


def _setup(root, **kw):
    P = config.load(root / "params.yaml")
    cfg = P.finetune.model_copy(update=kw)
    _, data, bases = finetune.setup(P.model_copy(update=dict(finetune=cfg)), root / "data" / "masks",
                                    root / "data" / "world", root / "models" / "base", root / "runs",
                                    root / "data" / "concepts")
    return cfg, data, bases


def _float64(data, bases):
    """The runs' data and bases in float64: in float32 the second-order backward's rounding (about 1e-6 of the
    largest gradients) decides the sign of near-zero gradients, which Adam's first steps turn into ±lr."""
    data = {**data, **{s: {**data[s], "x": data[s]["x"].double()} for s in ("train", "val")}}
    return data, {k: (m.double(), build) for k, (m, build) in bases.items()}


def _specs(arm):
    """Three runs on both bases and three class subsets."""
    return [runspec.RunSpec("vit", arm, seed, "attnlrp", 1e-4, base, subset)
            for seed, base, subset in ((0, 0, 0), (1, 1, 1), (2, 0, 2))]


def _weights(folder, which):
    return checkpoints.load_checkpoint(folder / f"{which}.pt")[0].state_dict()


def _assert_same_runs(specs, a, b, atol):
    for s in specs:
        for which in ("best", "last"):
            x, y = _weights(s.folder(a), which), _weights(s.folder(b), which)
            worst = max((x[k].double() - y[k].double()).abs().max().item() for k in x)
            assert worst <= atol, (s.name, which, worst)
        for name in ("history.csv", "epochs.csv"):
            x, y = pd.read_csv(s.folder(a) / name), pd.read_csv(s.folder(b) / name)
            pd.testing.assert_frame_equal(x, y, check_exact=False, rtol=1e-4, atol=1e-6)


def test_stacked_model_gives_each_copy_its_outputs_maps_and_gradients(smoke_params):
    """In float64, so that a difference is one of the computation and not of float32 rounding."""
    models = []
    for seed in range(3):
        m = pretrain.fresh(smoke_params.pretrain, 4, 32, seed)[0].double().eval()
        for bn in m.modules():  # statistics that differ between copies
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(generator=torch.Generator().manual_seed(seed))
                bn.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed))
        models.append(m)
    model = stacked.stack(models)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    r, logits = relevance.explain(model, x, "attnlrp", target=y, create_graph=True)
    r.square().sum().backward()
    for i, m in enumerate(models):
        ri, li = relevance.explain(m, x[2 * i:2 * i + 2], "attnlrp", target=y[2 * i:2 * i + 2], create_graph=True)
        ri.square().sum().backward()
        torch.testing.assert_close(logits[2 * i:2 * i + 2], li, rtol=0, atol=1e-10)
        torch.testing.assert_close(r[2 * i:2 * i + 2], ri, rtol=0, atol=1e-10)
        for (k, p), (_, q) in zip(model.named_parameters(), m.named_parameters()):
            assert (p.grad is None) == (q.grad is None), k
            if q.grad is not None:
                torch.testing.assert_close(p.grad[i], q.grad, rtol=1e-9, atol=1e-9, msg=k)
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in stacked.split(model, i).items())


@pytest.mark.parametrize("arm,f64,atol", [("cft", True, 1e-9), ("ce", True, 1e-9), ("ce", False, 1e-5)])
def test_batched_runs_equal_the_runs_one_by_one(project, tmp_path, arm, f64, atol):
    """Two epochs of two steps; in float64 the runs agree to rounding (about 1e-12 here)."""
    cfg, data, bases = _setup(project)
    if f64:
        data, bases = _float64(data, bases)
    specs = _specs(arm)
    for s in specs:
        trainer.fit(s, *bases["vit", s.base], data, cfg, tmp_path / "one")
    batched.fit_runs(specs, [bases["vit", s.base] for s in specs], data, cfg, tmp_path / "batched")
    _assert_same_runs(specs, tmp_path / "one", tmp_path / "batched", atol)


def test_killed_batch_resumes_to_the_uninterrupted_result_and_fit_can_finish_it(project, tmp_path, monkeypatch):
    cfg, data, bases = _setup(project, epochs=3)
    specs, base_of = _specs("cft"), lambda specs: [bases["vit", s.base] for s in specs]
    batched.fit_runs(specs, base_of(specs), data, cfg, tmp_path / "whole")
    real, calls = batched.train_step, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # in the third epoch (two steps per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batched, "train_step", killed)
    for out in ("killed", "by_fit"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            batched.fit_runs(specs, base_of(specs), data, cfg, tmp_path / out)
        assert all((s.folder(tmp_path / out) / "state.pt").is_file() for s in specs)
    monkeypatch.setattr(batched, "train_step", real)
    batched.fit_runs(specs, base_of(specs), data, cfg, tmp_path / "killed")
    _assert_same_runs(specs, tmp_path / "whole", tmp_path / "killed", 0.0)
    for s in specs:  # fit resumes a batched run's state (float32 rounding apart: see _float64)
        trainer.fit(s, *bases["vit", s.base], data, cfg, tmp_path / "by_fit")
        assert not (s.folder(tmp_path / "by_fit") / "state.pt").exists()
    assert all(len(pd.read_csv(s.folder(tmp_path / "by_fit") / "history.csv")) == 6 for s in specs)


def test_a_nonfinite_step_skips_only_its_run(project, tmp_path, monkeypatch):
    cfg, data, bases = _setup(project)
    specs = _specs("cft")
    batched.fit_runs(specs, [bases["vit", s.base] for s in specs], data, cfg, tmp_path / "clean")
    real, calls = batched.per_run_loss, []

    def nan_once(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the second step: run 1's loss
            terms[1]["loss"] = terms[1]["loss"] * float("nan")
        return terms

    monkeypatch.setattr(batched, "per_run_loss", nan_once)
    batched.fit_runs(specs, [bases["vit", s.base] for s in specs], data, cfg, tmp_path / "nan")
    skipped = [pd.read_csv(s.folder(tmp_path / "nan") / "history.csv")["skipped"].tolist() for s in specs]
    assert skipped == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    for s in (specs[0], specs[2]):
        x, y = _weights(s.folder(tmp_path / "clean"), "last"), _weights(s.folder(tmp_path / "nan"), "last")
        assert all(torch.equal(x[k], y[k]) for k in x), s.name


def test_runs_that_differ_in_arm_or_lr_do_not_batch(project):
    cfg, data, bases = _setup(project)
    for specs in ([_specs("cft")[0], _specs("ce")[1]], [_specs("cft")[0], dataclasses.replace(_specs("cft")[1], lr=1)]):
        with pytest.raises(ValueError, match="share their"):
            batched.fit_runs(specs, [bases["vit", s.base] for s in specs], data, cfg, "unused")
    with pytest.raises(ValueError, match="no batched training"):
        batched.check([runspec.RunSpec("vit", "rrr", 0, "attnlrp", 1e-4)])


def test_groups_take_the_batchable_vit_runs_of_one_arm_lr_and_size_in_plan_order(project, monkeypatch):
    """finetune.batch_runs: CFT and CE runs stack in groups of at most that many, never across arms or lrs; runs with
    input-gradient losses (GradMask, RRR), the untrained arms and the CNN are left to trainer.fit."""
    cfg, data, bases = _setup(project, arms=["none", "ce", "gradmask", "cft"], seeds=3,
                              arm_lr={"gradmask": 1e-4, "rrr": 1e-4, "rrda": 3e-5}, batch_runs=2)
    runs = runspec.plan(cfg, 0, bases=2)
    got = [[(r.arm, r.seed) for r in g] for g in batched.groups(runs, data, 2)]
    assert got == [[("ce", 0), ("ce", 1)], [("ce", 2), ("ce", 3)], [("ce", 4), ("ce", 5)],
                   [("cft", 0), ("cft", 1)], [("cft", 2), ("cft", 3)], [("cft", 4), ("cft", 5)]]
    mixed = [dataclasses.replace(r, lr=2e-4) if r.seed == 1 else r for r in runs]
    assert ([[r.seed for r in g] for g in batched.groups(mixed, data, 4) if g[0].arm == "cft"]
            == [[0, 2, 3, 4], [5], [1]])
    seen = []
    monkeypatch.setattr(batched, "fit_runs", lambda group, b, *a, **k: seen.append([r.seed for r in group]))
    batched.fit_groups(runs, bases, data, cfg, "unused")
    assert seen == [[0, 1], [2, 3], [4, 5]] * 2
    seen.clear()
    batched.fit_groups(runs, bases, data, cfg.model_copy(update=dict(batch_runs=1)), "unused")
    assert seen == []  # the default: every run by trainer.fit
