"""The paper's baselines in the world: their weights and learning rates, chosen on validation data by the rule that
chose CFT's protocol (benchmarks/dose_response.py), before any of them is scored on a test or OOD split.

The plan and the rule, fixed before the sweep was run (and printed at the top of its report):
  * runs: arms gradmask, rrr and rrda (cftlib.training.baselines) on every ViT base model of the world stage, the
    class subset of seed base.seed, with the pipeline's protocol otherwise (finetune.epochs, decay, zoom, batch,
    selection `finetune.selection`); every epoch's validation numbers recorded, epoch 0 being the base model;
  * the grid: lr in LRS (the dose–response study's); each baseline's weight on three decades centred where its
    penalty, at the base model on the few-shot training images, is as large as the label cross-entropy — Ross et
    al. choose λ₁ so ("the two terms of the same order of magnitude"); measured on this world's bases: RRR's
    penalty ~400 and GradMask's ~17.5 against a cross-entropy of ~0.22, so RRR λ₁ ∈ {1e-4, 1e-3, 1e-2} and
    GradMask λ ∈ {1e-3, 1e-2, 1e-1} (its cross-entropy weight 1, as in its code); RRR's λ₂ (L2 on the weights)
    stays 0, AdamW's weight decay already regularises; RRDA's share of mixed images ∈ {0.5, 1.0};
  * what the choice may read (validation data only: one image of each held-out class): per epoch, the validation
    top-1 and the held-out CFT alignment loss (the common yardstick of every arm);
  * the rule: per arm, the (lr, weight) whose runs, at their selected epochs, have the lowest mean held-out
    alignment loss with mean validation top-1 no lower than the base's; ties to the smaller lr, then the smaller
    weight. Where no setting keeps the base's validation top-1, the one that loses least of it;
  * amended after the first 48 runs, the rule unchanged: GradMask's and RRR's choices fell on the top of their
    grids, so each grid grew once by a decade upwards (GradMask λ 1, RRR λ₁ 0.1) and the rule read the whole grid
    again; a choice on the new edge is reported as such, not chased further.

    python benchmarks/baselines.py run --shard 0/2 --threads 1   # one of 2 processes side by side
    python benchmarks/baselines.py report     # reports/baselines.{md,json}; the chosen values go into params
The runs are cached in cache/baselines/<arm>/<weight>/<lr>/ (re-running reuses complete ones; clear it when the
world or its bases change).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd
import torch

from cftlib.core import config, io, launch
from cftlib.stages import finetune, params
from cftlib.training import runspec, trainer

LRS = (3e-5, 1e-4)
GRID = {"gradmask": ("gradmask_lambda", (1e-3, 1e-2, 1e-1, 1.0)), "rrr": ("rrr_lambda", (1e-4, 1e-3, 1e-2, 1e-1)),
        "rrda": ("rrda_prob", (0.5, 1.0))}
OUT = Path("cache/baselines")


def protocol(P: config.Params) -> config.Finetune:
    """The pipeline's fine-tuning parameters with the baselines as arms, one class subset per base, no CNN."""
    return P.finetune.model_copy(update=dict(arms=["none", *GRID], seeds=1, arm_lr={},
                                             cnn=P.finetune.cnn.model_copy(update=dict(arms=[]))))


def plan(P: config.Params) -> list[tuple[float, float, runspec.RunSpec]]:
    """Every (weight, lr, run spec) of the sweep, in a fixed order (the shards take every n-th)."""
    runs = [r for r in runspec.plan(protocol(P), P.base.seed, P.bases.seeds) if r.arm in GRID]
    return [(w, lr, dataclasses.replace(r, lr=lr)) for r in runs for w in GRID[r.arm][1] for lr in LRS]


def folder(weight: float, lr: float) -> Path:
    return OUT / f"w{weight:g}" / f"lr{lr:g}"


def run(P: config.Params, shard: int, shards: int, threads: int | None = None) -> None:
    torch.set_num_threads(threads or P.base.threads)
    cfg = protocol(P)
    _, data, bases = finetune.setup(P.model_copy(update=dict(finetune=cfg)), "data/masks", "data/world",
                                    "models/base", OUT)
    for weight, lr, spec in plan(P)[shard::shards]:
        key = GRID[spec.arm][0]
        mine = cfg.model_copy(update=dict(loss=cfg.loss.model_copy(update={key: weight})))
        trainer.fit(spec, *bases[spec.model, spec.base], data, mine, folder(weight, lr))
        print(f"[done] {spec.name} {key} {weight:g} lr {lr:g}", flush=True)


def tables(P: config.Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run, its selected epoch's validation numbers beside the base's (epoch 0); and their means per setting."""
    rows = []
    for weight, lr, spec in plan(P):
        path = spec.folder(folder(weight, lr)) / "epochs.csv"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run `python benchmarks/baselines.py run` first")
        e = pd.read_csv(path)
        at, start = e[e["best"] == 1].iloc[0], e[e["epoch"] == 0].iloc[0]
        rows.append({"arm": spec.arm, "weight": GRID[spec.arm][0], "value": weight, "lr": lr, "base": spec.base,
                     "epoch": int(at["epoch"]), "val_cft_align": at["val_cft_align"], "val_acc": at["val_acc"],
                     "base_val_cft_align": start["val_cft_align"], "base_val_acc": start["val_acc"]})
    per_run = pd.DataFrame(rows)
    mean = per_run.groupby(["arm", "weight", "value", "lr"], as_index=False).mean(numeric_only=True)
    return per_run, mean.drop(columns="base")


def choose(mean: pd.DataFrame) -> dict[str, dict]:
    """The rule, per arm (see the module docstring)."""
    out = {}
    for arm, g in mean.groupby("arm"):
        ok = g[g["val_acc"] >= g["base_val_acc"] - 1e-9]
        pick = (ok.sort_values(["val_cft_align", "lr", "value"]) if len(ok) else
                g.assign(loss=g["base_val_acc"] - g["val_acc"]).sort_values(["loss", "val_cft_align", "lr", "value"]))
        best = pick.iloc[0]
        out[arm] = {"lr": float(best["lr"]), best["weight"]: float(best["value"]), "keeps_base_top1": bool(len(ok))}
    return out


def report(P: config.Params) -> str:
    per_run, mean = tables(P)
    chosen = choose(mean)
    io.write_json("reports/baselines.json", chosen)
    rule = __doc__.split("The plan and the rule, fixed before the sweep was run (and printed at the top of its "
                         "report):\n")[1].split("\n\n")[0]
    lines = ["# The paper's baselines in the world: weights and learning rates chosen on validation data", "",
             f"Generated by `python benchmarks/baselines.py` (profile `{P.base.profile}`; {len(per_run)} runs of "
             f"{P.finetune.epochs} epochs, {per_run['base'].nunique()} base models per setting). Validation data only: "
             "no test or OOD split was read.", "", "## The rule (fixed before the runs)", "", rule, "",
             "## At the selected epochs (means over base models)", "",
             mean.to_markdown(index=False, floatfmt=".4g"), "", "## Chosen", ""]
    for arm, c in chosen.items():
        rest = ", ".join(f"`finetune.loss.{k}` {v:g}" for k, v in c.items() if k not in ("lr", "keeps_base_top1"))
        lines.append(f"- {arm}: `finetune.arm_lr.{arm}` {c['lr']:g}, {rest}"
                     + ("" if c["keeps_base_top1"] else " (no setting kept the base's validation top-1)"))
    text = "\n".join(lines) + "\n"
    Path("reports").mkdir(exist_ok=True)
    Path("reports/baselines.md").write_text(text)
    return text


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
        print(report(P))
    return 0


if __name__ == "__main__":
    sys.exit(main())
