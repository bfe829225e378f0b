"""Figures of the paper's story, drawn with seaborn/matplotlib from arrays and tables, saved
byte-stable (no timestamps) so committed PNGs change only when their content does."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from cftlib.core.io import atomic_path
from cftlib.metrics.intervals import paired_difference, summarise

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


def sample_grid(splits: dict[str, dict], names: list[str], per_split: int = 6,
                parts: tuple[str, ...] = ()) -> plt.Figure:
    """Rows = splits; each sample shown as image and part overlay, titled with its species; with `parts` (the
    world's part names), a legend of their colours under the grid, saved with it."""
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
    if parts:
        fig.legend(handles=[Patch(facecolor=PART_COLORS[i + 1] / 255, edgecolor="gray", label=p)
                            for i, p in enumerate(parts)], loc="upper center", bbox_to_anchor=(0.5, 0),
                   ncols=len(parts), fontsize=7, frameon=False, title="part labels (overlays)", title_fontsize=7)
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


def _chance(ax, chance: float | None) -> None:
    """The chance level (a fraction) as a dashed line on a % axis, labelled for the legend."""
    if chance is not None:
        ax.axhline(100 * chance, ls="--", c="gray", lw=1, label=f"chance, {100 * chance:.3g} %")


def accuracy_bars(acc: pd.DataFrame, chance: float, hue: str | None = None) -> plt.Figure:
    """Top-1 accuracy per split in % (columns `split`, `accuracy` a fraction, optional hue), with the chance
    level: bars the mean of the rows (e.g. base models), whiskers their range, as the title says (seaborn's default,
    a bootstrap interval, is random); each bar's value printed inside it, below the whisker."""
    data = acc.assign(accuracy=100 * acc["accuracy"])
    n = int(data.groupby(["split", *([hue] if hue else [])]).size().max())
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.barplot(data=data, x="split", y="accuracy", hue=hue, ax=ax, color=None if hue else "steelblue",
                errorbar=("pi", 100) if n > 1 else None, err_kws={"linewidth": 1})
    _chance(ax, chance)
    for bars in ax.containers:
        ax.bar_label(bars, labels=[f"{b.get_height():.0f}" if np.isfinite(b.get_height()) else "" for b in bars],
                     label_type="center", fontsize=6, color="white")
    ax.set(ylim=(0, 100), xlabel="", ylabel="top-1 (%)")
    spread = f": bar = mean of {n} models, whisker = their range (min–max)" if n > 1 else ""
    ax.set_title(f"top-1 per split{spread}", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title=hue, title_fontsize=7, frameon=False)
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
                ax.errorbar(bar.get_x() + bar.get_width() / 2, mine.loc[key, metric],
                            yerr=mine.loc[key, f"{metric}_ci"], color="black", lw=0.8, capsize=2)


def note(text: str) -> plt.Figure:
    """A small figure saying why there is nothing to draw (a declared output is still written)."""
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True)
    ax.set_axis_off()
    return fig


