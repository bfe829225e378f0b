"""The world stage at paper scale (notebook 00_imagenet): no world to generate and nothing to train — ImageNet's
classes listed, the zoo's pretrained base model saved as the stage's checkpoint, and its top-1 measured on every
configured benchmark (the gap CFT attacks); every file the stage declares written, as `cftlib.stages.world` writes
them for the world."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from cftlib import concepts
from cftlib.core import config, io, launch
from cftlib.data import datasets, fewshot
from cftlib.metrics import accuracy
from cftlib.models import checkpoints, zoo
from cftlib.report import figures, headline
from cftlib.stages import benchmarks
from cftlib.training import pretrain


@dataclass
class ImageNet:
    """What the notebook shows: the classes (wnid, ImageNet index, name, images), the base model's zoo entry,
    model and build config, its top-1 per benchmark (`acc`) and gap to ImageNet val (`gaps`), both as `table`, and
    the saved figures."""
    classes: pd.DataFrame
    entry: zoo.Entry
    model: torch.nn.Module
    build: dict
    acc: dict[str, float]
    gaps: dict[str, float]
    table: pd.DataFrame
    chance: float
    samples: plt.Figure
    accuracy: plt.Figure


def run(P: config.Params, data_dir: str | Path, model_dir: str | Path, metrics_dir: str | Path,
        figures_dir: str | Path, plots_dir: str | Path, reports_dir: str | Path) -> ImageNet:
    """Stage world at paper scale: writes `<data_dir>/classes.json`, `reports/world.json`, `figures/world_samples.png`,
    the base model as `<model_dir>/vit/base0.pt`, `plots/bases_{history,accuracy}.csv` (no history: nothing is
    trained), `reports/base.json`, `metrics/base.json` and `figures/base_accuracy.png`."""
    image_paths, labels, class_dirs = fewshot.list_folder(P.concepts.image_dir)
    index = fewshot.imagenet_index(class_dirs, P.concepts.image_dir)
    names = [c.name for c in concepts.classes_from_imagenet(class_dirs)]
    classes = pd.DataFrame({"wnid": class_dirs, "imagenet_index": index, "name": names,
                            "images": pd.Series(labels).value_counts().sort_index().to_numpy()})
    io.write_json(Path(data_dir) / "classes.json", classes.to_dict("records"))
    io.write_json(Path(reports_dir) / "world.json", {"dataset": P.concepts.dataset, "classes": len(classes),
                                                     "images": int(classes["images"].sum())})
    show = classes.index[:8]
    fig = figures.image_row([fewshot.load_image(image_paths[int((labels == c).argmax())]) for c in show],
                            [names[c].split(",")[0] for c in show])
    samples = figures.save(fig, Path(figures_dir) / "world_samples.png", dpi=90)

    entry = zoo.get(P.pretrain.zoo)
    model = zoo.build(P.pretrain.zoo, P.pretrain.weights, 1000, **P.pretrain.model_kwargs)
    build = zoo.build_config(P.pretrain.zoo, 1000, P.pretrain.model_kwargs)
    checkpoints.save_checkpoint(pretrain.base_path(model_dir, "vit", 0), model, build)  # the one base model
    io.write_csv(Path(plots_dir) / "bases_history.csv", pd.DataFrame(  # nothing is trained at this scale
        columns=["model", "base", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]))

    E = P.evaluate.model_copy(update=dict(protocols=["chefer"], segmentation=""))  # top-1 only, the official protocol
    benches = {name: datasets.sample(datasets.load(name, root), E.benchmark_images, P.base.seed)
               for name, root in E.benchmarks.items()}
    rows = benchmarks.evaluate_model(model.to(launch.device(E.device, "evaluate.device")), benches, np.array([], int),
                                     E, E.relevance, workers=P.base.threads)
    acc = {r["benchmark"]: r["top1"] for r in rows if r["group"] == "all"}
    gaps = {b: acc["imagenet_val"] - a for b, a in acc.items()}
    chance = 1 / 1000
    io.write_json(Path(reports_dir) / "base.json", {"model": P.pretrain.zoo, "accuracy": acc, "gap": gaps,
                                                    "chance": chance})
    headline.write(Path(metrics_dir) / "base.json", headline.base({"vit": acc}, "imagenet_val",
                                                                  accuracy.roles(P).focus))
    io.write_csv(Path(plots_dir) / "bases_accuracy.csv", pd.DataFrame(  # the one base, as the world stage writes them
        [{"model": "vit", "base": 0, "head": "base", "split": b, "top1": a} for b, a in acc.items()]))
    table = pd.DataFrame({"accuracy": acc, "gap vs imagenet_val": pd.Series(gaps)})
    fig = figures.accuracy_bars(table.reset_index(names="split"), chance)
    accuracy_fig = figures.save(fig, Path(figures_dir) / "base_accuracy.png")
    return ImageNet(classes, entry, model, build, acc, gaps, table, chance, samples, accuracy_fig)
