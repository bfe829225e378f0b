"""Where the relevance lands (CFT §5): RobustViT/Chefer segmentation alignment (map thresholded at its mean;
pixel accuracy, mIoU over {bg, fg}, mean per-image AP; docs/paper.md §4.2) and concept alignment against the
world's exact part masks (share of relevance mass on concept parts; pointing game), the latter our own metric
(§4.2 [INFER]); per-concept usage on the mask store's images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from cftlib import relevance
from cftlib.data.augment import to_tensor
from cftlib.data.world import PARTS, concept_part
from cftlib.models.checkpoints import renormalise
from cftlib.relevance import explain

ALIGNMENT = ("pixAcc", "mIoU", "mAP", "concept_mass", "object_mass", "concept_area", "pointing")
"""Alignment columns: RobustViT's segmentation scores, then the concept metrics (NaN at paper scale: no parts)."""


# ----------------------------------------------------------------------------- RobustViT/Chefer alignment

def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall step curve, Σ (R_n − R_{n−1}) P_n over distinct score
    thresholds (sklearn's `average_precision_score` for binary labels). No positives: NaN."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(truth).ravel().astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each block of tied scores
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def segmentation_counts(relevance: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per image (Chefer et al. 2021's ImageNet-Segmentation protocol, docs/paper.md §4.2): the map is
    binarised at its own mean; counts of correct/labelled pixels and of intersection/union for
    bg and fg; AP of the two-channel score [1−R, R] against the one-hot mask (micro over both).
    relevance: (N, H, W) in [0, 1]; gt: (N, H, W) bool."""
    r = np.asarray(relevance, np.float64)
    g = np.asarray(gt).astype(bool)
    pred = r > r.mean(axis=(1, 2), keepdims=True)
    inter = np.stack([(~pred & ~g).sum((1, 2)), (pred & g).sum((1, 2))], 1)
    union = np.stack([(~pred | ~g).sum((1, 2)), (pred | g).sum((1, 2))], 1)
    ap = np.array([average_precision(np.stack([1 - ri, ri]), np.stack([~gi, gi])) for ri, gi in zip(r, g)])
    return {"correct": (pred == g).sum((1, 2)), "labeled": np.full(len(g), g[0].size), "inter": inter,
            "union": union, "ap": ap}


def segmentation_scores(counts: dict[str, np.ndarray]) -> dict[str, float]:
    """pixAcc = Σ correct / Σ labelled; mIoU = mean over {bg, fg} of Σ inter / Σ union (sums over the
    dataset first); mAP = mean of the per-image APs — the three numbers RobustViT reports."""
    iou = counts["inter"].sum(0) / np.maximum(counts["union"].sum(0), 1)
    return {"pixAcc": float(counts["correct"].sum() / counts["labeled"].sum()), "mIoU": float(iou.mean()),
            "mAP": float(np.nanmean(counts["ap"]))}


# ----------------------------------------------------------------------------- concept alignment

def concept_alignment(relevance: np.ndarray, concept: np.ndarray, foreground: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: share of relevance mass on the concept parts (Σ R·M / Σ R), the same on the whole
    object, the concept parts' share of the image area (the mass a uniform map would put there),
    and the pointing game (the map's maximum lies on a concept part; first maximum on ties)."""
    r = np.asarray(relevance, np.float64)
    m, f = np.asarray(concept).astype(bool), np.asarray(foreground).astype(bool)
    total = np.maximum(r.sum((1, 2)), 1e-12)
    peak = r.reshape(len(r), -1).argmax(1)
    return {"concept_mass": (r * m).sum((1, 2)) / total, "object_mass": (r * f).sum((1, 2)) / total,
            "concept_area": m.mean((1, 2)), "pointing": m.reshape(len(m), -1)[np.arange(len(m)), peak]}


def oracle_maps(concept: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W): the map of a model whose relevance is exactly the concepts, seen through a grid×grid token map —
    the exact concept mask (N, H, W) average-pooled to the grid, upsampled bilinearly as `relevance.explain`
    upsamples, min-max normalised like `relevance_maps`. Its concept mass is the reference for what relevance at
    that grid can put on the concepts (a map exceeds it only by dropping concept tokens that also hold
    background): the headroom a model's own concept mass leaves CFT."""
    m = torch.from_numpy(np.asarray(concept, np.float32))[:, None]
    up = torch.nn.functional.interpolate(torch.nn.functional.adaptive_avg_pool2d(m, grid), size=m.shape[-2:],
                                         mode="bilinear", align_corners=False)[:, 0].double()
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return ((up - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def headroom(model: torch.nn.Module, arrays: dict, class_parts: list[list[str]], method: str, n: int) -> dict:
    """On the first `n` images of a split: the concept mass of the model's own relevance and of `oracle_maps` at
    the model's token grid (read off the map `method` draws there) — how far CFT can move the maps onto the
    concepts at that grid."""
    parts, labels, images = arrays["parts"][:n], arrays["label"][:n], arrays["images"][:n]
    concept, fg = part_masks(parts, labels, class_parts), parts > 0
    grid = explain(model.eval(), to_tensor(images[:1]), method, output="patch")[0].shape[-1]
    own = concept_alignment(relevance_maps(model, images, method), concept, fg)["concept_mass"].mean()
    best = concept_alignment(oracle_maps(concept, grid), concept, fg)["concept_mass"].mean()
    return {"grid": int(grid), "concept_mass": float(own), "oracle_concept_mass": float(best),
            "concept_area": float(concept.mean())}


def part_mass(relevance: np.ndarray, parts: np.ndarray, n_parts: int) -> np.ndarray:
    """Per image (N, n_parts + 1): the share of relevance mass on each part of the part-label map (label i + 1
    is part i), the last column the background; rows sum to 1."""
    r = np.asarray(relevance, np.float64)
    total = np.maximum(r.sum((1, 2)), 1e-12)
    cols = [(r * (parts == i + 1)).sum((1, 2)) for i in range(n_parts)] + [(r * (parts == 0)).sum((1, 2))]
    return np.stack(cols, 1) / total[:, None]


def usage_rows(relevance: np.ndarray, parts: np.ndarray, labels: np.ndarray, part_names: tuple[str, ...]) -> list[dict]:
    """Per class and part (and "background"): the mean share of relevance there over the class's images, and
    their number — which concepts the model uses, class by class."""
    mass, names = part_mass(relevance, parts, len(part_names)), [*part_names, "background"]
    rows = []
    for c in np.unique(labels):
        mine = mass[labels == c]
        rows += [{"label": int(c), "part": name, "mass": float(mine[:, j].mean()), "images": len(mine)}
                 for j, name in enumerate(names)]
    return rows


USAGE_COLUMNS = ["model", "arm", "seed", "split", "label", "part", "mass", "images"]
"""plots/evaluate_usage.csv: per run, split, class and part (or concept), the mean share of relevance there."""

MASKS_SPLIT, ANY_CONCEPT, ELSEWHERE = "masks_val", "any concept", "elsewhere"
"""Concept usage from the grounded masks: the split name of the mask store's validation images in usage rows,
and the two summary parts (the union of the class's concept masks, and everything outside it)."""


def concept_usage_rows(relevance: np.ndarray, concepts: list[np.ndarray], labels, texts: list[list[str]]) -> list[dict]:
    """Per class and concept, from grounded concept masks (`concepts[i]`: (K, H, W) bool of image i, named by
    `texts[i]`): the mean share of relevance inside that concept's mask over the class's images, then inside
    any of them (`ANY_CONCEPT`) and outside all (`ELSEWHERE`). Masks may overlap, so the concepts' shares can
    sum to more than `ANY_CONCEPT`'s — the usage measure for real images, which have no part labels."""
    r = np.asarray(relevance, np.float64)
    total = np.maximum(r.sum((1, 2)), 1e-12)
    per: dict[tuple[int, str], list[float]] = {}
    for i, (m, names) in enumerate(zip(concepts, texts)):
        m = np.asarray(m, bool)
        shares = (r[i] * m).sum((1, 2)) / total[i]
        union = float((r[i] * m.any(0)).sum() / total[i])
        for name, v in [*zip(names, shares.tolist()), (ANY_CONCEPT, union), (ELSEWHERE, 1.0 - union)]:
            per.setdefault((int(labels[i]), name), []).append(v)
    return [{"label": c, "part": name, "mass": float(np.mean(v)), "images": len(v)} for (c, name), v in per.items()]


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 H×W×3 image at size×size (bilinear, antialiased by PIL), unchanged when it already is."""
    return image if image.shape[:2] == (size, size) else np.asarray(
        Image.fromarray(image).resize((size, size), Image.BILINEAR))


def fit_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """A bool K×H×W stack of masks at K×size×size (nearest), unchanged when it already is."""
    return masks if masks.shape[1:] == (size, size) else np.stack(
        [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0 for m in masks])


def concept_usage(model: torch.nn.Module, store: dict, method: str, size: int | None, batch_size: int = 100,
                  amp: bool = False, build: dict | None = None) -> list[dict]:
    """`concept_usage_rows` of `model`'s relevance (predicted class) on the mask store's images (`store`:
    cftlib.data.fewshot.load), each image and mask brought to the model's input `size` (None, a model without a
    fixed input size: the first image's), as split `MASKS_SPLIT`; none without images."""
    if not store["images"]:
        return []
    size = size or int(np.asarray(store["images"][0]).shape[0])
    images = np.stack([fit_image(np.asarray(x), size) for x in store["images"]])
    r = relevance_maps(model, images, method, batch_size, amp, build)
    masks = [fit_masks(np.asarray(m, bool), size) for m in store["concepts"]]
    return [{"split": MASKS_SPLIT, **u} for u in concept_usage_rows(r, masks, store["labels"], store["texts"])]


def concept_parts(bank: dict) -> list[list[str]]:
    """Per class, the world parts its concepts name (the class's own concept mask; cftlib.data.world.concept_part)."""
    return [sorted({p for c in cls["concepts"] if (p := concept_part(c["text"]))}) for cls in bank["classes"]]


def part_masks(parts: np.ndarray, labels: np.ndarray, class_parts: list[list[str]]) -> np.ndarray:
    """Exact concept masks: the union of each image's class's concept parts ("all" = the silhouette)."""
    out = np.zeros(parts.shape, bool)
    for i, (p, y) in enumerate(zip(parts, labels)):
        for name in class_parts[int(y)]:
            out[i] |= p > 0 if name == "all" else p == PARTS.index(name) + 1
    return out


def relevance_maps(model: torch.nn.Module, images: np.ndarray, method: str, batch_size: int = 100,
                   amp: bool = False, build: dict | None = None) -> np.ndarray:
    """(N, H, W) min-max normalised relevance of each image's predicted class at pixel level (the
    RobustViT segmentation test explains the prediction, docs/paper.md §4.2), computed on the model's device
    (`amp`: under bfloat16 autocast there, CUDA only), the images normalised as the model of `build` (its
    checkpoint config) was fine-tuned (default 0.5)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = renormalise(to_tensor(images[i:i + batch_size]), build or {}).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
            r = explain(model, x, method, output="pixel")[0]
        out.append(r[:, 0].float().cpu().numpy())
    return np.concatenate(out)


def run_alignment(model: torch.nn.Module, arrays: dict[str, dict], class_parts: list[list[str]], method: str,
                  n: int) -> tuple[list[dict], list[dict]]:
    """On the first `n` images of each split: one row per split of segmentation scores against the bird's
    silhouette (pixAcc, mIoU, mAP) and concept alignment against the exact parts of the image's class's
    concepts; and the per-class part usage (`usage_rows`, with the split)."""
    rows, usage = [], []
    for split, a in arrays.items():
        parts, labels = a["parts"][:n], a["label"][:n]
        r = relevance_maps(model, a["images"][:n], method)
        fg = parts > 0
        seg = segmentation_scores(segmentation_counts(r, fg))
        ca = concept_alignment(r, part_masks(parts, labels, class_parts), fg)
        rows.append({"split": split, "method": method, **seg, **{k: float(v.mean()) for k, v in ca.items()}})
        usage += [{"split": split, **u} for u in usage_rows(r, parts, labels, PARTS)]
    return rows, usage


def explainer(model: torch.nn.Module, preferred: str, fallback: str) -> str:
    """`preferred` (evaluate.relevance) where it explains the model, else the run's own method (the CNN's
    Grad-CAM)."""
    return preferred if relevance.model_kind(model) in relevance.get(preferred).model_kinds else fallback
