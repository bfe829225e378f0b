"""The finetune stage: everything the runs need, loaded and checked before any training, the runs trained, and
the stage's tables (curves, metrics).

    python -m cftlib.stages.finetune --params params.yaml --arm cft --seed 0
    python -m cftlib.stages.finetune --shard 0/2 --threads 1 & python -m cftlib.stages.finetune --shard 1/2 --threads 1
    torchrun --standalone --nproc_per_node 2 -m cftlib.stages.finetune --arm cft --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cftlib import concepts
from cftlib.core import config, launch
from cftlib.data import fewshot, world
from cftlib.models import checkpoints, zoo
from cftlib.stages import params
from cftlib.training import pretrain, runspec, trainer


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
            bases[model, b] = (zoo.build(C.zoo, C.weights, bases["vit", 0][1]["num_classes"], what="finetune.cnn.weights",
                                         **kwargs), zoo.build_config(C.zoo, bases["vit", 0][1]["num_classes"], kwargs))
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
    data = trainer.load_data(masks_dir, pool, P.finetune.k, build["img_size"],
                     trainer.foreground_masks(P.masks, names) if needs_fg else None)
    if any(r.arm == "dfr" for r in runs):  # the world's habitat-balanced labelled split (config: the world only)
        d = world.load_split(data_dir, "dfr")
        data["dfr"] = {"images": d["images"], "label": d["label"].astype(np.int64), "l2": P.bases.dfr_l2}
    return runs, data, bases


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
    ap.add_argument("--shard", type=launch.shard, default=(0, 1), help="i/n: only every n-th planned run, from the i-th")
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
