"""A fake paper-scale world: every dataset, model folder and weights file the `paper` profile reads, small and
built offline in seconds, so CI runs that profile end to end ("every line a GPU user runs has run").

    fakes = make_paper_fakes(tmp / "fakes")   # {name: path}
    params = paper_params(fakes)              # profiles/paper.yaml pointed at the fakes, sizes cut

Six real ImageNet-1k classes, each drawn as its own shape and colour on a textured background (the
object's mask is known), laid out as the released datasets are (cftlib.data.datasets.SOURCES)."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np

from cftlib.concepts import classes_from_imagenet, llm_messages
from cftlib.data.datasets import imagenet_synsets
from cftlib.models.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]

# In wnid (folder) order: (ImageNet-1k index, wnid, SI-Score label, ObjectNet folder or None, shape, RGB, the
# LLM's concepts). All six are in the ImageNet-A and -R 200-class subsets and in SI-Score; three are in ObjectNet.
CLASSES = [
    (99, "n01855672", "goose", None, "ellipse", (235, 235, 225), ["long white neck", "orange flat beak",
                                                                  "webbed orange feet"]),
    (105, "n01882714", "koala", None, "disc", (130, 130, 140), ["fluffy round ears", "large black nose",
                                                                "grey woolly fur"]),
    (327, "n02317335", "starfish", None, "star", (235, 110, 40), ["five tapering arms", "rough spiny skin",
                                                                  "bumpy orange surface"]),
    (470, "n02948072", "candle", "candle", "bar", (245, 230, 190), ["thin cotton wick", "small yellow flame",
                                                                    "smooth pale cylinder"]),
    (951, "n07749582", "lemon", "lemon", "hexagon", (245, 225, 40), ["bright yellow peel", "pointed oval ends",
                                                                     "dimpled glossy rind"]),
    (954, "n07753592", "banana", "banana", "crescent", (250, 200, 30), ["curved yellow peel", "brown stalk tip",
                                                                        "long slender fruit"]),
]
N_CONCEPTS = 3  # concepts.llm.n_concepts of paper_params: the prompt the tiny LLM was taught to answer
TRAIN_IMAGES = 4  # per class: masks.k 3 training images, or 1 validation image
VIT_KWARGS = dict(embed_dim=32, depth=2, num_heads=2)  # pretrain.model_kwargs: a 2-block ViT-B/16 at 224 px
CNN = "convnextv2_b"  # finetune.cnn.zoo of the paper profile
CNN_KWARGS = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))  # its finetune.cnn.pretrain.model_kwargs: 4 blocks
SIZES = [(128, 96), (96, 128), (120, 88)]  # (w, h), never square: the tiny GroundingDINO fails on 64×64 inputs


def lemmas() -> dict[str, str]:
    """wnid → its WordNet lemma line ("candle, taper, wax light"), timm's list: the ImageNet class names."""
    text = (resources.files("timm") / "data" / "_info" / "imagenet_synset_to_lemma.txt").read_text()
    return dict(line.split("\t", 1) for line in text.splitlines())


def class_infos():
    """The fake classes as the imagenet dataset names them (`concepts.classes_from_imagenet` of the sorted
    wnid folders): label = folder position, name = lemma line."""
    return classes_from_imagenet(sorted(c[1] for c in CLASSES))


# ----------------------------------------------------------------------------- drawing

def _outline(shape: str) -> np.ndarray:
    """The shape's polygon, (n, 2) points within the unit disc."""
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    if shape == "bar":
        return np.array([[-0.3, -1.0], [0.3, -1.0], [0.3, 1.0], [-0.3, 1.0]])
    if shape == "crescent":
        a = np.linspace(0.15 * np.pi, 0.85 * np.pi, 30)
        outer = np.stack([np.cos(a), np.sin(a) - 0.3], 1)
        inner = np.stack([0.75 * np.cos(a[::-1]), 0.45 * np.sin(a[::-1]) - 0.3], 1)
        return np.concatenate([outer, inner])
    r = {"ellipse": np.ones_like(t), "disc": np.ones_like(t), "star": 0.6 + 0.4 * np.cos(5 * t),
         "hexagon": np.cos(np.pi / 6) / np.cos((t % (np.pi / 3)) - np.pi / 6)}[shape]
    squash = {"ellipse": [1.0, 0.55], "hexagon": [1.0, 0.75]}.get(shape, [1.0, 1.0])
    return np.stack([r * np.cos(t), r * np.sin(t)], 1) * squash


