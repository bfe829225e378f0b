"""The evaluate stage on the world: every fine-tuned run read back and scored on every split (accuracy,
the images it corrects and breaks against its base, relevance alignment), with the seen classes of the mask store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cftlib.core.progress import bar
from cftlib.data import fewshot
from cftlib.data.maskstore import load_store, store_classes
from cftlib.metrics import accuracy, alignment
from cftlib.training.runspec import load_run


def seen_classes(store_dir: str | Path, subset: int) -> np.ndarray:
    """The classes a run with class subset `subset` fine-tuned on, as model outputs: `fewshot.subset` of the
    mask store's classes and class fraction, mapped through the header's `class_index` (store label → model
    output, e.g. the ImageNet-1k index; absent = the label itself)."""
    store = load_store(store_dir)
    labels, _ = fewshot.subset(*store_classes(store, store_dir), subset)
    index = store["header"].get("class_index")
    return np.array(sorted(labels if index is None else {int(index[y]) for y in labels}), dtype=int)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the weights: runs with identical weights (the `none` arm's seeds) are evaluated once."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def seen_by_subset(store_dir: str | Path, runs) -> dict[int, np.ndarray]:
    """`seen_classes` of every class subset among `runs`."""
    return {s: seen_classes(store_dir, s) for s in sorted({r.subset for r in runs})}


FLIP_COLUMNS = ["model", "arm", "seed", "split", "images", "corrected", "regressed"]
"""plots/evaluate_flips.csv: per run and split, the images it corrects and breaks against its base model."""


def flip_rows(runs, logits: dict, arrays: dict[str, dict]) -> pd.DataFrame:
    """Per run other than the bases' own (`none`) and per split, `accuracy.flips` of its predictions against those
    of the `none` run of the same model and base model (`logits`: run → split → logits); a run whose base has no
    `none` run is left out. Columns `FLIP_COLUMNS`."""
    base = {(s.model, s.base): logits[s] for s in runs if s.arm == "none"}
    return pd.DataFrame([{"model": s.model, "arm": s.arm, "seed": s.seed, "split": split,
                          **accuracy.flips(logits[s][split].argmax(1), base[s.model, s.base][split].argmax(1),
                                           a["label"])}
                         for s in runs if s.arm != "none" and (s.model, s.base) in base
                         for split, a in arrays.items()], columns=FLIP_COLUMNS)


def evaluate_runs(runs, finetune_dir: str | Path, arrays: dict[str, dict], seen: dict[int, np.ndarray],
                  class_parts: list[list[str]], cfg, progress: bool = False, store: dict | None = None):
    """Accuracy, alignment, per-class part usage and flip rows (model, arm, seed, …) of every fine-tuning run's
    selected (best) checkpoint, the seen/unseen groups by the run's own classes (`seen`: class subset → the
    classes it fine-tuned on, `seen_by_subset`); with `store` (the mask store's validation images,
    cftlib.data.fewshot.load), the usage from their grounded concept masks too (`concept_usage`); the flips
    against each run's base model (`flip_rows`). Maps use `cfg.relevance` where it explains the model, else the
    run's own method (the CNN's Grad-CAM). Runs with identical weights (the `none` arm's seeds) are computed once."""
    align_arrays = {s: arrays[s] for s in cfg.alignment_splits}
    acc, align, usage, done, keys = [], [], [], {}, {}
    for spec in bar(runs, desc="evaluate", progress=progress, unit="runs"):
        model, build = load_run(spec, finetune_dir)
        key = keys[spec] = weights_digest(model)
        if key not in done:
            method = alignment.explainer(model, cfg.relevance, spec.relevance)
            rows, usage_ = alignment.run_alignment(model, align_arrays, class_parts, method, cfg.alignment_images)
            if store is not None:
                usage_ += alignment.concept_usage(model, store, method, build.get("img_size"), cfg.batch_size)
            done[key] = (accuracy.split_logits(model, arrays, cfg.batch_size), rows, usage_)
        ids = {"model": spec.model, "arm": spec.arm, "seed": spec.seed}
        acc += [{**ids, **r} for r in accuracy.accuracy_rows(done[key][0], arrays, seen[spec.subset])]
        align += [{**ids, **r} for r in done[key][1]]
        usage += [{**ids, **r} for r in done[key][2]]
    flips = flip_rows(runs, {s: done[k][0] for s, k in keys.items()}, arrays)
    return pd.DataFrame(acc), pd.DataFrame(align), pd.DataFrame(usage), flips


def head(arrays: dict, n: int) -> dict:
    """The first n items of every array of a split (n = 0: all)."""
    return arrays if n == 0 else {k: v[:n] for k, v in arrays.items()}
