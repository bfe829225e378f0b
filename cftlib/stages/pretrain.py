"""The pretrain stage (notebook 00_pretrain), the world's "ImageNet-21k": each architecture trained from scratch on
habitat- and colour-random birds (`cftlib.training.pretrain.pretrain_all`), and every file the stage declares
written — checkpoints, history, learnability figures and the two figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from cftlib.core import config, io
from cftlib.data import world
from cftlib.models import checkpoints
from cftlib.report import figures
from cftlib.training import pretrain

LEARNABILITY_BAR = 0.90
"""The share of held-out habitat- and colour-random birds an architecture must learn to tell apart by their parts
within the budget (its learnability) for the world to be a valid test bed."""


@dataclass
class Pretrained:
    """What the notebook shows: role → (model, build, history) as `pretrain_all` returns it, the histories as one
    table, role → its learnability figures (`learnability`), and the two saved figures."""
    trained: dict
    history: pd.DataFrame
    learn: dict[str, dict]
    samples: plt.Figure
    curves: plt.Figure


def learnability(trained: dict, roles: dict[str, config.Pretrain]) -> dict[str, dict]:
    """Role → the best held-out accuracy over the run (the learnability figure), the last epoch's train accuracy,
    the epochs run, and the shipped epoch (`kept_epoch`) with its held-out accuracy."""
    learn = {}
    for role, (_, _, h) in trained.items():
        ship = pretrain.kept_epoch(h, roles[role])
        learn[role] = {"held_out": max(r["val_acc"] for r in h), "train": h[-1]["train_acc"], "epochs": len(h),
                       "shipped_epoch": ship["epoch"], "shipped_held_out": ship["val_acc"]}
    return learn


def run(P: config.Params, model_dir: str | Path, metrics_dir: str | Path, figures_dir: str | Path,
        plots_dir: str | Path, retrain: bool = True, progress: bool = False) -> Pretrained:
    """Stage pretrain: writes `<model_dir>/{pretrain.json,<role>.pt}`, `<plots_dir>/pretrain_history.csv`,
    `<metrics_dir>/pretrain.json` and `<figures_dir>/pretrain_{samples,curves}.png`. With `retrain` False (the
    stage is frozen) the committed checkpoints and history are read back instead and only the figures written."""
    roles = pretrain.roles(P)
    zoo_note = f"no pre-training here: the base model is the zoo's {P.pretrain.zoo}"
    if roles:
        train_set, _ = pretrain.pretraining_sets(P)
        names = [s.name for s in world.make_species(P.world.n_species, P.base.seed)]
        fig = figures.sample_grid({"pre-training": train_set}, names, per_split=8)
    else:
        fig = figures.note(zoo_note)
    samples = figures.save(fig, Path(figures_dir) / "pretrain_samples.png", dpi=90)

    if retrain:
        trained = pretrain.pretrain_all(P, progress=progress)
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        io.write_json(Path(model_dir) / "pretrain.json", {"zoo": P.pretrain.zoo, "roles": sorted(trained)})
        for role, (model, build, _) in trained.items():
            checkpoints.save_checkpoint(Path(model_dir) / f"{role}.pt", model, build)
    else:  # the frozen stage's own outputs, read back
        trained = pretrain.shipped(P, model_dir, Path(plots_dir) / "pretrain_history.csv")
    history = pd.concat([pd.DataFrame(h).assign(model=role) for role, (_, _, h) in trained.items()]
                        or [pd.DataFrame()], ignore_index=True)
    if retrain:
        io.write_csv(Path(plots_dir) / "pretrain_history.csv", history)
    fig = figures.training_curve(history, hue="model") if trained else figures.note(zoo_note)
    curves = figures.save(fig, Path(figures_dir) / "pretrain_curves.png")

    learn = learnability(trained, roles)
    if retrain:
        io.write_json(Path(metrics_dir) / "pretrain.json", {"images": P.pretrain.images,
                                                             "chance": 1 / P.world.n_species, "models": learn})
    return Pretrained(trained, history, learn, samples, curves)
