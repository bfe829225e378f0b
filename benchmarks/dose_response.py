"""The dose–response study: when does CFT help? Every arm that could explain a gain, trained for the paper's 50
epochs on every base model at each learning rate of a grid fixed before the run, with the protocol's zoom (the
official resize by 256/224 and random crop back, `finetune.scale`; World v3's bases were trained with random-resized
crops that cover it), scored along the way. It answers whether CFT is inert here because of its selection rule, its
budget, the world or the method.

The plan and the rule, fixed before the study was run (and printed at the top of its report):
  * runs: arms cft, ce, confidence (CFT's confidence term alone, λ_align = 0), robustvit and cft_fgmask; every
    ViT base model of the world stage; lr in LRS; zoom in ZOOMS (finetune.scale); EPOCHS epochs with the
    pipeline's protocol otherwise (official decay, batch 8, the masks stage's few-shot images, the class subset
    of seed base.seed); every epoch's validation numbers recorded, epoch 0 being the base model;
  * the grid: lr 3e-5 and 1e-4 at the protocol's zoom only. World v3's bases see the zoom in training (their
    few-shot images lose under 1 point of top-1 under it, `reports/base.json`), so v2's zoom-free control has
    nothing left to show; on v2, lr 3e-4 cost every arm validation top-1 at the official selection; and the two
    lrs keep the study inside 2 hours on a 2-core CPU;
  * what selection may read (validation data only: one image of each held-out class): the validation total loss
    and the held-out CFT alignment loss, per epoch;
  * what the report reads, never for a choice: top-1 on the first IMAGES images of test, bg_conflict and
    color_conflict, and the concept mass of the relevance on the first MAPS images of bg_conflict, scored at
    every EVERY-th epoch and at each run's epochs under the two candidates below (the weights of every epoch are
    kept in memory until the run ends, so a selected epoch is scored exactly);
  * the rule for the pipeline's protocol: (a) the official candidate, each run keeps the epoch of its lowest
    validation total loss; (b) ours, each run keeps the epoch of its lowest held-out alignment loss among the
    epochs whose validation top-1 is at least the base's (epoch 0's; the base itself where none does) — the
    alignment on classes the run never saw is what CFT is for, and the total loss also carries the confidence
    term, which any change away from the base raises, so it favours the base. The protocol (zoom, lr,
    candidate) is the one whose CFT runs, at their selected epochs, have the lowest mean held-out alignment loss
    with mean validation top-1 no lower than the base's; ties go to the official candidate, then the smaller lr.
    The best-on-OOD epoch (among the scored ones) is drawn in the figure as an oracle ceiling and chooses
    nothing.

    python benchmarks/dose_response.py run --shard 0/2 --threads 1   # one of 2 processes side by side
    python benchmarks/dose_response.py report               # reports/dose_response.{md,csv}, figures/dose_response.png
The runs are cached in cache/dose_response/<zoom>/<lr>/ (re-running reuses complete ones; clear it when the world
or its bases change).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from cftlib import concepts
from cftlib.core import config, io, launch
from cftlib.data import fewshot, world
from cftlib.metrics import accuracy, alignment
from cftlib.models.factory import predict
from cftlib.report import figures
from cftlib.stages import finetune, params
from cftlib.training import runspec, trainer

ARMS = ("cft", "ce", "confidence", "robustvit", "cft_fgmask")
LRS = (3e-5, 1e-4)
ZOOMS = (1.1428571428571428,)  # the protocol's 256/224
EPOCHS = 50
IMAGES, MAPS = 200, 48
EVERY = 2
SPLITS = ("test", "bg_conflict", "color_conflict")
OUT = Path("cache/dose_response")


def protocol(P: config.Params) -> config.Finetune:
    """The pipeline's fine-tuning parameters with the study's arms and EPOCHS, one class subset per base, no CNN
    (each run sets its own zoom)."""
    return P.finetune.model_copy(update=dict(epochs=EPOCHS, arms=["none", *ARMS], seeds=1,
                                             cnn=P.finetune.cnn.model_copy(update=dict(arms=[]))))


def plan(P: config.Params) -> list[tuple[float, float, object]]:
    """Every (zoom, lr, run spec) of the study, in a fixed order (the shards take every n-th)."""
    runs = [r for r in runspec.plan(protocol(P), P.base.seed, P.bases.seeds) if r.arm in ARMS]
    return [(zoom, lr, dataclasses.replace(r, lr=lr)) for zoom in ZOOMS for lr in LRS for r in runs]


def recorder():
    """`on_epoch` for `trainer.fit`: each epoch's validation numbers and a copy of its weights (the world's ViT is
    small: 51 copies fit in memory), and the model they belong to."""
    rows, states, model = [], [], []

    def on_epoch(row: dict, m: torch.nn.Module) -> None:
        rows.append({k: row[k] for k in ("epoch", "val_loss", "val_cft_align", "val_acc")})
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        model[:1] = [m]

    return rows, states, model, on_epoch


def score(rows: list[dict], states: list[dict], model: torch.nn.Module, arrays: dict, class_parts,
          method: str) -> pd.DataFrame:
    """`rows` with top-1 on SPLITS and the concept mass on bg_conflict at every EVERY-th epoch and at the epochs
    of the rule's two candidates (NaN elsewhere)."""
    frame = pd.DataFrame(rows)
    conflict = arrays["bg_conflict"]
    masks = alignment.part_masks(conflict["parts"][:MAPS], conflict["label"][:MAPS], class_parts)
    keep = set(frame["epoch"][frame["epoch"] % EVERY == 0]) | set(candidates(frame).values())
    for i in frame.index[frame["epoch"].isin(keep)]:
        model.load_state_dict(states[i])
        model.eval()
        for s, a in arrays.items():
            frame.loc[i, s] = accuracy.accuracy(predict(model, a["images"], 500), a["label"])["top1"]
        r = alignment.relevance_maps(model, conflict["images"][:MAPS], method)
        frame.loc[i, "concept_mass"] = float(
            alignment.concept_alignment(r, masks, conflict["parts"][:MAPS] > 0)["concept_mass"].mean())
    return frame


def run(P: config.Params, shard: int, shards: int, threads: int | None = None) -> None:
    torch.set_num_threads(threads or P.base.threads)
    arrays = {s: {k: v[:IMAGES] for k, v in world.load_split("data/world", s).items()} for s in SPLITS}
    class_parts = alignment.concept_parts(concepts.load("data/concepts"))
    cfg = protocol(P)  # the few-shot data and the bases, loaded once: they do not depend on zoom or lr
    _, data, bases = finetune.setup(P.model_copy(update=dict(finetune=cfg)), "data/masks", "data/world",
                                    "models/base", OUT)
    for zoom, lr, spec in plan(P)[shard::shards]:
        folder = OUT / f"zoom{zoom:.3f}" / f"lr{lr:g}"
        scores = spec.folder(folder) / "scores.csv"
        if scores.is_file():
            continue
        shutil.rmtree(spec.folder(folder), ignore_errors=True)  # a killed run starts over: its scores are per epoch
        rows, states, model, on_epoch = recorder()
        trainer.fit(spec, *bases[spec.model, spec.base], data, cfg.model_copy(update=dict(scale=zoom)), folder,
                    on_epoch=on_epoch)
        per_epoch = int(np.ceil(len(fewshot.for_subset(data, spec.subset)["train"]["y"]) / cfg.batch_size))
        frame = score(rows, states, model[0], arrays, class_parts, P.evaluate.relevance).assign(
            arm=spec.arm, base=spec.base, lr=lr, zoom=zoom)
        io.write_csv(scores, frame.assign(steps=frame["epoch"] * per_epoch))
        print(f"[done] {spec.name} zoom {zoom:.3f} lr {lr:g}", flush=True)


# ----------------------------------------------------------------------------- the report

def candidates(g: pd.DataFrame) -> dict[str, int]:
    """One run's epochs under the rule's two candidates (trainer.select_epoch), read off its validation columns."""
    rows = g.sort_values("epoch").astype({"epoch": int}).to_dict("records")
    return {"official": trainer.select_epoch(rows, "val_loss"), "ours": trainer.select_epoch(rows, "alignment")}


def selected(g: pd.DataFrame) -> dict[str, int]:
    """`candidates`, and the oracle (the scored epoch best on bg_conflict; for the figure only)."""
    return {**candidates(g), "oracle": int(g.loc[g["bg_conflict"].idxmax(), "epoch"])}