def arm_bars(frame: pd.DataFrame, metric: str, order: list, level: float = 0.95, x: str = "split",
             chance: float | None = None, title: str = "", arms: list | None = None, panel: str = "model",
             ylabel: str | None = None) -> plt.Figure:
    """Per-run rows (`panel`, arm, seed, `x`, `metric` a fraction) → one panel per value of `panel` (the model),
    bars of the mean over seeds per `x` and arm in % (points, for a difference such as a gap: `ylabel` says
    which), as the tables give them, whiskers the Student-t interval (cftlib.metrics.intervals.mean_ci), `chance`
    a labelled line; no rows: a note."""
    if frame.empty:
        return note(f"{title or metric}: nothing measured")
    frame = frame.assign(**{metric: 100 * frame[metric]})
    arms = [a for a in (arms or ARM_ORDER) if a in set(frame["arm"])]
    order = [o for o in order if o in set(frame[x])]
    panels = list(dict.fromkeys(frame[panel]))
    width = 1.3 + 0.9 * len(order) * max(1, len(arms)) / 4
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 2.9 * len(panels)), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        mine = frame[(frame[panel] == p) & frame["arm"].isin(arms)]
        here = [a for a in arms if a in set(mine["arm"])]
        _bars(ax, summarise(mine, ["arm", x], [metric], level), x, metric, order, here)
        _chance(ax, chance)
        ax.set_title(f"{p}: {title}" if title else str(p), fontsize=9)
        ax.set_xlabel("")  # the tick labels name the splits; the legend sits where the label would
        ax.set_ylabel(ylabel or f"{metric} (%)")
        ax.tick_params(axis="x", rotation=15)
        # about an inch each at fontsize 7: rows, not a legend wider than the panel
        entries = len(here) + (chance is not None)
        ax.legend(fontsize=7, ncols=max(1, min(entries, int(width - 0.5))), loc="upper center",
                  bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.tight_layout()
    return fig


def paired_differences(frame: pd.DataFrame, metric: str, order: list, pairs: list[tuple[str, str]],
                       level: float = 0.95, x: str = "split", title: str = "", panel: str = "model") -> plt.Figure:
    """Per-run rows → one panel per `panel` value: for each (arm, versus) of `pairs` and each `x`, the mean
    difference paired by seed in points with its Student-t interval (cftlib.metrics.intervals.paired_difference),
    beside a zero line: whether an arm beats another, which bars side by side hide. No pair measured: a note."""
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


def flip_bars(rows: pd.DataFrame, split: str, level: float = 0.95, panel: str = "model") -> plt.Figure:
    """Per-run flip rows (`panel`, arm, seed, split, images, corrected, regressed; cftlib.stages.evaluate.flip_rows)
    → one panel per model: per arm, the images of `split` it corrects (bar up) and breaks (bar down) against its
    base model, means over runs with Student-t whiskers, and their difference (the change in top-1, in images)
    as a diamond — a net change near zero can hide much churn. No rows: a note."""
    f = rows[rows["split"] == split] if len(rows) else rows
    if f.empty:
        return note(f"corrections and regressions: nothing measured on {split}")
    f = f.assign(regressed=-f["regressed"], net=f["corrected"] - f["regressed"])
    panels = list(dict.fromkeys(f[panel]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(1.4 + 0.55 * f["arm"].nunique(), 2.6 * len(panels)),
                             squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        mine = f[f[panel] == p]
        arms = [a for a in ARM_ORDER if a in set(mine["arm"])]
        s = summarise(mine, ["arm"], ["corrected", "regressed", "net"], level).set_index("arm").loc[arms]
        x = np.arange(len(arms))
        colors = [ARM_COLORS[a] for a in arms]
        for key, alpha in (("corrected", 1.0), ("regressed", 0.45)):
            ax.bar(x, s[key], color=colors, alpha=alpha, yerr=s[f"{key}_ci"].fillna(0), capsize=2,
                   error_kw={"lw": 0.8})
        ax.plot(x, s["net"], "D", color="black", ms=4)
        ax.axhline(0, c="black", lw=0.8)
        ax.set_xticks(x, arms, rotation=15, fontsize=8)
        ax.set_xlim(-0.6, f["arm"].nunique() - 0.4)  # bars of one width in every panel
        ax.set_ylabel(f"images of {int(mine['images'].iloc[0])}", fontsize=8)
        ax.set_title(f"{p}, {split}: corrected (up) and broken (down) against the base; ◆ net", fontsize=9)
    fig.tight_layout()
    return fig


ALIGNMENT_NAMES = {"pixAcc": "pixel accuracy", "mIoU": "mIoU", "mAP": "mAP", "concept_mass": "concept mass",
                   "pointing": "pointing game"}
"""Panel titles of the alignment metrics (cftlib.metrics.alignment), each a share or a score in %."""


def alignment_bars(frame: pd.DataFrame, metrics: list[str], level: float = 0.95) -> plt.Figure:
    """One panel per alignment metric, in % as the tables give them, each on its own scale: per split the mean
    per arm with intervals; on the concept-mass panel, the concept parts' share of the image (`concept_area`),
    which a uniform map would put there, dotted and labelled. No rows: a note."""
    if frame.empty:
        return note("relevance alignment: nothing measured (no alignment splits or segmentation benchmark)")
    splits = list(dict.fromkeys(frame["split"]))
    arms = [a for a in ARM_ORDER if a in set(frame["arm"])]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (1.0 + 0.16 * len(arms) * len(splits)), 2.7 * rows),
                             squeeze=False)
    handles, labels = [Patch(color=ARM_COLORS[a]) for a in arms], list(arms)
    for ax, metric in zip(axes.flat, metrics):
        data = frame.assign(**{metric: 100 * frame[metric]})
        _bars(ax, summarise(data, ["arm", "split"], [metric], level), "split", metric, splits, arms)
        ax.get_legend().remove()  # the arms' legend is the figure's
        area = 100 * frame.groupby("split", sort=False)["concept_area"].mean() if "concept_area" in frame else {}
        at = [i for i, split in enumerate(splits) if np.isfinite(area.get(split, np.nan))]
        if metric == "concept_mass" and at:
            ax.hlines([area[splits[i]] for i in at], np.array(at) - 0.45, np.array(at) + 0.45, colors="black",
                      linestyles=":", lw=1.2, label="uniform map")
            handles.append(Line2D([], [], color="black", ls=":", lw=1.2))
            labels.append("uniform map (concept mass: the parts' share of the image)")
        ax.set(title=ALIGNMENT_NAMES.get(metric, metric), xlabel="", ylabel="%")
        ax.title.set_fontsize(9)
    for ax in axes.flat[len(metrics):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0), ncols=min(len(labels), 6), fontsize=7,
               frameon=False)
    return fig


