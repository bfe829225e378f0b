"""Concept validation (CFT supp. §6; docs/paper.md §1.3): each candidate concept of a class is grounded in P
training images of that class — not the few-shot ones — and kept only if it is found often enough (occurrence:
the share of the P images where its mask is not empty) and, where found, covers enough of the object (coverage:
the mean IoU of its mask with the object's mask). The paper applies the two thresholds in that order (15 % and
20 %) and keeps 1,852 of its candidates over 500 classes; it says nothing of a class left with no concept, which
here keeps its best one (highest coverage among those found often enough, else the most often found), so every
class still has a mask to train on.

The per-concept rates are kept (`rates`), so any thresholds' bank can be rebuilt from them (`apply`): the
ablations stage trains on the banks of the paper's other thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cftlib import grounding
from cftlib.core import config
from cftlib.core.io import read_json
from cftlib.data import fewshot


def images(labels: np.ndarray, selection: dict, per_class: int, seed: int) -> np.ndarray:
    """Indices into `labels` of up to `per_class` images of each class that the few-shot `selection`
    (`fewshot.select`: its train and val indices) did not take; a seeded choice among the class's sorted images,
    all of them where fewer remain. Sorted."""
    labels = np.asarray(labels)
    taken = np.union1d(selection["train"], selection["val"])
    rng = np.random.default_rng([seed, 3303])
    out = []
    for c in np.unique(labels):
        free = np.setdiff1d(np.flatnonzero(labels == c), taken)
        out += list(rng.choice(free, min(per_class, len(free)), replace=False))
    return np.sort(np.asarray(out, int))


def measure(items, bank: dict, masks_cfg: config.Masks, seed: int, grounder=None, objects=None) -> list[dict]:
    """Ground each item {image, label, parts, key} (`fewshot.Pool.item`) with its class's candidate concepts
    and score them: one row per (class, concept) {label, name, text, weight, source, images, found, occurrence,
    coverage}. `grounder` defaults to `masks.grounder` built as the masks stage builds it, `objects` (the object's
    mask) to the `foreground` grounder: the world's silhouette, or GroundingSAM prompted with the class name."""
    spec = grounding.GROUNDERS[masks_cfg.grounder]
    if not spec.uses_concepts:
        raise grounding.GroundingError(f"masks.grounder {masks_cfg.grounder!r} ignores the concepts; concept "
                                       "validation needs a concept grounder (world or groundingsam)")
    grounder = grounder or spec.build(masks_cfg, seed)
    objects = objects or grounding.Foreground(masks_cfg.groundingsam)
    if isinstance(grounder, grounding.GroundingSAM) and isinstance(objects, grounding.Foreground):
        objects._gsam = objects._gsam or grounder  # one copy of the models in memory
    seen, found, iou = {}, {}, {}
    for it in items:
        cls = bank["classes"][it["label"]]
        texts = [k["text"] for k in cls["concepts"]]
        masks = grounder(it["image"], texts, parts=it["parts"], key=it["key"], name=cls["name"])
        obj = objects(it["image"], [], parts=it["parts"], key=it["key"], name=cls["name"])[0].astype(bool)
        seen[it["label"]] = seen.get(it["label"], 0) + 1
        for text, m in zip(texts, masks.astype(bool)):
            if m.any():
                key = it["label"], text
                found[key] = found.get(key, 0) + 1
                iou[key] = iou.get(key, 0.0) + float((m & obj).sum() / max(1, (m | obj).sum()))
    rows = []
    for cls in bank["classes"]:
        n = seen.get(cls["label"], 0)
        for k in cls["concepts"]:
            f = found.get((cls["label"], k["text"]), 0)
            rows.append({"label": cls["label"], "name": cls["name"], "text": k["text"], "weight": k["weight"],
                         "source": k["source"], "images": n, "found": f, "occurrence": f / n if n else 0.0,
                         "coverage": iou.get((cls["label"], k["text"]), 0.0) / f if f else 0.0})
    return rows


def apply(bank: dict, rates: list[dict], occurrence: float, coverage: float) -> tuple[dict, list[dict]]:
    """The bank with the concepts whose rates pass both thresholds (occurrence first, then coverage), and the
    dropped ones {label, name, text, reason, occurrence, coverage}; a class none of whose concepts passes keeps
    its best (see the module docstring). The header's params record the thresholds."""
    by = {(r["label"], r["text"]): r for r in rates}
    classes, dropped = [], []
    for cls in bank["classes"]:
        rows = [by[cls["label"], k["text"]] for k in cls["concepts"]]
        often = [r["occurrence"] >= occurrence for r in rows]
        keep = [o and r["coverage"] >= coverage for o, r in zip(often, rows)]
        if not any(keep):
            best = max(range(len(rows)), key=lambda i: (often[i], rows[i]["coverage"] if often[i] else
                                                         rows[i]["occurrence"]))
            keep[best] = True
        for r, o, k in zip(rows, often, keep):
            if not k:
                reason = f"occurrence < {occurrence:g}" if not o else f"coverage < {coverage:g}"
                dropped.append({"label": r["label"], "name": r["name"], "text": r["text"], "reason": reason,
                                "occurrence": r["occurrence"], "coverage": r["coverage"]})
        classes.append({**cls, "concepts": [c for c, k in zip(cls["concepts"], keep) if k]})
    params = {**bank["header"]["params"], "validation": {"occurrence": occurrence, "coverage": coverage,
                                                          "images": max((r["images"] for r in rates), default=0)}}
    return {**bank, "header": {**bank["header"], "params": params}, "classes": classes}, dropped


def run(bank: dict, pool, P: config.Params) -> tuple[dict, list[dict], list[dict], dict]:
    """The concepts stage's validation of `bank` with `concepts.validation`: on its `images` held-out training
    images per class of `pool` (`fewshot.Pool`; the few-shot choice of masks.k and base.seed left out), returns
    (the bank to save: filtered where `apply`, else `bank`; the rates; the concepts failing the thresholds; what
    to save beside the bank: the candidates, the rates and the images, from which `apply` rebuilds any
    thresholds' bank). With `images` 0: (bank, [], [], {})."""
    V = P.concepts.validation
    if not V.images:
        return bank, [], [], {}
    held = images(pool.labels, fewshot.select(pool.labels, P.masks.k, P.base.seed), V.images, P.base.seed)
    rates = measure((pool.item(j, "validation") for j in held), bank, P.masks, P.base.seed)
    checked, failing = apply(bank, rates, V.occurrence, V.coverage)
    beside = {"validation": {"candidates": bank, "rates": rates, "images": held.tolist()}}
    return (checked if V.apply else bank), rates, failing, beside


def load(concepts_dir: str | Path) -> dict:
    """What the concepts stage saved beside its bank: {candidates, rates, images}; a clear error where the
    stage did not measure (concepts.validation.images 0)."""
    path = Path(concepts_dir) / "validation.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no concept validation was run; set concepts.validation.images > 0 and run "
                                "the concepts stage")
    return read_json(path)


def table(rates: list[dict], failing: list[dict]) -> pd.DataFrame:
    """The rates as a DataFrame with a `passes` column (not among `failing`)."""
    out = {(d["label"], d["text"]) for d in failing}
    return pd.DataFrame(rates).assign(passes=[(r["label"], r["text"]) not in out for r in rates])
