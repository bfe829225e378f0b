"""The evaluate stage at paper scale: every fine-tuned run scored on the paper's benchmarks (top-1/top-5 per
protocol, segmentation alignment, concept usage), sharded over torchrun processes.

    python -m cftlib.stages.benchmarks --params params.yaml --runs models/finetune --masks data/masks --out results.csv
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from cftlib.core import launch
from cftlib.core.config import as_dict
from cftlib.core.io import json_sha256, read_json, tensors_sha256, write_csv, write_json
from cftlib.core.progress import bar
from cftlib.data import datasets, fewshot
from cftlib.metrics import accuracy
from cftlib.metrics.alignment import (
    ALIGNMENT,
    MASKS_SPLIT,
    USAGE_COLUMNS,
    concept_usage,
    explainer,
    relevance_maps,
    segmentation_counts,
    segmentation_scores,
)
from cftlib.metrics.runs import seen_by_subset
from cftlib.stages import params
from cftlib.training.runspec import load_run, plan


def shard(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """This process's batches (start, stop) of n items: batch b goes to rank b mod world. Whole batches, so
    every image is computed in the same batch whatever the number of processes (identical logits)."""
    return [(a, min(a + batch_size, n)) for b, a in enumerate(range(0, n, batch_size)) if b % world == rank]


def gather(rows: np.ndarray, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Per-row arrays computed by each process for its `rows`, put together in row order on rank 0 (the
    others get None); outside torch.distributed, `arrays` as given."""
    rank, world = launch.rank_world()
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


def protocol_normalisation(model: torch.nn.Module, protocol: str) -> tuple[tuple, tuple]:
    """(mean, std): 0.5 for every model under `chefer` (docs/paper.md §3.1); the model's own under `standard`."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if protocol == "standard" and "mean" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return (0.5,) * 3, (0.5,) * 3


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict_protocols(model: torch.nn.Module, bench: datasets.Benchmark, protocols, batch_size: int = 64,
                      amp: bool = False, batches: list[tuple[int, int]] | None = None, workers: int = 1,
                      resize: int = 256, crop: int = 224) -> dict[str, np.ndarray]:
    """{protocol: logits (rows, classes)} of `bench`'s images in `batches` (default: all), each image decoded
    once per border the protocols need, preprocessed as each protocol says, on the model's device in eval
    mode (`amp`: bfloat16 autocast on CUDA); `workers` threads decode."""
    for p in protocols:
        if p not in accuracy.PROTOCOLS:
            raise ValueError(f"protocol {p!r}: choose one of {accuracy.PROTOCOLS}")
    device = next(model.parameters(), torch.zeros(0)).device
    norm = {p: [torch.tensor(v, device=device).view(1, 3, 1, 1) for v in protocol_normalisation(model, p)]
            for p in protocols}
    borders = {p: bench.border if p == "standard" else 0 for p in protocols}
    model.eval()
    out = {p: [] for p in protocols}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for a, b in shard(len(bench), batch_size) if batches is None else batches:
            x = {}
            for border in sorted(set(borders.values())):
                imgs = list(pool.map(lambda p, border=border: datasets.load_centre_crop(p, border, resize, crop),
                                     bench.paths[a:b]))
                x[border] = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float().div_(255)
            for p in protocols:
                mean, std = norm[p]
                with _autocast(device, amp):
                    out[p].append(model((x[borders[p]] - mean) / std).float().cpu())
    return {p: torch.cat(v).numpy() if v else np.zeros((0, 0), np.float32) for p, v in out.items()}


def predict(model: torch.nn.Module, bench: datasets.Benchmark, protocol: str, batch_size: int = 64, amp: bool = False,
            resize: int = 256, crop: int = 224) -> np.ndarray:
    """(N, classes) logits of `bench`'s images, preprocessed as `protocol` says, in eval mode."""
    return predict_protocols(model, bench, [protocol], batch_size, amp, resize=resize, crop=crop)[protocol]


