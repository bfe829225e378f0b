"""The figures stage: the paper's figures drawn from the evaluate stage's tables (`plots/evaluate_*.csv`) and,
for the qualitative figure, from the fine-tuned models themselves (cftlib.metrics.examples), every declared PNG
written at `figures.dpi`; the lines that read them, built from the same numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from cftlib import concepts
from cftlib.core import config, launch
from cftlib.data import datasets, world
from cftlib.metrics import accuracy, alignment, examples, intervals
from cftlib.report import figures
from cftlib.training import runspec

OUTSIDE = ("background", alignment.ELSEWHERE)
"""Columns of the part-usage figures outside the bird (or every concept mask): beside the parts' colour scale."""


def dfr_lines(bases: pd.DataFrame, splits: list[str], level: float) -> list[str]:
    """DFR − base per split over the base models (one run per base), and on which splits its interval lies
    above zero, below, or covers it."""
    side, lines = {"above": [], "below": [], "covers": []}, []
    for split in splits:
        d = intervals.paired_difference(bases, "top1", "dfr", "none", level, model="vit", split=split)
        if d is not None:
            lo, hi = (d["mean"] - d["ci"]) * 100, (d["mean"] + d["ci"]) * 100
            side["above" if lo > 0 else "below" if hi < 0 else "covers"].append(split)
            lines.append(f"{split}: DFR − base {d['mean'] * 100:+.1f} ± {d['ci'] * 100:.1f} points over {d['n']} "
                         f"base models")
    if any(side.values()):
        lines.append(f"DFR's interval lies above zero on {', '.join(side['above']) or 'no split'}, below zero on "
                     f"{', '.join(side['below']) or 'no split'}, and covers zero on "
                     f"{', '.join(side['covers']) or 'no split'}.")
    return lines


def flip_lines(flips: pd.DataFrame, split: str) -> list[str]:
    """Per model and arm, the images of `split` it corrects and breaks against its base, mean over runs."""
    return [f"{model}/{arm}: corrects {g['corrected'].mean():.1f} and breaks {g['regressed'].mean():.1f} of "
            f"{g['images'].iloc[0]} {split} images, mean over {len(g)} runs "
            f"(net {(g['corrected'] - g['regressed']).mean():+.1f})"
            for (model, arm), g in flips[flips["split"] == split].groupby(["model", "arm"], sort=False)]


def cft_lines(acc: pd.DataFrame, split: str, level: float) -> list[str]:
    """The figures' headline: the ViT's CFT − base, − CE and − DFR on `split`, paired by (base, seed)."""
    lines = []
    for versus in ("none", "ce", "dfr"):
        d = intervals.paired_difference(acc[acc["group"] == "all"], "top1", "cft", versus, level, model="vit",
                                        split=split)
        if d is not None:
            ci = "" if d["ci"] != d["ci"] else f" ± {d['ci'] * 100:.1f}"
            lines.append(f"ViT, {split}: CFT − {versus} {d['mean'] * 100:+.1f}{ci} points over {d['n']} (base, seed) "
                         "pairs")
    return lines


def relevance_grid(P: config.Params, R: accuracy.Roles, data_dir: str | Path, concepts_dir: str | Path,
                   finetune_dir: str | Path) -> tuple[plt.Figure, str]:
    """The paper's qualitative figure for the first ViT `cft` run against its base (`none`), and the line that
    counts its corrections and regressions (empty at paper scale)."""
    runs = runspec.plan(P.finetune, P.base.seed, P.bases.seeds)
    base_spec = next(r for r in runs if r.model == "vit" and r.arm == "none")
    cft_spec = next(r for r in runs if r.model == "vit" and r.arm == "cft")
    base, build = runspec.load_run(base_spec, finetune_dir)
    cft, _ = runspec.load_run(cft_spec, finetune_dir)
    if P.evaluate.splits:
        a = world.load_split(data_dir, R.focus)  # every image: the counts are the whole split's
        names = [c["name"] for c in world.load_guide(data_dir)]
        class_parts = alignment.concept_parts(concepts.load(concepts_dir))
        pick, counts = examples.pick_flips(base, cft, a, P.figures.grid_images)
        ex = examples.world_examples(base, cft, a, pick, counts, class_parts, P.evaluate.relevance)
        title = figures.flip_title(R.focus, counts, pick)
        return (figures.relevance_grid(ex.images, ex.labels, ex.kinds, ex.concept, ex.maps, names, title),
                f"{cft_spec.name} against its base, {title}")
    E, dev = P.evaluate, launch.device(P.evaluate.device, "evaluate.device")
    bench = datasets.sample(datasets.load(R.focus, E.benchmarks[R.focus]), 16 * P.figures.grid_images, P.base.seed)
    ex = examples.benchmark_examples(base.to(dev), cft.to(dev), bench, P.figures.grid_images, E.relevance, build,
                                     E.batch_size, E.amp)
    if ex is None:
        return figures.note(f"{bench.name}: no image that CFT corrects or breaks, or both models get right"), ""
    return figures.relevance_grid(ex.images, ex.labels, ex.kinds, None, ex.maps, datasets.imagenet_names(),
                                  figures.flip_title(bench.name, ex.counts, ex.picks)), ""


