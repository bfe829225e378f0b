"""The mask store's format: `manifest.json` (the header and one record per image: split, id, label, quality flag,
policy action, its concepts) beside `<split>/<id>.npz` (union, weighted map, per-concept masks) for each image
not dropped; written by the masks stage, read by fine-tuning and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cftlib.core.io import atomic_path, read_json, read_npz, write_json
from cftlib.data.world import save_npz

FLAGS = ("ok", "empty", "too_small", "too_large")
"""The quality flag of a store record (`grounding.quality` sets it)."""


class GroundingError(ValueError):
    """A concept, image or mask store the grounders cannot use; the message names it."""


def write_store(out_dir: str | Path, results, header: dict) -> dict:
    """Write `<out_dir>/<split>/<id>.npz` (union, weighted, concepts) per kept item and `manifest.json`
    ({header, items}); the folder appears atomically. Returns the manifest."""
    items = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for record, arrays in results:
            if arrays is not None:
                save_npz(tmp / record["split"] / f"{record['id']}.npz", arrays)
            items.append(record)
        manifest = {"header": header, "items": items}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def load_store(store_dir: str | Path) -> dict:
    """The manifest of a mask store."""
    path = Path(store_dir) / "manifest.json"
    if not path.is_file():
        raise GroundingError(f"{path}: no mask store; run the masks stage")
    return read_json(path)


def store_classes(store: dict, store_dir: str | Path) -> tuple[list[int], float]:
    """The classes a store grounded images of and its `masks.class_fraction`: what a run's class subset is drawn
    from (`cftlib.data.fewshot.subset`). A store written before per-seed class subsets is refused by name."""
    header = store["header"]
    if "classes" not in header or "class_fraction" not in header.get("params", {}):
        raise GroundingError(f"{Path(store_dir) / 'manifest.json'}: a mask store without `classes` and "
                             "`params.class_fraction` in its header (written before per-seed class subsets); "
                             "re-run the masks stage (`dvc repro masks`)")
    return [int(c) for c in header["classes"]], float(header["params"]["class_fraction"])


def read_masks(store_dir: str | Path, record: dict) -> dict[str, np.ndarray]:
    """{union, weighted, concepts, and on real images foreground} of one kept item of a store."""
    path = Path(store_dir) / record["split"] / f"{record['id']}.npz"
    if not path.is_file():
        raise GroundingError(f"{path}: missing ({record['id']} was {record['action']})")
    return read_npz(path)
