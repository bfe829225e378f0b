"""The paper's benchmarks at ImageNet scale (CFT §5; cft_facts §4): ImageNet val, ImageNet-A, -R, -v2,
ObjectNet, SI-Score and ImageNet-Segmentation, read from their released layouts, and scored under two
protocols. `chefer` is the official code's (RobustViT's): Resize(256), CenterCrop(224), mean = std = 0.5,
1000-way top-k, ObjectNet's first mapped ImageNet index as the label. `standard` is the benchmarks' own:
200-class logit mask for A/R (timm's bundled index files), ObjectNet's any-of-mapped rule over the mapped
classes' logits with its 1-px border cropped, and the model's own mean/std.

    b = benchmarks.load("imagenet_a", "/data/imagenet-a")
    logits = benchmarks.predict(model, b, "standard")
    b.score(logits, "standard")            # {"top1": …, "top5": …}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .config import BENCHMARKS, PROTOCOLS
from .evaluate import accuracy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SI_SUBSETS = ("location", "rotation", "area")


class DatasetMissing(FileNotFoundError):
    """A benchmark that is not on disk (or not in its released layout); says where to get it."""


SOURCES = {
    "imagenet_val": ("ILSVRC-2012 validation set, https://image-net.org/download-images (sort it into class "
                     "folders, e.g. with the PyTorch examples' valprep.sh)", "<root>/<wnid>/<image>.JPEG, 1000 folders"),
    "imagenet_a": ("ImageNet-A, https://github.com/hendrycks/natural-adv-examples (imagenet-a.tar)",
                   "<root>/<wnid>/<image>.jpg, 200 folders"),
    "imagenet_r": ("ImageNet-R, https://github.com/hendrycks/imagenet-r (imagenet-r.tar)",
                   "<root>/<wnid>/<image>.jpg, 200 folders"),
    "imagenet_v2": ("ImageNetV2 (MatchedFrequency, as RobustViT's reproducers used), "
                    "https://github.com/modestyachts/ImageNetV2", "<root>/<class index 0..999>/<image>.jpeg"),
    "objectnet": ("ObjectNet 1.0, https://objectnet.dev/download.html (objectnet-1.0.zip)",
                  "<root>/images/<folder>/<image>.png and <root>/mappings/{folder_to_objectnet_label.json, "
                  "objectnet_to_imagenet_1k.json, pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2}"),
    "si_score": ("SI-Score, https://github.com/google-research/si-score",
                 "<root>/{location,rotation,area}/<class label, e.g. 'ambulance'>/<image>.jpg"),
    "imagenet_segmentation": ("ImageNet-Segmentation (Guillaumin et al. 2014; Chefer et al.'s benchmark), "
                              "http://calvin-vision.net/bigstuff/proj-imagenet/data/gtsegs_ijcv.mat",
                              "the file gtsegs_ijcv.mat itself (HDF5: /value/img, /value/gt)"),
}


def missing(name: str, path: str | Path, what: str) -> DatasetMissing:
    source, layout = SOURCES[name]
    return DatasetMissing(f"{name}: {path}: {what}. Get {source}; expected layout: {layout}")


def _timm_info(filename: str) -> list[str]:
    """A list bundled with timm (timm/data/_info): ImageNet synsets and the A/R 200-class indices."""
    return (resources.files("timm") / "data" / "_info" / filename).read_text().split()


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order."""
    return _timm_info("imagenet_synsets.txt")


def subset_indices(name: str) -> np.ndarray:
    """ImageNet-1k indices of the 200 classes of ImageNet-A ("a") or -R ("r"), from timm's index file."""
    return np.array([int(i) for i in _timm_info(f"imagenet_{name}_indices.txt")])


