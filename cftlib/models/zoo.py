"""The paper-scale model zoo: pretrained ImageNet models (docs/paper.md §3.2-3.3) by the name `params.yaml`
uses (`pretrain.zoo`, `finetune.cnn.zoo`), each with its own normalisation, RobustViT's per-model
learning rate and temperature, the paper's Table 8 values for its four models, and where its released
weights come from.

    model = build("vit_b", weights="")            # the hub / timm cache, or WeightsMissing saying what to fetch
    checkpoints.save_checkpoint(path, model, build_config("vit_b", 1000, {}))   # reloads without any download

Weights load through timm's own path (`pretrained_cfg_overlay=dict(file=...)`), so a local file may be
the released .pth / .npz, timm's model.safetensors, or any state dict of the same architecture.
`python -m cftlib.models.zoo` prints the table with each entry's weights status; `python -m cftlib.models.zoo
NAME` prints the `dvc exp run -S` flags that give one of the paper's models its Table 8 values.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import timm
import torch
import torch.nn as nn
from huggingface_hub import try_to_load_from_cache

from cftlib.core import hub
from cftlib.core.io import CorruptFile, first_line, read_torch
from cftlib.models.factory import explicit_attention

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION = (0.5, 0.5, 0.5)
DEFAULT_LR = 3e-6  # the official train.py's --lr default (RobustViT's ViT-B), for models RobustViT did not tune


@dataclass(frozen=True)
class Table8:
    """The paper's per-model fine-tuning values (Table 8, docs/paper.md §3.3): CFT's lr, picked by a grid search in
    [5e-7, 5e-6], and the baselines' (RRDA's lr equals RRR's in every column; GradMask's weights are the same for
    all four models). RRR's two weights are read as the profile reads them (profiles/paper.yaml)."""
    lr: float
    gradmask_lr: float
    rrr_lr: float
    rrr_lambda: float
    rrr_l2: float

    def params(self, cnn: bool = False) -> dict[str, float]:
        """The params.yaml values (dotted keys) that give a model these values: the ViT's whole set, or the CNN's lr
        (the CNN runs no baselines)."""
        if cnn:
            return {"finetune.cnn.lr": self.lr}
        return {"finetune.lr": self.lr, "finetune.arm_lr.gradmask": self.gradmask_lr,
                "finetune.arm_lr.rrr": self.rrr_lr, "finetune.arm_lr.rrda": self.rrr_lr,
                "finetune.loss.rrr_lambda": self.rrr_lambda, "finetune.loss.rrr_l2": self.rrr_l2}


# Table 8's columns ViT-B / DINOv2 / DeiT / ConvNeXt-V2 (the official train.py's default lr is 3e-6)
VIT_B_T8 = Table8(5e-7, 1e-3, 2e-6, 2e-6, 1e-10)
DINOV2_T8 = Table8(6e-7, 5e-3, 1e-5, 2e-8, 1e-10)
DEIT_T8 = Table8(8e-7, 1e-3, 5e-6, 2e-6, 1e-10)
CONVNEXT_T8 = Table8(3e-6, 5e-2, 3e-6, 2e-6, 1e-8)


class WeightsMissing(FileNotFoundError):
    """A zoo model's weights are neither a local file nor in the hub cache, and cannot be downloaded."""


@dataclass(frozen=True)
class Entry:
    """A pretrained model. `timm_id` carries the pretrained tag; `file`/`url` are the released weights
    (loadable as a local file); `head_file`/`head_url` a separately released ImageNet head (DINOv2); `lr`
    RobustViT's per-model lr (DEFAULT_LR where it has none); `table8` the paper's values where it is (our
    reading of) one of the paper's four models."""
    name: str
    timm_id: str
    kind: str  # "vit" | "cnn"
    mean: tuple
    std: tuple
    lr: float
    temperature: float
    file: str
    url: str
    description: str
    img_size: int = 224
    head_file: str = ""
    head_url: str = ""
    table8: Table8 | None = None

    @property
    def hub_id(self) -> str:
        return f"timm/{self.timm_id}"


