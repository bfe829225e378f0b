"""The paper's three baselines (its Table 1), each fitted into the same few-shot fine-tuning as CFT (paper §4.1;
docs/paper.md §5.1.8), as their own papers formulate them:

    RRR       L = CE(z, y) + λ₁ Σ_pixels (M̄ ⊙ ∂/∂x Σ_k log p_k)² + λ₂ Σ θ²      (Ross et al., IJCAI 2017)
    GradMask  L = λ_ce CE(z, y) + λ_gm Σ_pixels |M̄ ⊙ ∂z_y/∂x|                    (Simpson et al. 2019)
    RRDA      L = CE(z', y), x' = x with its context replaced by another image's   (Santos & Zanchettin 2023)

M is the foreground mask (the object: the baselines know only foreground and background, paper §2), M̄ = 1 − M
the region a model should not use, p = softmax(z). Sums run over pixels and channels of one image, means over the
batch. RRR penalises the input gradient of the summed log-probabilities (its paper's explanation); GradMask the
absolute input gradient of a class score — its code takes the two-class contrast |z₀ − z₁|, which for many
classes becomes the labelled class's logit z_y. RRDA adds no term: it trains on composites (`rrda_mix`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cftlib.core.config import Loss
from cftlib.models.factory import attention_path

KINDS = ("rrr", "gradmask", "rrda")
TERMS = {"rrr": ("loss", "context", "confidence"), "gradmask": ("loss", "context", "confidence"), "rrda": ("loss",)}
"""The loss terms each baseline logs: `context` is its penalty outside the mask, `confidence` its label CE."""


def input_gradient(model, x: torch.Tensor, score, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ score(z).sum() / ∂x (B, C, H, W) and the logits z of the same forward; `create_graph` keeps the
    gradient differentiable in the weights (double backpropagation, as both penalties need)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), attention_path(model, fused=False):
        logits = model(x)
        (g,) = torch.autograd.grad(score(logits).sum(), x, create_graph=create_graph)
    return g, logits


def rrr_penalty(grad: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Σ_pixels (M̄ ⊙ ∇)², per image, batch mean: zero exactly when the gradient vanishes outside the mask."""
    return ((1 - m) * grad).pow(2).flatten(1).sum(1).mean()


def gradmask_penalty(grad: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Σ_pixels |M̄ ⊙ ∇|, per image, batch mean."""
    return ((1 - m) * grad).abs().flatten(1).sum(1).mean()


def baseline_loss(model, kind: str, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, cfg: Loss,
                  create_graph: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The baseline's loss terms on a batch (`TERMS[kind]`) and the logits of the same forward; `x` of an
    `rrda` batch is expected already mixed (`rrda_mix`, a data augmentation)."""
    if kind not in KINDS:
        raise ValueError(f"baseline {kind!r}: choose {KINDS}")
    if kind == "rrda":
        logits = model(x)
        return {"loss": F.cross_entropy(logits.float(), y)}, logits
    if kind == "rrr":
        grad, logits = input_gradient(model, x, lambda z: F.log_softmax(z.float(), 1).sum(1), create_graph)
        penalty = rrr_penalty(grad, m)
        ce = F.cross_entropy(logits.float(), y)
        l2 = sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad)
        loss = ce + cfg.rrr_lambda * penalty + cfg.rrr_l2 * l2
    else:
        grad, logits = input_gradient(model, x, lambda z: z.float().gather(1, y[:, None])[:, 0], create_graph)
        penalty = gradmask_penalty(grad, m)
        ce = F.cross_entropy(logits.float(), y)
        loss = cfg.gradmask_ce * ce + cfg.gradmask_lambda * penalty
    return {"loss": loss, "context": penalty, "confidence": ce}, logits


def rrda_mix(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator, prob: float) -> torch.Tensor:
    """RRDA's augmentation: with probability `prob` an image keeps its foreground (M) and takes its context from
    another image of the batch (a random derangement drawn from `gen`); where that image's own object would
    show, its mean context colour fills in, so no second object enters. Images (B, C, H, W), masks (B, 1, H, W)
    in [0, 1]; a batch of one is returned as it is."""
    B = len(x)
    if B < 2 or prob <= 0:
        return x
    donor = (torch.arange(B) + torch.randint(1, B, (B,), generator=gen)) % B  # never the image itself
    swap = (torch.rand(B, generator=gen) < prob).to(x.device)
    donor = donor.to(x.device)
    ctx = 1 - m
    fill = (x * ctx).sum((2, 3), keepdim=True) / ctx.sum((2, 3), keepdim=True).clamp_min(1e-6)
    background = ctx * x + m * fill  # each image's context, its object painted over
    mixed = m * x + (1 - m) * background[donor]
    return torch.where(swap[:, None, None, None], mixed, x)
