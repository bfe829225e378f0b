"""Figures of the paper's story, drawn with seaborn/matplotlib from arrays and tables, saved
byte-stable (no timestamps) so committed PNGs change only when their content does."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .io import atomic_path

PART_COLORS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                        [245, 130, 48], [145, 30, 180], [240, 240, 240]], np.uint8)
"""Background + one colour per world part (body, head, beak, wing, tail, crest, eye)."""


def save(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write a PNG atomically with no volatile metadata."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def overlay(image: np.ndarray, parts: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Part-label map painted over an image (uint8 H×W×3)."""
    col = PART_COLORS[parts].astype(np.float32)
    a = np.where(parts[..., None] > 0, alpha, 0.0)
    return (image * (1 - a) + col * a).astype(np.uint8)


def sample_grid(splits: dict[str, dict], names: list[str], per_split: int = 6) -> plt.Figure:
    """Rows = splits; each sample shown as image and part overlay, titled with its species."""
    fig, axes = plt.subplots(len(splits), 2 * per_split, figsize=(1.1 * 2 * per_split, 1.25 * len(splits)),
                             squeeze=False)
    for r, (split, a) in enumerate(splits.items()):
        for c in range(per_split):
            axes[r, 2 * c].imshow(a["images"][c])
            axes[r, 2 * c + 1].imshow(overlay(a["images"][c], a["parts"][c]))
            axes[r, 2 * c].set_title(names[a["label"][c]], fontsize=6)
        axes[r, 0].set_ylabel(split, fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    return fig


def part_legend(parts: tuple[str, ...]) -> plt.Figure:
    """A strip naming each part colour."""
    fig, ax = plt.subplots(figsize=(1.2 * len(parts), 0.5))
    ax.imshow(PART_COLORS[None, 1:len(parts) + 1])
    ax.set_xticks(range(len(parts)), parts, fontsize=8)
    ax.set_yticks([])
    return fig


def training_curve(history: pd.DataFrame) -> plt.Figure:
    """Loss and accuracy per epoch, train vs val."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("loss", "acc")):
        long = history.melt(id_vars="epoch", value_vars=[f"train_{metric}", f"val_{metric}"],
                            var_name="split", value_name=metric)
        sns.lineplot(data=long, x="epoch", y=metric, hue="split", marker="o", ax=ax)
    fig.tight_layout()
    return fig


def accuracy_bars(acc: pd.DataFrame, chance: float, hue: str | None = None) -> plt.Figure:
    """Top-1 accuracy per split (columns `split`, `accuracy`, optional hue), with the chance level."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.barplot(data=acc, x="split", y="accuracy", hue=hue, ax=ax, color=None if hue else "steelblue")
    ax.axhline(chance, ls="--", c="gray", lw=1)
    ax.text(len(acc["split"].unique()) - 0.5, chance, "chance", va="bottom", ha="right", fontsize=8, color="gray")
    ax.set_ylim(0, 1)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.2f", fontsize=7)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig
