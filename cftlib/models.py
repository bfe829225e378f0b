"""Model factory and checkpoints: any timm model by name and kwargs, built without downloads, with
explicit (non-fused) attention so relevance methods can read and differentiate through it."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
from timm.layers import PatchEmbed

from .io import atomic_path, read_torch, remedy

MEAN, STD = 0.5, 0.5  # timm's ViT normalisation (inception style)


class ConvStem(PatchEmbed):
    """timm's patch embedding with its one strided convolution replaced by a convolutional stem (Xiao et al.,
    "Early convolutions help transformers see better", NeurIPS 2021): per factor 2 of the patch size a 3x3
    stride-2 and a 3x3 stride-1 convolution, each with BatchNorm and GELU, then a 1x1 projection. The same
    token grid, learned from far fewer images (the world's parts: 99 % vs 38 % held out, study in README).
    `conv_stem` (a ViT kwarg of `build_model`) is the first width, doubled at each stage."""

    def __init__(self, *args, stem_width: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.patch_size[0]
        n = int(math.log2(p))
        if p != self.patch_size[1] or 2 ** n != p or n < 1:
            raise ValueError(f"conv_stem needs a square power-of-two patch_size, not {self.patch_size}")
        layers, c = [], self.proj.in_channels
        for i in range(n):
            w = stem_width * 2 ** i
            for stride, c_in in ((2, c), (1, w)):
                layers += [torch.nn.Conv2d(c_in, w, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(w), torch.nn.GELU()]
            c = w
        self.proj = torch.nn.Sequential(*layers, torch.nn.Conv2d(c, self.proj.out_channels, 1))


def build_model(name: str, num_classes: int, img_size: int | None = None, **kwargs) -> torch.nn.Module:
    """A randomly initialised timm model; ViT attention switched to the explicit path. The kwarg
    `conv_stem: <width>` gives a ViT the convolutional patch embedding of `ConvStem` (0: timm's own)."""
    if img_size is not None:
        kwargs["img_size"] = img_size
    if kwargs.get("conv_stem"):
        kwargs["embed_layer"] = partial(ConvStem, stem_width=int(kwargs["conv_stem"]))
    kwargs.pop("conv_stem", None)
    return explicit_attention(timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs))


def explicit_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every timm attention module to the explicit path (relevance reads the attention map)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) images → normalised float (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN) / STD


def normalisation(build: dict) -> tuple[tuple, tuple]:
    """(mean, std) a model expects: a zoo model's own (ImageNet statistics for DeiT, DINOv2, ResNet; the
    official code fed 0.5 to all of them, docs/paper.md §3.1), else the 0.5 of `to_tensor` it was trained with."""
    if "zoo" in build:
        from .zoo import get

        e = get(build["zoo"])
        return tuple(e.mean), tuple(e.std)
    return (MEAN,) * 3, (STD,) * 3


def renormalise(x: torch.Tensor, build: dict) -> torch.Tensor:
    """`to_tensor`'s output, normalised for the model of `build` instead (the identity for 0.5 models)."""
    mean, std = normalisation(build)
    if mean == (MEAN,) * 3 and std == (STD,) * 3:
        return x
    m, s = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    return (x * STD + MEAN - m) / s


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict) -> None:
    """Weights and the build config only (loadable with `weights_only=True`), written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint written by `save_checkpoint` (a zoo model's config, with its
    `zoo` key, through `zoo.rebuild`; no weights are downloaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; {remedy(path)}")
    ckpt = read_torch(path, map_location=map_location)
    cfg = ckpt["config"]
    if "zoo" in cfg:
        from . import zoo  # zoo imports this module

        model = zoo.rebuild(cfg)
    else:
        model = build_model(cfg["name"], cfg["num_classes"], cfg.get("img_size"), **cfg.get("kwargs", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits (N, classes) for uint8 images, in eval mode."""
    model.eval()
    return torch.cat([model(to_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]).numpy()
