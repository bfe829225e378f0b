"""Concept grounding (CFT §3.1; cft_facts.md §2): each concept of an image's class is found in the image as
a binary mask m_c; the image's training target is their union M = 1[max_c m_c > 0], and the official
weighted map W = max_c w_c·m_c is kept too. Grounders sit in a registry: `world` (exact part masks degraded
by a VLM-like noise model), `groundingsam` (GroundingDINO boxes → SAM masks) and `foreground` (the whole
object). The mask store keeps per image the union, the weighted map, per-concept masks and a quality flag."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import config, hub
from .io import atomic_path, write_json
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
    "head": ("head", "crown", "face", "throat"),
    "body": ("body", "breast", "belly", "back", "plumage"),
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
    `multimask_output=False`; a concept's boxes' masks are unioned; no box: an empty mask (cft_facts §2)."""

    def __init__(self, cfg: config.GroundingSAM):
        import torch
        import transformers as T

        self.cfg, self.device = cfg, hub.device(cfg.device)
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
        fp16 = cfg.fp16 and self.device.startswith("cuda")
        self.autocast = lambda: torch.autocast("cuda", torch.float16, enabled=fp16)

    def detect(self, image: np.ndarray, concepts: list[str]) -> list[np.ndarray]:
        """Boxes (n, 4) xyxy in pixels per concept, clipped to the image, degenerate ones dropped."""
        import torch
        from PIL import Image

        pil, (h, w) = Image.fromarray(image), image.shape[:2]
        prompts = [c.strip().rstrip(".") + "." for c in concepts]
        inputs = self.det_proc(images=[pil] * len(prompts), text=prompts, padding="longest", return_tensors="pt")
        with torch.inference_mode(), self.autocast():
            out = self.det(**inputs.to(self.device))
        results = self.det_proc.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=self.cfg.box_threshold, text_threshold=self.cfg.text_threshold,
            target_sizes=[(h, w)] * len(prompts))
        boxes = []
        for r in results:
            b = r["boxes"].float().cpu().numpy().reshape(-1, 4)
            b = np.stack([b[:, 0].clip(0, w - 1), b[:, 1].clip(0, h - 1), b[:, 2].clip(0, w - 1),
                          b[:, 3].clip(0, h - 1)], 1)
            boxes.append(b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])])
        return boxes

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """One binary mask (n, H, W) per box prompt, at the image's resolution."""
        import torch

        if len(boxes) == 0:
            return np.zeros((0, *image.shape[:2]), bool)
        inputs = self.seg_proc(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        with torch.inference_mode(), self.autocast():
            out = self.seg(pixel_values=inputs["pixel_values"].to(self.device),
                           input_boxes=inputs["input_boxes"].to(self.device), multimask_output=False)
        sizes = {"reshaped_input_sizes": inputs["reshaped_input_sizes"]} if "reshaped_input_sizes" in inputs else {}
        masks = self.seg_proc.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"], **sizes)[0]
        return masks.reshape(len(boxes), *image.shape[:2]).numpy().astype(bool)

    def __call__(self, image, concepts, *, parts=None, key=0, name=""):
        boxes = self.detect(image, list(concepts))
        flat = self.segment(image, np.concatenate(boxes)) if any(len(b) for b in boxes) else None
        out, at = np.zeros((len(concepts), *image.shape[:2]), bool), 0
        for i, b in enumerate(boxes):
            if len(b):
                out[i] = flat[at:at + len(b)].any(0)
            at += len(b)
        return out


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
    """(binary union M, weighted max W = max_c w_c·m_c) of per-concept masks (C, H, W) (cft_facts §2.1)."""
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
    Yields (record, arrays): record = {split, id, label, source, flag, fraction, action, concepts: [{text,
    weight, fraction}], iou (with `truth`)}; arrays = {union, weighted, concepts} (None when dropped).
    `masks.policy` decides what a non-ok mask becomes: kept, dropped, or replaced by `fallback`'s mask."""
    from tqdm import tqdm

    spec = GROUNDERS[cfg.grounder]
    grounder = grounder or spec.build(cfg, seed)
    for it in tqdm(items, desc="masks", disable=not progress, leave=False):
        cls = bank["classes"][it["label"]]
        concepts = cls["concepts"] if spec.uses_concepts else [{"text": cls["name"], "weight": 1.0}]
        texts, weights = [c["text"] for c in concepts], [c["weight"] for c in concepts]
        masks = grounder(it["image"], texts, parts=it["parts"], key=it["key"], name=cls["name"])
        if masks.shape != (len(texts), *it["image"].shape[:2]):
            raise GroundingError(f"{cfg.grounder}: {it['id']}: masks {masks.shape}, expected "
                                 f"{(len(texts), *it['image'].shape[:2])}")
        union, weighted = combine(masks, weights)
        flag, frac = quality(union, cfg.min_fraction, cfg.max_fraction)
        action = "kept" if flag == "ok" or cfg.policy == "keep" else "dropped" if cfg.policy == "drop" else "foreground"
        if action == "foreground":
            fallback = fallback or Foreground(cfg.groundingsam)
            union = fallback(it["image"], [], parts=it["parts"], key=it["key"], name=cls["name"])[0]
            weighted = union.astype(np.float32)
        record = {k: it[k] for k in ("split", "id", "label", "source")}
        record.update(flag=flag, fraction=frac, action=action,
                      concepts=[{"text": t, "weight": w, "fraction": float(m.mean())}
                                for t, w, m in zip(texts, weights, masks)])
        if truth is not None:
            exact = combine(truth(it["image"], texts, parts=it["parts"], key=it["key"], name=cls["name"]), weights)[0]
            record["iou"] = float((union & exact).sum() / max(1, (union | exact).sum()))
        arrays = None if action == "dropped" else dict(
            union=union.astype(np.uint8), weighted=weighted, concepts=masks.astype(np.uint8))
        yield record, arrays


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
    return json.loads(path.read_text())


def read_masks(store_dir: str | Path, record: dict) -> dict[str, np.ndarray]:
    """{union, weighted, concepts} of one kept item of a store."""
    path = Path(store_dir) / record["split"] / f"{record['id']}.npz"
    if not path.is_file():
        raise GroundingError(f"{path}: missing ({record['id']} was {record['action']})")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def summary(records: list[dict]) -> dict:
    """Counts per quality flag (overall and per class), per policy action, and mean fractions (and IoU
    with the exact masks when known): the masks stage's metrics."""
    out = {"images": len(records), "flags": {f: sum(r["flag"] == f for r in records) for f in FLAGS},
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
