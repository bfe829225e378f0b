"""The evaluate stage on the world: every fine-tuned run read back and scored on every split (accuracy,
the images it corrects and breaks against its base, relevance alignment), with the seen classes of the mask store."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from cftlib import concepts
from cftlib.core import io, launch
from cftlib.core.progress import bar
from cftlib.data import fewshot, world
from cftlib.data.maskstore import load_store, store_classes
from cftlib.metrics import accuracy, alignment
from cftlib.stages import params
from cftlib.training import runspec
from cftlib.training.runspec import load_run


def seen_classes(store_dir: str | Path, subset: int) -> np.ndarray:
    """The classes a run with class subset `subset` fine-tuned on, as model outputs: `fewshot.subset` of the
    mask store's classes and class fraction, mapped through the header's `class_index` (store label → model
    output, e.g. the ImageNet-1k index; absent = the label itself)."""
    store = load_store(store_dir)
    labels, _ = fewshot.subset(*store_classes(store, store_dir), subset)
    index = store["header"].get("class_index")
    return np.array(sorted(labels if index is None else {int(index[y]) for y in labels}), dtype=int)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the weights: runs with identical weights (the `none` arm's seeds) are evaluated once."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def seen_by_subset(store_dir: str | Path, runs) -> dict[int, np.ndarray]:
    """`seen_classes` of every class subset among `runs`."""
    return {s: seen_classes(store_dir, s) for s in sorted({r.subset for r in runs})}


FLIP_COLUMNS = ["model", "arm", "seed", "split", "images", "corrected", "regressed"]
"""plots/evaluate_flips.csv: per run and split, the images it corrects and breaks against its base model."""


def flip_rows(runs, logits: dict, arrays: dict[str, dict]) -> pd.DataFrame:
    """Per run other than the bases' own (`none`) and per split, `accuracy.flips` of its predictions against those
    of the `none` run of the same model and base model (`logits`: run → split → logits); a run whose base has no
    `none` run is left out. Columns `FLIP_COLUMNS`."""
    base = {(s.model, s.base): logits[s] for s in runs if s.arm == "none"}
    return pd.DataFrame([{"model": s.model, "arm": s.arm, "seed": s.seed, "split": split,
                          **accuracy.flips(logits[s][split].argmax(1), base[s.model, s.base][split].argmax(1),
                                           a["label"])}
                         for s in runs if s.arm != "none" and (s.model, s.base) in base
                         for split, a in arrays.items()], columns=FLIP_COLUMNS)


def inputs(P, runs, data_dir: str | Path, masks_dir: str | Path, concepts_dir: str | Path) -> dict:
    """What scoring the world's runs reads, as `evaluate_runs`' keyword arguments: the splits' first images
    (`evaluate.images`), each class subset's seen classes, the concept parts per class and the mask store's
    validation images."""
    return dict(arrays={s: head(world.load_split(data_dir, s), P.evaluate.images(s)) for s in P.evaluate.splits},
                seen=seen_by_subset(masks_dir, runs),
                class_parts=alignment.concept_parts(concepts.load(concepts_dir)),
                store=fewshot.load(masks_dir, "val", fewshot.Pool(P.concepts.dataset, data_dir, P.concepts.image_dir)))


def score(model: torch.nn.Module, build: dict, spec, arrays: dict[str, dict], class_parts: list[list[str]], cfg,
          store: dict | None = None) -> tuple[dict[str, np.ndarray], list[dict], list[dict]]:
    """One model's (logits per split, alignment rows, part-usage rows). Maps use `cfg.relevance` where it
    explains the model, else the run's own method (the CNN's Grad-CAM); with `store` (the mask store's
    validation images, cftlib.data.fewshot.load), the usage from their grounded concept masks too."""
    method = alignment.explainer(model, cfg.relevance, spec.relevance)
    rows, usage = alignment.run_alignment(model, {s: arrays[s] for s in cfg.alignment_splits}, class_parts, method,
                                          cfg.alignment_images)
    if store is not None:
        usage += alignment.concept_usage(model, store, method, build.get("img_size"), cfg.batch_size)
    return accuracy.split_logits(model, arrays, cfg.batch_size), rows, usage


def save_score(path: Path, scored: tuple) -> None:
    """`score`'s result as `<path>.npz` (logits) and `<path>.json` (rows, their keys in order: the tables'
    columns), the JSON written last and atomically: a worker's score is complete when its JSON exists."""
    logits, rows, usage = scored
    np.savez(path.with_suffix(".npz"), **logits)
    with io.atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"alignment": rows, "usage": usage}))


