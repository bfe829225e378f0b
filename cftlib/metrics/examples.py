"""The examples of the paper's qualitative figure (CFT Fig. 1): which images it shows — as many as CFT corrects
as it breaks against its base model — and each model's prediction and relevance map on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cftlib.data.augment import to_tensor
from cftlib.data.datasets import Benchmark, load_centre_crop
from cftlib.metrics.accuracy import flips
from cftlib.metrics.alignment import part_masks, relevance_maps
from cftlib.models.checkpoints import renormalise
from cftlib.models.factory import predict

FLIP_KINDS = ("corrected", "regressed", "both right")
"""The rows of the qualitative figure: base ✗ CFT ✓, base ✓ CFT ✗, and (filling in) both ✓."""


@dataclass
class Examples:
    """The figure's rows: images (N×H×W×3 uint8), labels, kind of each row (`FLIP_KINDS`), the concept masks
    (N×H×W bool; None on a benchmark), per model (base, CFT) its relevance maps (N×H×W in [0, 1]) and
    predictions; `picks` (index, kind) and `counts` (`accuracy.flips` over every image considered)."""
    images: np.ndarray
    labels: np.ndarray
    kinds: list[str]
    concept: np.ndarray | None
    maps: dict[str, tuple[np.ndarray, np.ndarray]]
    picks: list[tuple[int, str]]
    counts: dict[str, int]


def balanced(base_pred: np.ndarray, cft_pred: np.ndarray, labels: np.ndarray, n: int) -> list[tuple[int, str]]:
    """Up to n (index, kind) rows, as many corrections (base wrong, CFT right) as regressions (base right, CFT
    wrong), so a picture shows what fine-tuning breaks as well as what it fixes; where one kind runs short the
    other fills in, then images both get right."""
    b, c = base_pred == labels, cft_pred == labels
    fixed, broken = np.flatnonzero(~b & c), np.flatnonzero(b & ~c)
    n_fixed = min(len(fixed), max(n - n // 2, n - len(broken)))
    n_broken = min(len(broken), n - n_fixed)
    both = np.flatnonzero(b & c)[:n - n_fixed - n_broken]
    return [(int(i), kind) for kind, idx in zip(FLIP_KINDS, (fixed[:n_fixed], broken[:n_broken], both)) for i in idx]


def pick_flips(base, cft, arrays: dict, n: int) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """The qualitative figure's rows among all of `arrays`' images (`balanced`) and the counts of images CFT
    corrects and breaks there (cftlib.metrics.accuracy.flips), for its title."""
    b, c = predict(base, arrays["images"]).argmax(1), predict(cft, arrays["images"]).argmax(1)
    return balanced(b, c, arrays["label"], n), flips(c, b, arrays["label"])


def world_examples(base, cft, arrays: dict, picks: list[tuple[int, str]], counts: dict[str, int],
                   class_parts: list[list[str]], method: str) -> Examples:
    """The rows `picks` (from `pick_flips`) of a world split: image, the exact mask of its class's concept parts,
    and each model's relevance map of its own prediction."""
    idx = [i for i, _ in picks]
    images, labels = arrays["images"][idx], arrays["label"][idx]
    concept = part_masks(arrays["parts"][idx], labels, class_parts)
    maps = {k: (relevance_maps(m, images, method), predict(m, images).argmax(1))
            for k, m in (("base", base), ("CFT", cft))}
    return Examples(images, labels, [k for _, k in picks], concept, maps, picks, counts)


def benchmark_examples(base, cft, bench: Benchmark, n: int, method: str, build: dict | None = None,
                       batch_size: int = 64, amp: bool = False) -> Examples | None:
    """The rows on a benchmark (no concept masks on ImageNet): among `bench`'s images (Resize 256, CenterCrop 224,
    normalised as the ViT of `build` was fine-tuned), up to n, as many CFT corrects as it breaks (`balanced`), on
    the models' device; None when no image is one CFT corrects or breaks, or both models get right."""
    images = np.stack([load_centre_crop(p) for p in bench.paths])

    @torch.no_grad()
    def argmax(model):
        device = next(model.parameters()).device
        model.eval()
        return np.concatenate([model(renormalise(to_tensor(images[i:i + batch_size]), build or {}).to(device))
                               .argmax(1).cpu().numpy() for i in range(0, len(images), batch_size)])

    preds = {"base": argmax(base), "CFT": argmax(cft)}
    picks = balanced(preds["base"], preds["CFT"], bench.labels, n)
    if not picks:
        return None
    idx = [i for i, _ in picks]
    maps = {k: (relevance_maps(m, images[idx], method, batch_size, amp, build), preds[k][idx])
            for k, m in (("base", base), ("CFT", cft))}
    counts = flips(preds["CFT"], preds["base"], bench.labels)
    return Examples(images[idx], bench.labels[idx], [k for _, k in picks], None, maps, picks, counts)
