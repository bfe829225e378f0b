"""CFT's training objective (paper §3.3; the official `train.py:254-283`, docs/paper.md §3.5) and RobustViT's:

    L = λ_align (λ_ctx BCE(R ⊙ M̄, 0) + λ_concept BCE(R ⊙ M, M)) + λ_acc CE(z / T, argmax z)     (CFT)
    L = λ_align (λ_bg  MSE(R ⊙ M̄, 0) + λ_fg      MSE(R ⊙ M, M)) + λ_acc CE(z / T, argmax z)     (RobustViT)

R ∈ [0, 1] is the min-max normalised relevance map (B, 1, H, W), M the mask (concept union or foreground),
M̄ = 1 − M the reverse mask, z the logits of the same forward. Means run over all B·H·W pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cftlib.core.config import Loss

KINDS = ("bce", "mse")
ABLATIONS = {"no_cls": {"lambda_acc": 0.0}, "no_non_concept": {"lambda_ctx": 0.0},
             "no_concept": {"lambda_concept": 0.0}, "label_ce": {"confidence_target": "label"}}
"""The paper's Table 6 variants of CFT's loss (`ablations.loss`), as changes to `finetune.loss`: without L_cls,
without L_non-concept, without L_concept, and label cross-entropy instead of the model's own argmax in L_cls."""


def squeeze(r: torch.Tensor, delta: float) -> torch.Tensor:
    """δ + (1 − 2δ) R. Per-sample min-max puts a pixel at exactly 1 (and one at 0): in the context term
    BCE(1, 0) hits PyTorch's log clamp (loss 100, gradient ~1e12/N), likewise BCE(0, 1) in the concept
    term (docs/paper.md §6.15–6.16). δ = 0 keeps the official behaviour."""
    return r if delta == 0 else delta + (1 - 2 * delta) * r


def reverse_mask(m: torch.Tensor, mode: str = "complement") -> torch.Tensor:
    """M̄ = 1 − M; or the official quirk ("official"): only exact 0 and 1 are flipped, so a fractional
    edge pixel (from bilinear mask resizing) stays M (docs/paper.md §3.5, §6.16)."""
    if mode == "complement":
        return 1 - m
    if mode == "official":
        return torch.where(m == 1, torch.zeros_like(m), torch.where(m == 0, torch.ones_like(m), m))
    raise ValueError(f"reverse_mask {mode!r}: choose complement or official")


def saturated(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixels where BCE(p, y) is at PyTorch's log clamp (p = 1 with y < 1, or p = 0 with y > 0)."""
    return ((p >= 1) & (y < 1)).sum() + ((p <= 0) & (y > 0)).sum()


def alignment(r: torch.Tensor, m: torch.Tensor, kind: str, cfg: Loss) -> dict[str, torch.Tensor]:
    """The two mask terms, unweighted: context = D(R ⊙ M̄, 0), concept = D(R ⊙ M, M), with D = BCE ("bce",
    CFT) or MSE ("mse", RobustViT); `align` is their λ-weighted sum; `saturated` counts clamped BCE pixels.
    Computed in float32 outside autocast (BCE is not autocast-safe)."""
    if kind not in KINDS:
        raise ValueError(f"alignment kind {kind!r}: choose {KINDS}")
    with torch.autocast(r.device.type, enabled=False):
        r, m = squeeze(r.float(), cfg.squeeze), m.float()
        out, inn = r * reverse_mask(m, cfg.reverse_mask), r * m
        zero = torch.zeros_like(out)
        if kind == "bce":
            context, concept = F.binary_cross_entropy(out, zero), F.binary_cross_entropy(inn, m)
            weights, sat = (cfg.lambda_ctx, cfg.lambda_concept), saturated(out, zero) + saturated(inn, m)
        else:
            context, concept = F.mse_loss(out, zero), F.mse_loss(inn, m)
            weights, sat = (cfg.lambda_bg, cfg.lambda_fg), torch.zeros((), dtype=torch.long, device=r.device)
    return {"context": context, "concept": concept, "align": weights[0] * context + weights[1] * concept,
            "saturated": sat}


def confidence(logits: torch.Tensor, labels: torch.Tensor, cfg: Loss) -> torch.Tensor:
    """CE(z / T, t): t = argmax z taken before the temperature and held constant (the official code keeps
    the model's own prediction, "preserving classifier confidence"), or the label."""
    target = logits.detach().argmax(1) if cfg.confidence_target == "argmax" else labels
    return F.cross_entropy(logits.float() / cfg.temperature, target)


def relevance_loss(r: torch.Tensor, m: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, kind: str,
                   cfg: Loss) -> dict[str, torch.Tensor]:
    """The full loss `loss` = λ_align · align + λ_acc · confidence, with every term (see module docstring)."""
    terms = alignment(r, m, kind, cfg)
    terms["confidence"] = confidence(logits, labels, cfg)
    terms["loss"] = cfg.lambda_align * terms["align"] + cfg.lambda_acc * terms["confidence"]
    return terms
