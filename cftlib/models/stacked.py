"""M timm ViTs of one architecture as one model (issue 27): each weight-bearing layer holds its M copies' weights
stacked on a leading model axis and takes a batch of M·B rows, rows m·B … (m+1)·B going through copy m. One forward
and backward then serve M fine-tuning runs, and a per-sample computation (a relevance map, a loss on a run's rows)
is the same as on the runs' own models: no layer mixes rows of different copies (BatchNorm only in eval mode).

The module types the relevance rules patch (`cftlib/relevance/attnlrp.py`: timm Attention and Mlp, nn.LayerNorm,
activations) stay in place. A LayerNorm becomes a plain nn.LayerNorm without affine followed by the stacked affine,
which the LRP identity rule treats as it treats the fused one (the affine's gradient is the plain one either way).
The state dict has the single model's keys, each tensor with the model axis in front (`split`, `merge`)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm as TimmLayerNorm
from timm.models.vision_transformer import VisionTransformer


class StackedLinear(nn.Module):
    """M linear layers: (M·B, …, in) → (M·B, …, out) by one batched matmul over the model axis."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = (None if layers[0].bias is None else
                     nn.Parameter(torch.stack([layer.bias.detach() for layer in layers])))

    def forward(self, x):
        M, out, _ = self.weight.shape
        h = x.reshape(M, -1, x.shape[-1])
        y = torch.bmm(h, self.weight.mT) if self.bias is None else torch.baddbmm(self.bias[:, None], h, self.weight.mT)
        return y.reshape(*x.shape[:-1], out)


class StackedLayerNorm(nn.Module):
    """M LayerNorms over the last axis: one affine-free `norm` (what the LRP rule patches), then each copy's affine."""

    def __init__(self, layers: list[nn.LayerNorm]):
        super().__init__()
        self.norm = nn.LayerNorm(layers[0].normalized_shape, layers[0].eps, elementwise_affine=False)
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    def forward(self, x):
        M, D = self.weight.shape
        y = self.norm(x).reshape(M, -1, D)
        return torch.addcmul(self.bias[:, None], y, self.weight[:, None]).reshape(x.shape)


class StackedConv2d(nn.Module):
    """M convolutions as one grouped convolution: the copies' inputs side by side on the channel axis."""

    def __init__(self, layers: list[nn.Conv2d]):
        super().__init__()
        c = layers[0]
        if c.padding_mode != "zeros":
            raise TypeError(f"{c}: only zero padding is stacked")
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = None if c.bias is None else nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    def forward(self, x):
        M = self.weight.shape[0]
        _, C, H, W = x.shape
        h = x.reshape(M, -1, C, H, W).transpose(0, 1).reshape(-1, M * C, H, W)
        y = F.conv2d(h, self.weight.flatten(0, 1), None if self.bias is None else self.bias.flatten(),
                     self.stride, self.padding, self.dilation, self.groups * M)
        return y.reshape(y.shape[0], M, -1, *y.shape[-2:]).transpose(0, 1).reshape(-1, y.shape[1] // M, *y.shape[-2:])


class StackedBatchNorm2d(nn.Module):
    """M BatchNorms in eval mode (each copy's running statistics); fine-tuning keeps them frozen (trainer.fit)."""

    def __init__(self, layers: list[nn.BatchNorm2d]):
        super().__init__()
        self.eps = layers[0].eps
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(k, torch.stack([getattr(layer, k) for layer in layers]))

    def forward(self, x):
        if self.training:
            raise RuntimeError("StackedBatchNorm2d runs in eval mode only (frozen statistics)")
        M, C = self.weight.shape
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        y = x.reshape(M, -1, C, *x.shape[-2:])
        return torch.addcmul(shift[:, None, :, None, None], y, scale[:, None, :, None, None]).reshape(x.shape)


STACKED = {nn.Linear: StackedLinear, nn.LayerNorm: StackedLayerNorm, TimmLayerNorm: StackedLayerNorm,
           nn.Conv2d: StackedConv2d, nn.BatchNorm2d: StackedBatchNorm2d}
"""Layer type (exactly: a subclass may compute otherwise) → its stacked form; a model with weights in any other
layer is refused."""


class StackedViT(VisionTransformer):
    """A `VisionTransformer` (so relevance explains it) whose class/register tokens and position embedding carry
    the model axis: (M, 1, …) each."""

    def _pos_embed(self, x):
        M = self.pos_embed.shape[0]
        x = x.reshape(M, -1, *x.shape[1:])  # (M, B, N, D)
        tokens = [t.expand(-1, x.shape[1], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat(tokens + [x + self.pos_embed], dim=2)
        else:
            x = torch.cat(tokens + [x], dim=2) + self.pos_embed
        return self.pos_drop(x.flatten(0, 1))


def stack(models: list[nn.Module]) -> StackedViT:
    """One `StackedViT` holding `models` (timm ViTs of one architecture, fixed image size) in their order."""
    first = models[0]
    if type(first) is not VisionTransformer or first.dynamic_img_size:
        raise TypeError(f"{type(first).__name__}: only a timm VisionTransformer of fixed image size is stacked")
    keys = {k: v.shape for k, v in first.state_dict().items()}
    for i, m in enumerate(models[1:], 1):
        if type(m) is not type(first) or {k: v.shape for k, v in m.state_dict().items()} != keys:
            raise ValueError(f"model {i} has another architecture than model 0")
    out = copy.deepcopy(first)
    named = [dict(m.named_modules()) for m in models]
    for name, mod in first.named_modules():
        own = [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]
        if not name or not own:
            continue
        if type(mod) not in STACKED:
            raise TypeError(f"{name}: no stacked form of {type(mod).__name__}")
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent), leaf, STACKED[type(mod)]([n[name] for n in named]))
    for k, _ in first.named_parameters(recurse=False):
        setattr(out, k, nn.Parameter(torch.stack([getattr(m, k).detach() for m in models])))
    if [k for k, _ in out.named_parameters()] != [k for k, _ in first.named_parameters()]:
        raise AssertionError("stacking changed the parameters' order")  # optimiser states are read by position
    out.__class__ = StackedViT
    return out.train(first.training)


def split(stacked: nn.Module, m: int) -> dict[str, torch.Tensor]:
    """Copy m's state dict (the single model's keys and shapes), detached views of the stacked tensors."""
    return {k: v.detach()[m] for k, v in stacked.state_dict().items()}


def merge(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stacked state dict of single models' state dicts (`split`'s inverse)."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}
