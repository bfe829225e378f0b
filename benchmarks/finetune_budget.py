"""The fine-tuning budget study: which learning rate and how many epochs the default protocol uses, chosen on
validation data alone — the held-out classes' images of the masks stage — by CFT's own objective.

The rule, fixed before the sweep was run (and printed at the top of its report):
  * grid: lr in LRS, each for MAX_EPOCHS epochs with the official decay (x 0.85 every 2 epochs), the `cft` arm
    on every base model of the world stage (seed base.seed + b * finetune.seeds, as the pipeline numbers them);
    the `ce` arm at each lr as the control, and the base model (epoch 0) as the reference;
  * objective: CFT's validation total loss (alignment + confidence, the quantity the official protocol selects
    on), per epoch, averaged over the base models;
  * choice: the lr whose mean curve reaches the lowest value; `finetune.epochs` = the epoch of that minimum,
    rounded up to a multiple of 5 (an upper bound: the run keeps its own lowest-validation-loss epoch);
  * selection rule: the official one (each run keeps the epoch of its lowest validation total loss). It is the
    only rule that reads validation data; "the last epoch" is a budget, which the epochs above already choose.
Nothing here reads `test` or an out-of-distribution split.

    python benchmarks/finetune_budget.py            # after `dvc repro masks` (needs data/ and models/base)
writes reports/finetune_budget.md (the rule, the table, the choice) and figures/finetune_budget.png; the runs
are cached in cache/finetune_budget (re-running reuses them).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from cftlib.core import config
from cftlib.report import figures
from cftlib.stages import finetune, params
from cftlib.training import trainer

LRS = {"vit": (1e-4, 3e-4, 1e-3), "cnn": (1e-5, 1e-4)}  # the CNN's 3e-4: the pipeline's first run (README)
MAX_EPOCHS = 20
OUT = Path("cache/finetune_budget")


def sweep(P: config.Params, model: str = "vit") -> pd.DataFrame:
    """Every (arm, lr, base) run of `model`'s grid; their per-epoch validation rows, stacked."""
    arms = ["ce", "cft"]
    cnn = P.finetune.cnn.model_copy(update=dict(arms=arms if model == "cnn" else []))
    cfg = P.finetune.model_copy(update=dict(epochs=MAX_EPOCHS, arms=arms if model == "vit" else [], cnn=cnn))
    runs, data, bases = finetune.setup(P.model_copy(update={"finetune": cfg}), "data/masks", "data/world",
                                       "models/base", OUT / "unused")
    runs = [r for r in runs if r.model == model]
    frames = []
    for lr in LRS[model]:
        first = {}  # the first seed of each (arm, base)
        for r in runs:
            first.setdefault((r.arm, r.base), r)
        for spec in [dataclasses.replace(r, lr=lr) for r in first.values()]:
            folder = OUT / (f"lr{lr:g}" if model == "vit" else f"{model}_lr{lr:g}")
            trainer.fit(spec, *bases[spec.model, spec.base], data, cfg, folder)
            frames.append(pd.read_csv(spec.folder(folder) / "epochs.csv").assign(arm=spec.arm, lr=lr, base=spec.base))
    return pd.concat(frames, ignore_index=True)


def choose(epochs: pd.DataFrame, first: int = 0) -> tuple[pd.DataFrame, float, int]:
    """The table (per arm and lr: the mean curve's minimum over epochs >= `first`, its epoch, and the held-out
    alignment and accuracy there, with the base's at epoch 0) and the rule's choice (lr, epochs). `first=0` is
    the rule as fixed; `first=1` the amendment the report explains (epoch 0 is the base model)."""
    mean = epochs.groupby(["arm", "lr", "epoch"], as_index=False)[["val_loss", "val_cft_align", "val_acc"]].mean()
    rows = []
    for (arm, lr), g in mean.groupby(["arm", "lr"]):
        best = g.loc[g[g["epoch"] >= first]["val_loss"].idxmin()]
        start = g[g["epoch"] == 0].iloc[0]
        rows.append({"arm": arm, "lr": lr, "best epoch": int(best["epoch"]), "val loss (min)": best["val_loss"],
                     "val loss (base)": start["val_loss"], "CFT alignment (at min)": best["val_cft_align"],
                     "CFT alignment (base)": start["val_cft_align"], "val acc (at min)": best["val_acc"],
                     "val acc (base)": start["val_acc"]})
    table = pd.DataFrame(rows)
    cft = table[table["arm"] == "cft"]
    pick = cft.loc[cft["val loss (min)"].idxmin()]
    return table, float(pick["lr"]), max(5, 5 * math.ceil(int(pick["best epoch"]) / 5))


