"""Fine-tuning runs: the arms (CFT, RobustViT, baselines), the (model, arm, base, seed) plan of a profile, and
where a run's folder is and how it is read back — what every reader of a run needs, without the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from cftlib import relevance
from cftlib.core import config
from cftlib.models import checkpoints


class FinetuneError(ValueError):
    """A fine-tuning setup that cannot run (arm, relevance method, base model); the message says why."""


# ----------------------------------------------------------------------------- arms

@dataclass(frozen=True)
class Arm:
    """A fine-tuning arm. mask: which mask the alignment term reads (concept union, foreground) or None;
    loss: "bce" (CFT), "mse" (RobustViT), "ce" (labels only) or a baseline's (`baselines.KINDS`); trains: False
    for the base model; align: False
    drops the alignment term from the loss (λ_align = 0; the maps are still computed and logged)."""
    name: str
    mask: str | None
    loss: str
    trains: bool
    description: str
    align: bool = True


ARMS = {a.name: a for a in (
    Arm("cft", "concept", "bce", True, "CFT: concept masks, BCE alignment + confidence term (the paper)"),
    Arm("cft_fgmask", "foreground", "bce", True, "CFT's loss on foreground masks (concepts vs segmentation)"),
    Arm("robustvit", "foreground", "mse", True, "RobustViT: foreground masks, MSE alignment + confidence term"),
    Arm("ce", None, "ce", True, "plain fine-tuning: cross-entropy on the labels of the same images"),
    Arm("confidence", "concept", "bce", True, "CFT's confidence term alone (λ_align = 0): is a gain CFT shows the "
        "self-distillation term's rather than the masks'?", align=False),
    Arm("gradmask", "foreground", "gradmask", True, "GradMask (Simpson et al. 2019): label CE + the absolute input "
        "gradient of the class score outside the foreground (cftlib.training.baselines)"),
    Arm("rrr", "foreground", "rrr", True, "RRR (Ross et al. 2017): label CE + the squared input gradient of the "
        "summed log-probabilities outside the foreground + L2 on the weights"),
    Arm("rrda", "foreground", "rrda", True, "RRDA (Santos & Zanchettin 2023): label CE on images whose context is "
        "taken from another image of the batch"),
    Arm("none", "concept", "bce", False, "the base model, not fine-tuned (validated with CFT's loss)"),
    Arm("dfr", "concept", "bce", False, "DFR reference: the base's last layer refitted on labelled, habitat-balanced "
        "images no other arm sees (cftlib.training.dfr; the world only)"),
)}
FOREGROUND_ARMS = tuple(a.name for a in ARMS.values() if a.mask == "foreground")  # they need foreground masks
REPORTED = ("none", "cft")
"""Arms every later stage needs: each claim, table and figure compares CFT with the base model."""


def get_arm(name: str) -> Arm:
    try:
        return ARMS[name]
    except KeyError:
        raise FinetuneError(f"unknown arm {name!r}; choose one of {sorted(ARMS)}") from None


@dataclass(frozen=True)
class RunSpec:
    """One run: model role ("vit": the base ViT; "cnn": the CNN), arm, seed, relevance method, lr, which
    base model (index into the world stage's bases) it starts from, and the seed of its class subset (which
    classes it fine-tunes on, `fewshot.subset`). Seeds are numbered across bases, so the seed alone names the
    (base, subset) pair that differences between arms are paired by."""
    model: str
    arm: str
    seed: int
    relevance: str
    lr: float
    base: int = 0
    subset: int = 0

    @property
    def name(self) -> str:
        return f"{self.model}/{self.arm}/seed{self.seed}"

    def folder(self, out_dir: str | Path) -> Path:
        return Path(out_dir) / self.name


def plan(cfg: config.Finetune, seed: int, bases: int = 1) -> list[RunSpec]:
    """Every (model, arm, base, seed) run of the parameters — `cfg.seeds` seeds (an arm of `cfg.arm_seeds` its
    own, fewer: the first of them) on each of `bases` base models, seed `seed + base * cfg.seeds + i`, its class
    subset `seed + i` (each subset on every base: a crossed design, so arms pair by seed) — checked before any
    work: a wrong arm or a relevance method that cannot explain the model fails naming it."""
    runs = []
    for model, arms, method, lr in (("vit", cfg.arms, cfg.relevance, cfg.lr),
                                    ("cnn", cfg.cnn.arms, cfg.cnn.relevance, cfg.cnn.lr)):
        kinds = relevance.get(method).model_kinds
        if arms and model not in kinds:
            raise FinetuneError(f"relevance method {method!r} explains {'/'.join(kinds)} models, not a {model}")
        runs += [RunSpec(model, get_arm(a).name, seed + b * cfg.seeds + i, method,
                         cfg.arm_lr.get(a, lr) if model == "vit" else lr, b, seed + i)
                 for a in arms for b in range(bases)
                 for i in range(cfg.arm_seeds.get(a, cfg.seeds) if model == "vit" else cfg.seeds)]
    return runs


def collect(runs: list[RunSpec], out_dir: str | Path, name: str) -> pd.DataFrame:
    """`history.csv` or `epochs.csv` of every run, stacked, with model, arm and seed columns."""
    frames = [pd.read_csv(r.folder(out_dir) / name).assign(model=r.model, arm=r.arm, base=r.base, seed=r.seed)
              for r in runs]
    return pd.concat(frames, ignore_index=True)


def load_run(spec: RunSpec, out_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, dict]:
    """A run's `best` or `last` model (eval mode) and its checkpoint config."""
    return checkpoints.load_checkpoint(spec.folder(out_dir) / f"{which}.pt")
