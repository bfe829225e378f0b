"""The masks stage (notebook 02_masks): every few-shot image's concepts grounded into the mask store
(`cftlib.stages.ground`, sharded over `masks.processes` GPUs under torchrun), and every file the stage declares
written — the store, the grounding's statistics and the figures of its masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from cftlib import concepts, grounding
from cftlib.core import config, io, launch
from cftlib.data import fewshot, maskstore
from cftlib.report import figures, headline
from cftlib.stages import ground


@dataclass
class Masks:
    """What the notebook shows: the bank and its file name, the few-shot `selection` (`fewshot.select`), the
    store's manifest, its statistics (`grounding.summary`) and the two saved figures (the first kept images, the
    worst)."""
    bank: dict
    bank_name: str
    selection: dict
    manifest: dict
    stats: dict
    examples: plt.Figure
    failures: plt.Figure


def mask_figure(records: list[dict], pool: fewshot.Pool, masks_dir: str | Path, truth, max_concepts: int = 4
                ) -> plt.Figure:
    """Per store record the image, its first `max_concepts` concept masks, the union and (`truth`: the world's
    exact parts, `grounding.truth_for`) the exact target."""
    images, panels = [], []
    for r in records:
        it, m = pool.item(int(r["id"]), r["split"]), maskstore.read_masks(masks_dir, r)
        row = [("image", None)] + [(c["text"], m["concepts"][i]) for i, c in enumerate(r["concepts"][:max_concepts])]
        row += [(f"union ({r['flag']})", m["union"])]
        if truth is not None:
            row += [("exact", grounding.combine(truth(it["image"], [c["text"] for c in r["concepts"]],
                                                      parts=it["parts"]), [1.0] * len(r["concepts"]))[0])]
        images.append(it["image"])
        panels.append(row)
    return figures.mask_rows(images, panels, 2 + max_concepts + (truth is not None))


def run(P: config.Params, params_file: str | Path, data_dir: str | Path, concepts_dir: str | Path,
        masks_dir: str | Path, metrics_dir: str | Path, figures_dir: str | Path, reports_dir: str | Path,
        progress: bool = False) -> Masks:
    """Stage masks: grounds into the store at `masks_dir` (`python -m cftlib.stages.ground` with `params_file`, in
    this process or under torchrun) and writes `<reports_dir>/masks.json`, `<metrics_dir>/masks.json` and
    `figures/masks_{concepts,failures}.png`: the first kept images, and the worst (flagged first, then the lowest
    overlap with the exact parts)."""
    bank = concepts.load(concepts_dir)
    bank_name = next(Path(concepts_dir).glob("bank-*.json")).name
    pool = fewshot.Pool(P.concepts.dataset, data_dir, P.concepts.image_dir)
    selection = fewshot.select(pool.labels, P.masks.k, P.base.seed)
    spec = grounding.GROUNDERS[P.masks.grounder]
    truth = grounding.truth_for(P)  # the world's exact part masks (None on real images)
    launch.run(ground.__name__, ["--params", str(params_file), "--data", str(data_dir), "--concepts",
                                 str(concepts_dir), "--out", str(masks_dir), *(["--progress"] if progress else [])],
               P.masks.processes)
    manifest = maskstore.load_store(masks_dir)

    kept = [r for r in manifest["items"] if r["action"] != "dropped"]
    examples = figures.save(mask_figure(kept[:5], pool, masks_dir, truth), Path(figures_dir) / "masks_concepts.png")
    worst = sorted(kept, key=lambda r: (r["flag"] == "ok", r.get("iou", 1.0)))[:4]
    failures = figures.save(mask_figure(worst, pool, masks_dir, truth), Path(figures_dir) / "masks_failures.png")

    stats = grounding.summary(manifest["items"])
    io.write_json(Path(reports_dir) / "masks.json", {**stats, "bank": bank_name, "grounder": spec.name})
    headline.write(Path(metrics_dir) / "masks.json", headline.masks(stats))
    return Masks(bank, bank_name, selection, manifest, stats, examples, failures)
