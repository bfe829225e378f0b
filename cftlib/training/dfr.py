"""Deep feature reweighting (DFR; Kirichenko, Izmailov, Wilson, ICLR 2023): a trained model's last layer
refitted on its frozen features of a small labelled set in which the shortcut carries no information.

Used twice: as the world's *features-exist probe* (if a refitted head recovers the shortcut split, the parts
are in the features and only the head ignores them: the regime CFT assumes) and as the standard cheap
reference a spurious-correlation method is compared with. DFR uses labelled, balanced data that CFT does not.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from cftlib.data.augment import to_tensor
from cftlib.models.factory import attention_path


@torch.no_grad()
def features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 500) -> torch.Tensor:
    """Pre-logit features (N, D) of uint8 images, in eval mode (timm's `forward_head(pre_logits=True)`)."""
    model.eval()
    with attention_path(model, fused=True):
        return torch.cat([model.forward_head(model.forward_features(to_tensor(images[i:i + batch_size])),
                                             pre_logits=True) for i in range(0, len(images), batch_size)])


def fit_head(feats: torch.Tensor, labels: np.ndarray, num_classes: int, l2: float,
             steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features, mean cross-entropy + `l2` × the summed squared
    weights, by L-BFGS from zero (deterministic). Returns (weight (C, D), bias (C,)) for the raw features."""
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = ((feats - mean) / std).double()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    w = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight = (w.detach() / std.double()).float()
    return weight, (b.detach() - weight.double() @ mean.double()).float()


def reweight(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, l2: float) -> torch.nn.Module:
    """A copy of `model` whose classifier is refitted (`fit_head`) on its features of `images`."""
    out = copy.deepcopy(model).eval()
    head = out.get_classifier()
    weight, bias = fit_head(features(model, images), labels, head.out_features, l2)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return out
