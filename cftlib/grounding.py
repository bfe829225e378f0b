"""Concept grounding (CFT §3.1; docs/paper.md §2): each concept of an image's class is found in the image as
a binary mask m_c; the image's training target is their union M = 1[max_c m_c > 0], and the official
weighted map W = max_c w_c·m_c is kept too. Grounders sit in a registry: `world` (exact part masks degraded
by a VLM-like noise model), `groundingsam` (GroundingDINO boxes → SAM masks) and `foreground` (the whole
object). The mask store keeps per image the union, the weighted map, per-concept masks and a quality flag;
`run_stage` / `python -m cftlib.grounding` write it resumably, sharded over torchrun processes."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np

from . import config, hub, launch
from .io import atomic_path, read_json, read_npz, write_json
from .progress import bar
from .world import PARTS, save_npz

FLAGS = ("ok", "empty", "too_small", "too_large")


class GroundingError(ValueError):
    """A concept, image or mask store the grounders cannot use; the message names it."""


# ----------------------------------------------------------------------------- the world's vocabulary

PART_WORDS = {
    "eye": ("eye", "eyes", "eyering"),
    "beak": ("beak", "beaks", "bill", "nostril", "nostrils"),
    "crest": ("crest", "tuft", "tufted"),
    "tail": ("tail", "tails"),
    "wing": ("wing", "wings", "feathers", "shoulder"),
    "cap": ("cap", "crown"),
    "breast": ("breast", "belly", "chest"),
    "head": ("head", "face", "throat"),
    "body": ("body", "back", "plumage"),
}
"""Words naming each world part, most specific first: "bird tail feathers" is the tail, "bird eye ring"
the eye. "bird" alone (or "object") is the whole bird."""
WHOLE = ("bird", "object")


def concept_part(text: str) -> str | None:
    """The world part a concept phrase names ("long thin beak" → beak, "bird" → all), else None."""
    words = set(text.lower().replace("-", " ").split())
    for part, names in PART_WORDS.items():
        if words & set(names):
            return part
    return "all" if words and words <= {*WHOLE, "a", "an", "the", "whole"} else None


def part_mask(parts: np.ndarray, part: str) -> np.ndarray:
    """Exact mask of a part (or "all": the silhouette) from a part-label map (index + 1, 0 background)."""
    return parts > 0 if part == "all" else parts == PARTS.index(part) + 1


# ----------------------------------------------------------------------------- the VLM-like noise model

def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilate (steps > 0) or erode (steps < 0) by |steps| px with a 3×3 square, edges padded as background."""
    m = mask.copy()
    for _ in range(abs(steps)):
        p = np.pad(m, 1, constant_values=False)
        shifted = [p[1 + di:1 + di + m.shape[0], 1 + dj:1 + dj + m.shape[1]] for di in (-1, 0, 1) for dj in (-1, 0, 1)]
        m = np.logical_or.reduce(shifted) if steps > 0 else np.logical_and.reduce(shifted)
    return m


