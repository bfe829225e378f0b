"""Images as the models take them: uint8 (N, H, W, 3) arrays to float (N, 3, H, W) tensors normalised with timm's
ViT mean and std, 0.5 (inception style). It is every image's tensor form here; `models.checkpoints.renormalise`
converts it for a model that expects other statistics."""

from __future__ import annotations

import numpy as np
import torch

MEAN, STD = 0.5, 0.5  # timm's ViT normalisation (inception style)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) images → normalised float (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN) / STD
