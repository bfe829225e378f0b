"""The paper's benchmarks at ImageNet scale (CFT §5; docs/paper.md §4): ImageNet val, ImageNet-A, -R, -v2,
ObjectNet, SI-Score and ImageNet-Segmentation, read from their released layouts, and scored under two
protocols. `chefer` is the official code's (RobustViT's): Resize(256), CenterCrop(224), mean = std = 0.5,
1000-way top-k, ObjectNet's first mapped ImageNet index as the label. `standard` is the benchmarks' own:
200-class logit mask for A/R (timm's bundled index files), ObjectNet's any-of-mapped rule over the mapped
classes' logits with its 1-px border cropped, and the model's own mean/std.

    b = benchmarks.load("imagenet_a", "/data/imagenet-a")
    logits = benchmarks.predict(model, b, "standard")
    b.score(logits, "standard")            # {"top1": …, "top5": …}

The evaluate stage runs every fine-tuning run on all of them through the CLI (rank 0 writes one CSV; under
torchrun each process scores whole batches r, r + world, …):

    python -m cftlib.benchmarks --params params.yaml --runs models/finetune --masks data/masks --out results.csv
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import config, fewshot, launch
from .config import BENCHMARKS, PROTOCOLS, as_dict
from .evaluate import (ALIGNMENT, MASKS_SPLIT, USAGE_COLUMNS, accuracy, concept_usage, explainer, relevance_maps,
                       seen_classes, segmentation_counts, segmentation_scores, weights_digest)
from .io import list_images, read_image, read_json, write_csv, write_json
from .progress import bar

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


def imagenet_names() -> list[str]:
    """A short name of each ImageNet-1k class in index order (the first lemma of its synset, timm's list)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(1000)]


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

    def take(self, rows) -> "Benchmark":
        """The images at `rows` (in that order), with their labels."""
        rows = np.asarray(rows, dtype=int)
        return Benchmark(self.name, [self.paths[i] for i in rows], self.labels[rows],
                         None if self.accepted is None else [self.accepted[i] for i in rows], self.subset, self.border)

    def report(self, logits: np.ndarray, protocol: str, seen: np.ndarray) -> list[dict]:
        """Rows {group, images, top1, top5} over all images and over those whose label is / is not a class
        fine-tuned on (`seen`: ImageNet indices); an empty group is left out."""
        mine = np.isin(self.labels, seen)
        rows = []
        for group, sel in (("all", np.ones(len(self), bool)), ("seen", mine), ("unseen", ~mine)):
            if sel.any():
                part = self.take(np.flatnonzero(sel))
                rows.append({"group": group, "images": int(sel.sum()), **part.score(logits[sel], protocol)})
        return rows

    def score(self, logits: np.ndarray, protocol: str) -> dict[str, float]:
        """Top-1/top-5 of (N, 1000) logits under `protocol` (see the module docstring)."""
        if protocol == "chefer":
            return accuracy(logits, self.labels)
        if protocol == "standard":
            return accuracy(logits, self.accepted or self.labels, subset=self.subset)
        raise ValueError(f"protocol {protocol!r}: choose one of {PROTOCOLS}")


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
        found = list_images(d)
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
    """ObjectNet restricted to its mapped classes. Official label: the first mapped index (docs/paper.md
    §4.1); standard: any mapped index, logits of all mapped classes, 1-px border cropped."""
    root = Path(root)
    mapping = objectnet_mapping(root / "mappings")
    paths, labels, accepted = [], [], []
    for d in _class_folders("objectnet", root / "images"):
        if d.name in mapping:
            found = list_images(d)
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


# ----------------------------------------------------------------------------- samples and shards

def rng_for(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, benchmark name): each benchmark's sample is independent of the others."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def choose(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a seeded choice of `n` of `n_total` items (0 or n >= n_total: all)."""
    if n == 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, n, replace=False))