ZOO: dict[str, Entry] = {e.name: e for e in (
    Entry("vit_b", "vit_base_patch16_224.orig_in21k_ft_in1k", "vit", INCEPTION, INCEPTION, 3e-6, 1.0,
          "jx_vit_base_p16_224-80ecf9dd.pth",
          "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
          "jx_vit_base_p16_224-80ecf9dd.pth",
          "ViT-B/16, original Google in21k -> in1k weights; the only model the official code trains, the paper's "
          "ViT-B (its Table 1 base 80.41 top-1, timm's 81.78)", table8=VIT_B_T8),
    Entry("vit_b_augreg", "vit_base_patch16_224.augreg_in21k_ft_in1k", "vit", INCEPTION, INCEPTION, 6e-7, 1.0,
          "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz",
          "https://storage.googleapis.com/vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-"
          "sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz",
          "ViT-B/16 AugReg (Steiner et al.) in21k -> in1k, RobustViT's AR-B"),
    Entry("deit_s", "deit_small_patch16_224.fb_in1k", "vit", IMAGENET_MEAN, IMAGENET_STD, 1e-6, 0.55,
          "deit_small_patch16_224-cd65a155.pth",
          "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
          "DeiT-S/16 (Touvron et al.), ImageNet-1k only"),
    Entry("deit_b", "deit_base_patch16_224.fb_in1k", "vit", IMAGENET_MEAN, IMAGENET_STD, 8e-7, 0.65,
          "deit_base_patch16_224-b5f2ef4d.pth",
          "https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth",
          "DeiT-B/16 (Touvron et al.), ImageNet-1k only"),
    Entry("dinov2_b_reg", "vit_base_patch14_reg4_dinov2.lvd142m", "vit", IMAGENET_MEAN, IMAGENET_STD,
          DEFAULT_LR, 1.0, "dinov2_vitb14_reg4_pretrain.pth",
          "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
          "DINOv2 ViT-B/14 with 4 registers at 224 px (pos. embedding resampled by timm) plus Meta's "
          "ImageNet linear head on [CLS, mean of patch tokens] (torch.hub dinov2_vitb14_reg_lc, layers=1)",
          head_file="dinov2_vitb14_reg4_linear_head.pth",
          head_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_linear_head.pth"),
    # The paper's DINOv2 is "its classification variant": Meta's backbone plus its ImageNet linear head (the same
    # weights as transformers' facebook/dinov2-{small,base}-imagenet1k-1-layer), without registers as those are.
    # Its Table 1 base, 81.07 top-1, is Meta's ViT-S/14 linear figure (81.1; B/14 84.5, 3.4 points off, where ViT-B
    # and DeiT-III sit 1.4 and 1.6 below timm's): the size is our reading; dinov2_b is the base-size alternative.
    Entry("dinov2_s", "vit_small_patch14_dinov2.lvd142m", "vit", IMAGENET_MEAN, IMAGENET_STD, DEFAULT_LR, 1.0,
          "dinov2_vits14_pretrain.pth",
          "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
          "DINOv2 ViT-S/14 at 224 px plus Meta's ImageNet linear head on [CLS, mean of patch tokens] "
          "(torch.hub dinov2_vits14_lc, layers=1); the paper's DINOv2 by its base accuracy",
          head_file="dinov2_vits14_linear_head.pth",
          head_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_linear_head.pth",
          table8=DINOV2_T8),
    Entry("dinov2_b", "vit_base_patch14_dinov2.lvd142m", "vit", IMAGENET_MEAN, IMAGENET_STD, DEFAULT_LR, 1.0,
          "dinov2_vitb14_pretrain.pth",
          "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
          "DINOv2 ViT-B/14 at 224 px plus Meta's ImageNet linear head on [CLS, mean of patch tokens] "
          "(torch.hub dinov2_vitb14_lc, layers=1); the paper's DINOv2 if it ran the base size",
          head_file="dinov2_vitb14_linear_head.pth",
          head_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_linear_head.pth",
          table8=DINOV2_T8),
    # The paper's DeiT-III: its base 82.20 (IN-v2 72.43) is nearer timm's ImageNet-1k-only weights, 83.80 (73.42),
    # than the in22k -> in1k ones, 85.73 (76.53); the official ViT_new.py names the same file.
    Entry("deit3_b", "deit3_base_patch16_224.fb_in1k", "vit", IMAGENET_MEAN, IMAGENET_STD, DEFAULT_LR, 1.0,
          "deit_3_base_224_1k.pth", "https://dl.fbaipublicfiles.com/deit/deit_3_base_224_1k.pth",
          "DeiT-III B/16 (Touvron et al. 2022), ImageNet-1k only; the paper's DeiT", table8=DEIT_T8),
    Entry("resnet50", "resnet50.tv_in1k", "cnn", IMAGENET_MEAN, IMAGENET_STD, DEFAULT_LR, 1.0,
          "resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
          "ResNet-50, torchvision's original ImageNet weights (pytorch-grad-cam's example model)"),
    # The paper's CNN. Its base, 86.49 top-1 at 224 px, lies between timm's ConvNeXt-V2 base in22k -> in1k (86.75)
    # and huge in1k (86.26), every other size 0.7+ points away; base, the size of the paper's ViT-B and DeiT-III (89 M
    # parameters; huge has 660 M). The paper explains it with feature maps x LRP scores (after IIA); here Grad-CAM on
    # the last stage's output (cftlib.relevance.gradients), a declared deviation.
    Entry("convnextv2_b", "convnextv2_base.fcmae_ft_in22k_in1k", "cnn", IMAGENET_MEAN, IMAGENET_STD, DEFAULT_LR, 1.0,
          "convnextv2_base_22k_224_ema.pt",
          "https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_base_22k_224_ema.pt",
          "ConvNeXt-V2 base (Woo et al. 2023), FCMAE pretrained, in22k -> in1k at 224 px; the paper's CNN",
          table8=CONVNEXT_T8),
)}


def get(name: str) -> Entry:
    """The zoo entry called `name`; a wrong name fails listing the choices."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {sorted(ZOO)}") from None


class ClsMeanPool(nn.Module):
    """DINOv2's linear-probe input: concat(CLS token, mean of patch tokens), registers excluded."""

    def __init__(self, num_prefix_tokens: int):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(1)], dim=-1)