def degrade(mask: np.ndarray, noise: config.WorldNoise, rng: np.random.Generator) -> np.ndarray:
    """What a VLM returns for a concept whose exact mask is `mask`: missed with probability p_miss, else the
    boundary dilated or eroded by a uniform number of px in [-boundary, boundary]; then, with probability
    q_spurious, a disc of radius blob_radius·side added at a uniform position. Draws the same random
    numbers whatever happens, so one concept's noise never shifts another's."""
    h, w = mask.shape
    miss, steps = rng.random() < noise.p_miss, int(rng.integers(-noise.boundary, noise.boundary + 1))
    spurious, cy, cx = rng.random() < noise.q_spurious, rng.uniform(0, h), rng.uniform(0, w)
    out = np.zeros_like(mask) if miss else _grow(mask, steps)
    if spurious:
        yy, xx = np.mgrid[:h, :w]
        out = out | ((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= (noise.blob_radius * max(h, w)) ** 2)
    return out


# ----------------------------------------------------------------------------- grounders

class WorldGrounder:
    """Each concept → the world part it names → that part's exact mask, degraded by `degrade`. The noise of
    image `key` is seeded by (seed, key), so a mask does not depend on which other images are grounded."""

    def __init__(self, noise: config.WorldNoise, seed: int, unknown_concept: str = "error"):
        self.noise, self.seed, self.unknown = noise, seed, unknown_concept

    def __call__(self, image, concepts, *, parts=None, key=0, name=""):
        if parts is None:
            raise GroundingError("the world grounder needs the image's part-label map")
        rng = np.random.default_rng([self.seed, 5501, key])
        out = np.zeros((len(concepts), *parts.shape), bool)
        for i, text in enumerate(concepts):
            part = concept_part(text)
            if part is None:
                if self.unknown == "error":
                    raise GroundingError(
                        f"concept {text!r} (class {name!r}) names no world part; the world has "
                        f"{', '.join(PARTS)} (words: {', '.join(w for ws in PART_WORDS.values() for w in ws)}); "
                        "set masks.unknown_concept: empty to treat it as not found")
                degrade(np.zeros(parts.shape, bool), self.noise, rng)  # not found; keeps the stream aligned
                continue
            out[i] = degrade(part_mask(parts, part), self.noise, rng)
        return out


class GroundingSAM:
    """GroundingDINO (one "concept." prompt per concept, the official box/text thresholds 0.35/0.65; every
    box over the box threshold is kept, as the official script does) → SAM or SAM 2, one box prompt per box,
    `multimask_output=False`; a concept's boxes' masks are unioned; no box: an empty mask (docs/paper.md §2).
    `many` grounds several images at once: up to `batch_size` images (each with all its concepts) per
    GroundingDINO forward and per SAM image-encoder forward."""

    LOOKAHEAD = 8
    """Images are batched only with images of the same resized shape (padding would change the detector's
    features, so batched results would differ from unbatched ones); ground_items hands `many` this many
    batches' worth of images at a time so that mixed-shape datasets (ImageNet) still fill batches."""

    def __init__(self, cfg: config.GroundingSAM):
        import torch
        import transformers as T

        self.cfg, self.device = cfg, launch.device(cfg.device, "masks.groundingsam.device")
        self.window = self.LOOKAHEAD * cfg.batch_size
        det, seg = "masks.groundingsam.detector", "masks.groundingsam.segmenter"
        self.det_proc = hub.load(cfg.detector, det, T.AutoProcessor.from_pretrained)
        self.det = hub.load(cfg.detector, det, T.AutoModelForZeroShotObjectDetection.from_pretrained)
        kind = hub.load(cfg.segmenter, seg, T.AutoConfig.from_pretrained).model_type
        if kind not in ("sam", "sam2", "sam2_video"):
            raise GroundingError(f"{seg}: {cfg.segmenter!r} is a {kind!r} model; need SAM or SAM 2")
        model_cls, proc_cls = (T.SamModel, T.SamProcessor) if kind == "sam" else (T.Sam2Model, T.Sam2Processor)
        self.seg_proc = hub.load(cfg.segmenter, seg, proc_cls.from_pretrained)
        self.seg = hub.load(cfg.segmenter, seg, model_cls.from_pretrained)
        self.det.to(self.device).eval()
        self.seg.to(self.device).eval()
        fp16 = cfg.fp16 and self.device.type == "cuda"
        self.autocast = lambda: torch.autocast("cuda", torch.float16, enabled=fp16)

    def detect(self, images: list[np.ndarray], concepts: list[list[str]]) -> list[list[np.ndarray]]:
        """Per image, per concept: boxes (n, 4) xyxy in pixels, clipped to the image, degenerate ones dropped.
        One forward per `batch_size` images of one resized shape, on all their (image, concept) pairs."""
        import torch
        from PIL import Image

        pixels = [self.det_proc.image_processor(images=Image.fromarray(im), return_tensors="pt") for im in images]
        shapes: dict[tuple, list[int]] = {}
        for j, p in enumerate(pixels):
            shapes.setdefault(tuple(p["pixel_values"].shape), []).append(j)
        boxes: list[list[np.ndarray]] = [[] for _ in images]
        for group in shapes.values():
            for at in range(0, len(group), self.cfg.batch_size):
                pairs = [(j, c.strip().rstrip(".") + ".") for j in group[at:at + self.cfg.batch_size]
                         for c in concepts[j]]
                if not pairs:
                    continue
                text = self.det_proc(text=[p for _, p in pairs], padding="longest", return_tensors="pt")
                inputs = {**text, **{k: torch.cat([pixels[j][k] for j, _ in pairs]) for k in ("pixel_values", "pixel_mask")}}
                with torch.inference_mode(), self.autocast():
                    out = self.det(**{k: v.to(self.device) for k, v in inputs.items()})
                results = self.det_proc.post_process_grounded_object_detection(
                    out, text["input_ids"], threshold=self.cfg.box_threshold, text_threshold=self.cfg.text_threshold,
                    target_sizes=[images[j].shape[:2] for j, _ in pairs])
                for (j, _), r in zip(pairs, results):
                    h, w = images[j].shape[:2]
                    b = r["boxes"].float().cpu().numpy().reshape(-1, 4)
                    b = np.stack([b[:, 0].clip(0, w - 1), b[:, 1].clip(0, h - 1), b[:, 2].clip(0, w - 1),
                                  b[:, 3].clip(0, h - 1)], 1)
                    boxes[j].append(b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])])
        return boxes

    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, one binary mask (n, H, W) per box prompt at the image's resolution; the SAM image
        encoder runs on `batch_size` images at a time (its processor gives every image the same input size)."""
        import torch

        masks = [np.zeros((len(b), *im.shape[:2]), bool) for im, b in zip(images, boxes)]
        todo = [j for j, b in enumerate(boxes) if len(b)]
        for at in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[at:at + self.cfg.batch_size]
            inputs = [self.seg_proc(images=images[j], input_boxes=[boxes[j].tolist()], return_tensors="pt")
                      for j in chunk]
            with torch.inference_mode(), self.autocast():
                emb = self.seg.get_image_embeddings(torch.cat([x["pixel_values"] for x in inputs]).to(self.device))
                for n, (j, x) in enumerate(zip(chunk, inputs)):
                    mine = [e[n:n + 1] for e in emb] if isinstance(emb, (list, tuple)) else emb[n:n + 1]
                    out = self.seg(image_embeddings=mine, input_boxes=x["input_boxes"].to(self.device),
                                   multimask_output=False)
                    sizes = {"reshaped_input_sizes": x["reshaped_input_sizes"]} if "reshaped_input_sizes" in x else {}
                    m = self.seg_proc.post_process_masks(out.pred_masks.float().cpu(), x["original_sizes"], **sizes)[0]
                    masks[j] = m.reshape(len(boxes[j]), *images[j].shape[:2]).numpy().astype(bool)
        return masks

    def many(self, jobs: list[dict]) -> list[np.ndarray]:
        """(C, H, W) bool per job {image, concepts, ...}: a concept's mask is the union of its boxes' masks."""
        images = [j["image"] for j in jobs]
        boxes = self.detect(images, [list(j["concepts"]) for j in jobs])
        flat = self.segment(images, [np.concatenate(b) if b else np.zeros((0, 4)) for b in boxes])
        out = []
        for im, per_concept, f in zip(images, boxes, flat):
            m, at = np.zeros((len(per_concept), *im.shape[:2]), bool), 0
            for i, b in enumerate(per_concept):
                m[i], at = f[at:at + len(b)].any(0), at + len(b)
            out.append(m)
        return out

    def __call__(self, image, concepts, *, parts=None, key=0, name=""):
        return self.many([{"image": image, "concepts": concepts}])[0]


class Foreground:
    """The whole object as one mask (RobustViT's target; the concept-versus-segmentation ablation): the
    world's silhouette, or on real images GroundingSAM prompted with the class name."""

    def __init__(self, cfg: config.GroundingSAM):
        self.cfg, self._gsam = cfg, None

    def __call__(self, image, concepts, *, parts=None, key=0, name=""):
        if parts is not None:
            return part_mask(parts, "all")[None]
        self._gsam = self._gsam or GroundingSAM(self.cfg)
        return self._gsam(image, [name.split(",")[0]]).any(0, keepdims=True)


@dataclass(frozen=True)
class GrounderSpec:
    """A registered grounder: `build(masks_cfg, seed)` returns `ground(image, concepts, *, parts, key, name)
    -> (C, H, W) bool`."""
    name: str
    build: Callable
    uses_concepts: bool  # False: one mask of the whole object whatever the concepts
    needs_part_maps: bool  # reads the world's exact part labels
    needs_models: bool  # loads Hugging Face checkpoints (network on first use, a GPU advisable)
    description: str


GROUNDERS = {g.name: g for g in (
    GrounderSpec("world", lambda cfg, seed: WorldGrounder(cfg.world, seed, cfg.unknown_concept), True, True, False,
                 "exact world part masks through a VLM-like noise model"),
    GrounderSpec("groundingsam", lambda cfg, seed: GroundingSAM(cfg.groundingsam), True, False, True,
                 "GroundingDINO boxes per concept, SAM/SAM 2 mask per box, unioned per concept"),
    GrounderSpec("foreground", lambda cfg, seed: Foreground(cfg.groundingsam), False, False, False,
                 "the whole object: world silhouette, or GroundingSAM prompted with the class name"),
)}
assert tuple(GROUNDERS) == config.GROUNDERS


# ----------------------------------------------------------------------------- masks and their quality

def combine(masks: np.ndarray, weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(binary union M, weighted max W = max_c w_c·m_c) of per-concept masks (C, H, W) (docs/paper.md §2.1)."""
    w = np.asarray(weights, np.float32)[:, None, None]
    weighted = (masks * w).max(0) if len(masks) else np.zeros(masks.shape[1:], np.float32)
    return weighted > 0, weighted.astype(np.float32)


def quality(mask: np.ndarray, min_fraction: float, max_fraction: float) -> tuple[str, float]:
    """(flag, foreground fraction): empty (0), too_small (< min), too_large (> max) or ok (official script)."""
    frac = float(np.count_nonzero(mask)) / mask.size
    flag = "empty" if frac == 0 else "too_small" if frac < min_fraction else "too_large" if frac > max_fraction else "ok"
    return flag, frac


def ground_items(items, bank: dict, cfg: config.Masks, seed: int, grounder=None, fallback=None, truth=None,
                 progress: bool = False):
    """Ground each item {split, id, label, source, image, parts (or None), key} with its class's concepts.
    Yields (record, arrays) in item order: record = {split, id, label, source, flag, fraction, action,
    concepts: [{text, weight, fraction}], iou (with `truth`)}; arrays = {union, weighted, concepts, and on real
    images (no part map) foreground: the whole object, RobustViT's target, grounded once here rather than by
    every fine-tuning process} (None when dropped). A grounder with `many(jobs)` and `window` gets `window`
    items at a time (GroundingSAM batches them). `masks.policy` decides what a non-ok mask becomes: kept,
    dropped, or replaced by `fallback`'s mask."""
    from tqdm import tqdm

    spec = GROUNDERS[cfg.grounder]
    grounder, fallback = grounder or spec.build(cfg, seed), fallback or Foreground(cfg.groundingsam)
    if isinstance(grounder, GroundingSAM) and isinstance(fallback, Foreground) and fallback._gsam is None:
        fallback._gsam = grounder  # one copy of the models in memory
    many = getattr(grounder, "many", None)
    items = iter(tqdm(items, desc="masks", disable=not progress, leave=False))
    while chunk := list(islice(items, getattr(grounder, "window", 1) if many else 1)):
        jobs, weights = [], []
        for it in chunk:
            cls = bank["classes"][it["label"]]
            concepts = cls["concepts"] if spec.uses_concepts else [{"text": cls["name"], "weight": 1.0}]
            jobs.append(dict(image=it["image"], concepts=[c["text"] for c in concepts], parts=it["parts"],
                             key=it["key"], name=cls["name"]))
            weights.append([c["weight"] for c in concepts])
        found = many(jobs) if many else [grounder(j["image"], j["concepts"], parts=j["parts"], key=j["key"],
                                                  name=j["name"]) for j in jobs]
        for it, job, w, masks in zip(chunk, jobs, weights, found):
            yield _record(it, job, w, masks, cfg, fallback, truth)


def _record(it: dict, job: dict, weights: list[float], masks: np.ndarray, cfg: config.Masks, fallback, truth):
    """(record, arrays) of one grounded item (see ground_items)."""
    texts = job["concepts"]
    if masks.shape != (len(texts), *it["image"].shape[:2]):
        raise GroundingError(f"{cfg.grounder}: {it['id']}: masks {masks.shape}, expected "
                             f"{(len(texts), *it['image'].shape[:2])}")
    union, weighted = combine(masks, weights)
    flag, frac = quality(union, cfg.min_fraction, cfg.max_fraction)
    action = "kept" if flag == "ok" or cfg.policy == "keep" else "dropped" if cfg.policy == "drop" else "foreground"
    if action == "foreground":
        union = fallback(it["image"], [], parts=it["parts"], key=it["key"], name=job["name"])[0]
        weighted = union.astype(np.float32)
    record = {k: it[k] for k in ("split", "id", "label", "source")}
    record.update(flag=flag, fraction=frac, action=action,
                  concepts=[{"text": t, "weight": w, "fraction": float(m.mean())}
                            for t, w, m in zip(texts, weights, masks)])
    if truth is not None:
        exact = combine(truth(it["image"], texts, parts=it["parts"], key=it["key"], name=job["name"]), weights)[0]
        record["iou"] = float((union & exact).sum() / max(1, (union | exact).sum()))
    arrays = None if action == "dropped" else dict(
        union=union.astype(np.uint8), weighted=weighted, concepts=masks.astype(np.uint8))
    if arrays is not None and it["parts"] is None:
        arrays["foreground"] = fallback(it["image"], [], parts=None, key=it["key"], name=job["name"])[0].astype(np.uint8)
    return record, arrays


# ----------------------------------------------------------------------------- the mask store

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


def read_masks(store_dir: str | Path, record: dict) -> dict[str, np.ndarray]:
    """{union, weighted, concepts, and on real images foreground} of one kept item of a store."""
    path = Path(store_dir) / record["split"] / f"{record['id']}.npz"
    if not path.is_file():
        raise GroundingError(f"{path}: missing ({record['id']} was {record['action']})")
    return read_npz(path)


def summary(records: list[dict]) -> dict:
    """Image counts (all, the few-shot training and validation images), counts per quality flag (overall and
    per class), per policy action, and mean fractions (and IoU with the exact masks when known): the masks
    stage's metrics."""
    out = {"images": len(records), **{f"{split}_images": sum(r["split"] == split for r in records)
                                      for split in ("train", "val")},
           "flags": {f: sum(r["flag"] == f for r in records) for f in FLAGS},
           "actions": {a: sum(r["action"] == a for r in records) for a in ("kept", "dropped", "foreground")},
           "mean_fraction": float(np.mean([r["fraction"] for r in records])) if records else 0.0,
           "concept_found": float(np.mean([c["fraction"] > 0 for r in records for c in r["concepts"]]))
           if records else 0.0, "per_class": {}}
    if records and "iou" in records[0]:
        out["mean_iou"] = float(np.mean([r["iou"] for r in records]))
    for label in sorted({r["label"] for r in records}):
        mine = [r for r in records if r["label"] == label]
        out["per_class"][str(label)] = {f: sum(r["flag"] == f for r in mine) for f in FLAGS}
    return out


# ----------------------------------------------------------------------------- the stage

def truth_for(P: config.Params) -> WorldGrounder | None:
    """The exact masks the stage scores its masks against (record["iou"]): the world's noise-free part
    masks; none on real images."""
    return WorldGrounder(config.WorldNoise(0, 0.0, 0.0), P.base.seed) if P.concepts.dataset == "world" else None


def store_header(P: config.Params, bank: dict, selection: dict, class_index=None) -> dict:
    """The store's header: bank, grounder, the masks params that decide the masks (not `processes` or
    `groundingsam.batch_size`, so the store is the same however it was run), seed and the class split; with
    `class_index` (`fewshot.Pool.class_index`, when it is not the identity) the model output of each label."""
    from .concepts import content_hash

    params = config.as_dict(P.masks)
    del params["processes"], params["groundingsam"]["batch_size"]
    header = {"bank": f"bank-{content_hash(bank)}.json", "grounder": P.masks.grounder, "params": params,
              "seed": P.base.seed, "train_classes": selection["train_classes"].tolist(),
              "val_classes": selection["val_classes"].tolist()}
    if class_index is not None and not np.array_equal(class_index, np.arange(len(class_index))):
        header["class_index"] = [int(i) for i in class_index]
    return header


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_stage(P: config.Params, data_dir: str | Path, concepts_dir: str | Path, out_dir: str | Path,
              progress: bool = False, grounder=None) -> dict:
    """The masks stage: the few-shot selection grounded with the bank into the store at `out_dir`; returns
    its manifest. Each grounded item is written at once to `<out_dir>.partial/<split>/<index>.{npz,json}`, so
    a rerun after an interruption grounds only the rest; a work folder left by other inputs (header, bank,
    data) is discarded. Under torch.distributed, rank r grounds items r, r + world, ..., then rank 0
    assembles the store in selection order. The store's bytes do not depend on processes, batch size or
    interruptions (the world grounder's noise is drawn per item from (seed, item key))."""
    from . import concepts, fewshot

    rank, world = _rank_world()
    bank = concepts.load(concepts_dir)
    pool = fewshot.Pool(P.concepts.dataset, data_dir, P.concepts.image_dir)
    selection = fewshot.select(pool.labels, P.masks.k, P.masks.class_fraction, P.base.seed)
    header = store_header(P, bank, selection, pool.class_index)
    inputs = {"header": header, "bank": bank, "data": [str(data_dir), P.concepts.dataset, P.concepts.image_dir,
                                                       config.as_dict(P.world)]}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    work = Path(f"{out_dir}.partial")
    if rank == 0:
        marker = work / "inputs.json"
        if work.exists() and (not marker.is_file() or read_json(marker)["hash"] != digest):
            shutil.rmtree(work)
        if not marker.is_file():
            write_json(marker, {"hash": digest})
    _barrier(world)

    order = [(split, int(i)) for split in ("train", "val") for i in selection[split]]
    # shard first, then skip what is done: a rank only ever looks at its own items, which only it writes
    mine = [(s, i) for s, i in order[rank::world] if not (work / s / f"{i}.json").is_file()]
    results = ground_items((pool.item(i, s) for s, i in mine), bank, P.masks, P.base.seed, grounder=grounder,
                           truth=truth_for(P))
    for (s, i), (record, arrays) in bar(zip(mine, results), desc="masks", total=len(mine), progress=progress,
                                        rank=rank, unit="images"):
        if arrays is not None:
            save_npz(work / s / f"{i}.npz", arrays)
        write_json(work / s / f"{i}.json", record)  # last: the item is done
    _barrier(world)

    if rank == 0:
        def done():
            for s, i in order:
                record = read_json(work / s / f"{i}.json")
                npz = work / s / f"{i}.npz"
                if npz.is_file():
                    yield record, read_npz(npz, fix="delete it: the masks stage grounds that image again")
                else:
                    yield record, None

        write_store(out_dir, done(), header)
        shutil.rmtree(work)
    _barrier(world)
    return load_store(out_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m cftlib.grounding`: the masks stage's grounding; under torchrun, one process per GPU."""
    import torch

    ap = argparse.ArgumentParser(prog="python -m cftlib.grounding", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/world")
    ap.add_argument("--concepts", default="data/concepts")
    ap.add_argument("--out", default="data/masks")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    P = config.load(args.params)
    torch.set_num_threads(P.base.threads)
    cuda = launch.device(P.masks.groundingsam.device, "masks.groundingsam.device").type == "cuda"
    with launch.distributed(cuda, "masks.processes"):
        run_stage(P, args.data, args.concepts, args.out, args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
