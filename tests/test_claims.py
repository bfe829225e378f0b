"""The claims report decides each claim from paired per-seed differences with known answers, marks what
was not run as not testable, and renders tables and the deviations with this run's parameters."""

import itertools

import pandas as pd
import pytest

from cftlib import config, evaluate, report

SPLITS = ("test", "v2", "bg_conflict", "pose", "rendition")
GAIN = {"test": [-0.004, -0.005, -0.006], "bg_conflict": [0.10, 0.12, 0.11], "pose": [0.02, -0.03, 0.01],
        "rendition": [0.05, 0.06, 0.04], "v2": [-0.02, -0.03, -0.025]}


def _acc():
    rows = []
    for arm, seed, split, group in itertools.product(("none", "cft", "cft_fgmask", "robustvit"), range(3), SPLITS,
                                                     ("all", "seen", "unseen")):
        base = 0.6
        top1 = base + (GAIN[split][seed] if arm == "cft" else 0.01 * seed if arm != "none" else 0.0)
        rows.append(dict(model="vit", arm=arm, seed=seed, split=split, group=group, top1=top1, top5=1.0))
    return pd.DataFrame(rows)


def _align():
    rows = [dict(model="vit", arm=arm, seed=s, split=split, concept_mass=0.3 + (0.1 if arm == "cft" else 0) + 0.01 * s,
                 pointing=0.5 + (0.2 if arm == "cft" else 0))
            for arm in ("none", "cft") for s in range(3) for split in ("test", "bg_conflict")]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def verdicts():
    P = config.parse({})
    return {r["claim"]: r for r in report.claims(_acc(), _align(), P)}


def _find(verdicts, text):
    (row,) = [r for c, r in verdicts.items() if text in c]
    return row


def test_ood_claims_follow_the_paired_intervals(verdicts):
    assert _find(verdicts, "accuracy on ImageNet-A")["verdict"] == report.HOLDS  # +11 ± 2.5 points
    assert _find(verdicts, "accuracy on ObjectNet")["verdict"] == report.FAILS  # 0 ± 6.3: the interval spans zero
    assert _find(verdicts, "accuracy on ImageNet-R")["verdict"] == report.HOLDS
    assert _find(verdicts, "accuracy on ImageNet-v2")["verdict"] == report.FAILS  # a loss
    assert "+11.0 ± 2.5 points (3 (base, seed) pairs)" in _find(verdicts, "accuracy on ImageNet-A")["evidence"]


def test_in_distribution_kept_within_tolerance(verdicts):
    assert _find(verdicts, "in-distribution")["verdict"] == report.HOLDS  # −0.5 ± 0.25: above −1 point


def test_alignment_concept_masks_few_shot_and_untested_claims(verdicts):
    assert _find(verdicts, "semantic parts")["verdict"] == report.HOLDS
    # mean OOD gain of CFT over cft_fgmask: per seed (gains − 0.01·seed); positive on average? check exactly
    acc = pd.concat([_acc(), report.ood_mean(_acc())])
    d = evaluate.paired_difference(acc, "top1", "cft", "cft_fgmask", split="ood_mean", group="all")
    per_seed = [sum(GAIN[s][i] for s in SPLITS if s != "test") / 4 - 0.01 * i for i in range(3)]
    assert d["mean"] == pytest.approx(sum(per_seed) / 3)
    assert _find(verdicts, "segmentation")["verdict"] == report.verdict(d)
    assert _find(verdicts, "suffice")["verdict"] == report.HOLDS  # unseen classes gain on bg_conflict
    assert _find(verdicts, "CNN")["verdict"] == report.UNTESTABLE  # no CNN rows
    assert "not measured" in _find(verdicts, "CNN")["evidence"]
    assert _find(verdicts, "ImageNet-scale")["verdict"] == report.UNTESTABLE


