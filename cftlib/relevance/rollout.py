"""Gradient-weighted attention rollout (Chefer et al., ICCV 2021), the map the official CFT and RobustViT
code trains on (its `method='lrp'`; docs/paper.md §3.4):

    A_bar_l = mean_h clamp(G_l * A_l, min=0),  G_l = ds/dA_l held constant,
    R_0 = I,  R_l = R_{l-1} + A_bar_l R_{l-1},  relevance = R_L[CLS, patch tokens].

Parameter gradients flow through A_l only (a surrogate gradient, by design of the official code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cftlib.models.factory import attention_path

from .attnlrp import patched, token_grid
from .gradients import target_score


def _rollout(attn, grads, num_prefix_tokens):
    """CLS row of R_L = (I + A_bar_L) ... (I + A_bar_1), carried down from the top as a row vector:
    the official R_l = R_{l-1} + A_bar_l R_{l-1} at matrix-vector instead of matrix-matrix cost.
    Since A > 0, clamp(G A, 0) = A clamp(G, 0), and clamp(G, 0) / H is a constant."""
    B, H, N, _ = attn[0].shape
    v = torch.zeros(B, 1, N, dtype=attn[0].dtype, device=attn[0].device)
    v[:, :, 0] = 1
    for A, G in zip(reversed(attn), reversed(grads)):
        v = v + v @ (A * G.clamp(min=0).div_(H)).sum(1)
    return v[:, 0, num_prefix_tokens:]


def _check_cls(model):
    if model.cls_token is None:
        raise TypeError("gae_rollout reads the class token's row; this model has no class token")


def gae_rollout(model, x, target=None, *, kind, level, create_graph=False):
    """GAE rollout from one forward and one autograd call over all blocks' attention maps.
    Returns ((B, 1, h, w) patch relevance, logits); differentiable through A_l if `create_graph`."""
    _check_cls(model)
    with patched(model, keep_attn=True) as state:
        logits = model(x)
    grads = torch.autograd.grad(target_score(logits, target), state.attn, retain_graph=True)
    with torch.set_grad_enabled(create_graph):
        r = _rollout(state.attn, grads, model.num_prefix_tokens)
    return token_grid(model, r, x.shape[-2:]), logits


def gae_rollout_official(model, x, target=None):
    """The released CFT code's procedure (docs/paper.md §3.4, §6.28), kept as the reference for tests and
    the benchmark: hooks keep the attention maps, one `autograd.grad` per block, upsampling and
    min-max without epsilon, then a second forward for the classification logits.
    Returns ((B, 1, H, W) map in [0, 1], logits of the second forward)."""
    _check_cls(model)
    attn = []
    hooks = [blk.attn.attn_drop.register_forward_hook(lambda m, i, out: attn.append(out)) for blk in model.blocks]
    try:
        with attention_path(model, fused=False):
            score = target_score(model(x), target)
    finally:
        for h in hooks:
            h.remove()
    R = torch.eye(attn[0].shape[-1], dtype=x.dtype, device=x.device)
    for A in attn:
        G = torch.autograd.grad(score, A, retain_graph=True)[0]
        R = R + (G * A).clamp(min=0).mean(1) @ R
    r = token_grid(model, R[:, 0, model.num_prefix_tokens:], x.shape[-2:])
    r = F.interpolate(r, size=x.shape[-2:], mode="bilinear", align_corners=False)
    lo = r.amin((1, 2, 3), keepdim=True)
    r = (r - lo) / (r.amax((1, 2, 3), keepdim=True) - lo)
    return r, model(x)
