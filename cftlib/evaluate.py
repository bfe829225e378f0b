"""Evaluation: top-1 accuracy of a model on every split of the world, and the shortcut gaps
(test minus each out-of-distribution split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .models import predict
from .world import load_split

OOD = ("v2", "bg_conflict", "color_conflict", "pose", "rendition", "bg_random")


def split_accuracy(model: torch.nn.Module, data_dir: str | Path, splits: list[str]) -> dict[str, float]:
    """Top-1 accuracy per split."""
    out = {}
    for split in splits:
        a = load_split(data_dir, split)
        out[split] = float(np.mean(predict(model, a["images"]).argmax(1) == a["label"]))
    return out


def shortcut_gaps(acc: dict[str, float]) -> dict[str, float]:
    """Accuracy lost on each OOD split relative to `test` (positive = worse out of distribution)."""
    return {s: acc["test"] - acc[s] for s in OOD if s in acc}
