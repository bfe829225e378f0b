"""The world stage (notebook 00_world): the world's splits generated, and the pretrained checkpoints given a new head
and trained on its biased `train` split, once per base seed (`cftlib.training.pretrain.bases_all`); every file the
stage declares written, with the bars the world must clear to be a valid test bed (README, "Is the world a test
bed"). At paper scale the stage is `cftlib.stages.imagenet`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from cftlib.core import config, io
from cftlib.data import fewshot, world
from cftlib.metrics import accuracy, alignment
from cftlib.models import checkpoints
from cftlib.report import figures, headline
from cftlib.stages.pretrain import LEARNABILITY_BAR
from cftlib.training import dfr, pretrain

TEST_BAR = 0.85
"""The bases' mean `test` accuracy must reach it: a base that is poor in distribution shows no shortcut."""
GAP_BAR = 0.30
"""... and fall by at least this much from `test` to `bg_conflict`: the bases take the habitat shortcut."""
DFR_GAP_BAR = 0.15
"""... while the DFR head on the same features falls by at most this much: the parts are in the features."""
AUGMENTATION_BAR = 3
"""Each ViT base's few-shot top-1 under the fine-tuning augmentation within this many points of it as is."""
ORACLE_MASS_BAR = 0.60
"""Each ViT base can put at least this share of its relevance on the concepts at its token grid."""


@dataclass
class World:
    """What the notebook shows: the species and their field guide, each split's intended and measured correlations
    (`corr`) and arrays, the bases' training histories and accuracy rows (`rows`: model, base, head, split, top1),
    their fit for fine-tuning (`fit`), the accuracy tables of the base and DFR heads, `validity` and the `bars`,
    the learnability figures of the pretrain stage, the accuracy spread over bases, and the saved figures."""
    species: list
    guide: pd.DataFrame
    corr: pd.DataFrame
    splits: dict[str, dict]
    eval_splits: list[str]
    history: pd.DataFrame
    rows: pd.DataFrame
    fit: dict[str, dict]
    table: pd.DataFrame
    probe_table: pd.DataFrame
    valid: dict[str, float]
    bars: dict[str, bool]
    learn: dict[str, dict]
    spread: dict
    chance: float
    samples: plt.Figure
    accuracy: plt.Figure


def bars(valid: dict[str, float], fit: dict[str, dict], learn: dict[str, dict]) -> dict[str, bool]:
    """The world's validity bars, each by its name in reports/base.json → whether it holds: `valid` from
    `accuracy.validity`, `fit` per ViT base (`augmentation_gap` and `alignment.headroom`), `learn` per pre-trained
    model (metrics/pretrain.json)."""
    return {f"test >= {TEST_BAR:.2f}": valid["test"] >= TEST_BAR,
            f"test - bg_conflict >= {GAP_BAR:.2f}": valid["gap"] >= GAP_BAR,
            f"DFR: test - bg_conflict <= {DFR_GAP_BAR:.2f}": valid["dfr_gap"] <= DFR_GAP_BAR,
            f"few-shot top-1 under the fine-tuning augmentation within {AUGMENTATION_BAR} points (every base)":
                all(abs(f["gap_points"]) <= AUGMENTATION_BAR for f in fit.values()),
            f"oracle concept mass at the token grid >= {ORACLE_MASS_BAR:.2f}":
                all(f["oracle_concept_mass"] >= ORACLE_MASS_BAR for f in fit.values()),
            f"parts-only learnability >= {LEARNABILITY_BAR:.2f} (every pre-trained model)":
                all(v["held_out"] >= LEARNABILITY_BAR for v in learn.values())}