def tables(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (zoom, lr, arm, candidate): means over bases at the selected epochs, gains over the base (epoch 0);
    and the rule's protocol table (CFT only)."""
    rows = []
    for (zoom, lr, arm, base), g in scores.groupby(["zoom", "lr", "arm", "base"]):
        g = g.sort_values("epoch").reset_index(drop=True)
        start = g[g["epoch"] == 0].iloc[0]
        for cand, epoch in selected(g).items():
            at = g[g["epoch"] == epoch].iloc[0]
            rows.append({"zoom": zoom, "lr": lr, "arm": arm, "base": base, "candidate": cand, "epoch": epoch,
                         "steps": at["steps"],
                         "val_cft_align": at["val_cft_align"], "val_acc": at["val_acc"],
                         "base_val_acc": start["val_acc"], "base_val_cft_align": start["val_cft_align"],
                         **{f"{s} gain": 100 * (at[s] - start[s]) for s in SPLITS},
                         "concept mass gain": 100 * (at["concept_mass"] - start["concept_mass"])})
    per_run = pd.DataFrame(rows)
    mean = per_run.groupby(["zoom", "lr", "arm", "candidate"], as_index=False).mean(numeric_only=True)
    return per_run, mean.drop(columns="base")


def choose(mean: pd.DataFrame) -> pd.Series:
    """The rule: among CFT's (zoom, lr, candidate ∈ official, ours) with mean validation top-1 no lower than the
    base's, the lowest mean held-out alignment loss; ties to official, then the smaller lr."""
    c = mean[(mean["arm"] == "cft") & mean["candidate"].isin(["official", "ours"])].copy()
    c = c[c["val_acc"] >= c["base_val_acc"] - 1e-9]
    c["order"] = (c["candidate"] != "official").astype(int)
    return c.sort_values(["val_cft_align", "order", "lr"]).iloc[0]


def figure(scores: pd.DataFrame, per_run: pd.DataFrame) -> plt.Figure:
    """bg_conflict gain over the base against optimiser steps at the scored epochs, one line per arm (band: range
    over bases), one panel per (zoom, lr); ▼ the official validation-selected epoch, ★ the best-on-OOD epoch (an
    oracle ceiling: it reads the OOD split), each the mean over bases of their own points."""
    s = scores.dropna(subset=["bg_conflict"]).copy()
    s["bg_conflict gain"] = 100 * (s["bg_conflict"] - s.groupby(["zoom", "lr", "arm", "base"])["bg_conflict"]
                                   .transform(lambda v: v.iloc[0]))
    zooms, lrs = sorted(s["zoom"].unique(), reverse=True), sorted(s["lr"].unique())
    fig, axes = plt.subplots(len(zooms), len(lrs), figsize=(4.2 * len(lrs), 3.3 * len(zooms)), sharey=True,
                             squeeze=False)
    arms = [a for a in figures.ARM_ORDER if a in set(s["arm"])]
    for i, zoom in enumerate(zooms):
        for j, lr in enumerate(lrs):
            ax, part = axes[i, j], s[(s["zoom"] == zoom) & (s["lr"] == lr)]
            sns.lineplot(data=part, x="steps", y="bg_conflict gain", hue="arm", hue_order=arms, errorbar=("pi", 100),
                         palette=figures.ARM_COLORS, ax=ax, legend=(i, j) == (0, len(lrs) - 1), linewidth=1)
            for arm in arms:
                mine = per_run[(per_run["zoom"] == zoom) & (per_run["lr"] == lr) & (per_run["arm"] == arm)]
                for cand, marker in (("official", "v"), ("oracle", "*")):  # the mean over bases of their points
                    at = mine.loc[mine["candidate"] == cand, ["steps", "bg_conflict gain"]].mean()
                    ax.plot(*at, marker=marker, ms=8, color=figures.ARM_COLORS[arm], mec="k", mew=0.5)
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set(title=f"zoom {zoom:.3f}, lr {lr:g}", xlabel="optimiser steps",
                   ylabel="bg_conflict top-1 − base (points)")
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.suptitle("▼ validation-selected epoch (official rule), ★ best epoch on bg_conflict (oracle ceiling, "
                 "chooses nothing); band: range over base models", fontsize=9)
    fig.tight_layout()
    return fig


def answers(mean: pd.DataFrame, pick: pd.Series) -> str:
    """The study's answers, read off `tables`' means: per zoom, the range of bg_conflict gains at the official
    selection over arms and lrs; the oracle ceiling; and what CFT does at the rule's choice."""
    lines = []
    for zoom, z in mean.groupby("zoom", sort=False):
        off, orc = z[z["candidate"] == "official"], z[z["candidate"] == "oracle"]
        top = orc.loc[orc["bg_conflict gain"].idxmax()]
        gain = {a: off[off["arm"] == a]["bg_conflict gain"] for a in ("cft", "ce")}
        lines.append(f"- zoom {zoom:.3f}: at the official selection, `bg_conflict` gains range from "
                     f"{off['bg_conflict gain'].min():+.1f} to {off['bg_conflict gain'].max():+.1f} points over arms "
                     f"and lrs (CFT {gain['cft'].min():+.1f} to {gain['cft'].max():+.1f}; "
                     f"CE {gain['ce'].min():+.1f} to {gain['ce'].max():+.1f}); "
                     "the oracle ceiling, the best epoch on `bg_conflict` of any arm and lr, "
                     f"is {top['bg_conflict gain']:+.1f} points ({top['arm']}, lr {top['lr']:g}).")
    at = mean[(mean["zoom"] == pick["zoom"]) & (mean["lr"] == pick["lr"]) & (mean["candidate"] == pick["candidate"])]
    cft, conf = at[at["arm"] == "cft"].iloc[0], at[at["arm"] == "confidence"].iloc[0]
    lines.append(f"- at the rule's choice, CFT moves {cft['concept mass gain']:+.1f} points of relevance mass onto the "
                 f"concept parts of `bg_conflict` images and changes `bg_conflict` top-1 by "
                 f"{cft['bg_conflict gain']:+.1f} points (`test` {cft['test gain']:+.1f}, `color_conflict` "
                 f"{cft['color_conflict gain']:+.1f}); the confidence-only arm there: concept mass "
                 f"{conf['concept mass gain']:+.1f}, `bg_conflict` {conf['bg_conflict gain']:+.1f}.")
    return "\n".join(lines)


def report(P: config.Params) -> str:
    scores = pd.concat([pd.read_csv(p) for p in sorted(OUT.glob("zoom*/lr*/vit/*/seed*/scores.csv"))],
                       ignore_index=True)
    per_run, mean = tables(scores)
    pick = choose(mean)
    figures.save(figure(scores, per_run), Path("figures") / "dose_response.png")
    io.write_csv(Path("reports") / "dose_response.csv", per_run)
    io.write_csv(Path("reports") / "dose_response_epochs.csv", scores.round(6))
    rule = __doc__.split("(and printed at the top of its report):\n")[1].split("\n\n")[0]
    n = scores.groupby(["zoom", "lr", "arm"])["base"].nunique()
    cols = ["zoom", "lr", "arm", "candidate", "epoch", "val_cft_align", "val_acc", "base_val_acc",
            *[f"{s} gain" for s in SPLITS], "concept mass gain"]
    show = mean[mean["candidate"] != "oracle"][cols]
    oracle = mean[mean["candidate"] == "oracle"][["zoom", "lr", "arm", "epoch", "bg_conflict gain", "test gain"]]
    return (f"# Dose–response study: when does CFT help?\n\nGenerated by `python benchmarks/dose_response.py` "
            f"(profile `{P.base.profile}`; {len(scores.groupby(['zoom', 'lr', 'arm', 'base']))} runs, "
            f"{n.min()}–{n.max()} base models per cell, {EPOCHS} epochs, LRS {LRS}, "
            f"ZOOMS {tuple(round(z, 3) for z in ZOOMS)}, "
            f"scores on the first {IMAGES} images, concept mass on the first {MAPS}, every {EVERY} epochs and at each "
            f"run's selected ones; figure `figures/dose_response.png`; "
            f"each run at its selected epochs in `reports/dose_response.csv`, every epoch of every run in "
            f"`reports/dose_response_epochs.csv`).\n\n"
            f"## The rule (fixed before the runs)\n\n{rule}\n\n"
            f"## At the selected epochs (means over base models; gains in points over the base, epoch 0)\n\n"
            f"{show.to_markdown(index=False, floatfmt='.4g')}\n\n"
            f"## The oracle ceiling (the epoch best on `bg_conflict`; reads the OOD split, chooses nothing)\n\n"
            f"{oracle.to_markdown(index=False, floatfmt='.4g')}\n\n"
            f"## What it answers (read off the tables above)\n\n{answers(mean, pick)}\n\n"
            f"## The rule's choice\n\nzoom {pick['zoom']:.3f}, lr {pick['lr']:g}, candidate `{pick['candidate']}` "
            f"(mean selected epoch {pick['epoch']:.1f}): held-out alignment {pick['val_cft_align']:.4f} against the "
            f"base's {pick['base_val_cft_align']:.4f}, validation top-1 {pick['val_acc']:.3f} (base "
            f"{pick['base_val_acc']:.3f}).\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("run", "report"))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shard", type=launch.shard, default=(0, 1), help="i/n: this process takes runs i, i + n, ...")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default base.threads)")
    args = ap.parse_args(argv)
    P = params.load(args.params)
    if args.what == "run":
        run(P, *args.shard, args.threads)
    else:
        text = report(P)
        Path("reports/dose_response.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
