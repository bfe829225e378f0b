"""Figures of the paper's story, drawn with seaborn/matplotlib from arrays and tables, saved
byte-stable (no timestamps) so committed PNGs change only when their content does."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from cftlib.core.io import atomic_path
from cftlib.data.datasets import load_image
from cftlib.metrics.alignment import part_masks, relevance_maps
from cftlib.metrics.intervals import paired_difference, summarise
from cftlib.models.checkpoints import renormalise
from cftlib.models.factory import predict, to_tensor

PART_COLORS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                        [245, 130, 48], [145, 30, 180], [240, 240, 240], [70, 240, 240], [128, 128, 0]], np.uint8)
"""Background + one colour per world part (body, head, beak, wing, tail, crest, eye, breast, cap)."""


DISPLAY_DPI = 60
"""Resolution of a figure shown in a notebook (`inline`); the saved file keeps its own (`figures.dpi`)."""


def save(fig: plt.Figure, path: str | Path, dpi: int = 110) -> plt.Figure:
    """Write a PNG atomically with no volatile metadata, then close the figure: a notebook shows it once, as
    the cell's value (or `display(save(...))`), never again when the cell ends."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return fig


def inline(dpi: int = DISPLAY_DPI) -> None:
    """Show a notebook's figures as PNGs at `dpi`, so executed notebooks stay small; files are unaffected."""
    # matplotlib_inline comes with the notebook kernel (ipykernel) and pulls in IPython: only a notebook needs it
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("png", dpi=dpi, bbox_inches="tight")


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


def training_curve(history: pd.DataFrame, hue: str | None = None) -> plt.Figure:
    """Loss and accuracy per epoch, train vs val (solid vs dashed per value of `hue`, if given; without it,
    one curve per split; several rows per epoch and hue, e.g. base models, are drawn as their mean and their
    range: no bootstrap, so the same rows draw the same figure)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("loss", "acc")):
        long = history.melt(id_vars=["epoch", *([hue] if hue else [])], value_vars=[f"train_{metric}", f"val_{metric}"],
                            var_name="split", value_name=metric)
        sns.lineplot(data=long, x="epoch", y=metric, hue=hue or "split", style="split" if hue else None,
                     marker="o", errorbar=("pi", 100), ax=ax)
    fig.tight_layout()
    return fig


def accuracy_bars(acc: pd.DataFrame, chance: float, hue: str | None = None) -> plt.Figure:
    """Top-1 accuracy per split (columns `split`, `accuracy`, optional hue), with the chance level: bars the mean
    of the rows (e.g. base models), whiskers their range (seaborn's default, a bootstrap interval, is random)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.barplot(data=acc, x="split", y="accuracy", hue=hue, ax=ax, color=None if hue else "steelblue",
                errorbar=("pi", 100))
    ax.axhline(chance, ls="--", c="gray", lw=1)
    ax.text(len(acc["split"].unique()) - 0.5, chance, "chance", va="bottom", ha="right", fontsize=8, color="gray")
    ax.set_ylim(0, 1)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.2f", fontsize=7)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- evaluation figures

ARM_ORDER = ("none", "ce", "confidence", "dfr", "gradmask", "rrr", "rrda", "robustvit", "cft_fgmask", "cft")
"""Arms left to right: base, plain fine-tuning, CFT's confidence term alone, the DFR reference, the paper's
baselines (GradMask, RRR, RRDA), RobustViT, CFT on foreground masks, CFT."""
ARM_COLORS = dict(zip(("none", "ce", "dfr", "robustvit", "cft_fgmask", "cft", "confidence", "gradmask", "rrr", "rrda"),
                      sns.color_palette("deep", len(ARM_ORDER))))
"""One colour per arm in every figure."""


def _bars(ax, summary: pd.DataFrame, x: str, metric: str, order: list, arms: list) -> None:
    """Grouped bars of `summary[metric]` (x × arm) with `<metric>_ci` whiskers."""
    sns.barplot(data=summary, x=x, y=metric, hue="arm", order=order, hue_order=arms, errorbar=None, ax=ax,
                palette=ARM_COLORS)
    for arm, bars in zip(arms, ax.containers):
        mine = summary[summary["arm"] == arm].set_index(x)
        for key, bar in zip(order, bars):
            if key in mine.index and np.isfinite(mine.loc[key, f"{metric}_ci"]):
                ax.errorbar(bar.get_x() + bar.get_width() / 2, mine.loc[key, metric], yerr=mine.loc[key, f"{metric}_ci"],
                            color="black", lw=0.8, capsize=2)


def note(text: str) -> plt.Figure:
    """A small figure saying why there is nothing to draw (a declared output is still written)."""
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True)
    ax.set_axis_off()
    return fig


