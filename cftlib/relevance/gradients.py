"""Gradient-based relevance: activation x (rule-modified) gradient for ViTs and CNNs, and Grad-CAM (a CNN's last
feature map; on a ViT the patch tokens entering the last block's attention, the form the paper's Table 7 compares).

All methods explain the score s = sum_b z_b[t_b] (the target logits summed over the batch: samples
are independent, so one backward gives every sample's map). `input_x_gradient` with an LRP rule set
is AttnLRP / CP-LRP (see `attnlrp.py`); with none it is plain gradient x input.

The paper explains its CNN (ConvNeXt-V2) with feature maps combined with LRP scores, after IIA (Barkan et al.,
ICCV 2023), and says no more; we train and evaluate CNNs on Grad-CAM instead, a declared deviation (the claims
report's deviations table). On a ConvNeXt the map is read at the last stage's output, before the head's pooling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cftlib.models.factory import attention_path

from .attnlrp import patched, token_grid


def target_score(logits: torch.Tensor, target=None) -> torch.Tensor:
    """sum_b z_b[t_b]; `target` is a class index, a (B,) tensor, or None for each sample's argmax."""
    if target is None:
        target = logits.detach().argmax(1)
    target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
    return logits.gather(1, target[:, None]).sum()


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x if x.requires_grad else x.detach().requires_grad_(True)


def cnn_forward(model: nn.Module, x: torch.Tensor):
    """(last feature map (B, C, h, w), logits) of a timm CNN, from one forward."""
    feats = model.forward_features(x)
    if feats.ndim != 4 or feats.shape[1] != model.num_features:
        raise TypeError(f"{type(model).__name__}.forward_features gave {tuple(feats.shape)}, not (B, C, h, w)")
    return feats, model.forward_head(feats)


def input_x_gradient(model, x, target=None, *, kind, level, create_graph=False, rule=None):
    """sum over channels of a * ds/da, at a = the input pixels (`level="input"`) or the patch grid
    (`level="grid"`: ViT patch-embedding output, CNN last feature map). Returns (map, logits)."""
    if level == "input":
        x = _leaf(x)
    if kind == "vit":
        with patched(model, rule) as state:
            logits = model(x)
            a = x if level == "input" else state.tokens
            with state.lrp():
                (g,) = torch.autograd.grad(target_score(logits, target), a, create_graph=create_graph,
                                           retain_graph=True)
        r = (a * g).sum(1 if level == "input" else -1)
        return (r[:, None] if level == "input" else token_grid(model, r, x.shape[-2:])), logits
    if rule is not None:
        raise ValueError(f"rule {rule!r} is implemented for ViTs only")
    feats, logits = cnn_forward(model, x)
    a = x if level == "input" else feats
    (g,) = torch.autograd.grad(target_score(logits, target), a, create_graph=create_graph, retain_graph=True)
    return (a * g).sum(1, keepdim=True), logits


def vit_last_tokens(model: nn.Module, x: torch.Tensor):
    """(the tokens entering the last block's attention (B, N, C): its first LayerNorm's output, logits) of a timm
    ViT, from one forward. Not the block's output: a class-token head reads none of its patch tokens."""
    out = {}
    hook = model.blocks[-1].norm1.register_forward_hook(lambda mod, inp, o: out.setdefault("tokens", o))
    try:
        with attention_path(model, fused=False):
            logits = model(x)
    finally:
        hook.remove()
    return out["tokens"], logits


def gradcam(model, x, target=None, *, kind, level, create_graph=False):
    """Grad-CAM (Selvaraju et al., ICCV 2017) on a CNN's last feature map: relu(sum_c alpha_c A_c),
    alpha_c = spatial mean of ds/dA_c; on a ViT the same over the patch tokens entering the last block's
    attention (`vit_last_tokens`; alpha_c the mean over patch tokens, prefix tokens dropped). With `create_graph`
    the weights alpha are differentiated too, so the
    map's gradient is exact."""
    if kind == "vit":
        tokens, logits = vit_last_tokens(model, x)
        (g,) = torch.autograd.grad(target_score(logits, target), tokens, create_graph=create_graph,
                                   retain_graph=True)
        n = model.num_prefix_tokens
        a, g = tokens[:, n:], g[:, n:]
        return token_grid(model, (g.mean(1, keepdim=True) * a).sum(-1).relu(), x.shape[-2:]), logits
    feats, logits = cnn_forward(model, x)
    (g,) = torch.autograd.grad(target_score(logits, target), feats, create_graph=create_graph,
                               retain_graph=True)
    return (g.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True).relu(), logits
