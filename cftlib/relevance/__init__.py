"""Relevance maps R(x; theta) for CFT's alignment loss: a registry of explanation methods, looked up by
the name `params.yaml` uses, and `explain`, which returns the map and the logits of the same forward.

CFT trains on its own explanations, so the map must be differentiable in the weights: with
`create_graph=True` the loss backward runs through the relevance computation (a second-order
backward). The paper names AttnLRP; the official code trains on GAE rollout (docs/paper.md §3.4).

    rel, logits = explain(model, x, "attnlrp", target=y, create_graph=True)   # rel: (B, 1, H, W)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from .gradients import gradcam, input_x_gradient
from .rollout import gae_rollout

OUTPUTS = ("patch", "pixel", "input")


@dataclass(frozen=True)
class Method:
    """A relevance method and what it promises. `fn(model, x, target, *, kind, level, create_graph)`
    returns (raw map at `level`, logits of the same forward).

    differentiable: with `create_graph=True` the map carries a gradient to the weights (usable in
        CFT's loss). exact_gradient: that gradient is the true derivative of the map (checked against
        finite differences); False for GAE rollout, whose ds/dA are constants as in the official code.
    conservative: on a model without additive sources (biases, position embeddings, class token) the raw
        map sums exactly to the target logit. Only CP-LRP is: AttnLRP's softmax rule in gradient × input
        form lets part of the logit leave through the attention logits (about half at random init; lxt
        behaves the same), so it is not. levels: where the map can be read, "grid" (ViT patch tokens, CNN
        last feature map) and/or "input" (pixels).
    """
    name: str
    fn: Callable
    model_kinds: tuple[str, ...]
    levels: tuple[str, ...]
    differentiable: bool
    exact_gradient: bool
    conservative: bool


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("attnlrp", partial(input_x_gradient, rule="attnlrp"), ("vit",), ("grid", "input"),
           differentiable=True, exact_gradient=True, conservative=False),
    Method("cplrp", partial(input_x_gradient, rule="cp"), ("vit",), ("grid", "input"),
           differentiable=True, exact_gradient=True, conservative=True),
    Method("gae_rollout", gae_rollout, ("vit",), ("grid",),
           differentiable=True, exact_gradient=False, conservative=False),
    Method("grad_x_input", input_x_gradient, ("vit", "cnn"), ("grid", "input"),
           differentiable=True, exact_gradient=True, conservative=False),
    Method("gradcam", gradcam, ("cnn", "vit"), ("grid",),
           differentiable=True, exact_gradient=True, conservative=False),
)}


def get(name: str) -> Method:
    """The registered method called `name`; a wrong name fails listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown relevance method {name!r}; choose one of {sorted(METHODS)}") from None


def model_kind(model: torch.nn.Module) -> str:
    """"vit" for timm VisionTransformers (incl. DeiT-distilled, registers), "cnn" for other timm
    models with `forward_features`/`forward_head` (e.g. ResNet)."""
    if isinstance(model, VisionTransformer):
        return "vit"
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return "cnn"
    raise TypeError(f"{type(model).__name__}: relevance needs a timm ViT or a timm CNN")


def minmax(r: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample min-max to [0, 1], as the official code does, but with the range clamped at `eps`
    so that a constant map gives zeros instead of NaN (docs/paper.md §6.15)."""
    lo = r.amin(tuple(range(1, r.ndim)), keepdim=True)
    hi = r.amax(tuple(range(1, r.ndim)), keepdim=True)
    return (r - lo) / (hi - lo).clamp_min(eps)


def explain(model, x, method="attnlrp", target=None, *, create_graph=False, output="pixel",
            normalize=True, eps=1e-8):
    """Relevance of `target` (class index, (B,) tensor, or None = each sample's argmax) for images
    x (B, C, H, W), and the logits of the same forward (for CFT's confidence term).

    output: "patch" (B, 1, h, w) on the model's grid; "pixel" (B, 1, H, W), the grid map upsampled
    bilinearly (the official pipeline's map); "input" (B, 1, H, W), relevance of each input pixel
    (summed over channels). normalize: per-sample min-max (see `minmax`); False gives the raw, signed
    map. create_graph: keep the map differentiable in the weights; otherwise it is detached.
    All samples are explained by one backward of sum_b z_b[t_b], so a layer that mixes samples
    (BatchNorm in train mode) mixes their maps: put such models in eval mode.
    """
    m = get(method)
    kind = model_kind(model)
    level = "input" if output == "input" else "grid"
    if output not in OUTPUTS:
        raise ValueError(f"output {output!r}: choose one of {OUTPUTS}")
    if kind not in m.model_kinds or level not in m.levels:
        raise ValueError(f"{method} does not give output={output!r} for a {kind}")
    with torch.enable_grad():  # relevance needs autograd, even when called under no_grad for a picture
        r, logits = m.fn(model, x, target, kind=kind, level=level, create_graph=create_graph)
    if output == "pixel":
        r = F.interpolate(r, size=x.shape[-2:], mode="bilinear", align_corners=False)
    if normalize:
        r = minmax(r, eps)
    return (r if create_graph else r.detach()), logits