def _head_path(e: Entry, weights: str) -> Path:
    """Where the separate head is read: next to a local weights file, else in torch.hub's cache."""
    folder = Path(weights).expanduser().parent if weights else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / e.head_file


def _hub_cached(e: Entry) -> bool:
    return any(isinstance(try_to_load_from_cache(e.hub_id, f), str)
               for f in ("model.safetensors", "pytorch_model.bin"))


def missing_weights(name: str, weights: str = "", what: str = "pretrain.weights") -> str | None:
    """None when `name`'s weights can be loaded (the local file `weights`, or with weights == "" the hub
    cache or a reachable hub), else a message naming the params key `what`, what to download and
    where to put it. Loads nothing."""
    e = get(name)
    head = f" and Meta's ImageNet head {e.head_url} saved next to it as {e.head_file}" if e.head_file else ""
    if weights:
        path = Path(weights).expanduser()
        lost = [str(p) for p in (path, _head_path(e, weights) if e.head_file else None) if p and not p.is_file()]
        if not lost:
            return None
        return (f"{what}: zoo model {name!r} ({e.timm_id}): {', '.join(lost)} not found. Download {e.url}{head}, "
                f"and set {what} to the weights file's path (or leave {what} empty to use the hub cache)")
    head_cached = not e.head_file or _head_path(e, "").is_file()
    if (_hub_cached(e) and head_cached) or not hub.offline():
        return None
    where = f"the hub model {e.hub_id} is not in the Hugging Face cache" + (
        "" if head_cached else f" or {e.head_file} is not in {_head_path(e, '').parent}")
    return (f"{what}: zoo model {name!r} ({e.timm_id}): {where}, and the hub is unreachable (or HF_HUB_OFFLINE "
            f"is set). Either fetch it where there is network (`huggingface-cli download {e.hub_id}`"
            + (f", and {e.head_url} into {_head_path(e, '').parent}" if e.head_file else "")
            + f") and copy the cache here, or download {e.url}{head} and set {what} to the weights file's path")