def draw(c: int, size: tuple[int, int], rng: np.random.Generator, *, centre=None, scale=None, angle=None,
         flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 h×w×3, object mask bool h×w): class `c`'s shape on a striped, noisy background (or a flat
    pale one: a rendition). Position, size and rotation random unless given (fractions of the image)."""
    from PIL import Image, ImageDraw

    w, h = size
    y, x = np.mgrid[:h, :w]
    if flat:
        bg = np.full((h, w, 3), 240.0)
    else:
        base = rng.uniform(40, 200, 3)
        f, phase = rng.uniform(0.1, 0.4), rng.uniform(0, 2 * np.pi)
        bg = base + 35 * np.sin(f * (x + 0.5 * y) + phase)[..., None] + rng.normal(0, 12, (h, w, 3))
    cx, cy = centre if centre is not None else rng.uniform(0.35, 0.65, 2)
    s = (scale if scale is not None else rng.uniform(0.25, 0.4)) * min(w, h)
    a = angle if angle is not None else rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = _outline(CLASSES[c][4]) @ rot.T * s + [cx * w, cy * h]
    mask = Image.new("L", (w, h))
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts], fill=255)
    m = np.asarray(mask) > 0
    colour = np.array(CLASSES[c][5], float) + rng.normal(0, 6, (h, w, 3))
    img = np.where(m[..., None], colour, bg)
    return np.clip(img, 0, 255).astype(np.uint8), m


def _save(img: np.ndarray, path: Path, border: bool = False):
    from PIL import Image

    if border:  # ObjectNet's images carry a 1-px border (the standard protocol crops it)
        img = img.copy()
        img[[0, -1]] = img[:, [0, -1]] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


# ----------------------------------------------------------------------------- datasets

def _imagenet(root: Path, rng):
    for c, (_, wnid, *_) in enumerate(CLASSES):
        for i in range(TRAIN_IMAGES):
            _save(draw(c, SIZES[i % len(SIZES)], rng)[0], root / "train" / wnid / f"{wnid}_{i}.JPEG")
        for i in range(2):
            n = 1 + 2 * c + i
            _save(draw(c, SIZES[i], rng)[0], root / "val" / wnid / f"ILSVRC2012_val_{n:08d}.JPEG")


def _ood(root: Path, rng):
    """ImageNet-A (clutter), -R (renditions on flat backgrounds), V2 (class-index folders), SI-Score (its size
    subset in the release's `area` folder)."""
    for c, (idx, wnid, si, *_) in enumerate(CLASSES):
        for i in range(2):
            _save(draw(c, (112, 112), rng, scale=0.2)[0], root / "imagenet-a" / wnid / f"{i}_{si}.jpg")
            style = ("art", "cartoon")[i]
            _save(draw(c, (112, 112), rng, flat=True)[0], root / "imagenet-r" / wnid / f"{style}_{i}.jpg")
            name = hashlib.sha1(f"{idx}/{i}".encode()).hexdigest()
            _save(draw(c, (100, 100), rng)[0], root / "imagenetv2-matched-frequency" / str(idx) / f"{name}.jpeg")
        si_root = root / "si-score"
        _save(draw(c, (96, 96), rng, centre=(0.3, 0.7), scale=0.2, angle=0)[0], si_root / "location" / si / "0.jpg")
        _save(draw(c, (96, 96), rng, centre=(0.5, 0.5), scale=0.3, angle=1.0)[0], si_root / "rotation" / si / "0.jpg")
        _save(draw(c, (96, 96), rng, centre=(0.5, 0.5), scale=0.15, angle=0)[0], si_root / "area" / si / "0.jpg")


def _sketch(root: Path, rng):
    """ImageNet-Sketch as released (`sketch/<wnid>/*.JPEG`): each class's outline in black on white, saved as
    8-bit grey JPEGs (read back as RGB)."""
    for c, (_, wnid, *_) in enumerate(CLASSES):
        for i in range(2):
            m = draw(c, (120, 100), rng, flat=True)[1]
            inside = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            _save(np.where(m & ~inside, 0, 255).astype(np.uint8), root / wnid / f"sketch_{i}.JPEG")


def _objectnet(root: Path, rng):
    """images/<folder>/*.png and the four mapping files in the released formats: one folder per mapped fake
    class, `alarm_clock` mapped to two ImageNet classes (as in the release) and an unmapped folder."""
    synsets, names = imagenet_synsets(), lemmas()
    folders = {c[3]: c[3].capitalize() for c in CLASSES if c[3]}
    folders |= {"alarm_clock": "Alarm clock", "air_freshener": "Air freshener"}
    to_imagenet = {c[3].capitalize(): names[c[1]] for c in CLASSES if c[3]}
    to_imagenet["Alarm clock"] = f"{names[synsets[409]]}; {names[synsets[530]]}"  # analog clock; digital clock
    m = root / "mappings"
    m.mkdir(parents=True)
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(folders, indent=1))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_imagenet, indent=1))
    # imagenet_to_label_2012_v2 lists the names in ILSVRC2012-id order, not PyTorch's: a permutation stands in
    order = np.random.default_rng(2012).permutation(1000)
    (m / "imagenet_to_label_2012_v2").write_text("".join(names[synsets[i]] + "\n" for i in order))
    (m / "pytorch_to_imagenet_2012_id.json").write_text(
        json.dumps({str(i): int(line) for line, i in enumerate(order)}, indent=1))
    shape_of = {c[3]: k for k, c in enumerate(CLASSES) if c[3]} | {"alarm_clock": 1, "air_freshener": 0}
    for folder, c in shape_of.items():
        for i in range(2):
            _save(draw(c, (104, 80), rng)[0], root / "images" / folder / f"{folder[:3]}{i:05x}.png", border=True)


def write_gtsegs(path: Path, images, masks) -> None:
    """gtsegs_ijcv.mat as MATLAB v7.3 (HDF5) lays it out: /value/img and /value/gt hold object references,
    each gt through one more 1×1 reference; arrays stored transposed."""
    import h5py

    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs, gt_refs = [], []
        for i, (img, mask) in enumerate(zip(images, masks)):
            img_refs.append(refs.create_dataset(f"img{i}", data=img.transpose(2, 1, 0)).ref)
            gt = refs.create_dataset(f"gt{i}", data=mask.astype(np.uint8).T)
            gt_refs.append(refs.create_dataset(f"gtcell{i}", data=np.array([[gt.ref]], dtype=h5py.ref_dtype)).ref)
        value = f.create_group("value")
        value.create_dataset("img", data=np.array(img_refs, dtype=h5py.ref_dtype).reshape(-1, 1))
        value.create_dataset("gt", data=np.array(gt_refs, dtype=h5py.ref_dtype).reshape(-1, 1))


def _segmentation(path: Path, rng, n: int = 4):
    """A few drawn objects with their masks as gtsegs_ijcv.mat."""
    drawn = [draw(i % len(CLASSES), SIZES[i % len(SIZES)], rng) for i in range(n)]
    write_gtsegs(path, [img for img, _ in drawn], [mask for _, mask in drawn])


# ----------------------------------------------------------------------------- models

def _models(root: Path) -> dict[str, Path]:
    import timm
    import torch
    from tiny_hf import tiny_grounding_dino, tiny_llm, tiny_sam

    infos = class_infos()
    chats = [(llm_messages(ci, N_CONCEPTS), json.dumps(c[6])) for ci, c in zip(infos, CLASSES)]
    words = {w for c in CLASSES for t in c[6] for w in t.split()}
    words |= {w for ci in infos for s in ci.synonyms for w in s.lower().replace("-", " ").split()}
    out = {"llm": tiny_llm(root / "llm", chats),
           "grounding_dino": tiny_grounding_dino(root / "grounding-dino", sorted(words | {"object"})),
           "sam": tiny_sam(root / "sam")}
    torch.manual_seed(0)
    for name, kwargs in (("vit_b", VIT_KWARGS), (CNN, CNN_KWARGS)):
        model = timm.create_model(ZOO[name].timm_id, pretrained=False, num_classes=1000, **kwargs)
        out[name] = root.parent / "weights" / f"{name}.pth"
        out[name].parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out[name])
    return out


def make_paper_fakes(root: Path) -> dict[str, Path]:
    """Build the fake datasets, tiny model folders and fake pretrained weights under `root`; return their paths:
    imagenet_train, imagenet_val, imagenet_a, imagenet_r, imagenet_sketch, imagenet_v2, objectnet, si_score,
    segmentation, llm, grounding_dino, sam, vit_b and the CNN (`CNN`)."""
    import torch

    root = Path(root)
    rng = np.random.default_rng(0)
    _imagenet(root / "imagenet", rng)
    _ood(root, rng)
    _objectnet(root / "objectnet-1.0", rng)
    _segmentation(root / "gtsegs_ijcv.mat", rng)
    _sketch(root / "imagenet-sketch" / "sketch", rng)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is several times faster than contending for busy cores
    try:
        models = _models(root / "models")
    finally:
        torch.set_num_threads(threads)
    return {"imagenet_train": root / "imagenet" / "train", "imagenet_val": root / "imagenet" / "val",
            "imagenet_a": root / "imagenet-a", "imagenet_r": root / "imagenet-r",
            "imagenet_sketch": root / "imagenet-sketch" / "sketch",
            "imagenet_v2": root / "imagenetv2-matched-frequency", "objectnet": root / "objectnet-1.0",
            "si_score": root / "si-score", "segmentation": root / "gtsegs_ijcv.mat", **models}


def paper_params(fakes: dict[str, Path]) -> dict:
    """profiles/paper.yaml with every input path pointed at `fakes`, the tiny models and their overrides, CPU
    devices, and sizes cut to minutes on 2 cores (1 seed, 2 epochs, small batches); all else as the profile."""
    import yaml

    p = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    p["base"]["threads"] = 1
    p["pretrain"] |= {"weights": str(fakes["vit_b"]), "model_kwargs": copy.deepcopy(VIT_KWARGS)}
    p["concepts"]["image_dir"] = str(fakes["imagenet_train"])
    p["concepts"]["llm"] |= {"model": str(fakes["llm"]), "n_concepts": N_CONCEPTS, "max_new_tokens": 48,
                             "device": "cpu"}
    p["masks"]["groundingsam"] |= {"detector": str(fakes["grounding_dino"]), "segmenter": str(fakes["sam"]),
                                   "device": "cpu", "batch_size": 2}
    p["finetune"] |= {"seeds": 1, "epochs": 2, "batch_size": 4, "device": "cpu"}
    p["finetune"]["cnn"] |= {"weights": str(fakes[CNN]), "pretrain": {"model_kwargs": copy.deepcopy(CNN_KWARGS)}}
    p["evaluate"] |= {"batch_size": 8, "benchmark_images": 4, "device": "cpu",
                      "segmentation": str(fakes["segmentation"])}
    p["evaluate"]["benchmarks"] = {b: str(fakes["si_score" if b.startswith("si_") else b])
                                   for b in p["evaluate"]["benchmarks"]}
    return p
