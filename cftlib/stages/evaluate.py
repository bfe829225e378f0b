"""The evaluate stage on the world: every fine-tuned run read back and scored on every split (accuracy,
the images it corrects and breaks against its base, relevance alignment), with the seen classes of the mask store."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cftlib import concepts
from cftlib.core import config, io, launch
from cftlib.core.progress import bar
from cftlib.data import fewshot, world
from cftlib.metrics import accuracy, alignment, intervals
from cftlib.metrics.runs import seen_by_subset
from cftlib.report import claims, headline, tables
from cftlib.stages import benchmarks, params
from cftlib.training import runspec
from cftlib.training.runspec import load_run

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
        key = keys[spec] = io.tensors_sha256(*model.state_dict().values())  # the `none` arm's seeds: scored once
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



def score_world(P: config.Params, params_file: str | Path, runs, *, data_dir, concepts_dir, masks_dir, finetune_dir,
                progress: bool = False) -> dict:
    """The world's runs scored on its splits, `evaluate.workers` processes side by side (this one reads them back):
    accuracy, alignment, part usage and flip frames (`evaluate_runs`), the concept parts per class and a line on what
    scored them (`about`)."""
    E = P.evaluate
    data = inputs(P, runs, data_dir, masks_dir, concepts_dir)  # each run's classes: its seed's class subset
    folders = ["--data", data_dir, "--masks", masks_dir, "--concepts", concepts_dir, "--runs", finetune_dir]
    with score_side_by_side(params_file, E.workers, max(1, P.base.threads // E.workers), folders) as scored:
        acc, align, usage, flips = evaluate_runs(runs, finetune_dir, **data, cfg=E, progress=progress,
                                                 scored_dir=scored)
    seen = data["seen"]
    return dict(acc=acc, others=None, align=align, usage=usage, flips=flips, class_parts=data["class_parts"],
                about=f"{len(seen)} class subsets of {len(seen[min(seen)])} seen classes each; concept parts per "
                      f"class {data['class_parts']}")


def score_benchmarks(P: config.Params, params_file: str | Path, runs, *, data_dir, masks_dir, finetune_dir,
                     out: Path, progress: bool = False) -> dict:
    """Paper scale: the runs scored on the benchmarks into `out` (cftlib.stages.benchmarks, under torchrun when
    `evaluate.processes` > 1; each model's rows kept in cache/benchmarks, so a re-run resumes), the frames
    `score_world` returns (no flips: per-image predictions are not kept) and the other protocols' accuracy."""
    E = P.evaluate
    launch.run("cftlib.stages.benchmarks", ["--params", params_file, "--runs", finetune_dir, "--masks", masks_dir,
                                            "--data", data_dir, "--out", str(out), "--cache", "cache/benchmarks"]
               + ["--progress"] * progress, E.processes)
    acc, others, align, usage = benchmarks.frames(pd.read_csv(out), E.protocols)
    return dict(acc=acc, others=others, align=align, usage=usage, flips=pd.DataFrame(columns=FLIP_COLUMNS),
                class_parts=[],
                about=f"{len(seen_by_subset(masks_dir, runs))} class subsets; protocols {', '.join(E.protocols)}")


def write_tables(P: config.Params, s: dict, names: list[str], tables_dir: Path) -> dict:
    """Every table of the stage into `tables_dir` (markdown and CSV, cftlib.report.tables) from `score_world`'s or
    `score_benchmarks`' frames (`s`, with its `gaps`): accuracy (top-1, top-5, the other protocols), seen and unseen
    classes, shortcut gaps, alignment, concept usage. Returns them with the summaries the metrics read."""
    E, R = P.evaluate, accuracy.roles(P)
    over = "mean ± 95% CI over (base, seed) runs"
    summary = intervals.summarise(s["acc"], ["model", "arm", "split", "group"], ["top1", "top5"], E.level)
    scope = "split" if E.splits else f"benchmark ({E.protocols[0]} protocol)"
    t = dict(summary=summary, main=tables.main_table(summary, R.splits))
    tables.write_table(t["main"], tables_dir / "accuracy",
                       f"{'Top-1' if E.splits else 'Top-1 and top-5'} (%) per {scope}, {over}")
    tables.write_table(tables.main_table(summary, R.splits, "top5"), tables_dir / "accuracy_top5",
                       f"Top-5 (%) per {scope}, {over}")
    if s["others"] is not None:
        for protocol, frame in s["others"].groupby("protocol", sort=False):
            other = intervals.summarise(frame, ["model", "arm", "split", "group"], ["top1", "top5"], E.level)
            tables.write_table(tables.main_table(other, R.splits), tables_dir / f"accuracy_{protocol}",
                               f"Top-1 and top-5 (%) per benchmark ({protocol} protocol), {over}")

    groups = summary[summary["split"].isin([R.reference, R.focus]) & (summary["group"] != "all")]
    t["seen_unseen"] = tables.table(groups, ["top1"], ["split", "group"], R.splits)
    tables.write_table(t["seen_unseen"], tables_dir / "seen_unseen",
                       "Top-1 (%) on classes seen / not seen in fine-tuning")

    t["gap_summary"] = intervals.summarise(s["gaps"], ["model", "arm", "split"], ["gap"], E.level)
    t["gaps"] = tables.table(t["gap_summary"], ["gap"], ["split"], R.splits)
    tables.write_table(t["gaps"], tables_dir / "gaps", f"Shortcut gap ({R.reference} − split, points), {over}")
    align = s["align"]
    metrics = [m for m in alignment.ALIGNMENT if align[m].notna().any()]
    t["align_summary"] = intervals.summarise(align, ["model", "arm", "split"], metrics, E.level)
    t["alignment"] = tables.table(t["align_summary"], metrics, ["split"], R.splits)
    tables.write_table(t["alignment"], tables_dir / "alignment",
                       "Relevance alignment (%): RobustViT segmentation test vs the bird, and concept parts" if E.splits
                       else "Relevance alignment (%): RobustViT segmentation test on ImageNet-Segmentation")

    t["concept_usage"] = tables.usage_table(s["usage"], s["class_parts"], names, R.focus)
    tables.write_table(t["concept_usage"], tables_dir / "concept_usage",
                       f"Share of relevance (%) on each concept part of the class, `{R.focus}`, mean over (base, seed) "
                       "runs")
    t["concept_usage_masks"] = tables.usage_table(s["usage"], None, names, alignment.MASKS_SPLIT)
    tables.write_table(t["concept_usage_masks"], tables_dir / "concept_usage_masks",
                       "Share of relevance (%) inside each grounded concept mask of the class, the masks stage's "
                       "validation images, mean over (base, seed) runs")
    return t


def run_stage(P: config.Params, params_file: str | Path, *, data_dir: str | Path, concepts_dir: str | Path,
              masks_dir: str | Path, finetune_dir: str | Path, metrics_dir: str | Path, plots_dir: str | Path,
              reports_dir: str | Path, progress: bool = False) -> dict:
    """The stage: every run scored (the world's splits, or the benchmarks at paper scale), and every declared
    output written — the per-run rows (`plots/evaluate_*.csv`), the tables (`reports/tables/`), the metrics, and
    the claims report (`reports/claims.md`, `.json`, `metrics/claims.json`). Returns what the notebook shows:
    the runs, a line on what scored them (`about`), the per-run rows, the tables, the headline metrics and the
    claims' rows (cftlib.report.claims)."""
    runs, R = runspec.plan(P.finetune, P.base.seed, P.bases.seeds), accuracy.roles(P)
    bench_csv, folders = Path(plots_dir) / "evaluate_benchmarks.csv", dict(data_dir=data_dir, masks_dir=masks_dir,
                                                                          finetune_dir=finetune_dir)
    if P.evaluate.splits:
        s = score_world(P, params_file, runs, concepts_dir=concepts_dir, **folders, progress=progress)
        io.write_csv(bench_csv, pd.DataFrame(columns=list(benchmarks.RESULTS)))  # no benchmarks on the world
    else:
        s = score_benchmarks(P, params_file, runs, out=bench_csv, **folders, progress=progress)
    s["gaps"] = accuracy.gaps_frame(s["acc"], R.reference, R.ood)
    for name, key in (("accuracy", "acc"), ("alignment", "align"), ("gaps", "gaps"), ("usage", "usage"),
                      ("flips", "flips")):
        io.write_csv(Path(plots_dir) / f"evaluate_{name}.csv", s[key])

    names = ([c["name"] for c in world.load_guide(data_dir)] if P.evaluate.splits
             else [c["name"] for c in concepts.load(concepts_dir)["classes"]])
    t = write_tables(P, s, names, Path(reports_dir) / "tables")
    full = tables.metrics(t["summary"], t["gap_summary"], t["align_summary"])
    io.write_json(Path(reports_dir) / "evaluate.json", full)
    small = headline.evaluate(full, R.reference, R.ood, (P.evaluate.alignment_splits or [R.reference])[0])
    headline.write(Path(metrics_dir) / "evaluate.json", small)

    claim_rows = claims.write_claims(Path(reports_dir) / "claims.md", s["acc"], s["align"], P,
                                     runspec.collect(runs, finetune_dir, "epochs.csv"),
                                     Path(reports_dir) / "claims.json")
    headline.write(Path(metrics_dir) / "claims.json", headline.claims([c["verdict"] for c in claim_rows],
                                                                      claims.VERDICTS))
    return dict(runs=runs, about=s["about"], acc=s["acc"], align=s["align"], usage=s["usage"], flips=s["flips"],
                gaps=s["gaps"], metrics=small, claims=claim_rows, main=t["main"], seen_unseen=t["seen_unseen"],
                gaps_table=t["gaps"], alignment=t["alignment"], concept_usage=t["concept_usage"],
                concept_usage_masks=t["concept_usage_masks"])


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
        distinct.setdefault(io.tensors_sha256(*model.state_dict().values()), (spec, model, build))
    k, n = args.shard
    for key, (spec, model, build) in list(distinct.items())[k::n]:
        save_score(Path(args.scored) / key, score(model, build, spec, data["arrays"], data["class_parts"],
                                                  P.evaluate, data["store"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
