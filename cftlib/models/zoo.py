"""The paper-scale model zoo: pretrained ImageNet models (docs/paper.md §3.2-3.3) by the name `params.yaml`
uses (`pretrain.zoo`, `finetune.cnn.zoo`), each with its own normalisation, RobustViT's per-model
learning rate and temperature, and where its released weights come from.

    model = build("vit_b", weights="")            # the hub / timm cache, or WeightsMissing saying what to fetch
    models.save_checkpoint(path, model, build_config("vit_b", 1000, {}))   # reloads without any download

Weights load through timm's own path (`pretrained_cfg_overlay=dict(file=...)`), so a local file may be
the released .pth / .npz, timm's model.safetensors, or any state dict of the same architecture.
`python -m cftlib.models.zoo` prints the table with each entry's weights status.
"""

from __future__ import annotations

import pickle
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


class WeightsMissing(FileNotFoundError):
    """A zoo model's weights are neither a local file nor in the hub cache, and cannot be downloaded."""


@dataclass(frozen=True)
class Entry:
    """A pretrained model. `timm_id` carries the pretrained tag; `file`/`url` are the released weights
    (loadable as a local file); `head_file`/`head_url` a separately released ImageNet head (DINOv2)."""
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

    @property
    def hub_id(self) -> str:
        return f"timm/{self.timm_id}"


ZOO: dict[str, Entry] = {e.name: e for e in (
    Entry("vit_b", "vit_base_patch16_224.orig_in21k_ft_in1k", "vit", INCEPTION, INCEPTION, 3e-6, 1.0,
          "jx_vit_base_p16_224-80ecf9dd.pth",
          "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
          "jx_vit_base_p16_224-80ecf9dd.pth",
          "ViT-B/16, original Google in21k -> in1k weights; the only model the official code trains"),
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
          "ImageNet linear head on [CLS, mean of patch tokens] (torch.hub dinov2_vitb14_reg4_lc)",
          head_file="dinov2_vitb14_reg4_linear_head.pth",
          head_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_linear_head.pth"),
    Entry("resnet50", "resnet50.tv_in1k", "cnn", IMAGENET_MEAN, IMAGENET_STD, DEFAULT_LR, 1.0,
          "resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
          "ResNet-50, torchvision's original ImageNet weights (pytorch-grad-cam's example model)"),
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


def missing(name: str, weights: str = "", what: str = "pretrain.weights") -> str | None:
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
    msg = missing(name, weights, what)
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
        else:  # online, not cached: missing() allowed the download
            state = torch.hub.load_state_dict_from_url(e.head_url, map_location="cpu", weights_only=True)
        model.head.load_state_dict(state)
    return model


def build_config(name: str, num_classes: int, overrides: dict) -> dict:
    """What `models.save_checkpoint` stores for a zoo model: enough for `models.load_checkpoint` to
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
    """One row per entry: name, timm id, kind, lr, temperature and weights status."""
    return [dict(name=e.name, timm_id=e.timm_id, kind=e.kind, lr=f"{e.lr:g}", temperature=e.temperature,
                 weights="available" if missing(e.name) is None
                 else "download " + " + ".join(u for u in (e.url, e.head_url) if u))
            for e in ZOO.values()]


def main() -> None:
    with pd.option_context("display.max_colwidth", None, "display.width", 250):
        print(pd.DataFrame(table()).to_string(index=False))


if __name__ == "__main__":
    main()
