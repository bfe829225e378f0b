"""The fine-tuning protocol's augmentation, shared by everything trained on world images (pre-training, the base
models and fine-tuning), so that fine-tuning shows a model nothing its training did not: as ImageNet models are
pre-trained with random-resized crops, which contain the official Resize 256 → RandomCrop 224."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator, scale: float, flip: bool):
    """The same random geometry for images and masks (official: Resize 256, RandomCrop 224, flip p = 0.5):
    resize by `scale`, crop back to size at a uniform offset, flip with p = 0.5. Draws from `gen` only."""
    B, _, H, W = x.shape
    both = torch.cat([x, m], 1)
    if scale > 1:
        big = F.interpolate(both, size=(round(H * scale), round(W * scale)), mode="bilinear", align_corners=False)
        oy = torch.randint(0, big.shape[-2] - H + 1, (B,), generator=gen).tolist()
        ox = torch.randint(0, big.shape[-1] - W + 1, (B,), generator=gen).tolist()
        both = torch.stack([big[i, :, a:a + H, b:b + W] for i, (a, b) in enumerate(zip(oy, ox))])
    if flip:
        f = (torch.rand(B, generator=gen) < 0.5).to(x.device)
        both = torch.where(f[:, None, None, None], both.flip(-1), both)
    return both[:, :3], both[:, 3:]
