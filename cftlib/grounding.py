"""Concept grounding (CFT §3.1; docs/paper.md §2): each concept of an image's class is found in the image as
a binary mask m_c; the image's training target is their union M = 1[max_c m_c > 0], and the official
weighted map W = max_c w_c·m_c is kept too. Grounders sit in a registry: `world` (exact part masks degraded
by a VLM-like noise model), `groundingsam` (GroundingDINO boxes → SAM masks) and `foreground` (the whole
object). Each image's record keeps the union, the weighted map, per-concept masks and a quality flag (the store's
format: `cftlib.data.maskstore`; the stage run: `cftlib.stages.ground`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cftlib.concepts import content_hash
from cftlib.core import config, hub, launch
from cftlib.data import world
from cftlib.data.maskstore import FLAGS, GroundingError
from cftlib.data.world import PARTS

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
            part = world.concept_part(text)
            if part is None:
                if self.unknown == "error":
                    raise GroundingError(
                        f"concept {text!r} (class {name!r}) names no world part; the world has "
                        f"{', '.join(PARTS)} (words: {', '.join(w for ws in world.PART_WORDS.values() for w in ws)}); "
                        "set masks.unknown_concept: empty to treat it as not found")
                degrade(np.zeros(parts.shape, bool), self.noise, rng)  # not found; keeps the stream aligned
                continue
            out[i] = degrade(world.part_mask(parts, part), self.noise, rng)
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
        import transformers as T  # seconds to import; only the GroundingSAM grounder needs it

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
                inputs = {**text,
                          **{k: torch.cat([pixels[j][k] for j, _ in pairs]) for k in ("pixel_values", "pixel_mask")}}
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
            return world.part_mask(parts, "all")[None]
        self._gsam = self._gsam or GroundingSAM(self.cfg)
        return self._gsam(image, [name.split(",")[0]]).any(0, keepdims=True)


def foreground_masks(masks_cfg: config.Masks, names: list[str]):
    """`item -> (H, W) bool` foreground mask (the world's silhouette; GroundingSAM with the class name on real
    images): the masks of the `cft_fgmask` and `robustvit` arms, RobustViT's segmentation-mask target."""
    fg = Foreground(masks_cfg.groundingsam)
    return lambda it: fg(it["image"], [], parts=it["parts"], key=it["key"], name=names[it["label"]])[0]


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


# ----------------------------------------------------------------------------- masks and their quality

def combine(masks: np.ndarray, weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(binary union M, weighted max W = max_c w_c·m_c) of per-concept masks (C, H, W) (docs/paper.md §2.1)."""
    w = np.asarray(weights, np.float32)[:, None, None]
    weighted = (masks * w).max(0) if len(masks) else np.zeros(masks.shape[1:], np.float32)
    return weighted > 0, weighted.astype(np.float32)


def quality(mask: np.ndarray, min_fraction: float, max_fraction: float) -> tuple[str, float]:
    """(flag, foreground fraction): empty (0), too_small (< min), too_large (> max) or ok (official script)."""
    frac = float(np.count_nonzero(mask)) / mask.size
    flag = ("empty" if frac == 0 else "too_small" if frac < min_fraction else
            "too_large" if frac > max_fraction else "ok")
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
        arrays["foreground"] = fallback(it["image"], [], parts=None, key=it["key"],
                                        name=job["name"])[0].astype(np.uint8)
    return record, arrays


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


# ----------------------------------------------------------------------------- what a store records

def truth_for(P: config.Params) -> WorldGrounder | None:
    """The exact masks the stage scores its masks against (record["iou"]): the world's noise-free part
    masks; none on real images."""
    exact = config.WorldNoise(boundary=0, p_miss=0.0, q_spurious=0.0)
    return WorldGrounder(exact, P.base.seed) if P.concepts.dataset == "world" else None


def store_header(P: config.Params, bank: dict, selection: dict, class_index=None) -> dict:
    """The store's header: bank, grounder, the masks params that decide the masks (not `processes` or
    `groundingsam.batch_size`, so the store is the same however it was run; `class_fraction` among them, which
    `fewshot.subset` reads), seed and the classes; with
    `class_index` (`fewshot.Pool.class_index`, when it is not the identity) the model output of each label."""
    params = config.as_dict(P.masks)
    del params["processes"], params["groundingsam"]["batch_size"]
    header = {"bank": f"bank-{content_hash(bank)}.json", "grounder": P.masks.grounder, "params": params,
              "seed": P.base.seed, "classes": selection["classes"].tolist()}
    if class_index is not None and not np.array_equal(class_index, np.arange(len(class_index))):
        header["class_index"] = [int(i) for i in class_index]
    return header
