"""Ablations of CFT (the paper's ablation studies, docs/paper.md §5.1): CFT runs that differ from the main run
in one setting — k images per class, the world grounder's mask noise (a VLM's quality), the relevance
method trained on (the paper's Table 7), the loss (its Table 6: a term dropped, or label cross-entropy for the
confidence term), the concept-validation thresholds (its supp. §6: the bank the masks are grounded with) —
fine-tuned with `cftlib.training.trainer`, scored with `cftlib.metrics`, beside the base model and plain
fine-tuning (CE) of the same (base 0, subset) pairs, read from the finetune stage.

A variant is (k, noise scale, method, loss, validation thresholds); the main run's setting appears in every
ablation, so its runs are trained once (folders are keyed by the variant) and `trainer.fit` reuses a finished
run. With
`finetune.workers` > 1 the runs are trained side by side first (`python -m cftlib.stages.ablations --shard i/n`).

    python -m cftlib.stages.ablations --shard 0/2 --threads 1 &
    python -m cftlib.stages.ablations --shard 1/2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from cftlib import concepts, grounding, validation
from cftlib.core import config, io, launch
from cftlib.core.io import nan_to_none
from cftlib.data import fewshot, maskstore, world
from cftlib.metrics import accuracy, alignment, intervals
from cftlib.metrics.runs import seen_classes
from cftlib.models.checkpoints import load_checkpoint
from cftlib.report import figures, headline
from cftlib.report.tables import fmt, write_table
from cftlib.stages import evaluate, params
from cftlib.training import losses, runspec, trainer

LOSSES = {"full": {}, **losses.ABLATIONS}
"""The main run's loss and the paper's Table 6 variants of it (`ablations.loss`; cftlib.training.losses)."""
REFERENCES = (("base", "none"), ("CE", "ce"))
"""The finetune stage's arms each ablation is read against, on the same (base 0, subset) pairs."""


def scaled_noise(noise: config.WorldNoise, scale: float) -> config.WorldNoise:
    """The world grounder's noise times `scale`: boundary px rounded, miss and spurious rates capped at 1."""
    return noise.model_copy(update=dict(boundary=int(round(noise.boundary * scale)),
                                        p_miss=min(1.0, noise.p_miss * scale),
                                        q_spurious=min(1.0, noise.q_spurious * scale)))


def _thresholds(t) -> str:
    return "none" if t is None else f"{t[0] * 100:g}/{t[1] * 100:g}"


def variants(P: config.Params) -> list[dict]:
    """One row per (ablation, value): {ablation, value, k, noise, method, loss, validation}; the other settings
    are the main run's (finetune.k, noise × 1, finetune.relevance, the full loss, the concepts stage's bank:
    validated at concepts.validation's thresholds where it applies them, else none)."""
    V = P.concepts.validation
    mine = (V.occurrence, V.coverage) if V.apply else None
    A = P.ablations
    main = dict(k=P.finetune.k, noise=1.0, method=P.finetune.relevance, loss="full", validation=mine)
    rows = [dict(main, ablation="k", value=str(k), k=k) for k in A.k]
    rows += [dict(main, ablation="mask noise", value=f"×{s:g}", noise=s) for s in A.noise]
    rows += [dict(main, ablation="relevance", value=m, method=m) for m in A.relevance]
    rows += [dict(main, ablation="loss", value=name, loss=name) for name in ("full", *A.loss) if A.loss]
    if A.validation:
        pairs = [mine] + ([None] if mine else []) + [tuple(t) for t in A.validation if tuple(t) != mine]
        rows += [dict(main, ablation="concept validation", value=_thresholds(t), validation=t) for t in pairs]
    return rows


def _key(v: dict, bank: str = "") -> str:
    """A run folder's name: the variant's settings, and the hash of its bank where it is not the main one (two
    thresholds that keep the same concepts share their runs)."""
    return (f"k{v['k']}_noise{v['noise']:g}_{v['method']}" + ("" if v["loss"] == "full" else f"_{v['loss']}")
            + (f"_bank{bank}" if bank else ""))


def bank_for(P: config.Params, v: dict, bank: dict, concepts_dir: str | Path) -> dict:
    """The bank of variant `v`: the concepts stage's where its thresholds are the main run's, else rebuilt from
    the stage's validation rates (`validation.apply`; none: every candidate) under the candidates' header, so
    that thresholds keeping the same concepts give the same bank, mask store and runs."""
    V = P.concepts.validation
    if v["validation"] == ((V.occurrence, V.coverage) if V.apply else None):
        return bank
    saved = validation.load(concepts_dir)
    if v["validation"] is None:
        return saved["candidates"]
    return {**validation.apply(saved["candidates"], saved["rates"], *v["validation"])[0],
            "header": saved["candidates"]["header"]}


def variant_config(P: config.Params, v: dict) -> config.Finetune:
    """The fine-tuning parameters of variant `v`: the main run's with its k, relevance method and loss."""
    return P.finetune.model_copy(update=dict(k=v["k"], relevance=v["method"],
                                             loss=P.finetune.loss.model_copy(update=LOSSES[v["loss"]])))


def masks_for(P: config.Params, scale: float, bank: dict, pool: fewshot.Pool, out_dir: Path, main_dir: str | Path,
              own_bank: bool = False) -> Path:
    """The mask store at noise × `scale` grounded with `bank`: the masks stage's own at × 1 with the main bank,
    else grounded again (same few-shot choice and seed) into `out_dir/masks_noise<scale>[_bank<hash>]`, reused
    while its header (bank, scale, masks params) holds."""
    if scale == 1.0 and not own_bank:
        return Path(main_dir)
    store = out_dir / (f"masks_noise{scale:g}" + (f"_bank{concepts.content_hash(bank)}" if own_bank else ""))
    cfg = P.masks.model_copy(update={"world": scaled_noise(P.masks.world, scale)})
    selection = fewshot.select(pool.labels, P.masks.k, P.base.seed)
    header = {**grounding.store_header(P.model_copy(update={"masks": cfg}), bank, selection), "noise_scale": scale}
    manifest = store / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text())["header"] != header:  # same bank, choice, noise
        maskstore.write_store(store, grounding.ground_items(pool.items(selection), bank, cfg, P.base.seed), header)
    return store


def _finished(spec: runspec.RunSpec, cfg: config.Finetune, base, data: dict, folder: Path) -> bool:
    """`folder` holds this exact run, complete (the same config hash as `trainer.fit` would compute)."""
    done = spec.folder(folder) / "run.json"
    return done.is_file() and json.loads(done.read_text())["config"]["hash"] == \
        trainer.run_config(spec, cfg, base, data)["hash"]


@dataclasses.dataclass(frozen=True)
class Job:
    """One ablation run: its variant and seed, what `trainer.fit` needs, and its folder — the finetune stage's
    (`reused`) where that stage holds the identical run (the main setting)."""
    variant: dict
    seed: int
    spec: runspec.RunSpec
    cfg: config.Finetune
    data: dict
    folder: Path
    reused: bool


def jobs(P: config.Params, bank: dict, data_dir: str | Path, masks_dir: str | Path, base_path: str | Path,
         out_dir: str | Path, finetune_dir: str | Path = "models/finetune",
         concepts_dir: str | Path = "data/concepts") -> tuple[list[Job], tuple]:
    """Every (variant, seed) run, and the base (model, build) they start from. The mask stores of other noise
    or banks are grounded here (`masks_for`), so call it once before training side by side."""
    out_dir = Path(out_dir)
    base, build = load_checkpoint(base_path)
    pool = fewshot.Pool("world", data_dir)
    data, out = {}, []
    for v in variants(P):
        mine = bank_for(P, v, bank, concepts_dir)
        own = "" if mine is bank else concepts.content_hash(mine)
        own = "" if own == concepts.content_hash(bank) else own
        if (v["k"], v["noise"], own) not in data:
            store = masks_for(P, v["noise"], mine, pool, out_dir, masks_dir, own_bank=bool(own))
            data[v["k"], v["noise"], own] = fewshot.load_data(store, pool, v["k"], build["img_size"])
        cfg, d = variant_config(P, v), data[v["k"], v["noise"], own]
        for seed in range(P.base.seed, P.base.seed + P.ablations.seeds):
            spec = runspec.RunSpec("vit", "cft", seed, v["method"], P.finetune.lr, subset=seed)  # the main run's
            reused = _finished(spec, cfg, base, d, Path(finetune_dir))
            out.append(Job(v, seed, spec, cfg, d, Path(finetune_dir) if reused else out_dir / _key(v, own), reused))
    return out, (base, build)


def train(todo: list[Job], base: tuple, progress: bool = False) -> None:
    """Fit each job that the finetune stage does not hold (`trainer.fit` reuses one already finished)."""
    for job in todo:
        if not job.reused:
            trainer.fit(job.spec, *base, job.data, job.cfg, job.folder, progress)


def run(P: config.Params, bank: dict, data_dir: str | Path, masks_dir: str | Path, base_path: str | Path,
        out_dir: str | Path, arrays: dict[str, dict], finetune_dir: str | Path = "models/finetune",
        progress: bool = False, params_file: str | Path | None = None,
        concepts_dir: str | Path = "data/concepts") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every variant × `ablations.seeds` (CFT arm, ViT) and score it, and score the finetune stage's base
    and CE runs of the same pairs (ablation "reference"): accuracy rows and alignment rows with columns ablation,
    value, seed (see `accuracy.run_accuracy`, `alignment.run_alignment`). A variant identical to a finished run
    of the fine-tuning stage (the main setting) is read from there, not retrained. Given `params_file` and
    `finetune.workers` > 1, the runs are first trained side by side (`launch.side_by_side`)."""
    if not variants(P):  # a profile without ablations (the paper profile): empty tables, the stage still completes
        Path(out_dir).mkdir(parents=True, exist_ok=True)  # the stage's declared output
        return (pd.DataFrame(columns=["ablation", "value", "seed", "split", "group", "top1", "top5"]),
                pd.DataFrame(columns=["ablation", "value", "seed", "split", "concept_mass"]))
    if P.concepts.dataset != "world" or P.masks.grounder != "world":
        raise runspec.FinetuneError("the ablations run on the world with its grounder (masks.grounder: world)")
    todo, base = jobs(P, bank, data_dir, masks_dir, base_path, out_dir, finetune_dir, concepts_dir)  # grounds stores
    W = P.finetune.workers
    if params_file is not None and W > 1 and any(not j.reused for j in todo):
        launch.side_by_side("cftlib.stages.ablations", params_file, W, max(1, P.base.threads // W),
                              ["--data", data_dir, "--masks", masks_dir, "--base", base_path, "--out", out_dir,
                               "--finetune", finetune_dir, "--concepts", concepts_dir])
    train(todo, base, progress)  # what the workers trained is reused; without workers, everything here
    class_parts = alignment.concept_parts(bank)
    align_arrays = {s: arrays[s] for s in P.evaluate.alignment_splits}
    refs = [(dict(ablation="reference", value=name), seed,
             runspec.RunSpec("vit", arm, seed, P.finetune.relevance, P.finetune.lr, subset=seed), Path(finetune_dir))
            for name, arm in REFERENCES if arm in P.finetune.arms
            for seed in range(P.base.seed, P.base.seed + P.ablations.seeds)]
    acc, align, scored = [], [], {}
    for v, seed, spec, folder in [*refs, *((j.variant, j.seed, j.spec, j.folder) for j in todo)]:
        if (folder, spec.arm, seed) not in scored:
            model, _ = runspec.load_run(spec, folder)
            scored[folder, spec.arm, seed] = (
                accuracy.run_accuracy(model, arrays, seen_classes(masks_dir, seed), P.evaluate.batch_size),
                alignment.run_alignment(model, align_arrays, class_parts, P.evaluate.relevance,
                                        P.evaluate.alignment_images)[0])
        ids = {"ablation": v["ablation"], "value": v["value"], "seed": seed}
        acc += [{**ids, **r} for r in scored[folder, spec.arm, seed][0]]
        align += [{**ids, **r} for r in scored[folder, spec.arm, seed][1]]
    return pd.DataFrame(acc), pd.DataFrame(align)


def summary(acc: pd.DataFrame, align: pd.DataFrame, splits: list[str], level: float) -> pd.DataFrame:
    """Per ablation and value: top-1 on each split (all images) and concept mass per alignment split, mean and
    CI over seeds, in the variants' order (no rows: an empty frame)."""
    if acc.empty:
        return pd.DataFrame(columns=["ablation", "value", "n"])
    a = acc[acc["group"] == "all"].pivot_table(index=["ablation", "value", "seed"], columns="split", values="top1",
                                               sort=False)
    a = a[[s for s in splits if s in a.columns]]
    m = align.pivot_table(index=["ablation", "value", "seed"], columns="split", values="concept_mass", sort=False)
    m.columns = [f"concept_mass {c}" for c in m.columns]
    wide = a.join(m).reset_index()
    return intervals.summarise(wide, ["ablation", "value"], [c for c in wide.columns if c not in
                                                            ("ablation", "value", "seed")], level)


def findings(s: pd.DataFrame, split: str) -> list[str]:
    """One sentence per ablation, from its `summary` rows: the range of `split` top-1 over its values and
    whether the lowest and highest intervals overlap (then this run shows no effect of that setting)."""
    out = []
    for name, g in s.groupby("ablation", sort=False):
        if split not in g or g[split].isna().all():
            continue
        m, ci = g[split] * 100, g[f"{split}_ci"] * 100
        lo, hi = m.idxmin(), m.idxmax()
        if ci.isna().any():
            verdict = "one seed per value: no interval, so no effect can be claimed"
        elif m[lo] + ci[lo] >= m[hi] - ci[hi]:
            verdict = "the intervals overlap: no effect shown"
        else:
            verdict = f"the intervals are apart: {g.loc[hi, 'value']} is better"
        out.append(f"{name}: `{split}` top-1 from {m[lo]:.1f} % ({g.loc[lo, 'value']}) to {m[hi]:.1f} % "
                   f"({g.loc[hi, 'value']}); {verdict}")
    return out


def figure(acc: pd.DataFrame, align: pd.DataFrame, split: str, level: float):
    """One panel per ablation: `split` top-1 and concept mass on it per value, mean ± CI over seeds."""
    ablations = list(dict.fromkeys(acc["ablation"]))
    if not ablations:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no ablations in this profile (ablations.k, .noise, .relevance, .loss, .validation are "
                "empty)", ha="center", va="center", fontsize=8)
        ax.set_axis_off()
        return fig
    fig, axes = plt.subplots(1, len(ablations), figsize=(3.2 * len(ablations), 2.8), squeeze=False, sharey=True)
    a = acc[(acc["group"] == "all") & (acc["split"] == split)].rename(columns={"top1": "value_"})
    m = align[align["split"] == split].rename(columns={"concept_mass": "value_"})
    for ax, name in zip(axes[0], ablations):
        for frame, label, marker in ((a, f"top-1 on {split}", "o"), (m, "concept mass", "s")):
            s = intervals.summarise(frame[frame["ablation"] == name], ["value"], ["value_"], level)
            ci = np.nan_to_num(s["value__ci"].to_numpy())
            ax.errorbar(s["value"], 100 * s["value_"], yerr=100 * ci, marker=marker, capsize=3, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[0, 0].set_ylabel("%")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def table(s: pd.DataFrame) -> pd.DataFrame:
    """Rows "ablation: value", one column per metric of `summary`, cells "mean ± ci" in %."""
    metrics = [c for c in s.columns if c not in ("ablation", "value", "n") and not c.endswith("_ci")]
    out = pd.DataFrame({m: [fmt(a, b) for a, b in zip(s[m], s[f"{m}_ci"])] for m in metrics},
                       index=pd.Index(s["ablation"] + ": " + s["value"], name="ablation: value"))
    return out


def metrics(s: pd.DataFrame) -> dict:
    """DVC metrics {ablation: {value: {metric: mean, metric_ci: ci}}} (no interval → null)."""
    return {a: {v: {k: nan_to_none(x) for k, x in r.items() if k != "ablation"}
                for v, r in g.set_index("value").to_dict("index").items()}
            for a, g in s.groupby("ablation", sort=False)}



def run_stage(P: config.Params, params_file: str | Path, *, data_dir: str | Path, concepts_dir: str | Path,
              masks_dir: str | Path, base_model: str | Path, finetune_dir: str | Path, runs_dir: str | Path,
              metrics_dir: str | Path, plots_dir: str | Path, reports_dir: str | Path, figures_dir: str | Path,
              progress: bool = False) -> dict:
    """The stage: every variant trained and scored (`run`) on the world's splits (their first
    `evaluate.images`), and every declared output written — the per-run rows (`plots/ablations_*.csv`), the
    metrics, the table (`reports/ablations.md`, `.csv`) and `figures/ablations.png`. Returns what the notebook
    shows: the rows, the `summary`, the table, the figure and the `findings`."""
    arrays = {s: evaluate.head(world.load_split(data_dir, s), P.evaluate.images(s)) for s in P.evaluate.splits}
    acc, align = run(P, concepts.load(concepts_dir), data_dir, masks_dir, base_model, runs_dir, arrays, finetune_dir,
                     progress, params_file, concepts_dir)
    io.write_csv(Path(plots_dir) / "ablations_accuracy.csv", acc)
    io.write_csv(Path(plots_dir) / "ablations_alignment.csv", align)
    s = summary(acc, align, P.evaluate.splits, P.evaluate.level)
    full = metrics(s)
    io.write_json(Path(reports_dir) / "ablations.json", full)
    headline.write(Path(metrics_dir) / "ablations.json", headline.ablations(full, accuracy.roles(P).focus))
    t = table(s)
    write_table(t, Path(reports_dir) / "ablations",
                "Ablations: top-1 and concept mass (%), mean ± 95% CI over seeds (base 0)")
    split = P.evaluate.alignment_splits[-1] if P.evaluate.alignment_splits else None  # none at paper scale
    fig = figures.save(figure(acc, align, split, P.evaluate.level), Path(figures_dir) / "ablations.png",
                       P.figures.dpi)
    return dict(acc=acc, align=align, summary=s, table=t, figure=fig,
                findings=findings(s, split) if split else [])  # no world splits at paper scale: no ablations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.ablations", description="train the ablation runs "
                                 "(every n-th from the i-th with --shard i/n); the stage's notebook scores them")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/world")
    ap.add_argument("--masks", default="data/masks")
    ap.add_argument("--base", default="models/base/vit/base0.pt", help="the base model the ablations start from")
    ap.add_argument("--out", default="models/ablations")
    ap.add_argument("--finetune", default="models/finetune", help="the finetune stage's runs (the main setting)")
    ap.add_argument("--concepts", default="data/concepts")
    ap.add_argument("--shard", type=launch.shard, default=(0, 1), help="i/n: only every n-th run, from the i-th")
    ap.add_argument("--threads", type=int, help="torch threads (default: base.threads)")
    args = ap.parse_args(argv)
    P = params.load(args.params)
    torch.set_num_threads(args.threads or P.base.threads)
    todo, base = jobs(P, concepts.load(args.concepts), args.data, args.masks, args.base, args.out, args.finetune,
                      args.concepts)
    k, n = args.shard
    train(todo[k::n], base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