def load_score(path: Path) -> tuple | None:
    """What `save_score` wrote at `path`, or None when it is not (completely) there."""
    if not path.with_suffix(".json").is_file():
        return None
    rows = io.read_json(path.with_suffix(".json"))
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, rows["alignment"], rows["usage"]


def evaluate_runs(runs, finetune_dir: str | Path, arrays: dict[str, dict], seen: dict[int, np.ndarray],
                  class_parts: list[list[str]], cfg, progress: bool = False, store: dict | None = None,
                  scored_dir: str | Path | None = None):
    """Accuracy, alignment, per-class part usage and flip rows (model, arm, seed, …) of every fine-tuning run's
    selected (best) checkpoint (`score`), the seen/unseen groups by the run's own classes (`seen`: class subset →
    the classes it fine-tuned on, `seen_by_subset`), the flips against each run's base model (`flip_rows`). Runs
    with identical weights (the `none` arm's seeds) are scored once; a score the side-by-side workers left in
    `scored_dir` (`score_side_by_side`) is read, not recomputed."""
    acc, align, usage, done, keys = [], [], [], {}, {}
    for spec in bar(runs, desc="evaluate", progress=progress, unit="runs"):
        model, build = load_run(spec, finetune_dir)
        key = keys[spec] = weights_digest(model)
        if key not in done:
            done[key] = ((load_score(Path(scored_dir) / key) if scored_dir else None)
                         or score(model, build, spec, arrays, class_parts, cfg, store))
        ids = {"model": spec.model, "arm": spec.arm, "seed": spec.seed}
        acc += [{**ids, **r} for r in accuracy.accuracy_rows(done[key][0], arrays, seen[spec.subset])]
        align += [{**ids, **r} for r in done[key][1]]
        usage += [{**ids, **r} for r in done[key][2]]
    flips = flip_rows(runs, {s: done[k][0] for s, k in keys.items()}, arrays)
    return pd.DataFrame(acc), pd.DataFrame(align), pd.DataFrame(usage), flips


@contextmanager
def score_side_by_side(params_file: str | Path, workers: int, threads: int, paths: list) -> Iterator[Path | None]:
    """With `workers` > 1, every distinct run scored by that many processes side by side (`launch.side_by_side`
    of this module's `main`; `paths`: its folder options) into a temporary folder, yielded for
    `evaluate_runs(scored_dir=...)` and removed after; with 1, None (score in this process)."""
    if workers <= 1:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="cft-evaluate-") as tmp:
        launch.side_by_side("cftlib.stages.evaluate", params_file, workers, threads, [*paths, "--scored", tmp])
        yield Path(tmp)


def head(arrays: dict, n: int) -> dict:
    """The first n items of every array of a split (n = 0: all)."""
    return arrays if n == 0 else {k: v[:n] for k, v in arrays.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.evaluate",
                                 description="Score the world's fine-tuned runs (one shard of them) into a folder.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/world")
    ap.add_argument("--masks", default="data/masks")
    ap.add_argument("--concepts", default="data/concepts")
    ap.add_argument("--runs", default="models/finetune", help="the finetune stage's runs")
    ap.add_argument("--scored", required=True, help="where each distinct run's score is written (`save_score`)")
    ap.add_argument("--shard", type=launch.shard, default=(0, 1), help="i/n: every n-th distinct run, from the i-th")
    ap.add_argument("--threads", type=int, help="torch threads (default: base.threads)")
    args = ap.parse_args(argv)
    P = params.load(args.params)
    torch.set_num_threads(args.threads or P.base.threads)
    runs = runspec.plan(P.finetune, P.base.seed, P.bases.seeds)
    data = inputs(P, runs, args.data, args.masks, args.concepts)
    distinct = {}
    for spec in runs:
        model, build = load_run(spec, args.runs)
        distinct.setdefault(weights_digest(model), (spec, model, build))
    k, n = args.shard
    for key, (spec, model, build) in list(distinct.items())[k::n]:
        save_score(Path(args.scored) / key, score(model, build, spec, data["arrays"], data["class_parts"],
                                                  P.evaluate, data["store"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
