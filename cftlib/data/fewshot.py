"""The few-shot data of CFT (§4.1; docs/paper.md §3.1): k images from each of a seeded half of the classes
to fine-tune on, one image from each other class to validate on — from the world's training split or an
ImageNet-style image folder. The masks stage grounds k + 1 images of every class (`select`); each fine-tuning
seed draws its own half (`subset`), as the paper's seeds do. Fine-tuning reads the grounded images back as
tensors (`load_data`) and narrows them to a run's classes (`for_subset`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cftlib.core.io import IMAGE_SUFFIXES, list_folders, list_images, read_image
from cftlib.data.augment import to_tensor
from cftlib.data.datasets import imagenet_synsets
from cftlib.data.maskstore import FLAGS, load_store, read_masks, store_classes
from cftlib.data.world import load_split


class FewShotError(ValueError):
    """Few-shot data a fine-tuning run cannot use (too few images of a class, none left of a split)."""


def select(labels: np.ndarray, k: int, seed: int) -> dict:
    """Indices into `labels` of the images the masks stage grounds: for every class, k training images and one
    validation image, disjoint, a seeded choice among the class's images. Which classes a run fine-tunes on is
    its own draw (`subset`), so every class needs both. The official code takes unsorted `os.listdir` order
    (docs/paper.md §3.1); sorting first makes it reproducible. Returns {train, val, classes}, sorted int arrays."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng([seed, 3302])
    train, val = [], []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) < k + 1:
            raise ValueError(f"class {c} has {len(idx)} images; the few-shot choice needs {k + 1} (k = {k} to train "
                             "on, one to validate on, since every class trains in some run and validates in others)")
        chosen = rng.choice(idx, k + 1, replace=False)
        train += chosen[:k].tolist()
        val.append(int(chosen[k]))
    return {"train": np.sort(train), "val": np.sort(val), "classes": classes}