def part_usage(usage: pd.DataFrame, split: str, model: str = "vit", parts: list[str] | None = None,
               outside: tuple[str, ...] = ("background",)) -> plt.Figure:
    """Arms × parts: the mean share of relevance on each part of the bird (and the background) on `split`, in
    %, over classes and runs (cftlib.metrics.alignment.usage_rows) — where each arm's evidence sits; `parts`: only
    these columns (the grounded masks' "any concept" and "elsewhere", whose concepts differ per class). The colours
    and their bar scale the parts alone; the columns `outside` the bird (or every concept mask), which hold most
    of the relevance, are printed beside them in grey. No rows: a note."""
    u = usage[(usage["model"] == model) & (usage["split"] == split)] if len(usage) else usage
    if parts is not None and len(u):
        u = u[u["part"].isin(parts)]
    if u.empty:
        return note(f"part usage: nothing measured on {split} (no part masks)")
    arms = [a for a in ARM_ORDER if a in set(u["arm"])]
    parts = list(dict.fromkeys(u["part"]))
    grid = u.groupby(["arm", "part"])["mass"].mean().unstack("part").reindex(index=arms, columns=parts) * 100
    inner = [p for p in parts if p not in outside] or parts
    outer = [p for p in parts if p not in inner]
    fig, axes = plt.subplots(1, 2 + bool(outer), figsize=(1.6 + 0.62 * len(parts), 0.9 + 0.38 * len(arms)),
                             width_ratios=[len(inner), *[len(outer)] * bool(outer), 0.25], squeeze=False)
    ax, cax = axes[0, 0], axes[0, -1]
    sns.heatmap(grid[inner], annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar_ax=cax,
                annot_kws={"fontsize": 7}, cbar_kws={"label": "share of relevance (%)"})
    if outer:
        sns.heatmap(grid[outer], annot=True, fmt=".1f", cmap=ListedColormap(["#e6e6e6"]),
                    cbar=False, ax=axes[0, 1], annot_kws={"fontsize": 7, "color": "black"}, yticklabels=False)
        axes[0, 1].set(xlabel="", ylabel="")
        axes[0, 1].tick_params(labelsize=7)
    ax.set(xlabel="", ylabel="")
    ax.tick_params(labelsize=7)
    cax.tick_params(labelsize=7)
    cax.yaxis.label.set_fontsize(7)
    fig.suptitle(f"{model}: share of relevance per part on {split} (%)" +
                 (f"; {', '.join(outer)} in grey, off the colour scale" if outer else ""), fontsize=9)
    fig.tight_layout()
    return fig


def flip_title(where: str, counts: dict[str, int], picks: list[tuple[int, str]]) -> str:
    """The qualitative figure's title: how many images CFT corrects and breaks among all of `where`'s, and which
    kinds its rows show."""
    shown = [f"{sum(k == kind for _, k in picks)} {kind}" for kind in dict.fromkeys(k for _, k in picks)]
    return (f"{where}, {counts['images']} images: CFT corrects {counts['corrected']} the base gets wrong and breaks "
            f"{counts['regressed']} it gets right (net {counts['corrected'] - counts['regressed']:+d})\n"
            f"rows: {', '.join(shown)}")


