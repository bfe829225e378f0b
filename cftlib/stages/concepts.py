"""The concepts stage (notebook 01_concepts): each class's concepts proposed by the configured proposer, filtered
(Label-free CBM's filters) and validated by grounding them in held-out images (the paper's supp. §6), and every file
the stage declares written — the bank, its counts and the validation rates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cftlib import concepts, validation
from cftlib.core import config, io
from cftlib.data import fewshot, world
from cftlib.report import figures, headline


@dataclass
class Concepts:
    """What the notebook shows: the classes the proposer read, the saved bank and its file, the concepts the
    filters and the validation dropped (label, name, text, reason), the validation's rates and failing candidates
    (both empty when `concepts.validation.images` is 0), and the saved figure."""
    classes: list
    bank: dict
    bank_path: Path
    dropped: list[dict]
    rates: list[dict]
    failing: list[dict]
    figure: plt.Figure


def classes_of(P: config.Params, data_dir: str | Path) -> list:
    """The classes a proposer reads: the world's field guide, ImageNet's wnid folders named by their lemmas, or an
    image folder's class folders (named by `concepts.class_names` if given)."""
    if P.concepts.dataset == "world":
        return concepts.classes_from_guide(world.load_guide(data_dir))
    _, _, class_dirs = fewshot.list_folder(P.concepts.image_dir)
    return (concepts.classes_from_imagenet(class_dirs) if P.concepts.dataset == "imagenet"
            else concepts.classes_from_folder(class_dirs, P.concepts.class_names or None))


def run(P: config.Params, data_dir: str | Path, concepts_dir: str | Path, metrics_dir: str | Path,
        figures_dir: str | Path, reports_dir: str | Path) -> Concepts:
    """Stage concepts: writes the bank to `concepts_dir`, `<metrics_dir>/concepts.json`, `reports/concepts.json`,
    `reports/concept_validation.csv` (when concepts were validated) and `figures/concepts.png`."""
    classes = classes_of(P, data_dir)
    bank, dropped = concepts.propose(P.concepts, classes, seed=P.base.seed)
    pool = fewshot.Pool(P.concepts.dataset, data_dir, P.concepts.image_dir)
    bank, rates, failing, beside = validation.run(bank, pool, P)
    V = P.concepts.validation
    if V.apply:
        dropped += [{**d, "reason": f"validation: {d['reason']}"} for d in failing]
    bank_path = concepts.save(bank, concepts_dir, beside)
    counts = [len(c["concepts"]) for c in bank["classes"]]
    headline.write(Path(metrics_dir) / "concepts.json", headline.concepts(
        len(counts), sum(counts), len(dropped), bank["header"]["params"].get("repairs", 0)))
    io.write_json(Path(reports_dir) / "concepts.json", {
        "bank": bank_path.name, "proposer": bank["header"]["proposer"], "classes": len(counts),
        "concepts": sum(counts), "per_class_min": min(counts), "per_class_max": max(counts),
        "dropped": dict(Counter(d["reason"].split(" of ")[0] for d in dropped)),
        "repairs": bank["header"]["params"].get("repairs", 0),  # repair turns of the llm proposer
        "validation": {"images_per_class": V.images, "occurrence": V.occurrence, "coverage": V.coverage,
                       "applied": V.apply, "candidates": len(rates), "failing": len(failing),
                       "mean_occurrence": float(np.mean([r["occurrence"] for r in rates])) if rates else None,
                       "mean_coverage": (float(np.mean([r["coverage"] for r in rates if r["found"]])) if rates
                                         else None)}})
    if rates:  # every candidate's rates, and whether it passes the thresholds
        validation.table(rates, failing).to_csv(Path(reports_dir) / "concept_validation.csv", index=False,
                                                float_format="%.4f")

    first = [pool.item(next(i for i, y in enumerate(pool.labels) if y == c["label"]), "train")
             for c in bank["classes"][:10]]
    fig = figures.concept_samples(
        [it["image"] for it in first],
        [c["name"] + "\n" + "\n".join(k["text"] for k in c["concepts"][:5]) for c in bank["classes"][:len(first)]],
        [it["parts"] for it in first] if P.concepts.dataset == "world" else None)
    figure = figures.save(fig, Path(figures_dir) / "concepts.png")
    return Concepts(classes, bank, bank_path, dropped, rates, failing, figure)
