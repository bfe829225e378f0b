"""The finetune stage: everything the runs need, loaded and checked before any training, the runs trained, and
the stage's outputs written (curves, metrics, figures of the loss and of the relevance before and after).

    python -m cftlib.stages.finetune --params params.yaml --arm cft --seed 0
    python -m cftlib.stages.finetune --shard 0/2 --threads 1 & python -m cftlib.stages.finetune --shard 1/2 --threads 1
    torchrun --standalone --nproc_per_node 2 -m cftlib.stages.finetune --arm cft --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from cftlib import concepts, grounding, relevance
from cftlib.core import config, io, launch
from cftlib.data import fewshot, world
from cftlib.models import checkpoints, zoo
from cftlib.report import figures, headline
from cftlib.stages import params
from cftlib.training import batched, losses, pretrain, runspec, trainer


def curves(epochs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Wide table for `dvc plots`: epoch × `<model>_<arm>`, the mean of `metric` over seeds."""
    wide = epochs.assign(run=epochs["model"] + "_" + epochs["arm"]).pivot_table(
        index="epoch", columns="run", values=metric, aggfunc="mean", sort=False)
    return wide.reset_index().rename_axis(columns=None)


def metrics(table: pd.DataFrame, counts: dict) -> dict:
    """The stage's metrics: per run `<model>/<arm>/seed<seed>` its `run_all` row (NaN → null), and the
    few-shot image counts."""
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    return {"runs": {f"{r['model']}/{r['arm']}/seed{r['seed']}": {k: v for k, v in r.items()
                                                                   if k not in ("model", "arm", "seed")} for r in rows},
            "data": counts}


def setup(P: config.Params, masks_dir: str | Path, data_dir: str | Path, base_dir: str | Path,
          out_dir: str | Path, concepts_dir: str | Path = "data/concepts", select=None,
          progress: bool = False) -> tuple[list[runspec.RunSpec], dict, dict]:
    """Everything the runs need, checked before any training: (runs, data, bases), the runs filtered by
    `select(spec) -> bool` if given; bases maps (model role, base index) → (model, build), read from the
    world stage's `base_dir` (a pretrained zoo CNN at paper scale)."""
    runs = [r for r in runspec.plan(P.finetune, P.base.seed, P.bases.seeds) if select is None or select(r)]
    bases = {}
    for model, b in sorted({(r.model, r.base) for r in runs} | {("vit", 0)}, key=lambda k: (k[0] != "vit", k)):
        if model == "cnn" and P.finetune.cnn.zoo:  # paper scale: a pretrained CNN
            C, kwargs = P.finetune.cnn, P.finetune.cnn.pretrain.model_kwargs
            bases[model, b] = (zoo.build(C.zoo, C.weights, bases["vit", 0][1]["num_classes"],
                                         what="finetune.cnn.weights", **kwargs),
                               zoo.build_config(C.zoo, bases["vit", 0][1]["num_classes"], kwargs))
        elif model == "cnn" and P.concepts.dataset != "world":
            raise runspec.FinetuneError("the CNN arm's base model is trained on the world; set finetune.cnn.zoo (a "
                                        "pretrained CNN) or finetune.cnn.arms: [] for an image folder")
        else:
            bases[model, b] = checkpoints.load_checkpoint(pretrain.base_path(base_dir, model, b))
    build = bases["vit", 0][1]
    bank = concepts.load(concepts_dir) if P.concepts.dataset != "world" else None  # class names for GroundingSAM
    pool = fewshot.Pool(P.concepts.dataset, data_dir, P.concepts.image_dir)
    names = [c["name"] for c in bank["classes"]] if bank else [""] * build["num_classes"]
    needs_fg = any(runspec.ARMS[r.arm].mask == "foreground" for r in runs)
    data = fewshot.load_data(masks_dir, pool, P.finetune.k, build["img_size"],
                             grounding.foreground_masks(P.masks, names) if needs_fg else None)
    if any(r.arm == "dfr" for r in runs):  # the world's habitat-balanced labelled split (config: the world only)
        d = world.load_split(data_dir, "dfr")
        data["dfr"] = {"images": d["images"], "label": d["label"].astype(np.int64), "l2": P.bases.dfr_l2}
    return runs, data, bases


N_SHOW = 3
"""Images of each split (training, validation) in the notebook's relevance figures."""


def examples(data: dict, concepts_dir: str | Path, n: int = N_SHOW) -> dict:
    """The first `n` training and validation images of `data` (`setup`): x, y, concept (and foreground, when
    loaded) masks, and row labels "split: species" (by the concept store's labels)."""
    names = [c["name"] for c in concepts.load(concepts_dir)["classes"]]
    fg = data["train"]["foreground"]
    return dict(x=torch.cat([data["train"]["x"][:n], data["val"]["x"][:n]]),
                y=torch.cat([data["train"]["y"][:n], data["val"]["y"][:n]]),
                concept=torch.cat([data["train"]["concept"][:n], data["val"]["concept"][:n]]),
                foreground=None if fg is None else torch.cat([fg[:n], data["val"]["foreground"][:n]]),
                labels=[f"{split}: {names[c]}" for split in ("train", "val") for c in data[split]["labels"][:n]])


def columns_figure(ex: dict, columns: dict[str, torch.Tensor]) -> plt.Figure:
    """The rows of `examples` (concept mask outlined) under each relevance map of `columns` (N, 1, H, W tensors)."""
    return figures.relevance_columns((ex["x"] * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(),
                                     {k: r[:, 0].numpy() for k, r in columns.items()}, ex["concept"][:, 0].numpy(),
                                     ex["labels"])


def masks_figure(ex: dict) -> plt.Figure:
    """The masks the arms train on: the concept union M and, when loaded, the foreground."""
    return columns_figure(ex, {"concepts M": ex["concept"], "foreground": ex["foreground"]}
                          if ex["foreground"] is not None else {"concepts M": ex["concept"]})


def base_losses(FT: config.Finetune, data: dict, bases: dict) -> pd.DataFrame:
    """CFT's loss terms on the first base model's maps of a training batch, with the map squeezed into
    [δ, 1 − δ] (`finetune.loss.squeeze`) and as the official code has it (δ = 0): the sanity value before the
    runs."""
    t, n = data["train"], FT.batch_size
    xb, mb, yb = t["x"][:n], t["concept"][:n], t["y"][:n]
    r, logits = relevance.explain(bases["vit", 0][0], checkpoints.renormalise(xb, bases["vit", 0][1]), FT.relevance,
                                  target=yb, output="pixel")
    return pd.DataFrame({name: {k: v.item() for k, v in losses.relevance_loss(r, mb, logits, yb, "bce", cfg).items()}
                         for name, cfg in ((f"squeezed, δ = {FT.loss.squeeze:g}", FT.loss),
                                           ("official, δ = 0", FT.loss.model_copy(update=dict(squeeze=0.0))))}).T


def selection_lines(epochs: pd.DataFrame, trained: list[str]) -> list[str]:
    """Per model and fine-tuned arm, in how many runs the kept epoch's held-out alignment loss is below the base's."""
    ft = epochs[epochs["arm"].isin(trained)]  # each run's epochs in order, epoch 0 the base
    start = ft[ft["epoch"] == 0].set_index(["model", "arm", "seed"])["val_cft_align"]
    kept = (ft[ft["best"] == 1].groupby(["model", "arm", "seed"], sort=False)["val_cft_align"].last()
            .reindex(start.index))
    below = (kept.fillna(start) < start).groupby(level=["model", "arm"], sort=False)
    return [f"{model}/{arm}: the kept epoch's held-out alignment loss is below the base's in {n} of "
            f"{below.size()[model, arm]} runs" for (model, arm), n in below.sum().items()]


def train_alignment(steps: pd.DataFrame, epochs: pd.DataFrame, L: config.Loss,
                    trained: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The steps and epochs of the arms whose training terms are CFT's alignment on concept masks, the steps with
    their λ-weighted alignment loss (`align`), as the validation computes it."""
    on_concepts = [a for a in trained if runspec.ARMS[a].loss == "bce" and runspec.ARMS[a].mask == "concept"]
    st = steps[steps["arm"].isin(on_concepts)]
    st = st.assign(align=L.lambda_ctx * st["context"] + L.lambda_concept * st["concept"])  # λ-weighted, as validated
    return st, epochs[epochs["arm"].isin(on_concepts)]


def alignment_lines(st: pd.DataFrame, ep: pd.DataFrame) -> list[str]:
    """Per model and arm of `train_alignment`, the training alignment loss from the first to the last epoch
    beside the held-out one from the base to the last epoch."""
    one, end, lines = st["epoch"].min(), st["epoch"].max(), []
    for (model, arm), g in st.groupby(["model", "arm"], sort=False):
        e = ep[(ep["model"] == model) & (ep["arm"] == arm)].groupby("epoch")["val_cft_align"].mean()
        t = g.groupby("epoch")["align"].mean()
        lines.append(f"{model}/{arm}: training alignment loss {t[one]:.3f} (epoch {one}) → {t[end]:.3f} "
                     f"(epoch {end}), {(t[end] / t[one] - 1) * 100:+.1f} %; held-out {e[0]:.3f} (base) → "
                     f"{e[end]:.3f}, {(e[end] / e[0] - 1) * 100:+.1f} %")
    return lines


def moved_lines(epochs: pd.DataFrame) -> list[str]:
    """What the runs did on the held-out classes: each run's selected epoch against its epoch 0 (the base), mean
    over runs, per model and fine-tuned arm."""
    sel = epochs.sort_values("epoch").groupby(["model", "arm", "seed"], sort=False)
    start = sel.first()[["val_cft_align", "val_acc"]]
    chosen = epochs[epochs["best"] == 1].groupby(["model", "arm", "seed"], sort=False).last()[
        ["epoch", "val_cft_align", "val_acc"]]
    chosen = chosen.reindex(start.index).fillna({"epoch": 0}).combine_first(start)  # never improved: epoch 0 kept
    moved = (chosen[["val_cft_align", "val_acc"]] - start).groupby(level=["model", "arm"], sort=False).mean()
    kept = chosen["epoch"].groupby(level=["model", "arm"], sort=False).mean()
    return [f"{model}/{arm}: selected epoch {kept[model, arm]:.1f} on average; held-out CFT alignment loss "
            f"{row['val_cft_align']:+.4f}, held-out accuracy {row['val_acc'] * 100:+.1f} points against the base"
            for (model, arm), row in moved.iterrows()
            if runspec.ARMS[arm].trains]  # the base and DFR: no fine-tuning epochs


def run_stage(P: config.Params, params_file: str | Path, *, data_dir: str | Path, concepts_dir: str | Path,
              masks_dir: str | Path, base_dir: str | Path, runs_dir: str | Path, metrics_dir: str | Path,
              plots_dir: str | Path, figures_dir: str | Path, reports_dir: str | Path, progress: bool = False,
              loaded: tuple | None = None) -> dict:
    """The stage: every run trained (under torchrun on `finetune.processes` GPUs, stacked `finetune.batch_runs`
    at a time, or `finetune.workers` side by side; finished runs reused) and every declared output written — the
    curves (`plots/finetune_*.csv`), the metrics, the figures of the loss and of the relevance before and after.
    `loaded`: `setup`'s (runs, data, bases) when the caller has them. Returns what the notebook shows: the runs'
    table, steps and epochs, the figures (name → figure) and the lines that read them."""
    FT = P.finetune
    runs, data, bases = loaded or setup(P, masks_dir, data_dir, base_dir, runs_dir, concepts_dir, progress=progress)
    paths = ["--masks", masks_dir, "--data", data_dir, "--base", base_dir, "--out", runs_dir,
             "--concepts", concepts_dir]
    if FT.processes > 1:  # every run under torchrun on FT.processes GPUs; run_all below then reuses the finished runs
        launch.run("cftlib.stages.finetune", ["--params", params_file, *paths], FT.processes)
    else:  # runs that share a step stacked FT.batch_runs at a time (a GPU); run_all below reuses them too
        batched.fit_groups(runs, bases, data, FT, runs_dir, progress)
    if FT.processes == 1 and FT.workers > 1:  # FT.workers runs at a time, the threads split between them
        launch.side_by_side("cftlib.stages.finetune", params_file, FT.workers, max(1, P.base.threads // FT.workers),
                            paths)
    table = trainer.run_all(runs, bases, data, FT, runs_dir, progress=progress)
    steps, epochs = runspec.collect(runs, runs_dir, "history.csv"), runspec.collect(runs, runs_dir, "epochs.csv")
    io.write_csv(Path(plots_dir) / "finetune_steps.csv", steps)
    io.write_csv(Path(plots_dir) / "finetune_epochs.csv", epochs)
    io.write_csv(Path(plots_dir) / "finetune_val_align.csv", curves(epochs, "val_cft_align"))
    full = metrics(table, data["counts"])
    io.write_json(Path(reports_dir) / "finetune.json", full)
    headline.write(Path(metrics_dir) / "finetune.json", headline.finetune(full))

    F, shown = Path(figures_dir), {}

    def save(name: str, fig: plt.Figure) -> None:
        shown[name] = figures.save(fig, F / f"{name}.png")

    trained = [a for a in runspec.ARMS if runspec.ARMS[a].trains]
    ft = epochs[epochs["arm"].isin(trained)]
    save("finetune_curves", figures.arm_curves(
        [(steps[steps["arm"].isin(trained)], "step", "loss", "training loss (own objective)"),
         (ft, "epoch", "val_cft_align", "CFT alignment loss, held-out classes"),
         (ft.assign(top1=100 * epochs["val_acc"]), "epoch", "top1", "top-1 (%), held-out classes")],
        log=("loss",), band=False))
    save("finetune_selection", figures.selected_epochs(epochs))
    st, ep = train_alignment(steps, epochs, FT.loss, trained)
    save("finetune_alignment", figures.arm_curves(
        [(st, "epoch", "align", "CFT alignment loss, training images"),
         (ep, "epoch", "val_cft_align", "CFT alignment loss, held-out classes")]))

    ex = examples(data, concepts_dir)
    x, y = ex["x"], ex["y"]
    first = {(r.model, r.arm): r for r in runs if r.seed == P.base.seed}  # base 0
    after = {m: runspec.load_run(first[(m, "cft")], runs_dir)[0] for m in ("vit", "cnn") if (m, "cft") in first}
    xv = checkpoints.renormalise(x, bases["vit", 0][1])  # the model's own normalisation (zoo models)
    vit_methods = [m.name for m in relevance.METHODS.values() if "vit" in m.model_kinds]
    maps = {f"{name}\n{state}": relevance.explain(model, xv, name, target=y, output="pixel")[0]
            for name in vit_methods for state, model in (("base", bases["vit", 0][0]), ("CFT", after.get("vit")))
            if model is not None}
    save("relevance_methods", columns_figure(ex, maps))
    if ("cnn", 0) in bases:
        xc = checkpoints.renormalise(x, bases["cnn", 0][1])
        cnn_methods = [m.name for m in relevance.METHODS.values() if "cnn" in m.model_kinds]
        maps = {f"{name}\n{state}": relevance.explain(model, xc, name, target=y, output="pixel")[0]
                for name in cnn_methods for state, model in (("base", bases["cnn", 0][0]), ("CFT", after.get("cnn")))
                if model is not None}
        save("relevance_cnn", columns_figure(ex, maps))
    arm_maps = {f"{arm}": relevance.explain(runspec.load_run(first[("vit", arm)], runs_dir)[0], xv, FT.relevance,
                                            target=y, output="pixel")[0] for arm in FT.arms}
    save("relevance_arms", columns_figure(ex, arm_maps))
    return dict(table=table, steps=steps, epochs=epochs, figures=shown, selection=selection_lines(epochs, trained),
                alignment=alignment_lines(st, ep), moved=moved_lines(epochs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.finetune", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--masks", default="data/masks")
    ap.add_argument("--data", default="data/world")
    ap.add_argument("--base", default="models/base", help="the world stage's base models")
    ap.add_argument("--out", default="models/finetune")
    ap.add_argument("--concepts", default="data/concepts")
    ap.add_argument("--model", action="append", choices=("vit", "cnn"), help="only these models (repeatable)")
    ap.add_argument("--arm", action="append", help="only these arms (repeatable)")
    ap.add_argument("--seed", action="append", type=int, help="only these seeds (repeatable)")
    ap.add_argument("--shard", type=launch.shard, default=(0, 1),
                    help="i/n: only every n-th planned run, from the i-th")
    ap.add_argument("--threads", type=int, help="torch threads (default: base.threads)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    P = params.load(args.params)
    torch.set_num_threads(args.threads or P.base.threads)
    for a in args.arm or []:
        runspec.get_arm(a)
    with launch.distributed(launch.device(P.finetune.device, "finetune.device").type == "cuda", "finetune.processes"):

        def select(r: runspec.RunSpec) -> bool:
            return all(not want or got in want for want, got in ((args.model, r.model), (args.arm, r.arm),
                                                                  (args.seed, r.seed)))

        runs, data, bases = setup(P, args.masks, args.data, args.base, args.out, args.concepts, select, args.progress)
        k, n = args.shard
        for spec in runs[k::n]:
            trainer.fit(spec, *bases[spec.model, spec.base], data, P.finetune, args.out, args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