def relevance_grid(images: np.ndarray, labels: np.ndarray, kinds: list[str], concept: np.ndarray | None,
                   maps: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], title: str) -> plt.Figure:
    """The paper's qualitative figure (cftlib.metrics.examples): rows of image | concept mask (when given) | one
    relevance overlay per model, each map of the model's own prediction (`maps`: model → (maps, predictions)),
    titled with it (✓/✗); constrained layout keeps `title` clear of the column titles."""
    first = 1 if concept is None else 2
    fig, axes = plt.subplots(len(images), first + len(maps), figsize=(1.6 * (first + len(maps)), 1.7 * len(images)),
                             squeeze=False, layout="constrained")
    for r, kind in enumerate(kinds):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(names[labels[r]] + ("" if kind == "both right" else f" ({kind})"), fontsize=6)
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
    fig.suptitle(title, fontsize=6)
    return fig


# ----------------------------------------------------------------------------- fine-tuning figures

def arm_curves(panels: list[tuple[pd.DataFrame, str, str, str]], log: tuple[str, ...] = (), band: bool = True
               ) -> plt.Figure:
    """Rows: models; columns: one per (frame, x, y, title) of `panels`, the frames' rows per run (model, arm,
    seed, `x`, `y`): each run's mean `y` per `x` (a training epoch's steps), then per arm the mean over runs,
    with `band` their range (no bootstrap). Each model keeps its own scale; `log`: the y columns drawn on a log
    axis. The legend of the arms stands beside each row, its entries with their lines."""
    models = list(dict.fromkeys(m for frame, *_ in panels for m in frame["model"]))
    fig, axes = plt.subplots(len(models), len(panels), figsize=(3.6 * len(panels) + 1.2, 2.6 * len(models)),
                             squeeze=False)
    for r, model in enumerate(models):
        arms = []
        for ax, (frame, x, y, title) in zip(axes[r], panels):
            mine = frame[frame["model"] == model]
            per_run = mine.groupby(["arm", "seed", x], sort=False)[y].mean().reset_index()
            here = [a for a in ARM_ORDER if a in set(per_run["arm"])]
            arms += [a for a in here if a not in arms]
            if here:
                sns.lineplot(data=per_run, x=x, y=y, hue="arm", hue_order=here, palette=ARM_COLORS,
                             errorbar=("pi", 100) if band else None, err_kws={"alpha": 0.15}, marker="o",
                             markersize=3, mew=0, lw=1, legend=False, ax=ax)
            ax.set(title=f"{model}: {title}", ylabel="", yscale="log" if y in log else "linear")
            ax.title.set_fontsize(9)
        axes[r, -1].legend([Line2D([], [], color=ARM_COLORS[a], marker="o", ms=3, lw=1) for a in arms], arms,
                           loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def selected_epochs(epochs: pd.DataFrame, metric: str = "val_cft_align", label: str = "held-out alignment loss"
                    ) -> plt.Figure:
    """One panel per model and fine-tuned arm: each run's `metric` per epoch as its change from epoch 0 (the
    base; runs differ by their held-out classes, their changes compare), thin grey, their mean black, and a dot
    on the epoch model selection kept (the last with `best` = 1; none: epoch 0). Runs with epoch 0 only (the
    base, DFR) are left out."""
    trained = epochs.groupby(["model", "arm"], sort=False)["epoch"].transform("max") > 0
    e = epochs[trained]
    models = list(dict.fromkeys(e["model"]))
    arms = {m: [a for a in ARM_ORDER if a in set(e.loc[e["model"] == m, "arm"])] for m in models}
    cols = max(len(a) for a in arms.values())
    fig, axes = plt.subplots(len(models), cols, figsize=(1.7 * cols, 1.9 * len(models)), squeeze=False,
                             sharey="row")
    for r, model in enumerate(models):
        for ax, arm in zip(axes[r], arms[model]):
            mine = e[(e["model"] == model) & (e["arm"] == arm)].sort_values("epoch")
            change = mine[metric] - mine.groupby("seed")[metric].transform("first")
            for _, run in mine.assign(change=change).groupby("seed", sort=False):
                ax.plot(run["epoch"], run["change"], c="0.7", lw=0.6)
                kept = run.loc[run["best"] == 1, "epoch"].max() if (run["best"] == 1).any() else 0
                ax.plot(kept, run.loc[run["epoch"] == kept, "change"].iloc[0], "o", ms=3,
                        color=ARM_COLORS[arm], mec="black", mew=0.3)
            mean = mine.assign(change=change).groupby("epoch")["change"].mean()
            ax.plot(mean.index, mean.to_numpy(), c="black", lw=1.2)
            ax.axhline(0, c="gray", lw=0.6, ls="--")
            ax.set_title(f"{model} {arm}", fontsize=8)
            ax.set_xticks(sorted(set(mine["epoch"])))
            ax.tick_params(labelsize=7)
        axes[r, 0].set_ylabel("Δ vs epoch 0 (base)", fontsize=7)
        for ax in axes[r, len(arms[model]):]:
            ax.set_axis_off()
    fig.suptitle(f"{label} per epoch, each run (grey) and their mean (black); dot: the epoch selection kept",
                 fontsize=8)
    fig.supxlabel("epoch", fontsize=8)
    fig.tight_layout()
    return fig


def relevance_columns(images: np.ndarray, columns: dict[str, np.ndarray], masks: np.ndarray | None = None,
                      labels: list[str] | None = None) -> plt.Figure:
    """Rows: images (H×W×3 in [0, 1]), labelled; columns: the image, then each relevance map (N×H×W in [0, 1])
    over it; the mask (N×H×W), when given, outlined dark on a light halo on every panel, visible on any
    background."""
    fig, axes = plt.subplots(len(images), 1 + len(columns), figsize=(1.25 * (1 + len(columns)), 1.3 * len(images)),
                             squeeze=False)
    for i, row in enumerate(axes):
        row[0].imshow(images[i])
        row[0].set_ylabel(labels[i] if labels else "", fontsize=6)
        for ax, (title, r) in zip(row[1:], columns.items()):
            ax.imshow(images[i])
            ax.imshow(r[i], cmap="jet", alpha=0.55, vmin=0, vmax=1)
            if i == 0:
                ax.set_title(title, fontsize=6)
        if masks is not None:
            for ax in row:
                ax.contour(masks[i], levels=[0.5], colors="white", linewidths=1.6)
                ax.contour(masks[i], levels=[0.5], colors="black", linewidths=0.6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    return fig


def image_row(images: list[np.ndarray], titles: list[str]) -> plt.Figure:
    """One row of images (H×W×3), each titled: a class's first image, as the imagenet stage shows its classes."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.8 * len(images), 2.2), squeeze=False)
    for ax, image, title in zip(axes[0], images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=7)
        ax.set_axis_off()
    return fig


def concept_samples(images: list[np.ndarray], titles: list[str], parts: list[np.ndarray] | None = None) -> plt.Figure:
    """Columns: one image per class, titled with its name and concepts; with `parts` (the world's part-label maps)
    a second row paints them over the image."""
    rows = 2 if parts is not None else 1
    fig, axes = plt.subplots(rows, len(images), figsize=(1.9 * len(images), 2.2 * rows), squeeze=False)
    for j, (image, title) in enumerate(zip(images, titles)):
        axes[0, j].imshow(image)
        axes[0, j].set_title(title, fontsize=6)
        if parts is not None:
            axes[1, j].imshow(overlay(image, parts[j]))
    for ax in axes.flat:
        ax.set_axis_off()
    return fig


def mask_rows(images: list[np.ndarray], panels: list[list[tuple[str, np.ndarray | None]]], ncol: int) -> plt.Figure:
    """Rows: images (H×W×3), each followed by its titled masks (H×W, painted over it; None: the image alone) in
    `ncol` columns: the masks stage's concept masks, their union and the exact target."""
    fig, axes = plt.subplots(len(images), ncol, figsize=(1.3 * ncol, 1.45 * len(images)), squeeze=False)
    for row, image, masks in zip(axes, images, panels):
        for ax, (title, mask) in zip(row, masks):
            ax.imshow(image if mask is None else overlay(image, mask.astype(np.uint8) * 4))
            ax.set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig
