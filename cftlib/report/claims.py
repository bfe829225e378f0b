"""The claims report, `reports/claims.md` / `claims.json`: each claim of the CFT paper, the evidence this run
gives for it (paired comparisons with intervals, conditions), a verdict (supported / contradicted / inconclusive /
not testable here), the effect this design could detect beside the paper's own, and the table of deviations from
the official code (docs/paper.md §6–7)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cftlib.core import config
from cftlib.core.io import atomic_path, nan_to_none, write_json
from cftlib.metrics.accuracy import OOD, roles
from cftlib.metrics.intervals import detectable, mean_ci, paired_difference
from cftlib.report import paper, tables

SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE = "supported", "contradicted", "inconclusive", "not testable here"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE)
POWER = 0.8
"""The power at which `detectable` states the smallest effect a comparison would have shown."""
ACCURACY_CSV, ALIGNMENT_CSV, EPOCHS_CSV = ("plots/evaluate_accuracy.csv", "plots/evaluate_alignment.csv",
                                           "plots/finetune_epochs.csv")
"""The per-run rows every claim is computed from (written by the evaluate and finetune stages)."""


WORLD_COUNTERPART = (("ImageNet-A", "bg_conflict"), ("ObjectNet, SI-Score", "pose"), ("ImageNet-R", "rendition"),
                     ("ImageNet-v2", "v2"))
"""The paper's five OOD benchmarks and the world split that breaks the same thing (README, the world)."""


# ----------------------------------------------------------------------------- claims

SELECTIONS = {"val_loss": "the epoch of the lowest validation total loss kept, the official rule",
              "alignment": "the epoch of the lowest held-out alignment loss that keeps the base's validation top-1 "
                           "kept, the rule `reports/dose_response.md` chose"}
"""How each `finetune.selection` (cftlib.training.trainer.select_epoch) reads in the report."""


def compare(frame: pd.DataFrame, metric: str, arm: str, versus: str, level: float, threshold: float = 0.0,
            decides: bool = True, **where) -> dict:
    """One comparison of a claim: `paired_difference` of (arm − versus) in `metric` over the rows `where`, where
    its interval lies against `threshold` (`verdict`), and the smallest difference from the bar it would detect
    (`mde`, at `POWER`). Not measured: n = 0, verdict not testable. `decides`: whether the claim's verdict rests on
    it (else it is shown for context)."""
    d = paired_difference(frame, metric, arm, versus, level, **where) or {"mean": math.nan, "ci": math.nan, "n": 0}
    return dict(arm=arm, versus=versus, metric=metric, **where, threshold=threshold, decides=decides, **d,
                mde=detectable(d["ci"], d["n"], level, POWER), verdict=verdict(d, threshold))


def condition(what: str, value: float | None, ok: bool | None, rule: str) -> dict:
    """A precondition of a claim: `value` (points or %; None: not measured), `ok` (None: measured but its
    interval cannot tell, or not measured), `rule` in words."""
    return dict(what=what, value=value, ok=ok, rule=rule)


def verdict(d: dict | None, threshold: float = 0.0) -> str:
    """supported when the interval of the difference lies above `threshold`, contradicted when it lies below,
    inconclusive when it covers it (one run, no interval: its point estimate against the bar); not testable
    when the difference was not measured."""
    if d is None or d.get("n", 1) == 0:
        return UNTESTABLE
    ci = 0.0 if math.isnan(d["ci"]) else d["ci"]
    return SUPPORTED if d["mean"] - ci > threshold else CONTRADICTED if d["mean"] + ci < threshold else INCONCLUSIVE


def decide(comparisons: list[dict], conditions: list[dict], testable: bool = True) -> str:
    """A claim's verdict: not testable when a deciding comparison was not measured or its split shows no
    shortcut to remove (`testable`); contradicted when a deciding comparison is or a condition fails; supported
    when every deciding comparison is and every measured condition is met; else inconclusive."""
    deciding = [c for c in comparisons if c["decides"]]
    if not testable or not deciding or any(c["verdict"] == UNTESTABLE for c in deciding):
        return UNTESTABLE
    if any(c["verdict"] == CONTRADICTED for c in deciding) or any(c["ok"] is False for c in conditions):
        return CONTRADICTED
    met = all(c["ok"] or c["value"] is None for c in conditions)
    return SUPPORTED if met and all(c["verdict"] == SUPPORTED for c in deciding) else INCONCLUSIVE