@dataclass
class Benchmark:
    """Image paths with their labels. `labels`: the official label (one ImageNet-1k index each);
    `accepted`: every ImageNet index that counts as right (ObjectNet maps one class to several; None =
    the label only); `subset`: the logits the standard protocol lets compete; `border`: px the standard
    protocol crops from each side before resizing."""
    name: str
    paths: list[Path]
    labels: np.ndarray
    accepted: list[tuple[int, ...]] | None = None
    subset: np.ndarray | None = None
    border: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def score(self, logits: np.ndarray, protocol: str) -> dict[str, float]:
        """Top-1/top-5 of (N, 1000) logits under `protocol` (see the module docstring)."""
        if protocol == "chefer":
            return accuracy(logits, self.labels)
        if protocol == "standard":
            return accuracy(logits, self.accepted or self.labels, subset=self.subset)
        raise ValueError(f"protocol {protocol!r}: choose one of {PROTOCOLS}")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(name: str, root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise missing(name, root, "no such folder")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise missing(name, root, "no class folders inside")
    return folders


def _by_folder(name: str, root, label_of: Callable[[str], int | None], **kw) -> Benchmark:
    paths, labels = [], []
    for d in _class_folders(name, root):
        label = label_of(d.name)
        if label is None:
            raise missing(name, d, f"folder {d.name!r} is not a class of this benchmark")
        found = _images(d)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise missing(name, root, "no images in the class folders")
    return Benchmark(name, paths, np.array(labels), **kw)


def imagenet_val(root: str | Path) -> Benchmark:
    """ImageNet-1k validation images in wnid folders."""
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    return _by_folder("imagenet_val", root, index.get)


def _wnid_200(name: str, which: str, root: str | Path) -> Benchmark:
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    subset = subset_indices(which)
    ours = set(subset.tolist())
    return _by_folder(name, root, lambda w: index[w] if index.get(w) in ours else None, subset=subset)


def imagenet_a(root: str | Path) -> Benchmark:
    """ImageNet-A: 200 wnid folders; the standard protocol masks the logits to those 200 classes."""
    return _wnid_200("imagenet_a", "a", root)


def imagenet_r(root: str | Path) -> Benchmark:
    """ImageNet-R: 200 wnid folders; the standard protocol masks the logits to those 200 classes."""
    return _wnid_200("imagenet_r", "r", root)


def imagenet_v2(root: str | Path) -> Benchmark:
    """ImageNetV2 (any variant): folders named by class index."""
    return _by_folder("imagenet_v2", root, lambda f: int(f) if f.isdigit() and int(f) < 1000 else None)


def objectnet_mapping(mappings: str | Path) -> dict[str, list[int]]:
    """ObjectNet image folder → the ImageNet-1k indices it maps to, in the mapping file's order, read
    from the dataset's own `mappings/`: folder → ObjectNet label → "; "-separated ImageNet label names
    → line of `imagenet_to_label_2012_v2` → PyTorch index (`pytorch_to_imagenet_2012_id.json`).
    Only the 113 ObjectNet classes with an ImageNet counterpart appear."""
    m = Path(mappings)
    files = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
             "imagenet_to_label_2012_v2")
    for f in files:
        if not (m / f).is_file():
            raise missing("objectnet", m / f, "mapping file missing")
    label_of_folder = json.loads((m / files[0]).read_text())
    to_imagenet = json.loads((m / files[1]).read_text())
    line_of_index = json.loads((m / files[2]).read_text())
    lines = (m / files[3]).read_text().splitlines()
    index_of_name = {lines[line].strip(): int(i) for i, line in line_of_index.items()}
    folder_of_label = {v: k for k, v in label_of_folder.items()}
    return {folder_of_label[label]: [index_of_name[n.strip()] for n in names.split(";")]
            for label, names in to_imagenet.items() if label in folder_of_label}


def objectnet(root: str | Path) -> Benchmark:
    """ObjectNet restricted to its mapped classes. Official label: the first mapped index (cft_facts
    §4.1); standard: any mapped index, logits of all mapped classes, 1-px border cropped."""
    root = Path(root)
    mapping = objectnet_mapping(root / "mappings")
    paths, labels, accepted = [], [], []
    for d in _class_folders("objectnet", root / "images"):
        if d.name in mapping:
            found = _images(d)
            paths += found
            labels += [mapping[d.name][0]] * len(found)
            accepted += [tuple(mapping[d.name])] * len(found)
    if not paths:
        raise missing("objectnet", root / "images", "no images in the mapped class folders")
    subset = np.array(sorted({i for v in mapping.values() for i in v}))
    return Benchmark("objectnet", paths, np.array(labels), accepted, subset, border=1)


def si_score_labels() -> dict[str, int]:
    """SI-Score class folder name → ImageNet-1k index (package data, from google-research/si-score)."""
    return json.loads((resources.files("cftlib") / "data" / "si_score_labels.json").read_text())["labels"]


def si_score(root: str | Path, subset: str) -> Benchmark:
    """One SI-Score subset (location, rotation or area — RobustViT's SI-loc, SI-rot, SI-size)."""
    if subset not in SI_SUBSETS:
        raise ValueError(f"SI-Score subset {subset!r}: choose one of {SI_SUBSETS}")
    b = _by_folder("si_score", Path(root) / subset, si_score_labels().get)
    b.name = f"si_{subset}"
    return b


LOADERS: dict[str, Callable[[str | Path], Benchmark]] = {
    "imagenet_val": imagenet_val, "imagenet_a": imagenet_a, "imagenet_r": imagenet_r,
    "imagenet_v2": imagenet_v2, "objectnet": objectnet,
    **{f"si_{s}": (lambda root, s=s: si_score(root, s)) for s in SI_SUBSETS},
}
"""Classification benchmarks by the name `params.yaml` uses (`evaluate.benchmarks`); SI-Score entries
take the SI-Score root (holding the three subsets)."""
assert tuple(LOADERS) == BENCHMARKS


