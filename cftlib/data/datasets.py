"""The paper's benchmark datasets at ImageNet scale (CFT §5; docs/paper.md §4): ImageNet val, ImageNet-A, -R,
-Sketch, -v2, ObjectNet, SI-Score and ImageNet-Segmentation, read from their released layouts, with ImageNet's class
list and the two protocols' labels. `chefer` is the official code's (RobustViT's): Resize(256), CenterCrop(224),
mean = std = 0.5, 1000-way top-k, ObjectNet's first mapped ImageNet index as the label. `standard` is the
benchmarks' own: 200-class logit mask for A/R (timm's bundled index files), ObjectNet's any-of-mapped rule over
the mapped classes' logits with its 1-px border cropped, and the model's own mean/std.

    b = datasets.load("imagenet_a", "/data/imagenet-a")
    accuracy.benchmark_score(b, logits, "standard")   # {"top1": …, "top5": …} (cftlib.metrics.accuracy)
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from cftlib.core.io import list_folders, list_images, read_image

SI_FOLDERS = {"location": "location", "rotation": "rotation", "size": "area"}
"""SI-Score's subsets by the paper's names (location, rotation, size) → the folder the release keeps each in: the
size subset is the release's `area` folder."""


class DatasetMissing(FileNotFoundError):
    """A benchmark that is not on disk (or not in its released layout); says where to get it."""


SOURCES = {
    "imagenet_val": ("ILSVRC-2012 validation set, https://image-net.org/download-images (sort it into class "
                     "folders, e.g. with the PyTorch examples' valprep.sh)",
                     "<root>/<wnid>/<image>.JPEG, 1000 folders"),
    "imagenet_a": ("ImageNet-A, https://github.com/hendrycks/natural-adv-examples (imagenet-a.tar)",
                   "<root>/<wnid>/<image>.jpg, 200 folders"),
    "imagenet_r": ("ImageNet-R, https://github.com/hendrycks/imagenet-r (imagenet-r.tar)",
                   "<root>/<wnid>/<image>.jpg, 200 folders"),
    "imagenet_sketch": ("ImageNet-Sketch, https://github.com/HaohanWang/ImageNet-Sketch (ImageNet-Sketch.zip from "
                        "its README's links or the Hugging Face dataset `imagenet_sketch`; 7.8 GB zipped, 8.4 GB "
                        "unzipped, its README says)",
                        "<root>/<wnid>/<image>.JPEG, 1000 folders (the zip's sketch/ folder is the root)"),
    "imagenet_v2": ("ImageNetV2 (MatchedFrequency, as RobustViT's reproducers used), "
                    "https://github.com/modestyachts/ImageNetV2", "<root>/<class index 0..999>/<image>.jpeg"),
    "objectnet": ("ObjectNet 1.0, https://objectnet.dev/download.html (objectnet-1.0.zip)",
                  "<root>/images/<folder>/<image>.png and <root>/mappings/{folder_to_objectnet_label.json, "
                  "objectnet_to_imagenet_1k.json, pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2}"),
    "si_score": ("SI-Score, https://github.com/google-research/si-score",
                 "<root>/{location,rotation,area}/<class label, e.g. 'ambulance'>/<image>.jpg (area: the paper's "
                 "size subset)"),
    "imagenet_segmentation": ("ImageNet-Segmentation (Guillaumin et al. 2014; Chefer et al.'s benchmark), "
                              "http://calvin-vision.net/bigstuff/proj-imagenet/data/gtsegs_ijcv.mat",
                              "the file gtsegs_ijcv.mat itself (HDF5: /value/img, /value/gt)"),
}


def dataset_missing(name: str, path: str | Path, what: str) -> DatasetMissing:
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
    from timm.data import ImageNetInfo  # timm pulls in torch; the data layer stays light without it

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

    def take(self, rows) -> Benchmark:
        """The images at `rows` (in that order), with their labels."""
        rows = np.asarray(rows, dtype=int)
        return Benchmark(self.name, [self.paths[i] for i in rows], self.labels[rows],
                         None if self.accepted is None else [self.accepted[i] for i in rows], self.subset, self.border)


def _class_folders(name: str, root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise dataset_missing(name, root, "no such folder")
    folders = list_folders(root)
    if not folders:
        raise dataset_missing(name, root, "no class folders inside")
    return folders


def _by_folder(name: str, root, label_of: Callable[[str], int | None], **kw) -> Benchmark:
    paths, labels = [], []
    for d in _class_folders(name, root):
        label = label_of(d.name)
        if label is None:
            raise dataset_missing(name, d, f"folder {d.name!r} is not a class of this benchmark")
        found = list_images(d)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise dataset_missing(name, root, "no images in the class folders")
    return Benchmark(name, paths, np.array(labels), **kw)


def _by_wnid(name: str, root: str | Path, subset: np.ndarray | None = None) -> Benchmark:
    """Folders named by ImageNet-1k wnid, each labelled with its class index; `subset`: the only classes allowed
    (ImageNet-A/R's 200), also the standard protocol's logit mask."""
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    allowed = set(index.values()) if subset is None else set(subset.tolist())
    return _by_folder(name, root, lambda w: index.get(w) if index.get(w) in allowed else None, subset=subset)


def imagenet_val(root: str | Path) -> Benchmark:
    """ImageNet-1k validation images in wnid folders."""
    return _by_wnid("imagenet_val", root)


def imagenet_a(root: str | Path) -> Benchmark:
    """ImageNet-A: 200 wnid folders; the standard protocol masks the logits to those 200 classes."""
    return _by_wnid("imagenet_a", root, subset_indices("a"))


def imagenet_r(root: str | Path) -> Benchmark:
    """ImageNet-R: 200 wnid folders; the standard protocol masks the logits to those 200 classes."""
    return _by_wnid("imagenet_r", root, subset_indices("r"))


def imagenet_sketch(root: str | Path) -> Benchmark:
    """ImageNet-Sketch: black-and-white sketches of all 1000 classes in wnid folders (the release's `sketch/`);
    both protocols score all 1000 logits."""
    return _by_wnid("imagenet_sketch", root)


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
            raise dataset_missing("objectnet", m / f, "mapping file missing")
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
        raise dataset_missing("objectnet", root / "images", "no images in the mapped class folders")
    subset = np.array(sorted({i for v in mapping.values() for i in v}))
    return Benchmark("objectnet", paths, np.array(labels), accepted, subset, border=1)


def si_score_labels() -> dict[str, int]:
    """SI-Score class folder name → ImageNet-1k index (package data, from google-research/si-score)."""
    return json.loads((resources.files("cftlib") / "data" / "si_score_labels.json").read_text())["labels"]


def si_score(root: str | Path, subset: str) -> Benchmark:
    """One SI-Score subset by the paper's name (location, rotation or size), read from its release folder
    (`SI_FOLDERS`: size is `area`)."""
    if subset not in SI_FOLDERS:
        raise ValueError(f"SI-Score subset {subset!r}: choose one of {tuple(SI_FOLDERS)}")
    b = _by_folder("si_score", Path(root) / SI_FOLDERS[subset], si_score_labels().get)
    b.name = f"si_{subset}"
    return b


LOADERS: dict[str, Callable[[str | Path], Benchmark]] = {
    "imagenet_val": imagenet_val, "imagenet_a": imagenet_a, "imagenet_r": imagenet_r,
    "imagenet_sketch": imagenet_sketch, "imagenet_v2": imagenet_v2, "objectnet": objectnet,
    **{f"si_{s}": (lambda root, s=s: si_score(root, s)) for s in SI_FOLDERS},
}
"""Classification benchmarks by the name `params.yaml` uses (`evaluate.benchmarks`); SI-Score entries
take the SI-Score root (holding the three subsets)."""
IN_DISTRIBUTION = ("imagenet_val", "imagenet_v2")
"""The benchmarks the paper reports as in-distribution references, apart from its five OOD sets (ImageNet-A,
ObjectNet, ImageNet-R, ImageNet-Sketch, SI-Score); ImageNet val is the reference of the gaps and claims."""


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


# ----------------------------------------------------------------------------- images and logits

def load_centre_crop(path: str | Path, border: int = 0, resize: int = 256, crop: int = 224) -> np.ndarray:
    """uint8 crop×crop×3: optional border crop, shorter side resized to `resize` (bilinear), centre crop
    (torchvision's Resize(256) + CenterCrop(224) arithmetic)."""
    im = read_image(path)
    if border:
        im = im.crop((border, border, im.width - border, im.height - border))
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    size_long = int(resize * long / short)
    im = im.resize((resize, size_long) if w <= h else (size_long, resize), Image.BILINEAR)
    left, top = int(round((im.width - crop) / 2)), int(round((im.height - crop) / 2))
    return np.asarray(im.crop((left, top, left + crop, top + crop)))


# ----------------------------------------------------------------------------- ImageNet-Segmentation

SEGMENTATION = "imagenet_segmentation"
"""The segmentation benchmark's name in result rows."""


def segmentation_size(path: str | Path) -> int:
    """Number of images in `gtsegs_ijcv.mat`."""
    import h5py  # ImageNet-Segmentation only: no other dataset needs HDF5

    path = Path(path)
    if not path.is_file():
        raise dataset_missing(SEGMENTATION, path, "no such file")
    with h5py.File(path, "r") as f:
        return len(f["/value/img"])


def segmentation(path: str | Path, size: int = 224, indices=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image uint8 size×size×3, mask bool size×size) pairs of `gtsegs_ijcv.mat` (those at `indices`, default
    all), read with h5py as Chefer et al.'s loader does (/value/img and /value/gt hold object references;
    arrays are stored transposed). Images are resized to size×size with no crop, masks by nearest
    neighbour (§4.2)."""
    import h5py  # ImageNet-Segmentation only: no other dataset needs HDF5

    path = Path(path)
    if not path.is_file():
        raise dataset_missing(SEGMENTATION, path, "no such file")
    with h5py.File(path, "r") as f:
        imgs, gts = f["/value/img"], f["/value/gt"]
        for i in range(len(imgs)) if indices is None else indices:
            img = np.array(f[imgs[i, 0]]).transpose(2, 1, 0).astype(np.uint8)
            gt = np.array(f[f[gts[i, 0]][0, 0]]).transpose(1, 0)
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
            gt = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((size, size), Image.NEAREST)) > 0
            yield img, gt