def run(P: config.Params, data_dir: str | Path, pretrained_dir: str | Path, pretrain_metrics: str | Path,
        model_dir: str | Path, metrics_dir: str | Path, figures_dir: str | Path, plots_dir: str | Path,
        reports_dir: str | Path, progress: bool = False) -> World:
    """Stage world: writes the splits to `data_dir`, `<reports_dir>/world.json`, `figures/world_samples.png`, the
    bases to `<model_dir>/<role>/base<b>.pt`, `plots/bases_{history,accuracy}.csv`, `figures/base_accuracy.png`,
    `metrics/base.json` and `reports/base.json`. Reads the pretrained checkpoints in `pretrained_dir` and the
    pretrain stage's `pretrain_metrics` (learnability; none when it is absent)."""
    species = world.make_species(P.world.n_species, P.base.seed)
    guide = pd.DataFrame(world.field_guide(species)).set_index("label")

    manifests = world.generate(P.world, P.base.seed, data_dir, progress=progress)
    corr = pd.DataFrame({s: {**{f"target {k}": v for k, v in m["target"].items()},
                             **{f"measured {k}": v for k, v in m["measured"].items()}, "images": m["n"]}
                         for s, m in manifests.items()}).T
    io.write_json(Path(reports_dir) / "world.json", {s: m["measured"] for s, m in manifests.items()})

    splits = {s: world.load_split(data_dir, s) for s in P.world.splits}
    names = guide["name"].tolist()
    fig = figures.sample_grid(splits, names, per_split=5, parts=world.PARTS)
    samples = figures.save(fig, Path(figures_dir) / "world_samples.png", dpi=90)

    histories, rows, fit = [], [], {}
    eval_splits = [s for s in P.world.splits if s not in ("train", "val", "dfr")]
    shots = fewshot.select(splits["train"]["label"], P.masks.k, P.base.seed)["train"]  # the few-shot training images
    for role, b, model, build, history in pretrain.bases_all(P, pretrained_dir, data_dir, progress=progress):
        checkpoints.save_checkpoint(pretrain.base_path(model_dir, role, b), model, build)
        histories += [{"model": role, "base": b, **h} for h in history]
        if role == "vit":  # does fine-tuning's augmentation shift this base, and how much can its maps still move?
            fit[f"vit{b}"] = {**pretrain.augmentation_gap(model, splits["train"]["images"][shots],
                                                          splits["train"]["label"][shots], P.finetune.scale,
                                                          P.finetune.flip, P.base.seed + b),
                              **alignment.headroom(model, splits["test"], world.concept_parts(species),
                                                   P.evaluate.relevance, 500)}
        probe = dfr.reweight(model, splits["dfr"]["images"], splits["dfr"]["label"], P.bases.dfr_l2)
        scores = accuracy.split_accuracy(model, data_dir, eval_splits, {"dfr": probe.get_classifier()})
        rows += [{"model": role, "base": b, "head": head, "split": s, "top1": a}
                 for head, by_split in scores.items() for s, a in by_split.items()]
    history = pd.DataFrame(histories)
    rows = pd.DataFrame(rows)
    io.write_csv(Path(plots_dir) / "bases_history.csv", history)
    io.write_csv(Path(plots_dir) / "bases_accuracy.csv", rows)

    base = rows[rows["head"] == "base"]
    table = base.pivot_table(index=["model", "base"], columns="split", values="top1", sort=False)[eval_splits]
    probe_table = rows[rows["head"] == "dfr"].pivot_table(index=["model", "base"], columns="split", values="top1",
                                                           sort=False)[eval_splits]
    chance = 1 / P.world.n_species
    fig = figures.accuracy_bars(base.rename(columns={"top1": "accuracy"}), chance, hue="model")
    accuracy_fig = figures.save(fig, Path(figures_dir) / "base_accuracy.png")

    valid = accuracy.validity(rows)
    learn = io.read_json(pretrain_metrics)["models"] if Path(pretrain_metrics).is_file() else {}
    spread = {role: {s: accuracy.spread(g[g["split"] == s].sort_values("base")["top1"]) for s in eval_splits}
              for role, g in base.groupby("model")}
    held = bars(valid, fit, learn)
    R = accuracy.roles(P)
    headline.write(Path(metrics_dir) / "base.json", headline.base(
        {r: {s: v["mean"] for s, v in sp.items()} for r, sp in spread.items()}, R.reference, R.focus,
        {r: v["held_out"] for r, v in learn.items()}))
    io.write_json(Path(reports_dir) / "base.json", {
        "species": P.world.n_species, "bases": P.bases.seeds, "chance": chance,
        "learnability": {r: v["held_out"] for r, v in learn.items()},
        "validity": {**valid, "bars": held}, "accuracy": spread, "fine_tuning_fit": fit})
    return World(species, guide, corr, splits, eval_splits, history, rows, fit, table, probe_table, valid, held,
                 learn, spread, chance, samples, accuracy_fig)
