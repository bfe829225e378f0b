"""Checkpoints and build configs: weights plus the config that rebuilds the model (a world model through the
factory, a zoo model through `zoo.rebuild`), and the input normalisation a build expects."""

from __future__ import annotations

from pathlib import Path

import torch

from cftlib.core.io import atomic_path, read_torch, remedy
from cftlib.data.augment import MEAN, STD
from cftlib.models import factory, zoo
from cftlib.models.zoo import get


def normalisation(build: dict) -> tuple[tuple, tuple]:
    """(mean, std) a model expects: a zoo model's own (ImageNet statistics for DeiT, DINOv2, ResNet; the
    official code fed 0.5 to all of them, docs/paper.md §3.1), else the 0.5 of `to_tensor` it was trained with."""
    if "zoo" in build:
        e = get(build["zoo"])
        return tuple(e.mean), tuple(e.std)
    return (MEAN,) * 3, (STD,) * 3


def renormalise(x: torch.Tensor, build: dict) -> torch.Tensor:
    """`to_tensor`'s output, normalised for the model of `build` instead (the identity for 0.5 models)."""
    mean, std = normalisation(build)
    if mean == (MEAN,) * 3 and std == (STD,) * 3:
        return x
    m, s = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    return (x * STD + MEAN - m) / s


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: dict) -> None:
    """Weights and the build config only (loadable with `weights_only=True`), written atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": config}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint written by `save_checkpoint` (a zoo model's config, with its
    `zoo` key, through `zoo.rebuild`; no weights are downloaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; {remedy(path)}")
    ckpt = read_torch(path, map_location=map_location)
    cfg = ckpt["config"]
    if "zoo" in cfg:
        model = zoo.rebuild(cfg)
    else:
        model = factory.build_model(cfg["name"], cfg["num_classes"], cfg.get("img_size"), **cfg.get("kwargs", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), cfg
