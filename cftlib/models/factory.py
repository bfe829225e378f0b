"""Model factory: any timm model by name and kwargs, built without downloads, with explicit (non-fused)
attention so relevance methods can read and differentiate through it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import partial

import numpy as np
import timm
import torch
from timm.layers import PatchEmbed

from cftlib.data.augment import to_tensor


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


@contextlib.contextmanager
def attention_path(model: torch.nn.Module, fused: bool):
    """timm attention on PyTorch's fused kernel (`fused`) or the explicit path for the call, each module's own
    setting restored after. Relevance reads the attention map and the fused CPU kernel has no second
    derivative, so maps and input-gradient penalties need the explicit path; inference and first derivatives
    may take the fused one (on the world's ViT on 2 CPU cores, half the time of a forward pass)."""
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    flags = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = fused
    try:
        yield model
    finally:
        for m, f in zip(mods, flags):
            m.fused_attn = f


def pre_logit_batches(model: torch.nn.Module, images: np.ndarray, batch_size: int = 500) -> Iterator[torch.Tensor]:
    """Pre-logit features (B, D) of uint8 images, batch by batch (timm's `forward_head(pre_logits=True)`), on the
    model's device and its fused attention path; the caller sets eval mode and no_grad."""
    device = next(model.parameters()).device
    with attention_path(model, fused=True):
        for i in range(0, len(images), batch_size):
            yield model.forward_head(model.forward_features(to_tensor(images[i:i + batch_size]).to(device)),
                                     pre_logits=True)


@torch.no_grad()
def predict_heads(model: torch.nn.Module, heads: list[torch.nn.Module], images: np.ndarray,
                  batch_size: int = 500) -> list[np.ndarray]:
    """Logits (N, classes) of the model and of each classifier in `heads` on the model's pre-logit features
    (timm's `forward_head(pre_logits=True)`; e.g. a DFR probe's refitted layer), in eval mode: the backbone runs
    once for them all. The model's own logits are those of `predict`."""
    model.eval()
    out = [[] for _ in range(len(heads) + 1)]
    for pre in pre_logit_batches(model, images, batch_size):
        for o, head in zip(out, [model.get_classifier(), *heads]):
            o.append(head(pre).float().cpu())
    return [torch.cat(o).numpy() for o in out]


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits (N, classes) for uint8 images, in eval mode, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    with attention_path(model, fused=True):
        return torch.cat([model(to_tensor(images[i:i + batch_size]).to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)]).numpy()