ARM_NAMES = {"none": "base", "ce": "CE", "cft": "CFT", "cft_fgmask": "CFT on foreground masks",
             "robustvit": "RobustViT", "dfr": "DFR", "confidence": "confidence term only", "gradmask": "GradMask",
             "rrr": "RRR", "rrda": "RRDA"}


def _comparison_text(c: dict, where: bool = False) -> str:
    """"CFT − base: +3.1 ± 1.2 (3 pairs) ✓"; `where` prefixes the metric, split and group (rows that mix them)."""
    label = (f"{c['metric']} on `{c['split']}`" + (f" ({c['group']} classes)" if c.get("group", "all") != "all" else "")
             + ", " if where else "")
    if c["n"] == 0:
        return f"{label}{ARM_NAMES[c['arm']]} − {ARM_NAMES[c['versus']]}: not measured"
    ci = "" if math.isnan(c["ci"]) else f" ± {c['ci'] * 100:.1f}"
    mark = MARKS[c["verdict"]] if c["decides"] else "(context)"
    bar = f" > {c['threshold'] * 100:+g}" if c["threshold"] else ""
    return (f"{label}{ARM_NAMES[c['arm']]} − {ARM_NAMES[c['versus']]}: {c['mean'] * 100:+.1f}{ci}{bar} "
            f"({c['n']} pair{'s' * (c['n'] != 1)}) {mark}")


MARKS = {SUPPORTED: "✓", CONTRADICTED: "✗", INCONCLUSIVE: "?", UNTESTABLE: "not measured"}


def _condition_text(c: dict) -> str:
    mark = "not measured" if c["value"] is None else "?" if c["ok"] is None else "✓" if c["ok"] else "✗"
    value = "" if c["value"] is None else f" {c['value']:.1f}"
    return f"{c['what']}{value} ({c['rule']}) {mark}"


