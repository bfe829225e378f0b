"""AttnLRP (Achtibat et al., ICML 2024) and CP-LRP rules for timm ViTs, exact under double backward.

In the input x gradient form of LRP, relevance is `x * (modified gradient)`. Each place where LRP
modifies the gradient gets a gate: an autograd Function whose forward is the exact op and whose
backward is the plain gradient, except inside `State.lrp()` where it is the rule, written in
ordinary torch ops of the saved inputs. `autograd.grad(..., create_graph=True)` inside `lrp()`
therefore gives a relevance that is an honest differentiable function of the weights, while the
training backward (outside `lrp()`) sees the true Jacobians. Rules (AttnLRP paper, Eqs. 7-9):
identity rule through LayerNorm (std held constant) and elementwise activations, the uniform rule
for the two attention matmuls (1/4 on q and k, 1/2 on v), the plain softmax gradient (AttnLRP's
softmax rule in this form), epsilon rule (plain gradient) for linear layers. CP-LRP (Ali et al.,
ICML 2022) instead holds the attention map constant. Patches live on module instances, only inside
`patched(...)`; no class is touched (unlike lxt's `monkey_patch`, which replaces classes process-wide).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn
from timm.layers import Attention, Mlp
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.vision_transformer import VisionTransformer
from torch.autograd.function import once_differentiable

RULES = (None, "attnlrp", "cp")


# Elementwise activations y = x r(x) that get the identity rule: (r, r'), in closed form.
ACTIVATIONS = {
    nn.GELU: (torch.special.ndtr, lambda x: x.square().mul_(-0.5).exp_().mul_((2 * math.pi) ** -0.5)),
    nn.SiLU: (torch.sigmoid, lambda x: torch.sigmoid(x) * torch.sigmoid(-x)),
    nn.ReLU: (lambda x: (x > 0).to(x.dtype), torch.zeros_like),
}


class State:
    """One relevance call's switches and captures. `lrp_mode` is a plain attribute, read by the gates
    when backward runs (autograd's worker threads see it; thread-locals would not work)."""

    def __init__(self, rule: str | None, keep_attn: bool):
        self.rule, self.keep_attn = rule, keep_attn
        self.lrp_mode = False
        self.attn: list[torch.Tensor] = []   # post-softmax attention of each block, if keep_attn
        self.tokens: torch.Tensor | None = None   # patch-embedding output (the patch grid)

    @contextmanager
    def lrp(self):
        self.lrp_mode = True
        try:
            yield
        finally:
            self.lrp_mode = False


class _Gate(torch.autograd.Function):
    """Returns `y` (computed from `inputs` with ordinary ops). Backward: `g` to `y` in plain mode,
    `rule(g, *inputs)` to `inputs` in LRP mode."""

    @staticmethod
    def forward(ctx, state, rule, y, *inputs):
        ctx.state, ctx.rule = state, rule
        ctx.save_for_backward(*inputs)
        return y

    @staticmethod
    def backward(ctx, g):
        inputs = ctx.saved_tensors
        if ctx.state.lrp_mode:
            return (None, None, None, *ctx.rule(g, *inputs))
        return (None, None, g) + (None,) * len(inputs)


def _scale_rule(g, t, factor):
    return (g * factor,)


def _block_rule(g, t):
    return (None,)


class _TimesRatio(torch.autograd.Function):
    """g r(x) and its derivative written out: a few elementwise passes where autograd's chain through
    r would take a dozen (the MLP's activations are the largest tensors). Differentiable once."""

    @staticmethod
    def forward(ctx, g, x, ratio, slope):
        r = ratio(x)
        ctx.save_for_backward(g, x, r)
        ctx.slope = slope
        return g * r

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        g, x, r = ctx.saved_tensors
        return grad * r, ctx.slope(x).mul_(grad).mul_(g), None, None


def _identity_rule(g, x, ratio, slope):
    """Identity rule for y = act(x) = x r(x): relevance passes unchanged, i.e. gradient g r(x)."""
    return (_TimesRatio.apply(g, x, ratio, slope),)


def _layer_norm_rule(g, x, weight=None, *, eps):
    """Identity rule for LayerNorm: the gradient with the standard deviation held constant."""
    gw = g if weight is None else g * weight
    inv_std = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return ((gw - gw.mean(-1, keepdim=True)) * inv_std, *([None] if weight is not None else []))


def _layer_norm_forward(self, state, x):
    y = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
    rule = partial(_layer_norm_rule, eps=self.eps)
    return _Gate.apply(state, rule, y, x, *([self.weight] if self.weight is not None else []))


def _activation_forward(self, state, forward, x):
    ratio, slope = ACTIVATIONS[type(self)]
    rule = partial(_identity_rule, ratio=ratio, slope=slope)
    return _Gate.apply(state, rule, forward(x), x)


def _attention_forward(self, state, x, attn_mask=None, is_causal=False):
    """timm `Attention.forward`, explicit path (CPU SDPA has no double backward), with the rules."""
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    if state.rule == "attnlrp":
        q, k, v = (_Gate.apply(state, partial(_scale_rule, factor=f), t, t)
                   for t, f in ((q, 0.25), (k, 0.25), (v, 0.5)))
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal)).softmax(dim=-1)
    if state.rule == "cp":
        attn = _Gate.apply(state, _block_rule, attn, attn)
    if state.keep_attn:
        state.attn.append(attn)
    x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
    return self.proj_drop(self.proj(self.norm(x)))


def check_vit(model: nn.Module, rule: str | None = None) -> None:
    """Raise unless `model` is a timm ViT whose layers this module can handle under `rule`."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{type(model).__name__} is not a timm VisionTransformer")
    for name, m in model.named_modules():
        if isinstance(m, Attention) and getattr(m, "gate", None) is not None:
            raise TypeError(f"{name}: gated attention has no rule here")
        if rule is not None and name.endswith(".mlp") and not (
                type(m) is Mlp and type(m.act) in ACTIVATIONS and getattr(m.act, "approximate", "none") == "none"):
            raise TypeError(f"{name}: no LRP rule for {m}")
        if "forward" in m.__dict__:
            raise RuntimeError(f"{name or 'model'} already has an instance-level forward (nested call?)")


@contextmanager
def patched(model: nn.Module, rule: str | None = None, keep_attn: bool = False):
    """Give this model instance explicit attention (with `rule`'s gates), keep the patch-embedding
    output in `state.tokens`, and undo all of it on exit. Yields the call's `State`."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}: choose one of {RULES}")
    check_vit(model, rule)
    state = State(rule, keep_attn)
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = partial(_attention_forward, m, state)
        elif rule is not None and isinstance(m, nn.LayerNorm):
            m.forward = partial(_layer_norm_forward, m, state)
        elif rule is not None and type(m) in ACTIVATIONS:
            m.forward = partial(_activation_forward, m, state, m.forward)
    hook = model.patch_embed.register_forward_hook(lambda mod, inp, out: setattr(state, "tokens", out))
    try:
        yield state
    finally:
        hook.remove()
        for m in model.modules():
            m.__dict__.pop("forward", None)


def token_grid(model: nn.Module, values: torch.Tensor, image_size) -> torch.Tensor:
    """Patch-token values (B, N) or (B, h, w), patch tokens only, as a (B, 1, h, w) map."""
    h, w = model.patch_embed.dynamic_feat_size(tuple(image_size))
    return values.reshape(values.shape[0], 1, h, w)