def run_stage(P: config.Params, *, data_dir: str | Path, concepts_dir: str | Path, finetune_dir: str | Path,
              plots_dir: str | Path, figures_dir: str | Path) -> dict:
    """Every figure of the stage written to `figures_dir` (dvc.yaml's `plots` of the stage), in the order the
    notebook shows them: {"acc": the accuracy rows, "figures": name → figure, "dfr", "flips", "grid", "summary":
    the lines that read them}."""
    F, R, E, dpi = Path(figures_dir), accuracy.roles(P), P.evaluate, P.figures.dpi
    plots = Path(plots_dir)
    acc, align = pd.read_csv(plots / "evaluate_accuracy.csv"), pd.read_csv(plots / "evaluate_alignment.csv")
    gaps = pd.read_csv(plots / "evaluate_gaps.csv")
    shown = {}

    def save(name: str, fig: plt.Figure) -> None:
        shown[name] = figures.save(fig, F / f"{name}.png", dpi)

    scope = "split" if E.splits else "benchmark"
    save("accuracy", figures.arm_bars(acc[acc["group"] == "all"], "top1", R.splits, E.level, chance=R.chance,
                                      title=f"top-1 per {scope}", ylabel="top-1 (%)"))
    pairs = [("cft", v) for v in ("none", "ce", "dfr") if v in set(acc["arm"])]
    save("differences", figures.paired_differences(acc[acc["group"] == "all"], "top1", R.splits, pairs, E.level,
                                                   title="top-1, CFT − other arm"))
    bases = acc[(acc["group"] == "all") & ((acc["seed"] - P.base.seed) % P.finetune.seeds == 0)]  # one run per base
    save("dfr", figures.paired_differences(bases, "top1", R.splits, [("dfr", "none")], E.level,
                                           title="top-1, DFR − base, per base model"))
    flips = pd.read_csv(plots / "evaluate_flips.csv")
    save("flips", figures.flip_bars(flips, R.focus, E.level))
    save("gaps", figures.arm_bars(gaps, "gap", R.splits, E.level, title="shortcut gaps",
                                  ylabel=f"gap: {R.reference} − split (points)"))
    groups = acc[(acc["group"] != "all") & (acc["split"] == R.focus)]
    save("seen_unseen", figures.arm_bars(groups, "top1", ["seen", "unseen"], E.level, x="group", chance=R.chance,
                                         title=f"{R.focus} top-1, classes seen / not seen in fine-tuning",
                                         ylabel="top-1 (%)"))
    s = align[align["model"] == "vit"]
    save("alignment", figures.alignment_bars(s, [m for m in ["pixAcc", "mIoU", "mAP", "concept_mass", "pointing"]
                                                 if s[m].notna().any()], E.level))
    usage = pd.read_csv(plots / "evaluate_usage.csv")
    save("concept_usage", figures.part_usage(usage, R.focus, outside=OUTSIDE))
    save("concept_usage_masks", figures.part_usage(usage, alignment.MASKS_SPLIT, outside=OUTSIDE,
                                                   parts=[alignment.ANY_CONCEPT, alignment.ELSEWHERE]))
    arms = ["none", "robustvit", "cft_fgmask", "cft"]
    s = acc[(acc["model"] == "vit") & (acc["group"] == "all") & acc["arm"].isin(arms)]
    save("ablation_masks", figures.arm_bars(s, "top1", R.splits, E.level, chance=R.chance, arms=arms,
                                            title="concept vs foreground masks: top-1", ylabel="top-1 (%)"))
    fig, grid = relevance_grid(P, R, data_dir, concepts_dir, finetune_dir)
    save("relevance_grid", fig)
    return dict(acc=acc, figures=shown, dfr=dfr_lines(bases, R.splits, E.level), flips=flip_lines(flips, R.focus),
                grid=grid, summary=cft_lines(acc, R.focus, E.level))
