"""Model factory and checkpoints: explicit attention, weights-only round trip, base training learns."""

import numpy as np
import pytest
import torch

from cftlib.data import augment, world
from cftlib.models import checkpoints, factory, zoo
from cftlib.training import pretrain

TINY = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0)


def test_factory_builds_explicit_attention_vit():
    m = factory.build_model("vit_tiny_patch16_224", 5, img_size=32, **TINY)
    assert m.patch_embed.grid_size == (4, 4)
    assert all(not blk.attn.fused_attn for blk in m.blocks)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_predict_takes_the_fused_path_and_gives_the_explicit_paths_logits():
    torch.manual_seed(0)
    model = factory.build_model("vit_tiny_patch16_224", 10, img_size=32, **{**TINY, "depth": 2})
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    seen = []
    model.blocks[0].attn.register_forward_pre_hook(lambda m, i: seen.append(m.fused_attn))
    fused = factory.predict(model, images, batch_size=4)
    assert seen == [True, True]  # two batches, both on the fused kernel
    with torch.no_grad():
        explicit = model(augment.to_tensor(images)).numpy()
    assert all(not m.attn.fused_attn for m in model.blocks)  # the explicit path restored for relevance
    np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_attention_path_restores_each_modules_own_setting_after_an_error():
    model = factory.build_model("vit_tiny_patch16_224", 10, img_size=32, **{**TINY, "depth": 2})
    model.blocks[1].attn.fused_attn = True
    with pytest.raises(RuntimeError), factory.attention_path(model, fused=False):
        assert not any(b.attn.fused_attn for b in model.blocks)
        raise RuntimeError("inside")
    assert [b.attn.fused_attn for b in model.blocks] == [False, True]


def test_factory_builds_a_cnn():
    m = factory.build_model("resnet18", 4)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    m = factory.build_model("vit_tiny_patch16_224", 5, img_size=32, **TINY).eval()
    cfg = dict(name="vit_tiny_patch16_224", num_classes=5, img_size=32, kwargs=TINY)
    checkpoints.save_checkpoint(tmp_path / "m.pt", m, cfg)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickled code needed
    assert set(raw) == {"state_dict", "config"}
    loaded, cfg2 = checkpoints.load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(3, 3, 32, 32)
    assert cfg2 == cfg
    assert torch.equal(m(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "none.pt")


def test_to_tensor_normalises():
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[..., 0] = 255
    x = augment.to_tensor(img)
    assert x.shape == (1, 3, 4, 4)
    assert torch.allclose(x[0, 0], torch.ones(4, 4)) and torch.allclose(x[0, 1], -torch.ones(4, 4))


def test_lr_schedule_warms_up_then_decays(smoke_params):
    cfg = smoke_params.pretrain
    lrs = [pretrain.warmup_cosine_lr(s, 100, cfg) for s in range(100)]
    top = int(np.argmax(lrs))
    assert lrs[0] < lrs[top] == pytest.approx(cfg.lr, rel=0.02)
    assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1:])) and lrs[-1] < 0.01 * cfg.lr


def test_training_learns_and_is_seeded(small_world, smoke_params):
    """A few epochs on the smoke world beat chance on train, and the same seed gives the same weights."""
    cfg, seed, out = small_world
    tr, va = world.load_split(out, "train"), world.load_split(out, "val")
    p = smoke_params.pretrain
    p = type(p)(**{**p.__dict__, "epochs": 6})
    torch.set_num_threads(1)
    m1, build = pretrain.fresh(p, cfg.n_species, cfg.image_size, seed)
    m2, _ = pretrain.fresh(p, cfg.n_species, cfg.image_size, seed)
    m1, hist = pretrain.train(m1, p, tr, va, seed)
    m2, hist2 = pretrain.train(m2, p, tr, va, seed)
    assert hist == hist2
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert max(h["train_acc"] for h in hist) > 1.5 / cfg.n_species
    assert build["kwargs"] == p.model_kwargs


def test_keep_epoch_ships_that_epochs_model_and_the_run_goes_on(small_world, smoke_params):
    cfg, seed, out = small_world
    tr, va = world.load_split(out, "train"), world.load_split(out, "val")
    p = type(smoke_params.pretrain)(**{**smoke_params.pretrain.__dict__, "epochs": 3, "keep_epoch": 1})
    torch.set_num_threads(1)
    snaps = []
    model, _ = pretrain.fresh(p, cfg.n_species, cfg.image_size, seed)
    model, hist = pretrain.train(model, p, tr, va, seed, on_epoch=lambda r, m: snaps.append(
        {k: v.clone() for k, v in m.state_dict().items()}))
    assert [h["epoch"] for h in hist] == [1, 2, 3] and len(snaps) == 3
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snaps[0][k]) for k in kept)  # the model after epoch 1, not the last
    assert not all(torch.equal(kept[k], snaps[2][k]) for k in kept)
    model, _ = pretrain.fresh(p, cfg.n_species, cfg.image_size, seed)  # a study stops after epoch 2 of the schedule
    _, early = pretrain.train(model, p, tr, va, seed, on_epoch=lambda r, m: r["epoch"] >= 2)
    assert early == hist[:2]  # the same epochs as the full run's: its schedule, not a 2-epoch one
    assert pretrain.kept_epoch(hist, p) is hist[0]  # the rule the notebook reports is the one train applied
    best = type(p)(**{**p.__dict__, "keep_epoch": 0})
    assert pretrain.kept_epoch(hist, best)["val_acc"] == max(h["val_acc"] for h in hist)


def test_shipped_reads_the_frozen_stages_checkpoints_and_history_back(tmp_path, smoke_params):
    import pandas as pd

    P = smoke_params
    history = []
    for role, cfg in pretrain.roles(P).items():
        model, build = pretrain.fresh(cfg, pretrain.outputs(P), P.world.image_size if role == "vit" else None, 0)
        checkpoints.save_checkpoint(tmp_path / f"{role}.pt", model, build)
        history += [{"epoch": e, "val_acc": 0.1 * e, "model": role} for e in (1, 2)]
    pd.DataFrame(history).to_csv(tmp_path / "history.csv", index=False)
    got = pretrain.shipped(P, tmp_path, tmp_path / "history.csv")
    assert set(got) == set(pretrain.roles(P))
    for role, (model, _, h) in got.items():
        assert [r["epoch"] for r in h] == [1, 2] and "model" not in h[0]
        saved = checkpoints.load_checkpoint(tmp_path / f"{role}.pt")[0].state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_renormalise_gives_a_zoo_model_its_own_statistics_and_leaves_world_models_alone():
    img = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    x = augment.to_tensor(img)
    assert checkpoints.renormalise(x, {"name": "vit_tiny_patch16_224"}) is x
    e = zoo.get("deit_s")
    want = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - torch.tensor(e.mean).view(1, 3, 1, 1)) \
        / torch.tensor(e.std).view(1, 3, 1, 1)
    assert torch.allclose(checkpoints.renormalise(x, zoo.build_config("deit_s", 1000, {})), want, atol=1e-5)
    assert checkpoints.normalisation(zoo.build_config("vit_b", 1000, {})) == ((0.5,) * 3, (0.5,) * 3)