def segmentation_eval(model: torch.nn.Module, path: str | Path, method: str, batch_size: int = 16,
                      indices=None, amp: bool = False, build: dict | None = None) -> dict[str, float] | None:
    """pixAcc, mIoU and mAP of `model`'s relevance (predicted class) on ImageNet-Segmentation's images at
    `indices` (default all; §4.2), normalised as the model was fine-tuned (`build`: its checkpoint config;
    0.5, the official code's, for ViT-B). Under torch.distributed each process explains its share of the
    batches and rank 0 gets the scores (the others None)."""

    indices = np.arange(datasets.segmentation_size(path)) if indices is None else np.asarray(indices, int)
    batches = shard(len(indices), batch_size, *launch.rank_world())
    counts = []
    for a, b in batches:
        imgs, gts = zip(*datasets.segmentation(path, indices=indices[a:b]))
        maps = relevance_maps(model, np.stack(imgs), method, batch_size, amp, build)
        counts.append(segmentation_counts(maps, np.stack(gts)))
    full = gather(_rows(batches), {k: np.concatenate([c[k] for c in counts]) for k in counts[0]} if counts else {})
    return None if full is None else segmentation_scores(full)


# ----------------------------------------------------------------------------- every run on every benchmark

RESULTS = ("model", "arm", "seed", "benchmark", "protocol", "group", "images", "top1", "top5", "method", "pixAcc",
           "mIoU", "mAP", "label", "part", "mass")
"""Columns of the results file (`main`): one row per run × benchmark × protocol × class group, one per run
on ImageNet-Segmentation (group all), and one per run, class and concept of the concept usage on the mask
store's validation images (benchmark `cftlib.metrics.alignment.MASKS_SPLIT`: label, part, mass)."""


