"""Accuracy (CFT §5): top-1/top-5 per split, classes seen in fine-tuning vs the others, shortcut gaps (test
minus each OOD split), the split roles a profile gives (reference, OOD, alignment) and the world's validity
checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cftlib.data.datasets import IN_DISTRIBUTION, Benchmark
from cftlib.data.world import load_split
from cftlib.models.factory import predict, predict_heads

OOD = ("v2", "bg_conflict", "color_conflict", "pose", "rendition", "bg_random")


@dataclass(frozen=True)
class Roles:
    """Which split plays which part in the tables, gaps, claims and figures: the world's splits, or at paper
    scale the benchmarks. `in_distribution`: the reference and the splits reported beside it, apart from the OOD
    ones; `focus`: the OOD split of the seen/unseen comparison, the few-shot and CNN claims and the qualitative
    figure; `chance`: top-1 of guessing (None: not drawn)."""
    splits: list
    reference: str
    ood: list
    focus: str
    chance: float | None
    in_distribution: list


def roles(P) -> Roles:
    """The world's `test` against its OOD splits (focus `bg_conflict`, the world's ImageNet-A), or ImageNet
    val and ImageNet-v2, the paper's in-distribution references, against the other configured benchmarks (focus
    ImageNet-A when configured)."""
    E = P.evaluate
    if E.splits:
        return Roles(list(E.splits), "test", [s for s in E.splits if s in OOD], "bg_conflict", 1 / P.world.n_species,
                     ["test"])
    ref = [b for b in IN_DISTRIBUTION if b in E.benchmarks]
    ood = [b for b in E.benchmarks if b not in IN_DISTRIBUTION]
    focus = "imagenet_a" if "imagenet_a" in ood else (ood[0] if ood else "imagenet_val")
    return Roles([*ref, *ood], "imagenet_val", ood, focus, None, ref)


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


PROTOCOLS = ("chefer", "standard")
"""Evaluation protocols (`evaluate.protocols`): the official code's and the benchmarks' own (benchmark_score)."""


def benchmark_score(bench: Benchmark, logits: np.ndarray, protocol: str) -> dict[str, float]:
    """Top-1/top-5 of a benchmark's (N, 1000) logits under `protocol` (cftlib.data.datasets' docstring)."""
    if protocol == "chefer":
        return accuracy(logits, bench.labels)
    if protocol == "standard":
        return accuracy(logits, bench.accepted or bench.labels, subset=bench.subset)
    raise ValueError(f"protocol {protocol!r}: choose one of {PROTOCOLS}")


def benchmark_report(bench: Benchmark, logits: np.ndarray, protocol: str, seen: np.ndarray) -> list[dict]:
    """Rows {group, images, top1, top5} over all of a benchmark's images and over those whose label is / is not
    a class fine-tuned on (`seen`: ImageNet indices); an empty group is left out."""
    mine = np.isin(bench.labels, seen)
    rows = []
    for group, sel in (("all", np.ones(len(bench), bool)), ("seen", mine), ("unseen", ~mine)):
        if sel.any():
            rows.append({"group": group, "images": int(sel.sum()),
                         **benchmark_score(bench.take(np.flatnonzero(sel)), logits[sel], protocol)})
    return rows


def split_accuracy(model: torch.nn.Module, data_dir: str | Path, splits: list[str],
                   heads: dict[str, torch.nn.Module] | None = None) -> dict[str, dict[str, float]]:
    """Top-1 accuracy per split of the model (key "base") and of each classifier of `heads` put on its pre-logit
    features (a DFR probe's refitted layer), the backbone run once for all: {head: {split: top-1}}."""
    names = ["base", *(heads or {})]
    out = {name: {} for name in names}
    for split in splits:
        a = load_split(data_dir, split)
        for name, logits in zip(names, predict_heads(model, list((heads or {}).values()), a["images"])):
            out[name][split] = float(np.mean(logits.argmax(1) == a["label"]))
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


def flips(pred: np.ndarray, base_pred: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Where a change of top-1 comes from: of `images`, those a model gets right and its base got wrong
    (`corrected`), and those it gets wrong and its base got right (`regressed`); top-1 moves by their difference."""
    right, base_right = np.asarray(pred) == labels, np.asarray(base_pred) == labels
    return {"images": len(right), "corrected": int((right & ~base_right).sum()),
            "regressed": int((~right & base_right).sum())}


def spread(values) -> dict[str, float]:
    """Mean, min and max of per-base-model values: how much the base itself varies with its seed."""
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def validity(rows, splits=("test", "bg_conflict")) -> dict[str, float]:
    """The test bed's validity figures, means over the ViT base models of `rows` (model, base, head, split,
    top1; head "base" or "dfr"): test accuracy; the shortcut gap test − bg_conflict; and the gap left when a
    refitted last layer (DFR, cftlib.training.dfr) reads the same features: small when the parts are in the features."""
    v = rows[rows["model"] == "vit"].pivot_table(index=["base", "head"], columns="split", values="top1")
    base, probe = v.xs("base", level="head"), v.xs("dfr", level="head")
    test, conflict = splits
    return {"test": float(base[test].mean()), "gap": float((base[test] - base[conflict]).mean()),
            "dfr_gap": float((base[test] - probe[conflict]).mean()), "dfr_test": float(probe[test].mean()),
            "dfr_bg_conflict": float(probe[conflict].mean())}


# ----------------------------------------------------------------------------- runs and seeds

def run_accuracy(model: torch.nn.Module, arrays: dict[str, dict], seen: np.ndarray,
                 batch_size: int = 500) -> list[dict]:
    """One row per split and class group (all, seen, unseen): top-1 and top-5 of one model."""
    return accuracy_rows(split_logits(model, arrays, batch_size), arrays, seen)


def split_logits(model: torch.nn.Module, arrays: dict[str, dict], batch_size: int = 500) -> dict[str, np.ndarray]:
    """The model's logits on every split's images."""
    return {split: predict(model, a["images"], batch_size) for split, a in arrays.items()}


def accuracy_rows(logits: dict[str, np.ndarray], arrays: dict[str, dict], seen: np.ndarray) -> list[dict]:
    """`run_accuracy`'s rows from logits already computed (one model scored once, grouped by each run's classes)."""
    return [{"split": split, "group": g, **acc} for split, a in arrays.items()
            for g, acc in split_report(logits[split], a["label"], seen).items()]


def gaps_frame(acc, reference: str = "test", ood=OOD):
    """Per run, the shortcut gap (`reference` − split) in top-1 over all images for each split of `ood`
    (the world's OOD splits, or the OOD benchmarks against ImageNet val), as rows of `acc`'s shape."""
    allimg = acc[acc["group"] == "all"]
    test = allimg[allimg["split"] == reference].set_index(["model", "arm", "seed"])["top1"]
    ood = allimg[allimg["split"].isin(list(ood))].copy()
    ood["gap"] = test.loc[list(zip(ood["model"], ood["arm"], ood["seed"]))].to_numpy() - ood["top1"].to_numpy()
    return pd.DataFrame(ood[["model", "arm", "seed", "split", "gap"]]).reset_index(drop=True)
