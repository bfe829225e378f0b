"""Images as models take them: uint8 arrays to tensors normalised with timm's ViT mean and std (`to_tensor`; a model
that expects other statistics converts with `models.checkpoints.renormalise`), and the fine-tuning protocol's
augmentation, shared by everything trained on world images (pre-training, the base models and fine-tuning), so that
fine-tuning shows a model nothing its training did not: as ImageNet models are pre-trained with random-resized
crops, which contain the official Resize 256 → RandomCrop 224."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = 0.5, 0.5  # timm's ViT normalisation (inception style)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) images → normalised float (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN) / STD


def augment(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator, scale: float, flip: bool, jitter: bool = False):
    """The same random geometry for images and masks (official: Resize 256, RandomCrop 224, flip p = 0.5):
    resize by `scale`, crop back to size at a uniform offset, flip with p = 0.5. With `jitter` each image's
    factor is drawn uniformly in [1, `scale`] instead (random-resized crops, as models are pre-trained: the
    images as they are and fine-tuning's zoom are both inside what the model sees). Draws from `gen` only."""
    B, _, H, W = x.shape
    both = torch.cat([x, m], 1)
    if scale > 1:
        factors = 1 + (scale - 1) * torch.rand(B, generator=gen) if jitter else torch.full((B,), scale)
        sizes = [(round(H * f), round(W * f)) for f in factors.tolist()]
        oy = [int(torch.randint(0, h - H + 1, (1,), generator=gen)) for h, _ in sizes] if jitter else \
            torch.randint(0, sizes[0][0] - H + 1, (B,), generator=gen).tolist()
        ox = [int(torch.randint(0, w - W + 1, (1,), generator=gen)) for _, w in sizes] if jitter else \
            torch.randint(0, sizes[0][1] - W + 1, (B,), generator=gen).tolist()
        big = [F.interpolate(both[i:i + 1], size=hw, mode="bilinear", align_corners=False)[0]
               for i, hw in enumerate(sizes)] if jitter else \
            F.interpolate(both, size=sizes[0], mode="bilinear", align_corners=False)
        both = torch.stack([big[i][:, a:a + H, b:b + W] for i, (a, b) in enumerate(zip(oy, ox))])
    if flip:
        f = (torch.rand(B, generator=gen) < 0.5).to(x.device)
        both = torch.where(f[:, None, None, None], both.flip(-1), both)
    return both[:, :3], both[:, 3:]