def arm_bars(frame: pd.DataFrame, metric: str, order: list, level: float = 0.95, x: str = "split",
             chance: float | None = None, title: str = "", arms: list | None = None, panel: str = "model") -> plt.Figure:
    """Per-run rows (`panel`, arm, seed, `x`, `metric`) → one panel per value of `panel` (the model), bars of
    the mean over seeds per `x` and arm, whiskers the Student-t interval (cftlib.metrics.intervals.mean_ci); no rows:
    a note."""
    if frame.empty:
        return note(f"{title or metric}: nothing measured")
    arms = [a for a in (arms or ARM_ORDER) if a in set(frame["arm"])]
    order = [o for o in order if o in set(frame[x])]
    panels = list(dict.fromkeys(frame[panel]))
    width = 1.3 + 0.9 * len(order) * max(1, len(arms)) / 4
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 2.9 * len(panels)), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        mine = frame[(frame[panel] == p) & frame["arm"].isin(arms)]
        here = [a for a in arms if a in set(mine["arm"])]
        _bars(ax, summarise(mine, ["arm", x], [metric], level), x, metric, order, here)
        if chance is not None:
            ax.axhline(chance, ls="--", c="gray", lw=1)
        ax.set_title(f"{p}: {title}" if title else str(p), fontsize=9)
        ax.set_xlabel("")  # the tick labels name the splits; the legend sits where the label would
        ax.legend(fontsize=7, ncols=len(here), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    return fig


def paired_differences(frame: pd.DataFrame, metric: str, order: list, pairs: list[tuple[str, str]],
                       level: float = 0.95, x: str = "split", title: str = "", panel: str = "model") -> plt.Figure:
    """Per-run rows → one panel per `panel` value: for each (arm, versus) of `pairs` and each `x`, the mean
    difference paired by seed in points with its Student-t interval (cftlib.metrics.intervals.paired_difference),
    beside a zero line: whether an arm beats another, which raw bars on a 0–1 axis hide. No pair measured: a note."""
    rows = []
    for p in dict.fromkeys(frame[panel]):
        for arm, versus in pairs:
            for key in order:
                d = paired_difference(frame, metric, arm, versus, level, **{panel: p, x: key})
                if d is not None:
                    rows.append({panel: p, x: key, "pair": f"{arm} − {versus}", "versus": versus,
                                 "mean": 100 * d["mean"], "ci": 100 * d["ci"] if np.isfinite(d["ci"]) else 0.0})
    if not rows:
        return note(f"{title or metric}: no paired runs")
    diffs = pd.DataFrame(rows)
    panels, labels = list(dict.fromkeys(diffs[panel])), list(dict.fromkeys(diffs["pair"]))
    keys = [k for k in order if k in set(diffs[x])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(1.6 + 0.8 * len(keys), 2.6 * len(panels)), squeeze=False)
    offsets = np.linspace(-0.25, 0.25, len(labels)) if len(labels) > 1 else [0.0]
    for ax, p in zip(axes[:, 0], panels):
        for off, label in zip(offsets, labels):
            mine = diffs[(diffs[panel] == p) & (diffs["pair"] == label)].set_index(x)
            where = [i for i, k in enumerate(keys) if k in mine.index]
            if not where:
                continue
            vals = mine.loc[[keys[i] for i in where]]
            ax.errorbar(np.array(where) + off, vals["mean"], yerr=vals["ci"], fmt="o", ms=4, capsize=2, lw=1,
                        color=ARM_COLORS.get(vals["versus"].iloc[0], "gray"), label=label)
        ax.axhline(0, c="black", lw=0.8)
        ax.set_xticks(range(len(keys)), keys, rotation=15, fontsize=8)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(f"{p}: {title}" if title else str(p), fontsize=9)
        ax.legend(fontsize=7, ncols=len(labels), loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    return fig


def alignment_bars(frame: pd.DataFrame, metrics: list[str], level: float = 0.95) -> plt.Figure:
    """One panel per alignment split: each metric's mean per arm with intervals; the concept parts' share
    of the image (`concept_area`, what a uniform map puts there) dotted where known; no rows: a note."""
    if frame.empty:
        return note("relevance alignment: nothing measured (no alignment splits or segmentation benchmark)")
    splits = list(dict.fromkeys(frame["split"]))
    arms = [a for a in ARM_ORDER if a in set(frame["arm"])]
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.2), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        long = frame[frame["split"] == split].melt(id_vars=["arm", "seed"], value_vars=metrics, var_name="metric")
        _bars(ax, summarise(long, ["arm", "metric"], ["value"], level), "metric", "value", metrics, arms)
        area = frame.loc[frame["split"] == split, "concept_area"].mean()
        if np.isfinite(area):
            ax.axhline(area, ls=":", c="gray", lw=1)
        ax.set_title(split, fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend().remove()
        ax.tick_params(axis="x", rotation=20)
    axes[0, -1].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def part_usage(usage: pd.DataFrame, split: str, model: str = "vit", parts: list[str] | None = None) -> plt.Figure:
    """Arms × parts: the mean share of relevance on each part of the bird (and the background) on `split`, in
    %, over classes and runs (cftlib.metrics.alignment.usage_rows) — where each arm's evidence sits; `parts`: only
    these columns (the grounded masks' "any concept" and "elsewhere", whose concepts differ per class).
    No rows: a note."""
    u = usage[(usage["model"] == model) & (usage["split"] == split)] if len(usage) else usage
    if parts is not None and len(u):
        u = u[u["part"].isin(parts)]
    if u.empty:
        return note(f"part usage: nothing measured on {split} (no part masks)")
    arms = [a for a in ARM_ORDER if a in set(u["arm"])]
    parts = list(dict.fromkeys(u["part"]))
    grid = u.groupby(["arm", "part"])["mass"].mean().unstack("part").reindex(index=arms, columns=parts) * 100
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(parts), 0.9 + 0.38 * len(arms)))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", cbar=False, ax=ax, annot_kws={"fontsize": 7})
    ax.set(xlabel="", ylabel="", title=f"{model}: share of relevance per part on {split} (%)")
    ax.title.set_fontsize(9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def pick_corrected(base, cft, arrays: dict, n: int) -> list[tuple[int, bool]]:
    """Up to n image indices for the qualitative figure: first those the base model gets wrong and CFT right
    (flag True), then those both get right (False)."""
    return corrected(predict(base, arrays["images"]).argmax(1), predict(cft, arrays["images"]).argmax(1),
                     arrays["label"], n)


def corrected(base_pred: np.ndarray, cft_pred: np.ndarray, labels: np.ndarray, n: int) -> list[tuple[int, bool]]:
    """Up to n indices: first where the base prediction is wrong and CFT's right (flag True), then where both
    are right (False)."""
    b, c = base_pred == labels, cft_pred == labels
    fixed = np.flatnonzero(~b & c)[:n]
    both = np.flatnonzero(b & c)[:n - len(fixed)]
    return [(int(i), True) for i in fixed] + [(int(i), False) for i in both]


def relevance_grid(base, cft, arrays: dict, picks: list[tuple[int, bool]], class_parts: list[list[str]],
                   names: list[str], method: str) -> plt.Figure:
    """The paper's qualitative figure: rows of image | concept mask | base relevance | CFT relevance, each
    map of the model's own prediction, titled with it (✓/✗); rows CFT corrected are marked."""
    idx = [i for i, _ in picks]
    images, labels = arrays["images"][idx], arrays["label"][idx]
    concept = part_masks(arrays["parts"][idx], labels, class_parts)
    maps = {k: (relevance_maps(m, images, method), predict(m, images).argmax(1)) for k, m in (("base", base), ("CFT", cft))}
    fig = _grid(images, labels, [f for _, f in picks], concept, maps, names)
    fixed = sum(f for _, f in picks)
    fig.suptitle(f"{fixed} image{'s' * (fixed != 1)} the base gets wrong and CFT right" + (
        f", then {len(picks) - fixed} both get right" if fixed < len(picks) else "") if fixed else
        "no image here that the base gets wrong and CFT right: images both get right", fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig


def benchmark_grid(base, cft, bench, n: int, names: list[str], method: str, build: dict | None = None,
                   batch_size: int = 64, amp: bool = False) -> plt.Figure:
    """The qualitative figure on a benchmark (image | base relevance | CFT relevance; ImageNet has no concept
    masks): among `bench`'s images (Resize 256, CenterCrop 224, normalised as the ViT of `build` was
    fine-tuned), up to n the base model gets wrong and CFT right, then both right, on the models' device."""
    images = np.stack([load_image(p) for p in bench.paths])

    @torch.no_grad()
    def argmax(model):
        device = next(model.parameters()).device
        model.eval()
        return np.concatenate([model(renormalise(to_tensor(images[i:i + batch_size]), build or {}).to(device))
                               .argmax(1).cpu().numpy() for i in range(0, len(images), batch_size)])

    preds = {"base": argmax(base), "CFT": argmax(cft)}
    picks = corrected(preds["base"], preds["CFT"], bench.labels, n)
    if not picks:
        return note(f"{bench.name}: no image that both models, or CFT alone, get right")
    idx = [i for i, _ in picks]
    maps = {k: (relevance_maps(m, images[idx], method, batch_size, amp, build), preds[k][idx])
            for k, m in (("base", base), ("CFT", cft))}
    return _grid(images[idx], bench.labels[idx], [f for _, f in picks], None, maps, names)


def _grid(images, labels, fixed_flags, concept, maps, names) -> plt.Figure:
    """Rows of image | concept mask (when given) | one relevance overlay per model, titled with its prediction."""
    first = 1 if concept is None else 2
    fig, axes = plt.subplots(len(images), first + len(maps), figsize=(1.6 * (first + len(maps)), 1.7 * len(images)),
                             squeeze=False)
    for r, fixed in enumerate(fixed_flags):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(f"{names[labels[r]]}{' (corrected)' if fixed else ''}", fontsize=6)
        if concept is not None:
            axes[r, 1].imshow(images[r])
            axes[r, 1].imshow(np.ma.masked_where(~concept[r], concept[r]), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
            axes[r, 1].set_title("concept parts", fontsize=6)
        for c, (key, (rel, pred)) in enumerate(maps.items(), start=first):
            axes[r, c].imshow(images[r])
            axes[r, c].imshow(rel[r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            mark = "✓" if pred[r] == labels[r] else "✗"
            axes[r, c].set_title(f"{key}: {names[pred[r]]} {mark}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig
