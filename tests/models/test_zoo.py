"""Model zoo: every entry, as a tiny version of its architecture, loads a "released" weights file through
timm, gives the saved model's outputs, explains with relevance, round-trips through checkpoints, and
says exactly what to download when its weights are missing."""

import re
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from conftest import ROOT

from cftlib import relevance
from cftlib.core import config, io
from cftlib.models import checkpoints, zoo

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)
TINY_CNN = {"resnet50": dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8),
            "convnextv2_b": dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))}
NAMES = sorted(zoo.ZOO)


@pytest.fixture(autouse=True)
def no_hub(tmp_path, monkeypatch):
    """Offline, with empty Hugging Face and torch.hub caches (whatever this machine has cached)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))


def tiny(name):
    return TINY_VIT if zoo.ZOO[name].kind == "vit" else TINY_CNN[name]


def reference(name, seed=0):
    """A tiny timm model of the entry's architecture with every weight random (no zero-init that could
    hide a failed load), and for DINOv2 Meta's head (weight, bias) kept apart: (model, head)."""
    e = zoo.ZOO[name]
    size = {"img_size": 224} if e.kind == "vit" else {}
    model = timm.create_model(e.timm_id, pretrained=False, num_classes=0 if e.head_file else 1000,
                              **size, **tiny(name)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if k.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.1)
    if not e.head_file:
        return model, None
    return model, (torch.randn(1000, 2 * model.embed_dim, generator=g) * 0.1, torch.randn(1000, generator=g) * 0.1)


def reference_logits(model, head, x):
    """Logits of the reference; DINOv2's written out as Meta's linear classifier does it."""
    if head is None:
        return model(x)
    t = model.forward_features(x)
    return torch.cat([t[:, 0], t[:, model.num_prefix_tokens:].mean(1)], 1) @ head[0].T + head[1]


def to_meta_dinov2(sd):
    """timm's DINOv2 state dict in Meta's released layout (the inverse of timm's conversion): a mask token, and with
    registers the class token's position embedding folded back into the embedding table."""
    sd = dict(sd)
    if "reg_token" in sd:
        p0 = torch.randn(1, 1, sd["pos_embed"].shape[-1])
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([p0, sd["pos_embed"]], 1)
        sd["cls_token"] = sd["cls_token"] - p0
    sd["mask_token"] = torch.zeros(1, sd["pos_embed"].shape[-1])
    return sd


def to_meta_deit3(sd):
    """timm's DeiT-III state dict as released: {"model": ...} with LayerScale as `gamma_1`, `gamma_2`."""
    return {"model": {re.sub(r"ls([12])\.gamma", r"gamma_\1", k): v for k, v in sd.items()}}


def to_meta_convnext(sd):
    """timm's ConvNeXt-V2 state dict in Meta's released layout (the inverse of timm's checkpoint_filter_fn)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.fc.", "head.")
        k = k.replace("head.norm.", "norm.").replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
        out[k] = v.reshape(1, 1, 1, -1) if ".grn." in k else v
    return {"model": out}


def write_weights(name, folder, fmt="pth"):
    """A fake pretrained file as released: a state dict (.pth / .safetensors), DeiT's {"model": ...}, DeiT-III's and
    ConvNeXt-V2's Meta layouts, DINOv2's with the linear head saved next to it. Returns (path, model, head)."""
    model, head = reference(name)
    sd = model.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{fmt}"
    if fmt == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    elif name.startswith("deit3"):
        torch.save(to_meta_deit3(sd), path)
    elif name.startswith("deit"):
        torch.save({"model": sd}, path)
    elif name.startswith("dinov2"):
        torch.save(to_meta_dinov2(sd), path)
    elif name.startswith("convnextv2"):
        torch.save(to_meta_convnext(sd), path)
    else:
        torch.save(sd, path)
    if head is not None:
        torch.save({"weight": head[0], "bias": head[1]}, path.parent / zoo.ZOO[name].head_file)
    return path, model, head


def x(batch=2):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_registry_matches_timm_and_robustvit():
    """Entries name real timm checkpoints, their normalisation, released file and RobustViT's table."""
    for e in zoo.ZOO.values():
        cfg = timm.models.get_pretrained_cfg(e.timm_id).to_dict()
        assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (e.mean, e.std), e.name
        assert cfg["url"] == e.url and e.url.endswith("/" + e.file), e.name
        assert cfg["hf_hub_id"] == e.hub_id, e.name
    assert {n: zoo.ZOO[n].lr for n in ("vit_b", "vit_b_augreg", "deit_s", "deit_b")} == dict(
        vit_b=3e-6, vit_b_augreg=6e-7, deit_s=1e-6, deit_b=8e-7)
    assert {n: e.temperature for n, e in zoo.ZOO.items() if e.temperature != 1.0} == dict(deit_b=0.65, deit_s=0.55)
    for e in zoo.ZOO.values():
        assert e.head_url.endswith("/" + e.head_file) if e.head_file else not e.head_url, e.name


def test_table8_is_the_papers():
    """Table 8's columns ViT-B / DINOv2 / DeiT / ConvNeXt-V2 (docs/paper.md §3.3), on the entries read as those."""
    T = zoo.Table8
    want = dict(vit_b=T(5e-7, 1e-3, 2e-6, 2e-6, 1e-10), dinov2_s=T(6e-7, 5e-3, 1e-5, 2e-8, 1e-10),
                dinov2_b=T(6e-7, 5e-3, 1e-5, 2e-8, 1e-10), deit3_b=T(8e-7, 1e-3, 5e-6, 2e-6, 1e-10),
                convnextv2_b=T(3e-6, 5e-2, 3e-6, 2e-6, 1e-8))
    assert {n: e.table8 for n, e in zoo.ZOO.items() if e.table8} == want
    assert all(5e-7 <= t.lr <= 5e-6 for t in want.values())  # the paper's grid
    assert {n: zoo.ZOO[n].kind for n in want} == dict(vit_b="vit", dinov2_s="vit", dinov2_b="vit", deit3_b="vit",
                                                      convnextv2_b="cnn")


def test_paper_profile_runs_its_models_with_table8():
    P = config.load(ROOT / "profiles" / "paper.yaml")
    for name, cnn in ((P.pretrain.zoo, False), (P.finetune.cnn.zoo, True)):
        assert zoo.get(name).kind == ("cnn" if cnn else "vit")
        for key, value in zoo.get(name).table8.params(cnn).items():
            node = P
            for part in key.split("."):
                node = node[part] if isinstance(node, dict) else getattr(node, part)
            assert node == value, key


@pytest.mark.parametrize("name", [n for n, e in zoo.ZOO.items() if e.table8])
def test_table8_flags_switch_the_profile_through_dvc(name, tmp_path):
    """The flags `python -m cftlib.models.zoo NAME` prints, applied as `dvc exp run -S` applies them (dvc writes
    `5e-07`, a string to YAML 1.1), give a params.yaml that loads with that model and its Table 8 values."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "profiles" / "paper.yaml").read_text())
    flags = zoo.table8_flags(name).split()
    assert flags[::2] == ["-S"] * (len(flags) // 2)
    apply_overrides(params, flags[1::2])
    assert re.search(r"lr: \de-0\d", params.read_text())  # dvc's own spelling of the lr, no dot
    P = config.load(params)
    e = zoo.get(name)
    if e.kind == "cnn":
        assert (P.finetune.cnn.zoo, P.finetune.cnn.lr, P.pretrain.zoo) == (name, e.table8.lr, "vit_b")
    else:
        t = e.table8
        assert (P.pretrain.zoo, P.finetune.lr, P.finetune.loss.rrr_lambda, P.finetune.loss.rrr_l2) == (
            name, t.lr, t.rrr_lambda, t.rrr_l2)
        assert P.finetune.arm_lr == dict(gradmask=t.gradmask_lr, rrr=t.rrr_lr, rrda=t.rrr_lr)
    with pytest.raises(ValueError, match="resnet50.*not one of the paper's four models"):
        zoo.table8_flags("resnet50")


@pytest.mark.parametrize("name", NAMES)
def test_build_loads_released_file(name, tmp_path):
    path, ref, head = write_weights(name, tmp_path / "w")
    assert zoo.missing_weights(name, str(path)) is None
    model = zoo.build(name, str(path), **tiny(name))
    e = zoo.ZOO[name]
    assert not model.training
    assert (model.pretrained_cfg["mean"], model.pretrained_cfg["std"]) == (e.mean, e.std)
    assert all(not m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    with torch.no_grad():
        torch.testing.assert_close(model(x()), reference_logits(ref, head, x()), rtol=1e-5, atol=1e-5)  # fused
    assert relevance.model_kind(model) == e.kind


def test_safetensors_file_loads(tmp_path):
    path, ref, _ = write_weights("vit_b_augreg", tmp_path, "safetensors")
    model = zoo.build("vit_b_augreg", str(path), **tiny("vit_b_augreg"))
    with torch.no_grad():
        torch.testing.assert_close(model(x()), ref(x()), rtol=1e-5, atol=1e-5)  # ref: fused attention


@pytest.mark.parametrize("name", ["vit_b", "dinov2_b_reg"])
def test_other_class_count_keeps_backbone_new_head(name, tmp_path):
    path, ref, _ = write_weights(name, tmp_path)
    model = zoo.build(name, str(path), num_classes=10, **tiny(name))
    assert model(x(1)).shape == (1, 10)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, ref.blocks[1].mlp.fc2.weight)


@pytest.mark.parametrize("name", ["vit_b", "dinov2_b_reg", "dinov2_s"])
def test_build_from_hub_cache_offline(name, tmp_path):
    """weights == "": timm's file from the (here fake) Hugging Face cache, DINOv2's head from torch.hub's."""
    e = zoo.ZOO[name]
    ref, head = reference(name)
    assert zoo.missing_weights(name) is not None
    snap = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--timm--{e.timm_id}"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "snapshots" / ("0" * 40)).mkdir(parents=True)
    safetensors.torch.save_file(ref.state_dict(), snap / "snapshots" / ("0" * 40) / "model.safetensors")
    if head is not None:
        assert "head" in zoo.missing_weights(name) and e.head_url in zoo.missing_weights(name)
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        folder.mkdir(parents=True)
        torch.save({"weight": head[0], "bias": head[1]}, folder / e.head_file)
    assert zoo.missing_weights(name) is None
    model = zoo.build(name, **tiny(name))
    with torch.no_grad():
        torch.testing.assert_close(model(x()), reference_logits(ref, head, x()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_relevance_is_differentiable(name, tmp_path):
    """The zoo model is something cftlib.relevance explains, with a finite, non-zero weight gradient."""
    path, _, _ = write_weights(name, tmp_path)
    model = zoo.build(name, str(path), **tiny(name))
    weight = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(2))
    methods = ["attnlrp", "gae_rollout"] if zoo.ZOO[name].kind == "vit" else ["gradcam"]
    for method in methods:
        model.zero_grad()
        r, logits = relevance.explain(model, x(), method, create_graph=True, output="pixel")
        assert r.shape == (2, 1, 224, 224) and torch.isfinite(r).all() and logits.shape == (2, 1000), method
        (r * weight).mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), method
        assert sum(g.abs().sum() for g in grads) > 0, method


def test_gradcam_on_convnext_weights_its_last_stage_output(tmp_path):
    """ConvNeXt-V2's Grad-CAM map is relu(sum_c mean(ds/dA_c) A_c) over the last stage's output (before the head's
    pooling and LayerNorm), on its 7 x 7 grid at 224 px: checked against a forward hook on that stage."""
    path, _, _ = write_weights("convnextv2_b", tmp_path)
    model = zoo.build("convnextv2_b", str(path), **tiny("convnextv2_b"))
    got, logits = relevance.explain(model, x(), "gradcam", output="patch", normalize=False)
    seen = {}
    hook = model.stages[-1].register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    z = model(x())
    hook.remove()
    (g,) = torch.autograd.grad(z.gather(1, z.argmax(1, keepdim=True)).sum(), seen["a"])
    want = (g.mean((2, 3), keepdim=True) * seen["a"]).sum(1, keepdim=True).relu()
    assert got.shape == (2, 1, 7, 7) and want.abs().sum() > 0
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(logits, z)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_needs_no_download(name, tmp_path):
    path, _, _ = write_weights(name, tmp_path / "w")
    model = zoo.build(name, str(path), **tiny(name))
    cfg = zoo.build_config(name, 1000, tiny(name))
    assert cfg["img_size"] == 224 and cfg["name"] == zoo.ZOO[name].timm_id
    checkpoints.save_checkpoint(tmp_path / "ck.pt", model, {**cfg, "epoch": 3})
    path.unlink()  # nothing to load weights from but the checkpoint (and the hub is offline, its cache empty)
    loaded, cfg2 = checkpoints.load_checkpoint(tmp_path / "ck.pt")
    assert cfg2 == {**cfg, "epoch": 3}
    assert loaded.pretrained_cfg["mean"] == zoo.ZOO[name].mean
    assert all(not m.fused_attn for m in loaded.modules() if hasattr(m, "fused_attn"))
    with torch.no_grad():
        assert torch.equal(loaded(x()), model(x()))


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_say_what_to_download(name, tmp_path):
    e = zoo.ZOO[name]
    msg = zoo.missing_weights(name, what="finetune.cnn.weights")
    for part in ("finetune.cnn.weights", name, e.url, e.hub_id, "HF_HUB_OFFLINE"):
        assert part in msg, part
    with pytest.raises(zoo.WeightsMissing, match=e.hub_id) as err:
        zoo.build(name, **tiny(name))
    assert isinstance(err.value, FileNotFoundError) and "pretrain.weights" in str(err.value)
    gone = tmp_path / "nowhere" / e.file
    with pytest.raises(FileNotFoundError) as err:
        zoo.build(name, str(gone), what="finetune.cnn.weights", **tiny(name))
    for part in (str(gone), e.url, "finetune.cnn.weights"):
        assert part in str(err.value), part


@pytest.mark.parametrize("name", ["vit_b", "resnet50"])
def test_damaged_weights_name_the_file_the_key_and_the_download(name, tmp_path):
    path, _, _ = write_weights(name, tmp_path / "w")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(io.CorruptFile) as err:
        zoo.build(name, str(path), what="finetune.cnn.weights", **tiny(name))
    msg = str(err.value)
    assert msg.startswith(f"{path} (finetune.cnn.weights): timm could not load it as {name}'s weights")
    assert zoo.ZOO[name].url in msg


def test_dinov2_without_its_head_file_names_it(tmp_path):
    path, _, _ = write_weights("dinov2_b_reg", tmp_path)
    (tmp_path / zoo.ZOO["dinov2_b_reg"].head_file).unlink()
    msg = zoo.missing_weights("dinov2_b_reg", str(path))
    assert str(tmp_path / zoo.ZOO["dinov2_b_reg"].head_file) in msg and zoo.ZOO["dinov2_b_reg"].head_url in msg
    assert str(path) + "," not in msg  # the backbone file is there


def test_unknown_name_lists_the_zoo():
    for call in (lambda: zoo.missing_weights("vit_h"), lambda: zoo.build("vit_h"),
                 lambda: zoo.build_config("vit_h", 9, {})):
        with pytest.raises(KeyError, match="vit_h.*" + ".*".join(NAMES)):
            call()


def test_table_prints_status(capsys):
    zoo.main([])
    out = capsys.readouterr().out
    for e in zoo.ZOO.values():
        line = next(ln for ln in out.splitlines() if ln.split()[0] == e.name)
        assert e.timm_id in line and e.url in line and f"{e.lr:g}" in line
        assert (f"{e.table8.lr:g}" if e.table8 else " - ") in line
    zoo.main(["deit3_b"])
    assert capsys.readouterr().out.strip() == zoo.table8_flags("deit3_b")