def load(name: str, root: str | Path) -> Benchmark:
    if name not in LOADERS:
        raise KeyError(f"unknown benchmark {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name](root)


# ----------------------------------------------------------------------------- images and logits

def load_image(path: str | Path, border: int = 0, resize: int = 256, crop: int = 224) -> np.ndarray:
    """uint8 crop×crop×3: optional border crop, shorter side resized to `resize` (bilinear), centre crop
    (torchvision's Resize(256) + CenterCrop(224) arithmetic)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if border:
            im = im.crop((border, border, im.width - border, im.height - border))
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        size_long = int(resize * long / short)
        im = im.resize((resize, size_long) if w <= h else (size_long, resize), Image.BILINEAR)
        left, top = int(round((im.width - crop) / 2)), int(round((im.height - crop) / 2))
        return np.asarray(im.crop((left, top, left + crop, top + crop)))


def normalisation(model: torch.nn.Module, protocol: str) -> tuple[tuple, tuple]:
    """(mean, std): 0.5 for every model under `chefer` (cft_facts §3.1); the model's own under `standard`."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if protocol == "standard" and "mean" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return (0.5,) * 3, (0.5,) * 3


@torch.no_grad()
def predict(model: torch.nn.Module, bench: Benchmark, protocol: str, batch_size: int = 64,
            resize: int = 256, crop: int = 224) -> np.ndarray:
    """(N, classes) logits of `bench`'s images, preprocessed as `protocol` says, in eval mode."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: choose one of {PROTOCOLS}")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(model, protocol))
    border = bench.border if protocol == "standard" else 0
    model.eval()
    out = []
    for a in range(0, len(bench), batch_size):
        x = np.stack([load_image(p, border, resize, crop) for p in bench.paths[a:a + batch_size]])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
        out.append(model((x - mean) / std).float())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- ImageNet-Segmentation

def segmentation(path: str | Path, size: int = 224) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image uint8 size×size×3, mask bool size×size) pairs of `gtsegs_ijcv.mat`, read with h5py as
    Chefer et al.'s loader does (/value/img and /value/gt hold object references; arrays are stored
    transposed). Images are resized to size×size with no crop, masks by nearest neighbour (§4.2)."""
    import h5py
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise missing("imagenet_segmentation", path, "no such file")
    with h5py.File(path, "r") as f:
        imgs, gts = f["/value/img"], f["/value/gt"]
        for i in range(len(imgs)):
            img = np.array(f[imgs[i, 0]]).transpose(2, 1, 0).astype(np.uint8)
            gt = np.array(f[f[gts[i, 0]][0, 0]]).transpose(1, 0)
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
            gt = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0
            yield img, gt


# ----------------------------------------------------------------------------- a model on every benchmark

def segmentation_eval(model: torch.nn.Module, path: str | Path, method: str, batch_size: int = 16) -> dict[str, float]:
    """pixAcc, mIoU and mAP of `model`'s relevance (predicted class) on ImageNet-Segmentation (§4.2)."""
    from .evaluate import relevance_maps, segmentation_counts, segmentation_scores

    counts, imgs, gts = [], [], []
    for img, gt in segmentation(path):
        imgs.append(img)
        gts.append(gt)
        if len(imgs) == batch_size:
            counts.append(segmentation_counts(relevance_maps(model, np.stack(imgs), method), np.stack(gts)))
            imgs, gts = [], []
    if imgs:
        counts.append(segmentation_counts(relevance_maps(model, np.stack(imgs), method), np.stack(gts)))
    return segmentation_scores({k: np.concatenate([c[k] for c in counts]) for k in counts[0]})


def evaluate_model(model: torch.nn.Module, cfg, method: str) -> list[dict]:
    """Rows {benchmark, protocol, top1, top5} for each benchmark of `cfg.benchmarks` under each of
    `cfg.protocols`, and {benchmark: imagenet_segmentation, pixAcc, mIoU, mAP} when `cfg.segmentation` is set."""
    rows = []
    for name, root in cfg.benchmarks.items():
        b = load(name, root)
        for protocol in cfg.protocols:
            logits = predict(model, b, protocol, batch_size=cfg.batch_size)
            rows.append({"benchmark": name, "protocol": protocol, "images": len(b), **b.score(logits, protocol)})
    if cfg.segmentation:
        rows.append({"benchmark": "imagenet_segmentation", "protocol": "chefer",
                     **segmentation_eval(model, cfg.segmentation, method)})
    return rows
