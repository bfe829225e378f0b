"""Evaluation (CFT §5): top-1/top-5 accuracy per split, mean and 95% CI over seeds, classes seen in
fine-tuning vs the others, shortcut gaps (test minus each OOD split), and where the relevance lands —
RobustViT/Chefer segmentation alignment (map thresholded at its mean; pixel accuracy, mIoU over
{bg, fg}, mean per-image AP; docs/paper.md §4.2) and concept alignment against the world's exact part masks
(share of relevance mass on concept parts; pointing game), the latter our own metric (§4.2 [INFER])."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .models import predict
from .progress import bar
from .world import PARTS, load_split

OOD = ("v2", "bg_conflict", "color_conflict", "pose", "rendition", "bg_random")
ALIGNMENT = ("pixAcc", "mIoU", "mAP", "concept_mass", "object_mass", "concept_area", "pointing")
"""Alignment columns: RobustViT's segmentation scores, then the concept metrics (NaN at paper scale: no parts)."""


@dataclass(frozen=True)
class Roles:
    """Which split plays which part in the tables, gaps, claims and figures: the world's splits, or at paper
    scale the benchmarks. `focus`: the OOD split of the seen/unseen comparison, the few-shot and CNN claims
    and the qualitative figure; `chance`: top-1 of guessing (None: not drawn)."""
    splits: list
    reference: str
    ood: list
    focus: str
    chance: float | None


def roles(P) -> Roles:
    """The world's `test` against its OOD splits (focus `bg_conflict`, the world's ImageNet-A), or ImageNet
    val against the other configured benchmarks (focus ImageNet-A when configured)."""
    E = P.evaluate
    if E.splits:
        return Roles(list(E.splits), "test", [s for s in E.splits if s in OOD], "bg_conflict", 1 / P.world.n_species)
    ood = [b for b in E.benchmarks if b != "imagenet_val"]
    focus = "imagenet_a" if "imagenet_a" in ood else (ood[0] if ood else "imagenet_val")
    return Roles(["imagenet_val", *ood], "imagenet_val", ood, focus, None)


# ----------------------------------------------------------------------------- accuracy

def topk_correct(logits: np.ndarray, targets, k: int = 1, subset: np.ndarray | None = None) -> np.ndarray:
    """Per-sample hit of the top-k prediction. `targets`: (N,) class indices, or a list of sets of
    accepted indices (ObjectNet's any-of-mapped rule). `subset`: classes whose logits compete (the
    200-class mask of ImageNet-A/R); None = all. k is clipped to the number of competing classes."""
    logits = np.asarray(logits, np.float64)
    cols = np.arange(logits.shape[1]) if subset is None else np.asarray(subset)
    k = min(k, len(cols))
    # stable sort on the negated logits: ties go to the lower class index (deterministic)
    top = cols[np.argsort(-logits[:, cols], axis=1, kind="stable")[:, :k]]
    if isinstance(targets, np.ndarray) and targets.ndim == 1:
        return (top == targets[:, None]).any(1)
    return np.array([bool(set(t.tolist()) & set(accept)) for t, accept in zip(top, targets)])


def accuracy(logits: np.ndarray, targets, subset: np.ndarray | None = None, ks=(1, 5)) -> dict[str, float]:
    """{"top1": …, "top5": …} (see `topk_correct`)."""
    return {f"top{k}": float(topk_correct(logits, targets, k, subset).mean()) for k in ks}


def split_accuracy(model: torch.nn.Module, data_dir: str | Path, splits: list[str]) -> dict[str, float]:
    """Top-1 accuracy per split."""
    out = {}
    for split in splits:
        a = load_split(data_dir, split)
        out[split] = float(np.mean(predict(model, a["images"]).argmax(1) == a["label"]))
    return out


def split_report(logits: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> dict[str, dict[str, float]]:
    """Top-1/top-5 over all images, over those of classes seen in fine-tuning (`seen`: class indices)
    and over the other classes (the paper fine-tunes on half the classes, §4.1)."""
    labels = np.asarray(labels).astype(int)
    mine = np.isin(labels, seen)
    return {"all": accuracy(logits, labels), "seen": accuracy(logits[mine], labels[mine]),
            "unseen": accuracy(logits[~mine], labels[~mine])}


def shortcut_gaps(acc: dict[str, float]) -> dict[str, float]:
    """Accuracy lost on each OOD split relative to `test` (positive = worse out of distribution)."""
    return {s: acc["test"] - acc[s] for s in OOD if s in acc}


def spread(values) -> dict[str, float]:
    """Mean, min and max of per-base-model values: how much the base itself varies with its seed."""
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def validity(rows, splits=("test", "bg_conflict")) -> dict[str, float]:
    """The test bed's validity figures, means over the ViT base models of `rows` (model, base, head, split,
    top1; head "base" or "dfr"): test accuracy; the shortcut gap test − bg_conflict; and the gap left when a
    refitted last layer (DFR, cftlib.dfr) reads the same features: small when the parts are in the features."""
    v = rows[rows["model"] == "vit"].pivot_table(index=["base", "head"], columns="split", values="top1")
    base, probe = v.xs("base", level="head"), v.xs("dfr", level="head")
    test, conflict = splits
    return {"test": float(base[test].mean()), "gap": float((base[test] - base[conflict]).mean()),
            "dfr_gap": float((base[test] - probe[conflict]).mean()), "dfr_test": float(probe[test].mean()),
            "dfr_bg_conflict": float(probe[conflict].mean())}


# ----------------------------------------------------------------------------- seeds and intervals

def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (bisection on the CDF, whose tail is the
    regularised incomplete beta, integrated numerically: no scipy needed for a 95% interval)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # P(T <= t) for t >= 0: 1/2 + ∫_0^t pdf, substituting u = atan(x/√df)
        u = np.linspace(0.0, math.atan(t / math.sqrt(df)), 4001)
        f = np.exp(logc) * math.sqrt(df) * np.cos(u) ** (df - 1)  # pdf(√df tan u) · √df sec² u
        return 0.5 + float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(u)))

    lo, hi = 0.0, 1e3
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> dict[str, float]:
    """Mean over seeds with the half-width of a Student-t confidence interval ({mean, ci, n}); a single
    run gets ci = NaN (no spread is known)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    ci = float("nan") if n < 2 else t_quantile(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return {"mean": float(v.mean()), "ci": ci, "n": n}


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
    from PIL import Image

    return image if image.shape[:2] == (size, size) else np.asarray(
        Image.fromarray(image).resize((size, size), Image.BILINEAR))


def fit_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """A bool K×H×W stack of masks at K×size×size (nearest), unchanged when it already is."""
    from PIL import Image

    return masks if masks.shape[1:] == (size, size) else np.stack(
        [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0 for m in masks])


def concept_usage(model: torch.nn.Module, store: dict, method: str, size: int | None, batch_size: int = 100,
                  amp: bool = False, build: dict | None = None) -> list[dict]:
    """`concept_usage_rows` of `model`'s relevance (predicted class) on the mask store's images (`store`:
    cftlib.fewshot.load), each image and mask brought to the model's input `size` (None, a model without a
    fixed input size: the first image's), as split `MASKS_SPLIT`; none without images."""
    if not store["images"]:
        return []
    size = size or int(np.asarray(store["images"][0]).shape[0])
    images = np.stack([fit_image(np.asarray(x), size) for x in store["images"]])
    r = relevance_maps(model, images, method, batch_size, amp, build)
    masks = [fit_masks(np.asarray(m, bool), size) for m in store["concepts"]]
    return [{"split": MASKS_SPLIT, **u} for u in concept_usage_rows(r, masks, store["labels"], store["texts"])]


def concept_parts(bank: dict) -> list[list[str]]:
    """Per class, the world parts its concepts name (the class's own concept mask; cftlib.grounding)."""
    from .grounding import concept_part

    return [sorted({p for c in cls["concepts"] if (p := concept_part(c["text"]))}) for cls in bank["classes"]]


def part_masks(parts: np.ndarray, labels: np.ndarray, class_parts: list[list[str]]) -> np.ndarray:
    """Exact concept masks: the union of each image's class's concept parts ("all" = the silhouette)."""
    out = np.zeros(parts.shape, bool)
    for i, (p, y) in enumerate(zip(parts, labels)):
        for name in class_parts[int(y)]:
            out[i] |= p > 0 if name == "all" else p == PARTS.index(name) + 1
    return out


# ----------------------------------------------------------------------------- runs and seeds

def run_accuracy(model: torch.nn.Module, arrays: dict[str, dict], seen: np.ndarray, batch_size: int = 500) -> list[dict]:
    """One row per split and class group (all, seen, unseen): top-1 and top-5 of one model."""
    rows = []
    for split, a in arrays.items():
        logits = predict(model, a["images"], batch_size)
        rows += [{"split": split, "group": g, **acc} for g, acc in split_report(logits, a["label"], seen).items()]
    return rows


def relevance_maps(model: torch.nn.Module, images: np.ndarray, method: str, batch_size: int = 100,
                   amp: bool = False, build: dict | None = None) -> np.ndarray:
    """(N, H, W) min-max normalised relevance of each image's predicted class at pixel level (the
    RobustViT segmentation test explains the prediction, docs/paper.md §4.2), computed on the model's device
    (`amp`: under bfloat16 autocast there, CUDA only), the images normalised as the model of `build` (its
    checkpoint config) was fine-tuned (default 0.5)."""
    from .models import renormalise, to_tensor
    from .relevance import explain

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


def summarise(frame, by: list[str], metrics: list[str], level: float = 0.95):
    """Mean and CI half-width over seeds of each metric, per group of `by` (columns `<metric>`,
    `<metric>_ci`, and `n` runs)."""
    import pandas as pd

    rows = []
    for key, g in frame.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            s = mean_ci(g[m].to_numpy(), level)
            row[m], row[f"{m}_ci"], row["n"] = s["mean"], s["ci"], s["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(frame, metric: str, arm: str, versus: str, level: float = 0.95, **where) -> dict | None:
    """Mean and CI of (arm − versus) in `metric`, paired by seed, over the rows matching `where`
    (column = value); None when either arm has no rows there."""
    sel = frame
    for col, value in where.items():
        sel = sel[sel[col] == value]
    a = sel[sel["arm"] == arm].set_index("seed")[metric]
    b = sel[sel["arm"] == versus].set_index("seed")[metric]
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return None
    return mean_ci((a[common] - b[common]).to_numpy(), level)


def gaps_frame(acc, reference: str = "test", ood=OOD):
    """Per run, the shortcut gap (`reference` − split) in top-1 over all images for each split of `ood`
    (the world's OOD splits, or the OOD benchmarks against ImageNet val), as rows of `acc`'s shape."""
    import pandas as pd

    allimg = acc[acc["group"] == "all"]
    test = allimg[allimg["split"] == reference].set_index(["model", "arm", "seed"])["top1"]
    ood = allimg[allimg["split"].isin(list(ood))].copy()
    ood["gap"] = test.loc[list(zip(ood["model"], ood["arm"], ood["seed"]))].to_numpy() - ood["top1"].to_numpy()
    return pd.DataFrame(ood[["model", "arm", "seed", "split", "gap"]]).reset_index(drop=True)


def seen_classes(store_dir: str | Path) -> np.ndarray:
    """The classes fine-tuned on, as model outputs: labels of the mask store's training items (the few-shot
    choice), mapped through the header's `class_index` (store label → model output, e.g. the ImageNet-1k
    index; absent = the label itself)."""
    from .grounding import load_store

    store = load_store(store_dir)
    index = store["header"].get("class_index")
    labels = {r["label"] for r in store["items"] if r["split"] == "train"}
    return np.array(sorted(labels if index is None else {int(index[y]) for y in labels}), dtype=int)


def explainer(model: torch.nn.Module, preferred: str, fallback: str) -> str:
    """`preferred` (evaluate.relevance) where it explains the model, else the run's own method (the CNN's
    Grad-CAM)."""
    from . import relevance

    return preferred if relevance.model_kind(model) in relevance.get(preferred).model_kinds else fallback


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the weights: runs with identical weights (the `none` arm's seeds) are evaluated once."""
    import hashlib

    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def evaluate_runs(runs, finetune_dir: str | Path, arrays: dict[str, dict], seen: np.ndarray,
                  class_parts: list[list[str]], cfg, progress: bool = False, store: dict | None = None):
    """Accuracy, alignment and per-class part usage rows (model, arm, seed, …) of every fine-tuning run's
    selected (best) checkpoint; with `store` (the mask store's validation images, cftlib.fewshot.load), the
    usage from their grounded concept masks too (`concept_usage`). Maps use `cfg.relevance` where it explains the model, else the run's own method (the CNN's
    Grad-CAM). Runs with identical weights (the `none` arm's seeds) are computed once."""
    import pandas as pd
    from .finetune import load_run

    align_arrays = {s: arrays[s] for s in cfg.alignment_splits}
    acc, align, usage, done = [], [], [], {}
    for spec in bar(runs, desc="evaluate", progress=progress, unit="runs"):
        model, build = load_run(spec, finetune_dir)
        key = weights_digest(model)
        if key not in done:
            method = explainer(model, cfg.relevance, spec.relevance)
            rows, usage_ = run_alignment(model, align_arrays, class_parts, method, cfg.alignment_images)
            if store is not None:
                usage_ += concept_usage(model, store, method, build.get("img_size"), cfg.batch_size)
            done[key] = (run_accuracy(model, arrays, seen, cfg.batch_size), rows, usage_)
        ids = {"model": spec.model, "arm": spec.arm, "seed": spec.seed}
        acc += [{**ids, **r} for r in done[key][0]]
        align += [{**ids, **r} for r in done[key][1]]
        usage += [{**ids, **r} for r in done[key][2]]
    return pd.DataFrame(acc), pd.DataFrame(align), pd.DataFrame(usage)


def head(arrays: dict, n: int) -> dict:
    """The first n items of every array of a split (n = 0: all)."""
    return arrays if n == 0 else {k: v[:n] for k, v in arrays.items()}
