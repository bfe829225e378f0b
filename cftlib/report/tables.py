"""The evaluate stage's tables: paper-style tables (arms × splits, mean ± 95% CI over seeds) as Markdown and
CSV, the concept-usage table, and the stage's full metrics dict."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cftlib.core.io import atomic_path, nan_to_none, write_csv
from cftlib.data.datasets import IN_DISTRIBUTION
from cftlib.metrics.alignment import ELSEWHERE


def fmt(mean: float, ci: float, scale: float = 100.0, digits: int = 1) -> str:
    """"81.2 ± 0.4" (a single run: no interval)."""
    if math.isnan(ci):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"


def pivot(summary: pd.DataFrame, rows: str, cols: str, metric: str, order: list | None = None,
          scale: float = 100.0) -> pd.DataFrame:
    """A table of "mean ± ci" strings: `rows` × `cols` of one metric of a `summarise` frame."""
    cells = summary.assign(cell=[fmt(m, c, scale) for m, c in zip(summary[metric], summary[f"{metric}_ci"])])
    out = cells.pivot(index=rows, columns=cols, values="cell")
    if order is not None:
        out = out[[c for c in order if c in out.columns]]
    return out.reindex([r for r in dict.fromkeys(summary[rows]) if r in out.index])


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of a frame (index included)."""
    frame = frame.reset_index()
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_table(frame: pd.DataFrame, path: str | Path, title: str) -> None:
    """`<path>.md` (titled Markdown) and `<path>.csv`."""
    path = Path(path)
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text(f"# {title}\n\n{markdown(frame)}")
    write_csv(path.with_suffix(".csv"), frame.reset_index())


PAPER_NAMES = {"test": "IN val", "v2": "IN-v2", "bg_conflict": "IN-A", "pose": "ObjectNet / SI-Score",
               "rendition": "IN-R"}
"""The paper's column each world split stands in for (README's split table)."""
BENCHMARK_NAMES = {"imagenet_val": "ImageNet val", "imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R",
                   "imagenet_sketch": "ImageNet-Sketch", "imagenet_v2": "ImageNet-v2", "objectnet": "ObjectNet",
                   "si_location": "SI-Score location", "si_rotation": "SI-Score rotation", "si_size": "SI-Score size"}
"""The paper's name of each benchmark of `evaluate.benchmarks`."""


def table(summary: pd.DataFrame, metrics: list[str], columns: list[str], order: list | None = None) -> pd.DataFrame:
    """Rows "model / arm", one column per value of `columns` (joined by " · ") and metric, cells "mean ± ci"
    in % of a `summarise` frame; `order` sorts the first column key. No rows: an empty table."""
    if summary.empty:
        return pd.DataFrame(index=pd.Index([], name="model / arm"))
    s = summary.assign(run=summary["model"] + " / " + summary["arm"])
    key = s[columns].astype(str).agg(" · ".join, axis=1)
    parts = []
    for m in metrics:
        col = key + (f" · {m}" if len(metrics) > 1 else "")
        parts.append(pivot(s.assign(column=col), "run", "column", m))
    out = pd.concat(parts, axis=1)
    if order is not None:
        rank = {v: i for i, v in enumerate(order)}
        out = out[sorted(out.columns,
                         key=lambda c: (rank.get(c.split(" · ")[0], len(rank)), list(out.columns).index(c)))]
    out.index.name = "model / arm"
    return out


def main_table(summary: pd.DataFrame, splits: list[str], metric: str | None = None) -> pd.DataFrame:
    """The paper's main table: (model, arm) × split over all images. On the world's splits, top-1 (or `metric`),
    columns titled "split (paper benchmark)". On the benchmarks (paper scale), top-1 and top-5 side by side as the
    paper reports them (or `metric` alone), columns titled "paper name (in-distribution | OOD) · metric", in the
    order of `splits`."""
    paper_scale = bool(splits) and all(s in BENCHMARK_NAMES for s in splits)
    metrics = [metric] if metric else ["top1", "top5"] if paper_scale else ["top1"]
    t = table(summary[summary["group"] == "all"], metrics, ["split"], splits)
    if paper_scale:
        title = {b: f"{BENCHMARK_NAMES[b]} ({'in-distribution' if b in IN_DISTRIBUTION else 'OOD'})" for b in splits}
    else:
        title = {s: f"{s} ({name})" for s, name in PAPER_NAMES.items()}
    t.columns = [" · ".join([title.get(split, split), *rest]) for split, *rest in (c.split(" · ") for c in t.columns)]
    return t


def metrics(summary: pd.DataFrame, gaps: pd.DataFrame, align: pd.DataFrame) -> dict:
    """DVC metrics: {model: {arm: {accuracy: {split: {group: {top1, top1_ci, top5, top5_ci}}}, gap: {split:
    {mean, ci}}, alignment: {split: {metric: mean, metric_ci}}}}}; NaN (one seed: no interval) → null."""
    out: dict = {}
    for r in summary.to_dict("records"):
        arm = out.setdefault(r["model"], {}).setdefault(r["arm"], {})
        arm.setdefault("accuracy", {}).setdefault(r["split"], {})[r["group"]] = {
            k: nan_to_none(r[k]) for k in ("top1", "top1_ci", "top5", "top5_ci")}
    for r in gaps.to_dict("records"):
        out[r["model"]][r["arm"]].setdefault("gap", {})[r["split"]] = {"mean": r["gap"], "ci": nan_to_none(r["gap_ci"])}
    for r in align.to_dict("records"):
        out[r["model"]][r["arm"]].setdefault("alignment", {})[r["split"]] = {
            k: nan_to_none(v) for k, v in r.items() if k not in ("model", "arm", "split", "n", "method")}
    return out


def usage_table(usage: pd.DataFrame, class_parts: list[list[str]] | None, names: list[str], split: str,
                arms: tuple[str, ...] = ("none", "ce", "cft"), model: str = "vit") -> pd.DataFrame:
    """Per class (rows) and arm (columns): the share of relevance on each of the class's concept parts, in %,
    mean over the runs, as "beak 12.3 · wing 30.1"; the first column counts the class's images. `class_parts`
    None: each class's parts are those of its rows (the grounded concepts, then "any concept"; "elsewhere" is
    100 minus it). Empty without usage rows on `split` (paper scale: no part masks on the benchmarks)."""
    u = usage[(usage["model"] == model) & (usage["split"] == split) & usage["arm"].isin(arms)] if len(usage) else usage
    if u.empty:
        return pd.DataFrame(index=pd.Index([], name="class"))
    mean = u.groupby(["arm", "label", "part"])["mass"].mean()
    images = u.groupby("label")["images"].first()
    rows = {}
    for label in sorted(images.index):
        own = ([p for p in class_parts[label] if p != "all"] if class_parts is not None else
               [p for p in dict.fromkeys(u.loc[u["label"] == label, "part"]) if p != ELSEWHERE])
        rows[names[label]] = {"images": int(images[label]), **{
            arm: " · ".join(f"{p} {mean.get((arm, label, p), math.nan) * 100:.1f}" for p in own)
            for arm in arms if arm in set(u["arm"])}}
    out = pd.DataFrame(rows).T
    out.index.name = "class"
    return out