def _create(e: Entry, num_classes: int, pretrained: bool, file: str = "", **overrides) -> nn.Module:
    """The timm model with the entry's head, explicit attention, normalisation and input size."""
    if e.kind == "vit":
        overrides.setdefault("img_size", e.img_size)
    overlay = dict(file=str(Path(file).expanduser()), custom_load=file.endswith(".npz")) if file else None
    timm_classes = 0 if e.head_file else num_classes  # a separate head is attached below
    model = timm.create_model(e.timm_id, pretrained=pretrained, pretrained_cfg_overlay=overlay,
                              num_classes=timm_classes, **overrides)
    if e.head_file:
        model.attn_pool = ClsMeanPool(model.num_prefix_tokens)  # timm's forward_head pools through it,
        model.pool_include_prefix = True  # given all tokens
        model.head_hidden_size = 2 * model.embed_dim
        model.head = nn.Linear(model.head_hidden_size, num_classes)
        model.num_classes = num_classes
    size = overrides.get("img_size", e.img_size)
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "mean": e.mean, "std": e.std,
                                                "num_classes": num_classes, "input_size": (3, size, size)}
    return explicit_attention(model).eval()


def build(name: str, weights: str = "", num_classes: int = 1000, *, what: str = "pretrain.weights",
          **overrides) -> nn.Module:
    """The pretrained zoo model `name` in eval mode, with explicit attention and its own mean/std in
    `pretrained_cfg`. weights: a local file (any format timm loads), or "" for the hub / timm cache
    (downloaded only when online). num_classes != 1000: a new, randomly initialised head (timm's rule).
    overrides: timm architecture kwargs (tests build tiny versions). Raises WeightsMissing naming `what`."""
    e = get(name)
    msg = missing_weights(name, weights, what)
    if msg:
        raise WeightsMissing(msg)
    try:
        model = _create(e, num_classes, True, weights, **overrides)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        if not weights:
            raise
        raise CorruptFile(f"{weights} ({what}): timm could not load it as {name}'s weights "
                          f"({first_line(err)}); download it again "
                          f"({e.url})") from None
    if e.head_file and num_classes == 1000:
        path = _head_path(e, weights)
        if path.is_file():
            state = read_torch(path, fix=f"delete it and download it again ({e.head_url})")
        else:  # online, not cached: missing_weights() allowed the download
            state = torch.hub.load_state_dict_from_url(e.head_url, map_location="cpu", weights_only=True)
        model.head.load_state_dict(state)
    return model


def build_config(name: str, num_classes: int, overrides: dict) -> dict:
    """What `checkpoints.save_checkpoint` stores for a zoo model: enough for `checkpoints.load_checkpoint` to
    rebuild the architecture (`rebuild`) without downloading weights."""
    e = get(name)
    kwargs = {k: v for k, v in overrides.items() if k != "img_size"}
    return dict(zoo=name, name=e.timm_id, num_classes=num_classes,
                img_size=overrides.get("img_size", e.img_size), kwargs=kwargs)


def rebuild(cfg: dict) -> nn.Module:
    """The randomly initialised architecture of a `build_config` dict (weights come from the checkpoint)."""
    e = get(cfg["zoo"])
    size = {"img_size": cfg["img_size"]} if e.kind == "vit" else {}
    return _create(e, cfg["num_classes"], False, **size, **cfg.get("kwargs", {}))


def table() -> list[dict]:
    """One row per entry: name, timm id, kind, RobustViT's lr, Table 8's lr, temperature and weights status."""
    return [dict(name=e.name, timm_id=e.timm_id, kind=e.kind, lr=f"{e.lr:g}",
                 table8_lr=f"{e.table8.lr:g}" if e.table8 else "-", temperature=e.temperature,
                 weights="available" if missing_weights(e.name) is None
                 else "download " + " + ".join(u for u in (e.url, e.head_url) if u))
            for e in ZOO.values()]


def table8_flags(name: str) -> str:
    """`dvc exp run` flags that make `name` the run's ViT (or CNN) with its Table 8 values."""
    e = get(name)
    if e.table8 is None:
        raise ValueError(f"zoo model {name!r} is not one of the paper's four models (no Table 8 values); those are "
                         f"{sorted(n for n, x in ZOO.items() if x.table8)}")
    cnn = e.kind == "cnn"
    values = {"finetune.cnn.zoo" if cnn else "pretrain.zoo": name, **e.table8.params(cnn)}
    return " ".join(f"-S {k}={v:g}" if isinstance(v, float) else f"-S {k}={v}" for k, v in values.items())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args:
        print(table8_flags(args[0]))
        return
    with pd.option_context("display.max_colwidth", None, "display.width", 250):
        print(pd.DataFrame(table()).to_string(index=False))


if __name__ == "__main__":
    main()
