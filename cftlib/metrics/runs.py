"""What scoring a fine-tuned run needs besides its predictions: the classes it fine-tuned on (the seen / unseen
split of CFT §5, the paper fine-tuning on half of the classes) and a digest of its weights (identical runs are
scored once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cftlib.data import fewshot
from cftlib.data.maskstore import load_store, store_classes


def seen_classes(store_dir: str | Path, subset: int) -> np.ndarray:
    """The classes a run with class subset `subset` fine-tuned on, as model outputs: `fewshot.subset` of the
    mask store's classes and class fraction, mapped through the header's `class_index` (store label → model
    output, e.g. the ImageNet-1k index; absent = the label itself)."""
    store = load_store(store_dir)
    labels, _ = fewshot.subset(*store_classes(store, store_dir), subset)
    index = store["header"].get("class_index")
    return np.array(sorted(labels if index is None else {int(index[y]) for y in labels}), dtype=int)


def seen_by_subset(store_dir: str | Path, runs) -> dict[int, np.ndarray]:
    """`seen_classes` of every class subset among `runs`."""
    return {s: seen_classes(store_dir, s) for s in sorted({r.subset for r in runs})}