def _epochs(drops):
    """epochs.csv rows of ViT cft runs (seed i: alignment 0.5 at epoch 0, 0.5 - drops[i] at its best epoch 2,
    worse again at epoch 3) and a ce run that must be ignored."""
    rows = []
    for seed, d in enumerate(drops):
        for epoch, (align, best) in enumerate([(0.5, 0), (0.45, 1), (0.5 - d, 1), (0.6, 0)]):
            rows.append(dict(model="vit", arm="cft", base=seed, seed=seed, epoch=epoch, val_cft_align=align, best=best))
    rows.append(dict(model="vit", arm="ce", base=0, seed=0, epoch=0, val_cft_align=9.0, best=0))
    return pd.DataFrame(rows)


def test_heldout_alignment_is_the_selected_epoch_against_epoch_zero():
    P = config.parse({})
    d = report.heldout_alignment(_epochs([0.1, 0.12, 0.11]))
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.11) and d["base"] == pytest.approx(0.5)
    assert "**lowers** it" in report.heldout_sentence(d, P)
    up = report.heldout_alignment(_epochs([-0.1, -0.12, -0.11]))  # "best" by total loss, worse alignment
    assert up["mean"] == pytest.approx(0.11) and "does **not** lower" in report.heldout_sentence(up, P)
    spans = report.heldout_alignment(_epochs([0.1, -0.05, 0.04]))  # lower on average, the interval spans zero
    assert "interval reaches zero" in report.heldout_sentence(spans, P)
    assert report.heldout_alignment(_epochs([])) is None


def test_single_seed_decides_on_the_point_estimate():
    assert report.verdict({"mean": 0.02, "ci": float("nan"), "n": 1}) == report.HOLDS
    assert report.verdict({"mean": 0.02, "ci": 0.03, "n": 3}) == report.FAILS
    assert report.verdict(None) == report.UNTESTABLE


def test_tables_and_report_text(tmp_path):
    P = config.parse({"finetune": {"lr": 0.0005}})
    s = evaluate.summarise(_acc()[lambda f: f["group"] == "all"], ["arm", "split"], ["top1"])
    t = report.pivot(s, "arm", "split", "top1", order=list(SPLITS))
    assert list(t.columns) == list(SPLITS) and list(t.index) == ["none", "cft", "cft_fgmask", "robustvit"]
    assert t.loc["none", "test"] == "60.0 ± 0.0" and t.loc["cft", "bg_conflict"] == "71.0 ± 2.5"
    report.write_table(t, tmp_path / "acc", "Top-1")
    assert (tmp_path / "acc.md").read_text().startswith("# Top-1\n\n| arm | test |")
    assert pd.read_csv(tmp_path / "acc.csv").shape == (4, 6)
    rows = report.write_claims(tmp_path / "claims.md", _acc(), _align(), P)
    text = (tmp_path / "claims.md").read_text()
    assert f"**{sum(r['verdict'] == report.HOLDS for r in rows)} hold," in text
    assert "lr 0.0005" in text and "## Deviations from the official code" in text


def test_metrics_json_has_means_intervals_and_null_for_one_seed():
    import json

    acc = _acc()
    one = acc[acc["seed"] == 0]
    s = evaluate.summarise(one, ["model", "arm", "split", "group"], ["top1", "top5"])
    g = evaluate.summarise(evaluate.gaps_frame(one), ["model", "arm", "split"], ["gap"])
    a = evaluate.summarise(_align()[lambda f: f["seed"] == 0], ["model", "arm", "split"], ["concept_mass"])
    m = json.loads(json.dumps(report.metrics(s, g, a), allow_nan=False))
    assert m["vit"]["cft"]["accuracy"]["bg_conflict"]["all"] == {"top1": 0.7, "top1_ci": None, "top5": 1.0, "top5_ci": None}
    assert m["vit"]["cft"]["gap"]["bg_conflict"]["mean"] == pytest.approx(GAIN["test"][0] - GAIN["bg_conflict"][0])
    assert m["vit"]["cft"]["alignment"]["test"]["concept_mass"] == pytest.approx(0.4)