def evaluate_model(model: torch.nn.Module, benches: dict[str, datasets.Benchmark], seen: np.ndarray, cfg, method: str,
                   seg_indices=None, workers: int = 1, build: dict | None = None,
                   store: dict | None = None) -> list[dict]:
    """Rows {benchmark, protocol, group, images, top1, top5} of each benchmark under each of `cfg.protocols`
    (class groups all/seen/unseen), {benchmark: imagenet_segmentation, method, pixAcc, mIoU, mAP} when
    `cfg.segmentation` is set (its images at `seg_indices`, default all; `build`: the model's checkpoint
    config, for the normalisation of its maps), and with `store` (the mask store's validation images) the
    concept usage rows {benchmark: MASKS_SPLIT, label, part, mass, images}, computed on rank 0. Under
    torch.distributed each process computes its share of the batches; rank 0 returns the rows, the others []."""

    rank, world = launch.rank_world()
    rows = []
    for name, bench in benches.items():
        batches = shard(len(bench), cfg.batch_size, rank, world)
        logits = gather(_rows(batches), predict_protocols(model, bench, cfg.protocols, cfg.batch_size, cfg.amp,
                                                          batches, workers))
        if logits is not None:
            rows += [{"benchmark": name, "protocol": p, **r} for p in cfg.protocols
                     for r in accuracy.benchmark_report(bench, logits[p], p, seen)]
    if cfg.segmentation:
        seg = segmentation_eval(model, cfg.segmentation, method, cfg.batch_size, seg_indices, cfg.amp, build)
        if seg is not None:
            n = len(seg_indices) if seg_indices is not None else datasets.segmentation_size(cfg.segmentation)
            rows.append({"benchmark": datasets.SEGMENTATION, "protocol": "chefer", "group": "all", "images": n,
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
    return Path(cache_dir) / f"{json_sha256(key)[:24]}.json"


def benchmark_runs(runs, finetune_dir: str | Path, seen: dict[int, np.ndarray], P, dev: torch.device | str = "cpu",
                  progress: bool = False, cache_dir: str | Path | None = None, store: dict | None = None) -> list[dict]:
    """Result rows (RESULTS) of every fine-tuning run's selected checkpoint on every configured benchmark
    (a seeded sample of `evaluate.benchmark_images` each), on ImageNet-Segmentation, and with `store` the
    concept usage on the mask store's validation images (`evaluate_model`). Maps use
    `evaluate.relevance` where it explains the model, else the run's own method (the CNN's Grad-CAM); runs
    with identical weights are computed once. With `cache_dir`, each model's rows are kept there under the
    hash of its weights, the evaluate params, seed, seen classes (`seen`: class subset → its classes) and
    device, so an interrupted stage resumes
    at the first model not yet scored. Rank 0 gets the rows, other processes []."""
    E = P.evaluate
    benches = {name: datasets.sample(datasets.load(name, root), E.benchmark_images, P.base.seed)
               for name, root in E.benchmarks.items()}
    seg = (datasets.choose(datasets.segmentation_size(E.segmentation), E.benchmark_images,
                           datasets.rng_for(P.base.seed, datasets.SEGMENTATION)) if E.segmentation else None)
    rows, done = [], {}
    for spec in bar(runs, desc="benchmarks", progress=progress, rank=launch.rank_world()[0], unit="runs"):
        model, build = load_run(spec, finetune_dir)
        mine = seen[spec.subset]
        # the groups differ between class subsets
        key = (tensors_sha256(*model.state_dict().values()), tuple(int(c) for c in mine))
        method = explainer(model, E.relevance, spec.relevance)
        cached = _cached(cache_dir, {"weights": key[0], "method": method, "evaluate": as_dict(E), "seed": P.base.seed,
                                     "seen": list(key[1]), "device": torch.device(dev).type,
                                     "store": None if store is None else store["ids"]})
        if key not in done and cached is not None and cached.is_file():
            done[key] = read_json(cached)
        if key not in done:
            done[key] = evaluate_model(model.to(dev), benches, mine, E, method, seg, P.base.threads, build, store)
            if cached is not None and launch.rank_world()[0] == 0:
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
    cls, seg = r[~r["split"].isin([datasets.SEGMENTATION, MASKS_SPLIT])], r[r["split"] == datasets.SEGMENTATION]
    keys = ["model", "arm", "seed", "split", "group", "top1", "top5"]
    acc = cls.loc[cls["protocol"] == protocols[0], keys].reset_index(drop=True)
    others = cls.loc[cls["protocol"] != protocols[0], [*keys[:3], "protocol", *keys[3:]]].reset_index(drop=True)
    align = seg[["model", "arm", "seed", "split", "method", *ALIGNMENT[:3]]].reset_index(drop=True)
    usage = r.loc[r["split"] == MASKS_SPLIT, USAGE_COLUMNS].reset_index(drop=True).astype({"label": int, "images": int})
    return acc, others, align.assign(**{m: np.nan for m in ALIGNMENT[3:]}), usage


def main(argv: list[str] | None = None) -> int:
    """`python -m cftlib.stages.benchmarks`: every run on the paper's benchmarks; under torchrun the images are
    sharded over the processes and rank 0 writes the results CSV."""
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.benchmarks",
                                 description="Score every fine-tuning run on evaluate.benchmarks and "
                                             "evaluate.segmentation; one CSV row per run, benchmark, protocol, group.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="models/finetune", help="the finetune stage's output folder")
    ap.add_argument("--masks", default="data/masks", help="the mask store (its training classes are 'seen'; its "
                                                            "validation images give the concept usage)")
    ap.add_argument("--data", default="data/world", help="the world's data folder (concepts.dataset: world only)")
    ap.add_argument("--out", required=True, help="results CSV (written by rank 0, atomically)")
    ap.add_argument("--cache",
                    help="keep each model's rows here, so an interrupted run resumes (e.g. cache/benchmarks)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    P = params.load(args.params)
    torch.set_num_threads(P.base.threads)
    dev = launch.device(P.evaluate.device, "evaluate.device")
    with launch.distributed(dev.type == "cuda", "evaluate.processes"):
        store = fewshot.load(args.masks, "val", fewshot.Pool(P.concepts.dataset, args.data, P.concepts.image_dir))
        runs = plan(P.finetune, P.base.seed, P.bases.seeds)
        rows = benchmark_runs(runs, args.runs, seen_by_subset(args.masks, runs), P, dev,
                             args.progress, args.cache, store)
        if launch.rank_world()[0] == 0:
            write_csv(args.out, pd.DataFrame(rows, columns=list(RESULTS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