def base_gap(acc: pd.DataFrame, model: str, split: str, reference: str, P: config.Params) -> dict | None:
    """The base models' shortcut gap on `split`, top-1 on `reference` − on `split` (all images), in points: mean
    and interval over the distinct base models ({mean, ci, n}; the `none` arm's seeds on one base are one
    model, `runspec.plan`'s seed = base.seed + base · finetune.seeds + i); None when either was not measured."""
    sel = acc[(acc["model"] == model) & (acc["arm"] == "none") & (acc["group"] == "all")]
    a, b = (sel[sel["split"] == reference].set_index("seed")["top1"],
            sel[sel["split"] == split].set_index("seed")["top1"])
    common = a.index.intersection(b.index)
    if not len(common):
        return None
    gap = (a[common] - b[common]) * 100
    per_base = gap.groupby((gap.index - P.base.seed) // P.finetune.seeds).mean()
    return mean_ci(per_base.to_numpy(), P.evaluate.level)


def mean_top1(acc: pd.DataFrame, model: str, arm: str, split: str, group: str = "all") -> float | None:
    sel = acc[(acc["model"] == model) & (acc["arm"] == arm) & (acc["split"] == split) & (acc["group"] == group)]
    return float(sel["top1"].mean() * 100) if len(sel) else None


def ood_mean(acc: pd.DataFrame, ood=OOD, name: str = "ood_mean") -> pd.DataFrame:
    """Per run, top-1 averaged over the OOD splits of `ood` present (all images), as split `name`."""
    sel = acc[(acc["group"] == "all") & acc["split"].isin(list(ood))]
    out = sel.groupby(["model", "arm", "seed"], as_index=False)["top1"].mean()
    return out.assign(split=name, group="all")


CODE = "cftlib/report/claims.py"


def improvement(acc: pd.DataFrame, P: config.Params, model: str, split: str, group: str = "all") -> tuple:
    """An improvement claim's comparisons and conditions on one split: CFT − base and CFT − CE decide, each
    interval above zero; the split must show a shortcut gap on the base (`evaluate.shortcut_gap`), CFT must stay
    above chance there and keep in-distribution accuracy (`evaluate.tolerance`). Returns (comparisons,
    conditions, testable)."""
    lv, tol, R = P.evaluate.level, P.evaluate.tolerance, roles(P)
    where = dict(model=model, split=split, group=group)
    comps = [compare(acc, "top1", "cft", v, lv, **where) for v in ("none", "ce")]
    gap = base_gap(acc, model, split, R.reference, P)
    need = P.evaluate.shortcut_gap * 100
    clear = None if gap is None else verdict(gap, need) == SUPPORTED
    spread = "" if gap is None or math.isnan(gap["ci"]) else f" ± {gap['ci']:.1f} over {gap['n']} bases"
    conds = [condition(f"base shortcut gap `{R.reference}` − `{split}`", None if gap is None else gap["mean"], clear,
                       f"points{spread}; testable when its interval lies above {need:g}")]
    if R.chance is not None:
        top1 = mean_top1(acc, model, "cft", split, group)
        conds.append(condition("CFT top-1", top1, None if top1 is None else top1 > R.chance * 100,
                               f"%; above chance {R.chance * 100:g} %"))
    kept = compare(acc, "top1", "cft", "none", lv, -tol, model=model, split=R.reference, group="all")
    conds.append(condition(f"in-distribution `{R.reference}`, CFT − base",
                           None if kept["n"] == 0 else kept["mean"] * 100,
                           {SUPPORTED: True, CONTRADICTED: False}.get(kept["verdict"]),
                           f"points; kept when the interval lies above −{tol * 100:g}, lost when below"))
    return comps, conds, clear is not False


def kept_note(c: dict, tol: float) -> str:
    """What the in-distribution comparison's interval can show: kept when it lies above −tol, lost when below;
    with its half-width h, a mean above −tol + h shows accuracy kept and one below −tol − h a loss."""
    rule = f"supported when CFT − base's interval lies above −{tol * 100:g} points, contradicted when it lies below"
    if c["n"] < 2 or math.isnan(c["ci"]):
        return rule
    h = c["ci"] * 100
    return (rule + f"; with its half-width ±{h:.1f} here a mean above {-tol * 100 + h:+.1f} shows accuracy kept and "
            f"one below {-tol * 100 - h:+.1f} a loss beyond the tolerance")


def _row(claim: str, source: str, comparisons: list[dict], conditions: list[dict] = (), testable: bool = True,
         data: str = ACCURACY_CSV, note: str = "", verdict_: str | None = None, key: str = "") -> dict:
    """One claim; `key` names the paper's figure for the same comparison (`paper.FIGURES`)."""
    conditions = list(conditions)
    v = verdict_ or decide(comparisons, conditions, testable)
    deciding = [c for c in comparisons if c["decides"] and c["verdict"] != UNTESTABLE]
    where = len({(c["metric"], c["split"], c.get("group", "all")) for c in deciding}) > 1
    held = [f"vs {ARM_NAMES[c['versus']]}" + (f" on `{c['split']}`" if where else "") + f" {c['verdict']}"
            for c in deciding] + [f"{c['what']} {'not met' if c['ok'] is False else 'unclear'}" for c in conditions
                                  if c["value"] is not None and not c["ok"] and "shortcut gap" not in c["what"]]
    why = ("the base's shortcut gap is not clear of the margin" if not testable else "") if v == UNTESTABLE \
        else ", ".join(held)
    mixed = len({(c["metric"], c["split"], c.get("group", "all")) for c in comparisons}) > 1
    evidence = "; ".join([*(_comparison_text(c, mixed) for c in comparisons), *map(_condition_text, conditions),
                          *([note] if note else [])])
    figure = paper.FIGURES[key] if key else None
    return dict(claim=claim, verdict=v, why=why, evidence=evidence, source=source, comparisons=comparisons,
                conditions=conditions, data=data, code=CODE, paper=figure.text() if figure else "—",
                power=power(comparisons, figure))


def power(comparisons: list[dict], figure: paper.Figure | None) -> dict:
    """Would this design have detected the paper's effect? The deciding comparison the paper's figure is about
    (same arms and metric; else the claim's first deciding comparison, and no paper figure to set against it):
    the smallest difference from its bar it detects at `POWER` (`mde`, points), the paper's figure, and
    `detected` (paper − bar ≥ mde; None where the paper has no comparable figure or there is no interval)."""
    deciding = [c for c in comparisons if c["decides"] and c["n"]]
    match = [c for c in deciding if figure is not None and (c["arm"], c["versus"], c["metric"]) ==
             (figure.arm, figure.versus, figure.metric)]
    c = (match or deciding or [None])[0]
    value = figure.value if match else None
    mde = None if c is None else _points(c["mde"])
    detected = None if mde is None or value is None else bool(value - c["threshold"] * 100 >= mde)
    return dict(versus=None if c is None else c["versus"], mde=mde, paper=value, detected=detected)


def power_text(p: dict) -> str:
    """"detects ≥ 2.9; paper +14.5: would be detected" for the report's power column."""
    if p["mde"] is None:
        return "—"
    out = f"detects ≥ {p['mde']:.1f} vs {ARM_NAMES[p['versus']]}"
    if p["paper"] is None:
        return out
    return out + f"; paper {p['paper']:+.1f}: " + ("would be detected" if p["detected"] else "would be missed")


def claims(acc: pd.DataFrame, align: pd.DataFrame, P: config.Params) -> list[dict]:
    """Each claim of the paper → {claim, verdict, why, evidence, source, comparisons, conditions, data, code}.
    `acc`: per-run rows (model, arm, seed, split, group, top1, top5); `align`: per-run rows (model, arm, seed,
    split, concept_mass, pointing, …). Every claim is compared with the base (`none`) and with plain fine-tuning
    on the same images (`ce`); improvement claims follow `improvement`. On the world each OOD claim is decided
    on the split that breaks what its benchmark breaks; at paper scale on each configured benchmark against
    ImageNet val, and part alignment is not testable (ImageNet has no part masks)."""
    lv, tol, R, world = P.evaluate.level, P.evaluate.tolerance, roles(P), bool(P.evaluate.splits)
    stand_ins = [s for _, s in WORLD_COUNTERPART] if world else R.ood  # the paper's benchmarks, or the world's for them
    acc = pd.concat([acc, ood_mean(acc, R.ood), ood_mean(acc, stand_ins, "benchmark_mean")], ignore_index=True)
    focus = f"`{R.focus}`" if world else tables.BENCHMARK_NAMES[R.focus]
    robust = "abstract: \"significantly enhances robustness across five OOD benchmarks\""
    out = []
    ood = ([(f"{bench} (world: `{split}`)", split) for bench, split in WORLD_COUNTERPART] if world
           else [(tables.BENCHMARK_NAMES[b], b) for b in R.ood])
    for label, split in ood:
        comps, conds, testable = improvement(acc, P, "vit", split)
        comps.append(compare(acc, "top1", "cft", "robustvit", lv, decides=False, model="vit", split=split, group="all"))
        out.append(_row(f"CFT improves OOD accuracy on {label}", robust, comps, conds, testable,
                        key=split if split in paper.FIGURES else ""))
    comps, conds, testable = improvement(acc, P, "vit", "benchmark_mean")
    out.append(_row("CFT improves OOD accuracy on average over the paper's benchmarks", robust, comps, conds, testable,
                    note="mean top-1 over " + ", ".join(f"`{s}`" if world else tables.BENCHMARK_NAMES[s]
                                                        for s in stand_ins),
                    key="benchmark_mean"))
    if world:
        comps, conds, testable = improvement(acc, P, "vit", "color_conflict")
        out.append(_row("CFT removes an on-object shortcut (world: `color_conflict`, the body colour)",
                        "this artifact: CFT's masks cover the bird, colour included; does it leave the colour "
                        "shortcut in place?", comps, conds, testable, key="color_conflict"))
    where = (f"world: `{R.reference}`" if world else ", ".join(tables.BENCHMARK_NAMES[s] for s in R.in_distribution))
    kept = [compare(acc, "top1", "cft", v, lv, -tol, decides=v == "none", model="vit", split=s, group="all")
            for v in ("none", "ce") for s in R.in_distribution]
    out.append(_row(f"CFT keeps in-distribution accuracy ({where})",
                    "project page: \"while maintaining in-distribution accuracy\"", kept, note=kept_note(kept[0], tol),
                    key="in_distribution"))
    parts = "abstract: \"stronger alignment with semantic object parts\""
    if world:
        comps = [compare(align, "concept_mass", "cft", v, lv, model="vit", split=s)
                 for s in P.evaluate.alignment_splits for v in ("none", "ce")]
        comps += [compare(align, "pointing", "cft", "none", lv, decides=False, model="vit", split=s)
                  for s in P.evaluate.alignment_splits]
        out.append(_row("CFT's relevance is better aligned with the object's semantic parts", parts, comps,
                        data=ALIGNMENT_CSV,
                        note="relevance mass on the concept parts (points), then the pointing game, "
                        f"on {', '.join(f'`{s}`' for s in P.evaluate.alignment_splits)} in that order", key="parts"))
    else:
        comps = [compare(align, m, "cft", v, lv, decides=False, model="vit", split=s)
                 for m in ("mIoU", "pixAcc") for s in dict.fromkeys(align["split"]) for v in ("none", "ce")]
        out.append(_row("CFT's relevance is better aligned with the object's semantic parts", parts, comps,
                        data=ALIGNMENT_CSV, verdict_=UNTESTABLE,
                        note="not testable at this scale: the metric needs the object's part masks, which ImageNet "
                             "lacks; whole-object mIoU and pixel accuracy shown for context", key="parts"))
    where = dict(model="vit", split="ood_mean", group="all")
    out.append(_row("Concept masks supervise better than segmentation (foreground) masks",
                    "abstract: \"concept-guided masks provide more effective supervision\"",
                    [compare(acc, "top1", "cft", "cft_fgmask", lv, **where),
                     *(compare(acc, "top1", "cft", v, lv, decides=False, **where)
                       for v in ("robustvit", "none", "ce"))],
                    note="mean top-1 over the OOD splits", key="concept_vs_segmentation"))
    if "confidence" in P.finetune.arms:
        where = dict(model="vit", split=R.focus, group="all")
        comps = [compare(acc, "top1", "cft", "confidence", lv, **where),
                 compare(acc, "top1", "confidence", "none", lv, decides=False, **where)]
        if world:
            comps += [compare(align, "concept_mass", "cft", "confidence", lv, decides=False, model="vit", split=s)
                      for s in P.evaluate.alignment_splits]
        out.append(_row("CFT's effect comes from its masks, not from its confidence term alone",
                        "the loss's two parts (paper §3.3); the ablation the paper's Table 6 makes by dropping terms",
                        comps, note=f"{focus} top-1 of CFT against the arm trained on CFT's confidence term alone "
                                    "(λ_align = 0); then that arm against the base, and concept mass",
                        key="confidence"))
    comps, conds, testable = improvement(acc, P, "vit", R.focus, "unseen")
    comps += [compare(acc, "top1", "cft", "none", lv, decides=False, model="vit", split=R.focus, group="seen")]
    out.append(_row(f"{P.finetune.k} images per class from {P.masks.class_fraction:.0%} of the classes suffice: "
                    "the gain reaches classes never fine-tuned on",
                    "project page: \"a minimal set of images (3 per class) … from half of the classes\"",
                    comps, conds, testable,
                    note=f"{focus} top-1 on the unseen classes; the last comparison on the seen", key="unseen"))
    comps, conds, testable = improvement(acc, P, "cnn", R.focus)
    out.append(_row("CFT also helps a CNN (Grad-CAM relevance)",
                    "CVPR abstract: \"multiple ViT-based models and an additional CNN model\"", comps, conds,
                    testable, note=f"{focus} top-1, the CNN's arms", key="cnn"))
    if world:
        where = dict(model="vit", split=R.focus, group="all")
        out.append(_row("CFT helps more than last-layer retraining (DFR)",
                        "the standard cheap reference (Kirichenko et al. 2023); not in the paper",
                        [compare(acc, "top1", "cft", "dfr", lv, **where),
                         *(compare(acc, "top1", "cft", v, lv, decides=False, **where) for v in ("none", "ce")),
                         compare(acc, "top1", "dfr", "none", lv, decides=False, **where)],
                        note=f"{focus} top-1; DFR refits the base's last layer on labelled, habitat-balanced images "
                             "that no other arm sees", key="dfr"))
    rivals = [b for b in paper.BASELINES if b in P.finetune.arms]
    if rivals:
        where = dict(model="vit", split=R.focus, group="all")
        out.append(_row("CFT outperforms the saliency-regularisation baselines (GradMask, RRR, RRDA)",
                        "conclusion: \"CFT consistently outperforms prior saliency-regularization approaches\"",
                        [*(compare(acc, "top1", "cft", b, lv, **where) for b in rivals),
                         *(compare(acc, "top1", b, "none", lv, decides=False, **where) for b in rivals)],
                        note=f"{focus} top-1; each baseline on foreground masks with its own weights and lr "
                             "(cftlib.training.baselines; world: chosen on validation data, reports/baselines.md)",
                        key="baselines"))
    return out


def deviations(P: config.Params) -> list[dict]:
    """Where this run differs from the official code, with this run's values (docs/paper.md §3, §6–7)."""
    f, loss, world = P.finetune, P.finetune.loss, bool(P.evaluate.splits)
    sampled = f"; {P.evaluate.benchmark_images} images sampled per benchmark" if P.evaluate.benchmark_images else ""
    return [
        dict(what="data", official="ImageNet, 500 classes × 3 images, ViT-B/16 pretrained",
             here=f"the synthetic bird world ({P.world.n_species} species), {f.k} images × "
                  f"{P.masks.class_fraction:.0%} of the classes; {P.bases.seeds} small ViTs with a convolutional stem, "
                  f"pretrained on habitat- and colour-random birds (" + (f"the checkpoint after epoch "
                  f"{P.pretrain.keep_epoch} of {P.pretrain.epochs}" if P.pretrain.keep_epoch else "the best epoch")
                  + "), then trained on the biased split" if world else
                  f"`{P.concepts.dataset}` ({P.concepts.image_dir}), {f.k} images × {P.masks.class_fraction:.0%} of "
                  f"the classes, pretrained `{P.pretrain.zoo}`{sampled}",
             why="runs on a laptop with exact part masks; the paper scale needs ImageNet and GPUs" if world else
                 "the paper's setting"),
        dict(what="concepts", official="none released (GPT-4o-mini in the paper; bank for CUB/CelebA only)",
             here=f"proposer `{P.concepts.proposer}`", why="docs/paper.md §1: no concept-discovery code exists"),
        dict(what="masks", official="GroundingDINO + SAM 2 (box 0.35, text 0.65)",
             here=f"grounder `{P.masks.grounder}`" + (f" (exact parts, boundary ±{P.masks.world.boundary} px, "
                                                      f"p_miss {P.masks.world.p_miss}, "
                                                      f"q_spurious {P.masks.world.q_spurious})"
                                                      if P.masks.grounder == "world" else ""),
             why="the world grounder imitates a VLM's errors at no cost" if P.masks.grounder == "world" else
                 "the paper's grounder"),
        dict(what="relevance", official="GAE rollout (named 'lrp'; the paper says AttnLRP)",
             here=f"`{f.relevance}` (evaluated with `{P.evaluate.relevance}`)",
             why="docs/paper.md §3.4: the paper's method, differentiable twice through lxt's rules"),
        *([dict(what="CNN relevance", official="no CNN (the paper: ConvNeXt-V2, feature maps combined with LRP scores "
                                                 "after IIA, not specified further)",
                here=f"`{f.cnn.relevance}` on `{f.cnn.zoo}`'s last feature map",
                why="docs/paper.md §3.2: too little said to rebuild and check the paper's method; Grad-CAM is "
                    "differentiable twice")] if f.cnn.arms and not world else []),
        dict(what="min-max", official="no epsilon: a constant map gives NaN", here="range clamped at 1e-8",
             why="docs/paper.md §6.15"),
        dict(what="reverse mask", official="only exact 0/1 flipped", here=f"`{loss.reverse_mask}`",
             why="docs/paper.md §6.16"),
        dict(what="BCE saturation", official="map reaches exactly 0 and 1: BCE(1, 0) = 100",
             here=f"map squeezed into [{loss.squeeze:g}, {1 - loss.squeeze:g}]",
             why="keeps gradients finite (0 restores the official behaviour)"),
        dict(what="optimisation", official="lr 3e-6, 50 epochs, batch 8",
             here=f"lr {f.lr:g}, {f.epochs} epochs, batch {f.batch_size}"
                  + (f"; the CNN lr {f.cnn.lr:g}" if f.cnn.arms else ""),
             why="chosen on validation data by benchmarks/finetune_budget.py (reports/finetune_budget.md)" if world
                 else "the paper's setting"),
        dict(what="model selection", official="the epoch of the lowest validation total loss",
             here=SELECTIONS[f.selection],
             why="chosen on validation data by benchmarks/dose_response.py's rule (reports/dose_response.md)"
                 if f.selection == "alignment" else "the official rule"),
        dict(what="baselines", official="none released (the paper: GradMask, RRR, RRDA with Table 8's values)",
             here=", ".join(f"{ARM_NAMES[a]} lr {f.arm_lr.get(a, f.lr):g}" for a in paper.BASELINES if a in f.arms)
                  + f" (RRR λ₁ {loss.rrr_lambda:g}, λ₂ {loss.rrr_l2:g}; GradMask λ {loss.gradmask_lambda:g}, CE weight "
                    f"{loss.gradmask_ce:g}; RRDA share {loss.rrda_prob:g})",
             why="each as its own paper formulates it, on foreground masks (cftlib.training.baselines); "
                 + ("weights and lr chosen on validation data (reports/baselines.md)" if world else
                    "Table 8's values, its garbled headings read as docs/paper.md §5.1.8 says")),
        dict(what="sample choice", official="unsorted os.listdir (filesystem order)", here="sorted, then seeded",
             why="docs/paper.md §6.20: reproducible"),
        dict(what="seeds", official="one run, one base model (the paper: 5 seeds, each its own half of the classes)",
             here=f"{P.bases.seeds} base model(s) × {f.seeds} class subset(s) per arm "
                  "(each subset a seeded half of the "
                  f"classes, run on every base), mean ± {P.evaluate.level:.0%} CI over the (base, subset) pairs",
             why="the claims need intervals that contain the base model's and the class choice's own variance"),
        dict(what="IN-A/IN-R/ObjectNet protocol",
             official="1000-way argmax; ObjectNet first mapped index, no border crop",
             here=f"protocols {', '.join(P.evaluate.protocols)} (cftlib.stages.benchmarks)",
             why="docs/paper.md §4.1, §6.27"),
        dict(what="hardware", official="CUDA only, single GPU", here=f"CPU or CUDA (finetune.device {f.device})",
             why="docs/paper.md §6.11"),
    ]


def heldout_alignment(epochs: pd.DataFrame, level: float = 0.95) -> dict | None:
    """CFT's alignment loss on the held-out classes' validation images at each ViT `cft` run's selected epoch
    (the epoch marked best) minus the base model's (epoch 0 of the same run), paired over runs; None
    without such runs. `epochs`: the stacked epochs.csv of the runs (plots/finetune_epochs.csv)."""
    e = epochs[(epochs["model"] == "vit") & (epochs["arm"] == "cft")]
    if e.empty:
        return None
    diffs, before, after = [], [], []
    for _, g in e.groupby("seed"):
        start, chosen = g[g["epoch"] == 0].iloc[0], g[g["best"] == 1].iloc[-1]
        before.append(start["val_cft_align"])
        after.append(chosen["val_cft_align"])
        diffs.append(chosen["val_cft_align"] - start["val_cft_align"])
    return {**mean_ci(np.array(diffs), level), "base": float(np.mean(before)), "cft": float(np.mean(after))}


def heldout_sentence(d: dict | None, P: config.Params) -> str:
    """Whether, under the chosen protocol, CFT lowers its held-out alignment loss below the base's."""
    if d is None:
        return "No ViT `cft` run: the held-out alignment loss was not measured."
    ci = "" if math.isnan(d["ci"]) else f" ± {d['ci']:.4f}"
    lower = d["mean"] + (0 if math.isnan(d["ci"]) else d["ci"]) < 0
    kept = SELECTIONS[P.finetune.selection]
    return (f"Under the chosen protocol (lr {P.finetune.lr:g}, up to {P.finetune.epochs} epochs, {kept}), CFT's "
            f"alignment loss on the held-out classes' "
            f"validation images is {d['cft']:.4f} at the selected epoch against the base models' {d['base']:.4f} "
            f"(difference {d['mean']:+.4f}{ci} over {d['n']} (base, seed) pairs): CFT "
            + ("**lowers** it below the base's." if lower else "does **not** lower it below the base's (the interval "
               "reaches zero or above)." if d["mean"] < 0 else "does **not** lower it below the base's."))


def claims_markdown(rows: list[dict], devs: list[dict], P: config.Params, heldout: str = "") -> str:
    """The text of reports/claims.md (`heldout`: `heldout_sentence`, placed above the table)."""
    n = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    E = P.evaluate
    images = ", ".join(f"`{s}` {f'the first {E.images(s)}' if E.images(s) else 'all'}" for s in E.splits) + " images" \
        if E.splits else (f"{E.benchmark_images} sampled images per benchmark" if E.benchmark_images else "every image")
    table = pd.DataFrame([{**r, "verdict": r["verdict"] + (f" ({r['why']})" if r["why"] else ""),
                           "power": power_text(r["power"]),
                           "data": f"[{Path(r['data']).name}](../{r['data']}), `{r['code']}`"} for r in rows])
    lines = [
        "# Claims of the paper, checked by this run",
        "",
        f"Generated by the `evaluate` stage (profile `{P.base.profile}`, seed {P.base.seed}, {P.bases.seeds} base "
        f"model{'s' * (P.bases.seeds != 1)} × {P.finetune.seeds} seed{'s' * (P.finetune.seeds != 1)} per arm, "
        f"accuracy on {images}). Differences are paired by (base, seed) — each arm's run on the same base model "
        f"with the same seed — in top-1 points unless stated, with {E.level:.0%} Student-t intervals over the pairs, "
        "so the spread of the base models is inside every interval. Each claim is compared with the base model and "
        "with plain fine-tuning on the same images (CE). A deciding comparison is *supported* (✓) when its interval "
        "lies above its bar, *contradicted* (✗) when it lies below, *inconclusive* (?) when it covers the bar. An "
        "improvement claim is supported when both comparisons are, CFT stays above chance on the split and keeps "
        f"in-distribution accuracy (its interval above −{E.tolerance * 100:g} points); contradicted when either "
        "comparison is or a condition fails; inconclusive otherwise. It is not testable here when the base "
        f"models' shortcut gap on the split is not clear of {E.shortcut_gap * 100:g} points (its interval over the "
        f"bases). The column *power* gives the smallest difference each claim's deciding comparison would detect "
        f"{POWER:.0%} of the time (from the pairs' spread and number) and whether an effect of the paper's size "
        "would have been. The numbers are in `reports/claims.json`, computed from the per-run rows each row links."
        + ("" if E.splits else f" Accuracy under the `{E.protocols[0]}` protocol."),
        "",
        f"**{n[SUPPORTED]} supported, {n[CONTRADICTED]} contradicted, {n[INCONCLUSIVE]} inconclusive, "
        f"{n[UNTESTABLE]} not testable here.**",
        "",
        *([heldout, ""] if heldout else []),
        "The column *paper* gives the paper's own figure for the same comparison (ViT-B, top-1 points, "
        "`cftlib/report/paper.py`; docs/paper.md §5.1) and, where its tables disagree, the other values; on the "
        "world it sits beside the split that breaks what the paper's benchmark breaks, a counterpart and not the "
        "same measurement.",
        "",
        tables.markdown(table[["claim", "verdict", "evidence", "paper", "power", "data", "source"]].set_index("claim")),
        "## Deviations from the official code",
        "",
        tables.markdown(pd.DataFrame(devs).set_index("what")),
    ]
    return "\n".join(lines)


def _points(v: float | None) -> float | None:
    return None if nan_to_none(v) is None else round(v * 100, 2)


def claims_json(rows: list[dict], heldout: dict | None = None) -> dict:
    """reports/claims.json: per claim its verdict, each comparison (mean and interval half-width in points, n
    pairs, verdict), each condition, and the CSV and code it comes from; the held-out alignment difference."""
    out = {"counts": {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}, "claims": []}
    for r in rows:
        out["claims"].append(dict(
            claim=r["claim"], verdict=r["verdict"], why=r["why"], data=r["data"], code=r["code"], paper=r["paper"],
            power=r["power"] | {"level": POWER},
            comparisons=[{k: c[k] for k in ("arm", "versus", "metric", "model", "split", "group") if k in c}
                         | dict(mean=_points(c["mean"]), ci=_points(c["ci"]), n=c["n"], bar=_points(c["threshold"]),
                                mde=_points(c["mde"]), decides=c["decides"], verdict=c["verdict"])
                         for c in r["comparisons"]],
            conditions=[{**c, "value": None if c["value"] is None else round(c["value"], 2)} for c in r["conditions"]]))
    if heldout is not None:
        out["heldout_alignment_loss"] = {k: (None if nan_to_none(v) is None else round(v, 5))
                                         for k, v in heldout.items()} | {"data": EPOCHS_CSV}
    return out


def write_claims(path: str | Path, acc: pd.DataFrame, align: pd.DataFrame, P: config.Params,
                 epochs: pd.DataFrame | None = None, json_path: str | Path | None = None) -> list[dict]:
    """reports/claims.md and, given `json_path`, reports/claims.json; with the runs' `epochs`
    (plots/finetune_epochs.csv), the held-out alignment sentence."""
    rows = claims(acc, align, P)
    d = heldout_alignment(epochs, P.evaluate.level) if epochs is not None else None
    heldout = heldout_sentence(d, P) if epochs is not None else ""
    with atomic_path(path) as tmp:
        tmp.write_text(claims_markdown(rows, deviations(P), P, heldout))
    if json_path is not None:
        write_json(json_path, claims_json(rows, d))
    return rows