def subset(classes, class_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's classes (the paper's protocol, drawn anew for every fine-tuning seed): a seeded choice of
    round(fraction · n) of the sorted classes to fine-tune on (k images each), the others to validate on (one
    image each). Returns (train classes, validation classes), sorted."""
    classes = np.unique(np.asarray(classes))
    n_train = int(round(class_fraction * len(classes)))
    if not 0 < n_train < len(classes):
        raise ValueError(f"class_fraction {class_fraction} of {len(classes)} classes leaves no train or no val class")
    train = np.sort(np.random.default_rng([seed, 3301]).choice(classes, n_train, replace=False))
    return train, np.setdiff1d(classes, train)


def list_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """An image folder `<root>/<class>/<image>`: (image paths, labels, class folder names), all sorted.
    A missing folder or a class with no images is an error naming it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (concepts.image_dir); expected <class>/<image> inside")
    class_dirs = [d.name for d in list_folders(root)]
    if not class_dirs:
        raise FileNotFoundError(f"{root}: no class folders; expected <class>/<image> inside")
    paths, labels = [], []
    for i, name in enumerate(class_dirs):
        found = list_images(root / name)
        if not found:
            raise FileNotFoundError(f"{root / name}: class {name!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        paths += found
        labels += [i] * len(found)
    return paths, np.array(labels), class_dirs


def load_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 H×W×3 array at native resolution, as a viewer shows it (cftlib.core.io.read_image)."""
    return np.asarray(read_image(path))


def imagenet_index(class_dirs: list[str], root: str | Path = "") -> np.ndarray:
    """The ImageNet-1k output index of each wnid class folder; a folder that is not an ImageNet-1k class is
    an error naming it."""
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    unknown = [d for d in class_dirs if d not in index]
    if unknown:
        raise FileNotFoundError(f"{root}: folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                                "are not ImageNet-1k wnids (concepts.dataset: imagenet expects <wnid>/<image>)")
    return np.array([index[d] for d in class_dirs])


class Pool:
    """The images the few-shot choice is drawn from: the world's `train` split, or an image folder (any
    `<class>/<image>` tree, or ImageNet's wnid folders). `labels` number the classes 0..n-1 (the concept
    bank's order); `class_index[label]` is the model's output for that class (ImageNet-1k index for
    `imagenet`, else the label itself). `item(i, split)` is what the grounders get."""

    def __init__(self, dataset: str, data_dir: str | Path = "data/world", image_dir: str | Path = ""):
        self.dataset = dataset
        if dataset == "world":
            self.arrays = load_split(data_dir, "train")
            self.labels = self.arrays["label"].astype(int)
            self.class_index = np.arange(self.labels.max() + 1)
        else:
            self.root = Path(image_dir)
            self.paths, self.labels, self.class_dirs = list_folder(image_dir)
            self.class_index = (imagenet_index(self.class_dirs, image_dir) if dataset == "imagenet"
                                else np.arange(len(self.class_dirs)))

    def item(self, i: int, split: str) -> dict:
        """{split, id, label, source, image, parts (world only, else None), key}."""
        i = int(i)
        if self.dataset == "world":
            return dict(split=split, id=f"{i:06d}", label=int(self.labels[i]), source=f"train:{i}",
                        image=self.arrays["images"][i], parts=self.arrays["parts"][i], key=i)
        return dict(split=split, id=f"{i:06d}", label=int(self.labels[i]),
                    source=self.paths[i].relative_to(self.root).as_posix(), image=load_image(self.paths[i]),
                    parts=None, key=i)

    def items(self, selection: dict):
        """Items of the chosen train then val images (a generator: folder images load one at a time)."""
        for split in ("train", "val"):
            for i in selection[split]:
                yield self.item(i, split)


def load(store_dir: str | Path, split: str, pool: Pool) -> dict:
    """The few-shot data for fine-tuning: images, binary concept masks (the union M), foreground masks (real
    images: the store's; None for the world, whose silhouette is exact), each concept's own mask with its text
    (`concepts`: (K, H, W) bool, `texts`) and labels of the items the masks stage kept in `split` (train or
    val), as lists in store order at the images' own size, plus their ids."""
    out = {"images": [], "masks": [], "foregrounds": [], "concepts": [], "texts": [], "labels": [], "ids": []}
    for r in load_store(store_dir)["items"]:
        if r["split"] == split and r["action"] != "dropped":
            out["images"].append(pool.item(int(r["id"]), split)["image"])
            m = read_masks(store_dir, r)
            out["masks"].append(m["union"].astype(bool))
            out["foregrounds"].append(m["foreground"].astype(bool) if "foreground" in m else None)
            out["concepts"].append(m["concepts"].astype(bool))
            out["texts"].append([c["text"] for c in r["concepts"]])
            out["labels"].append(r["label"])
            out["ids"].append(r["id"])
    return out


# ----------------------------------------------------------------------------- as fine-tuning reads it

def _tensors(images: list, masks: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, size, size), normalised, and masks (N, 1, size, size) in [0, 1]; images of another size
    are resized (bilinear, antialiased; masks too, so their edges become fractional, as in the official code)."""
    xs, ms = [], []
    for img, m in zip(images, masks):
        x, m = to_tensor(np.asarray(img)[None]), torch.from_numpy(np.asarray(m, np.float32))[None, None]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            m = F.interpolate(m, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        xs.append(x)
        ms.append(m)
    return torch.cat(xs), torch.cat(ms)


def load_data(masks_dir: str | Path, pool: Pool, k: int, size: int, foreground=None) -> dict:
    """The few-shot data of the masks stage, every class: the first k training images of each class (the store
    holds masks.k, in sorted order) and every validation image, as tensors {x, y (the model's output index of
    the class, `pool.class_index`), labels (the store's), concept, foreground, ids} per split, with `classes`,
    `class_fraction` (the store's) and `records` (the chosen store items) for `for_subset`, plus `counts`:
    images, quality flags and policy actions of the chosen images (dropped ones are skipped and counted).
    `foreground(item)` gives the foreground mask of an image the store holds none for (`grounding.foreground_masks`).
    A missing or outdated store, a class with fewer than k images, or no image left are errors."""
    store = load_store(masks_dir)
    classes, class_fraction = store_classes(store, masks_dir)
    items = store["items"]
    per_class: dict[int, list] = {}
    for r in items:
        if r["split"] == "train":
            per_class.setdefault(r["label"], []).append(r)
    if not per_class:
        raise FewShotError(f"{masks_dir}: the masks store has no training images")
    short = {c: len(rs) for c, rs in per_class.items() if len(rs) < k}
    if short:
        raise FewShotError(f"finetune.k={k}, but the masks store {masks_dir} holds fewer images of class(es) "
                           f"{short} (label: images); lower finetune.k or re-run masks with masks.k >= {k}")
    chosen = {r["id"] for rs in per_class.values() for r in rs[:k]} | {r["id"] for r in items if r["split"] == "val"}
    data, records = {}, {}
    for split in ("train", "val"):
        recs = [r for r in items if r["split"] == split and r["id"] in chosen]
        d = load(masks_dir, split, pool)
        keep = [i for i, id_ in enumerate(d["ids"]) if id_ in chosen]
        if not keep:
            raise FewShotError(f"{masks_dir}: no {split} image left (all dropped by masks.policy?)")
        x, concept = _tensors([d["images"][i] for i in keep], [d["masks"][i] for i in keep], size)
        fg = None
        if foreground is not None:  # the store's (real images), else `foreground` (the world's silhouette)
            fg = _tensors([d["images"][i] for i in keep],
                          [d["foregrounds"][i] if d["foregrounds"][i] is not None
                           else foreground(pool.item(int(d["ids"][i]), split)) for i in keep], size)[1]
        data[split] = {"x": x, "y": torch.tensor([int(pool.class_index[d["labels"][i]]) for i in keep]),
                       "labels": np.array([d["labels"][i] for i in keep]), "concept": concept, "foreground": fg,
                       "ids": [d["ids"][i] for i in keep]}
        records[split] = recs
    data["counts"] = _counts(records)
    data["records"] = records
    data["classes"], data["class_fraction"] = np.array(classes), class_fraction
    return data


def _counts(records: dict[str, list[dict]]) -> dict:
    """Per split: images used, and the quality flags and policy actions of the chosen store items."""
    return {split: {"images": sum(r["action"] != "dropped" for r in recs),
                    "flags": {f: sum(r["flag"] == f for r in recs) for f in FLAGS},
                    "actions": {a: sum(r["action"] == a for r in recs) for a in ("kept", "dropped", "foreground")}}
            for split, recs in records.items()}


def for_subset(data: dict, seed: int) -> dict:
    """One run's few-shot data (`load_data`'s, narrowed): the training images of its classes and the
    validation images of the others (`subset` with the run's class-subset seed), and `train_classes`. Data
    already narrowed (no `classes`) is returned as it is."""
    if "classes" not in data:
        return data
    train_classes, val_classes = subset(data["classes"], data["class_fraction"], seed)
    out = {k: v for k, v in data.items() if k not in ("classes", "class_fraction", "records")}
    mine = {s: [r for r in data["records"][s] if r["label"] in set(c.tolist())]
            for s, c in (("train", train_classes), ("val", val_classes))}
    out["counts"] = _counts(mine)
    for split, classes in (("train", train_classes), ("val", val_classes)):
        d = data[split]
        keep = np.flatnonzero(np.isin(d["labels"], classes))
        if not len(keep):
            raise FewShotError(f"class subset {seed}: no {split} image of classes {classes.tolist()} in "
                               "the masks store (all dropped by masks.policy?)")
        t = torch.from_numpy(keep)
        out[split] = {k: v[t] if torch.is_tensor(v) else v[keep] if isinstance(v, np.ndarray) else
                      [v[i] for i in keep] if isinstance(v, list) else v for k, v in d.items()}
    out["train_classes"] = train_classes
    return out