def sample(bench: Benchmark, n: int, seed: int) -> Benchmark:
    """`evaluate.benchmark_images`: the paths sorted, then a seeded choice of `n` of them (0: all), kept in
    sorted order."""
    order = np.array(sorted(range(len(bench)), key=lambda i: str(bench.paths[i])), dtype=int)
    return bench.take(order[choose(len(bench), n, rng_for(seed, bench.name))])


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed job, (0, 1) outside one."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def shard(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """This process's batches (start, stop) of n items: batch b goes to rank b mod world. Whole batches, so
    every image is computed in the same batch whatever the number of processes (identical logits)."""
    return [(a, min(a + batch_size, n)) for b, a in enumerate(range(0, n, batch_size)) if b % world == rank]


def gather(rows: np.ndarray, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Per-row arrays computed by each process for its `rows`, put together in row order on rank 0 (the
    others get None); outside torch.distributed, `arrays` as given."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world == 1:
        return arrays
    parts = [None] * world if rank == 0 else None
    dist.gather_object((np.asarray(rows, int), arrays), parts, dst=0)
    if rank != 0:
        return None
    parts = [(r, a) for r, a in parts if len(r)]  # a process with no batch has no shapes to join
    order = np.argsort(np.concatenate([r for r, _ in parts]), kind="stable")
    return {k: np.concatenate([a[k] for _, a in parts])[order] for k in parts[0][1]}


def _rows(batches: list[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in batches]) if batches else np.zeros(0, int)


# ----------------------------------------------------------------------------- images and logits

def load_image(path: str | Path, border: int = 0, resize: int = 256, crop: int = 224) -> np.ndarray:
    """uint8 crop×crop×3: optional border crop, shorter side resized to `resize` (bilinear), centre crop
    (torchvision's Resize(256) + CenterCrop(224) arithmetic)."""
    from PIL import Image

    im = read_image(path)
    if border:
        im = im.crop((border, border, im.width - border, im.height - border))
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    size_long = int(resize * long / short)
    im = im.resize((resize, size_long) if w <= h else (size_long, resize), Image.BILINEAR)
    left, top = int(round((im.width - crop) / 2)), int(round((im.height - crop) / 2))
    return np.asarray(im.crop((left, top, left + crop, top + crop)))


def normalisation(model: torch.nn.Module, protocol: str) -> tuple[tuple, tuple]:
    """(mean, std): 0.5 for every model under `chefer` (docs/paper.md §3.1); the model's own under `standard`."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if protocol == "standard" and "mean" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return (0.5,) * 3, (0.5,) * 3


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict_protocols(model: torch.nn.Module, bench: Benchmark, protocols, batch_size: int = 64, amp: bool = False,
                      batches: list[tuple[int, int]] | None = None, workers: int = 1, resize: int = 256,
                      crop: int = 224) -> dict[str, np.ndarray]:
    """{protocol: logits (rows, classes)} of `bench`'s images in `batches` (default: all), each image decoded
    once per border the protocols need, preprocessed as each protocol says, on the model's device in eval
    mode (`amp`: bfloat16 autocast on CUDA); `workers` threads decode."""
    from concurrent.futures import ThreadPoolExecutor

    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"protocol {p!r}: choose one of {PROTOCOLS}")
    device = next(model.parameters(), torch.zeros(0)).device
    norm = {p: [torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(model, p)] for p in protocols}
    borders = {p: bench.border if p == "standard" else 0 for p in protocols}
    model.eval()
    out = {p: [] for p in protocols}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for a, b in shard(len(bench), batch_size) if batches is None else batches:
            x = {}
            for border in sorted(set(borders.values())):
                imgs = list(pool.map(lambda p: load_image(p, border, resize, crop), bench.paths[a:b]))
                x[border] = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float().div_(255)
            for p in protocols:
                mean, std = norm[p]
                with _autocast(device, amp):
                    out[p].append(model((x[borders[p]] - mean) / std).float().cpu())
    return {p: torch.cat(v).numpy() if v else np.zeros((0, 0), np.float32) for p, v in out.items()}


def predict(model: torch.nn.Module, bench: Benchmark, protocol: str, batch_size: int = 64, amp: bool = False,
            resize: int = 256, crop: int = 224) -> np.ndarray:
    """(N, classes) logits of `bench`'s images, preprocessed as `protocol` says, in eval mode."""
    return predict_protocols(model, bench, [protocol], batch_size, amp, resize=resize, crop=crop)[protocol]


# ----------------------------------------------------------------------------- ImageNet-Segmentation

SEGMENTATION = "imagenet_segmentation"
"""The segmentation benchmark's name in result rows."""


def segmentation_size(path: str | Path) -> int:
    """Number of images in `gtsegs_ijcv.mat`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise missing(SEGMENTATION, path, "no such file")
    with h5py.File(path, "r") as f:
        return len(f["/value/img"])


def segmentation(path: str | Path, size: int = 224, indices=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image uint8 size×size×3, mask bool size×size) pairs of `gtsegs_ijcv.mat` (those at `indices`, default
    all), read with h5py as Chefer et al.'s loader does (/value/img and /value/gt hold object references;
    arrays are stored transposed). Images are resized to size×size with no crop, masks by nearest
    neighbour (§4.2)."""
    import h5py
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise missing(SEGMENTATION, path, "no such file")
    with h5py.File(path, "r") as f:
        imgs, gts = f["/value/img"], f["/value/gt"]
        for i in range(len(imgs)) if indices is None else indices:
            img = np.array(f[imgs[i, 0]]).transpose(2, 1, 0).astype(np.uint8)
            gt = np.array(f[f[gts[i, 0]][0, 0]]).transpose(1, 0)
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
            gt = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0
            yield img, gt


def segmentation_eval(model: torch.nn.Module, path: str | Path, method: str, batch_size: int = 16,
                      indices=None, amp: bool = False, build: dict | None = None) -> dict[str, float] | None:
    """pixAcc, mIoU and mAP of `model`'s relevance (predicted class) on ImageNet-Segmentation's images at
    `indices` (default all; §4.2), normalised as the model was fine-tuned (`build`: its checkpoint config;
    0.5, the official code's, for ViT-B). Under torch.distributed each process explains its share of the
    batches and rank 0 gets the scores (the others None)."""

    indices = np.arange(segmentation_size(path)) if indices is None else np.asarray(indices, int)
    batches = shard(len(indices), batch_size, *rank_world())
    counts = []
    for a, b in batches:
        imgs, gts = zip(*segmentation(path, indices=indices[a:b]))
        maps = relevance_maps(model, np.stack(imgs), method, batch_size, amp, build)
        counts.append(segmentation_counts(maps, np.stack(gts)))
    full = gather(_rows(batches), {k: np.concatenate([c[k] for c in counts]) for k in counts[0]} if counts else {})
    return None if full is None else segmentation_scores(full)


# ----------------------------------------------------------------------------- every run on every benchmark

RESULTS = ("model", "arm", "seed", "benchmark", "protocol", "group", "images", "top1", "top5", "method", "pixAcc",
           "mIoU", "mAP", "label", "part", "mass")
"""Columns of the results file (`main`): one row per run × benchmark × protocol × class group, one per run
on ImageNet-Segmentation (group all), and one per run, class and concept of the concept usage on the mask
store's validation images (benchmark `cftlib.evaluate.MASKS_SPLIT`: label, part, mass)."""


def evaluate_model(model: torch.nn.Module, benches: dict[str, Benchmark], seen: np.ndarray, cfg, method: str,
                   seg_indices=None, workers: int = 1, build: dict | None = None, store: dict | None = None) -> list[dict]:
    """Rows {benchmark, protocol, group, images, top1, top5} of each benchmark under each of `cfg.protocols`
    (class groups all/seen/unseen), {benchmark: imagenet_segmentation, method, pixAcc, mIoU, mAP} when
    `cfg.segmentation` is set (its images at `seg_indices`, default all; `build`: the model's checkpoint
    config, for the normalisation of its maps), and with `store` (the mask store's validation images) the
    concept usage rows {benchmark: MASKS_SPLIT, label, part, mass, images}, computed on rank 0. Under
    torch.distributed each process computes its share of the batches; rank 0 returns the rows, the others []."""

    rank, world = rank_world()
    rows = []
    for name, bench in benches.items():
        batches = shard(len(bench), cfg.batch_size, rank, world)
        logits = gather(_rows(batches), predict_protocols(model, bench, cfg.protocols, cfg.batch_size, cfg.amp,
                                                          batches, workers))
        if logits is not None:
            rows += [{"benchmark": name, "protocol": p, **r} for p in cfg.protocols
                     for r in bench.report(logits[p], p, seen)]
    if cfg.segmentation:
        seg = segmentation_eval(model, cfg.segmentation, method, cfg.batch_size, seg_indices, cfg.amp, build)
        if seg is not None:
            n = len(seg_indices) if seg_indices is not None else segmentation_size(cfg.segmentation)
            rows.append({"benchmark": SEGMENTATION, "protocol": "chefer", "group": "all", "images": n,
                         "method": method, **seg})
    if store is not None and rank == 0:
        rows += [{"benchmark": MASKS_SPLIT, "protocol": "", "group": "all", "method": method,
                  **{k: u[k] for k in ("label", "part", "mass", "images")}}
                 for u in concept_usage(model, store, method, (build or {}).get("img_size"), cfg.batch_size, cfg.amp,
                                       build)]
    return rows if rank == 0 else []


def _cached(cache_dir: str | Path | None, key: dict) -> Path | None:
    """The cache file of one model's rows: named by the hash of everything that decides them."""
    if cache_dir is None:
        return None
    import hashlib
    import json

    return Path(cache_dir) / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.json"


def evaluate_runs(runs, finetune_dir: str | Path, seen: np.ndarray, P, dev: torch.device | str = "cpu",
                  progress: bool = False, cache_dir: str | Path | None = None, store: dict | None = None) -> list[dict]:
    """Result rows (RESULTS) of every fine-tuning run's selected checkpoint on every configured benchmark
    (a seeded sample of `evaluate.benchmark_images` each), on ImageNet-Segmentation, and with `store` the
    concept usage on the mask store's validation images (`evaluate_model`). Maps use
    `evaluate.relevance` where it explains the model, else the run's own method (the CNN's Grad-CAM); runs
    with identical weights are computed once. With `cache_dir`, each model's rows are kept there under the
    hash of its weights, the evaluate params, seed, seen classes and device, so an interrupted stage resumes
    at the first model not yet scored. Rank 0 gets the rows, other processes []."""
    from .finetune import load_run

    E = P.evaluate
    benches = {name: sample(load(name, root), E.benchmark_images, P.base.seed) for name, root in E.benchmarks.items()}
    seg = (choose(segmentation_size(E.segmentation), E.benchmark_images, rng_for(P.base.seed, SEGMENTATION))
           if E.segmentation else None)
    rows, done = [], {}
    for spec in bar(runs, desc="benchmarks", progress=progress, rank=rank_world()[0], unit="runs"):
        model, build = load_run(spec, finetune_dir)
        key = weights_digest(model)
        method = explainer(model, E.relevance, spec.relevance)
        cached = _cached(cache_dir, {"weights": key, "method": method, "evaluate": as_dict(E), "seed": P.base.seed,
                                     "seen": [int(c) for c in seen], "device": torch.device(dev).type,
                                     "store": None if store is None else store["ids"]})
        if key not in done and cached is not None and cached.is_file():
            done[key] = read_json(cached)
        if key not in done:
            done[key] = evaluate_model(model.to(dev), benches, seen, E, method, seg, P.base.threads, build, store)
            if cached is not None and rank_world()[0] == 0:
                write_json(cached, done[key])
        rows += [{"model": spec.model, "arm": spec.arm, "seed": spec.seed, **r} for r in done[key]]
    return rows


def frames(results, protocols: list[str]):
    """The evaluate stage's long frames from the results file, shaped as the world's so the same tables,
    gaps, claims and figures apply: (accuracy under the first protocol: model, arm, seed, split, group, top1,
    top5; the same under the other protocols with a `protocol` column; alignment on ImageNet-Segmentation:
    model, arm, seed, split, method and evaluate.ALIGNMENT, the concept metrics NaN — ImageNet has no part
    masks; the concept usage on the mask store's validation images: model, arm, seed, split, label, part, mass,
    images)."""

    r = results.rename(columns={"benchmark": "split"})
    cls, seg = r[~r["split"].isin([SEGMENTATION, MASKS_SPLIT])], r[r["split"] == SEGMENTATION]
    keys = ["model", "arm", "seed", "split", "group", "top1", "top5"]
    acc = cls.loc[cls["protocol"] == protocols[0], keys].reset_index(drop=True)
    others = cls.loc[cls["protocol"] != protocols[0], [*keys[:3], "protocol", *keys[3:]]].reset_index(drop=True)
    align = seg[["model", "arm", "seed", "split", "method", *ALIGNMENT[:3]]].reset_index(drop=True)
    usage = r.loc[r["split"] == MASKS_SPLIT, USAGE_COLUMNS].reset_index(drop=True).astype({"label": int, "images": int})
    return acc, others, align.assign(**{m: np.nan for m in ALIGNMENT[3:]}), usage


def main(argv: list[str] | None = None) -> int:
    """`python -m cftlib.benchmarks`: every run on the paper's benchmarks; under torchrun the images are
    sharded over the processes and rank 0 writes the results CSV."""
    import argparse

    import pandas as pd

    from .finetune import plan

    ap = argparse.ArgumentParser(prog="python -m cftlib.benchmarks",
                                 description="Score every fine-tuning run on evaluate.benchmarks and "
                                             "evaluate.segmentation; one CSV row per run, benchmark, protocol, group.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="models/finetune", help="the finetune stage's output folder")
    ap.add_argument("--masks", default="data/masks", help="the mask store (its training classes are 'seen'; its "
                                                            "validation images give the concept usage)")
    ap.add_argument("--data", default="data/world", help="the world's data folder (concepts.dataset: world only)")
    ap.add_argument("--out", required=True, help="results CSV (written by rank 0, atomically)")
    ap.add_argument("--cache", help="keep each model's rows here, so an interrupted run resumes (e.g. cache/benchmarks)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    P = config.load(args.params)
    torch.set_num_threads(P.base.threads)
    dev = launch.device(P.evaluate.device, "evaluate.device")
    with launch.distributed(dev.type == "cuda", "evaluate.processes"):
        store = fewshot.load(args.masks, "val", fewshot.Pool(P.concepts.dataset, args.data, P.concepts.image_dir))
        rows = evaluate_runs(plan(P.finetune, P.base.seed, P.bases.seeds), args.runs, seen_classes(args.masks), P, dev,
                             args.progress, args.cache, store)
        if rank_world()[0] == 0:
            write_csv(args.out, pd.DataFrame(rows, columns=list(RESULTS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
