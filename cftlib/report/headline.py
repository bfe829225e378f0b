"""The headline numbers: what `dvc metrics show` prints and a reviewer compares between runs.

Each stage writes its full numbers (every run, split and interval) to `reports/<stage>.json` and a few of them
here, to `metrics/<stage>.json`, in one shape: `{group: {name: value}}` (two levels), snake_case names
`<split>_<measure>` where a split applies, percentages and points with one decimal, counts as integers. The
default profile's files hold at most `BUDGET` values in all (tests/report/test_headline.py), so `dvc metrics diff`
after a changed run fits a screen.
"""

from __future__ import annotations

import re
from numbers import Integral, Real
from pathlib import Path

from cftlib.core.io import nan_to_none, write_json

BUDGET = 84
"""The most values the default profile's metrics files hold together."""
NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


def name(text: str) -> str:
    """snake_case of a label: "mask noise" → "mask_noise", "×2" → "2"."""
    return "_".join(re.findall(r"[a-z0-9]+", str(text).lower()))


def percent(fraction: float | None) -> float | None:
    """A fraction as percent (or a difference of fractions as points), one decimal; missing or NaN → None."""
    if nan_to_none(fraction) is None:
        return None
    return round(100 * float(fraction), 1)


def _group(values: dict) -> dict:
    """Drop missing values (one seed, a measure this scale lacks): metrics show numbers only."""
    return {k: v for k, v in values.items() if v is not None}


def check(metrics: dict, where: str = "metrics") -> dict:
    """`metrics` if it has the headline shape, else ValueError naming the key."""
    for group, values in metrics.items():
        if not NAME.match(group) or not isinstance(values, dict):
            raise ValueError(f"{where}: group {group!r} must be a snake_case name holding a mapping")
        for key, v in values.items():
            if not NAME.match(key):
                raise ValueError(f"{where}: {group}.{key} is not a snake_case name")
            if isinstance(v, bool) or not isinstance(v, Real):
                raise ValueError(f"{where}: {group}.{key} = {v!r}; need a number")
            if not isinstance(v, Integral) and round(v, 1) != v:
                raise ValueError(f"{where}: {group}.{key} = {v!r}; round to one decimal (percent or points)")
    return metrics


def write(path: str | Path, metrics: dict) -> None:
    """Check the shape, then write atomically."""
    write_json(path, check(metrics, str(path)))


def count(metrics: dict) -> int:
    return sum(len(v) for v in metrics.values())


def base(means: dict, reference: str, focus: str, held_out: dict | None = None) -> dict:
    """Per base model (`means`: {model: {split: mean top-1}}): top-1 on `reference`, the shortcut gap
    `reference` − `focus` in points, and the pretrained checkpoint's held-out accuracy (`held_out`) when known."""
    held_out = held_out or {}
    return {name(m): _group({f"{name(reference)}_top1": percent(s.get(reference)),
                             "shortcut_gap": percent(s[reference] - s[focus]) if {reference, focus} <= set(s) else None,
                             "pretrain_held_out": percent(held_out.get(m))})
            for m, s in means.items()}


def concepts(classes: int, concepts_: int, dropped: int, repairs: int) -> dict:
    return {"bank": {"classes": classes, "concepts": concepts_, "dropped": dropped, "repairs": repairs}}


def masks(summary: dict) -> dict:
    """From `grounding.summary`: images grounded, masks kept, the share of (image, concept) pairs whose concept
    was found, and the IoU with exact parts where the world has them."""
    return {"masks": _group({"images": summary["images"], "kept": summary["actions"]["kept"],
                             "concept_found": percent(summary["concept_found"]),
                             "mean_iou": percent(summary.get("mean_iou"))})}


def finetune(full: dict) -> dict:
    """From `finetune.metrics`: runs, few-shot images, and the steps skipped (non-finite) or saturated."""
    runs = full["runs"].values()
    return {"runs": {"runs": len(runs), "train_images": full["data"]["train"]["images"],
                     "val_images": full["data"]["val"]["images"],
                     "nonfinite_steps": sum(r.get("nonfinite_steps") or 0 for r in runs),
                     "saturated_steps": sum(r.get("saturated_steps") or 0 for r in runs)}}


def evaluate(full: dict, reference: str, ood: list[str], alignment: str) -> dict:
    """Per `<model>_<arm>` of `tables.metrics`: top-1 on `reference`, mean top-1 over the `ood` splits present,
    and relevance mass on the concept parts on split `alignment` (where measured)."""
    out = {}
    for model, arms in full.items():
        for arm, m in arms.items():
            acc = {s: g["all"]["top1"] for s, g in m.get("accuracy", {}).items() if "all" in g}
            shifted = [acc[s] for s in ood if acc.get(s) is not None]
            out[name(f"{model}_{arm}")] = _group({
                f"{name(reference)}_top1": percent(acc.get(reference)),
                "ood_mean_top1": percent(sum(shifted) / len(shifted)) if shifted else None,
                f"{name(alignment)}_concept_mass":
                    percent(m.get("alignment", {}).get(alignment, {}).get("concept_mass"))})
    return out


def ablations(full: dict, split: str) -> dict:
    """Per ablation setting of `ablations.metrics` (`k_1`, `mask_noise_2`, …): top-1 on `split`."""
    return {name(f"{a}_{v}"): _group({f"{name(split)}_top1": percent(m.get(split))})
            for a, values in full.items() for v, m in values.items()}


def claims(verdicts: list[str], kinds: tuple[str, ...]) -> dict:
    """How many claims reach each verdict of `kinds` (holds, does not hold, not testable here)."""
    return {"verdicts": {name(k): sum(v == k for v in verdicts) for k in kinds}}