def figure(epochs: pd.DataFrame, lr: float) -> plt.Figure:
    """Per epoch on the held-out classes, at every lr (colour), CFT vs CE (line style), means over the base models
    with their range (epoch 0: the base models): each arm's own validation loss (CFT's total, which the rule reads;
    CE's cross-entropy), CFT's alignment loss for both, and top-1 in %; the legend beside the panels."""
    e = epochs.assign(lr=epochs["lr"].map(lambda v: f"{v:g}"), top1=100 * epochs["val_acc"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (metric, title, scale) in zip(axes, (
            ("val_loss", "each arm's own loss (CFT: total; CE: cross-entropy)", "log"),
            ("val_cft_align", "CFT alignment loss (both arms)", "log"), ("top1", "top-1 (%)", "linear"))):
        sns.lineplot(data=e, x="epoch", y=metric, hue="lr", style="arm", style_order=["cft", "ce"], ax=ax,
                     errorbar=("pi", 100), err_kws={"alpha": 0.15}, legend=ax is axes[-1])
        ax.set(title=f"held-out classes: {title}", ylabel="", yscale=scale)
        ax.title.set_fontsize(9)
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)  # off the curves
    fig.suptitle(f"epoch 0 = the base models; chosen lr {lr:g}; lines: means over the base models, bands: their range",
                 fontsize=9)
    fig.tight_layout()
    return fig


def study(epochs: pd.DataFrame) -> tuple[pd.DataFrame, str, float, int, bool]:
    """The rule applied to one model's sweep: (table it chose from, the amendment's text if the rule as fixed
    chose the base model, lr, epochs, whether CFT lowers the held-out alignment loss there)."""
    fixed, lr, n_epochs = choose(epochs)
    chosen, amended = fixed, ""
    if (fixed[fixed["arm"] == "cft"]["best epoch"] == 0).all():  # the rule chose the base model itself
        chosen, lr, n_epochs = choose(epochs, first=1)
        amended = (f"\n\n**The rule as fixed chooses no fine-tuning.** At every lr the mean validation loss is lowest "
                   f"at epoch 0, the base model (table above): on the held-out classes every step of CFT (and of CE) "
                   f"raises it. The official protocol never returns epoch 0 (its selection starts at epoch 1), so "
                   f"the rule was amended after this result, and only in that: the minimum over epochs >= 1. The "
                   f"amended table:\n\n{chosen.to_markdown(index=False, floatfmt='.4g')}")
    cft = chosen[(chosen["arm"] == "cft") & (chosen["lr"] == lr)].iloc[0]
    return fixed, amended, lr, n_epochs, bool(cft["CFT alignment (at min)"] < cft["CFT alignment (base)"])


def main(path: str = "params.yaml") -> None:
    P = params.load(path)
    torch.set_num_threads(P.base.threads)
    rule = __doc__.split("The rule, fixed before the sweep was run (and printed at the top of its report):\n")[1]
    rule = rule.split("\n\n")[0]
    text = (f"# Fine-tuning budget study\n\nGenerated by `python benchmarks/finetune_budget.py` (profile "
            f"`{P.base.profile}`, {P.bases.seeds} base models, {MAX_EPOCHS} epochs per lr; figures: "
            f"`figures/finetune_budget.png`, `figures/finetune_budget_cnn.png`).\n\n## The rule (fixed before the "
            f"sweep)\n\n{rule}\n\nThe CNN's learning rate (`finetune.cnn.lr`) is chosen by the same rule on its own "
            f"grid; its epochs are the ViT's (one `finetune.epochs`).\n")
    for model, name, key in (("vit", "ViT", "finetune.lr"), ("cnn", "CNN", "finetune.cnn.lr")):
        epochs = sweep(P, model)
        fixed, amended, lr, n_epochs, lowers = study(epochs)
        figures.save(figure(epochs, lr), Path("figures") / f"finetune_budget{'' if model == 'vit' else '_cnn'}.png")
        text += (f"\n## {name}: result (means over the base models; validation = one image of each held-out class)"
                 f"\n\n{fixed.to_markdown(index=False, floatfmt='.4g')}{amended}\n\n**Choice:** `{key}: {lr:g}`"
                 + (f", `finetune.epochs: {n_epochs}`" if model == "vit" else "")
                 + f", selection by the lowest validation total loss. At this lr CFT "
                 f"{'lowers' if lowers else 'does not lower'} its held-out alignment loss below the base models'.\n")
    Path("reports").mkdir(exist_ok=True)
    Path("reports/finetune_budget.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(*sys.argv[1:])
