"""The claims report decides each claim from paired per-seed differences with known answers, marks what
was not run as not testable, and renders tables and the deviations with this run's parameters."""

import itertools

import pandas as pd
import pytest

from cftlib.core import config
from cftlib.data import datasets
from cftlib.metrics import accuracy, intervals
from cftlib.report import claims, paper, tables

SPLITS = ("test", "v2", "bg_conflict", "color_conflict", "pose", "rendition")
BASE = {"test": 0.9, "v2": 0.8, "bg_conflict": 0.5, "color_conflict": 0.6, "pose": 0.89, "rendition": 0.4}
"""The base's top-1 per split: `pose` shows no shortcut gap (−1 point: within 2), the others do."""
GAIN = {"test": [-0.004, -0.005, -0.006], "bg_conflict": [0.10, 0.12, 0.11], "pose": [0.02, 0.03, 0.025],
        "rendition": [0.05, 0.06, 0.04], "v2": [-0.02, -0.03, -0.025], "color_conflict": [0.05, 0.07, 0.06]}
"""CFT − base per seed."""
CE = {"bg_conflict": 0.07, "rendition": 0.06}
"""CE − base (every seed) where it is not 0.01 · seed: on `rendition` CE does as well as CFT."""


def _acc(cnn_test=0.0):
    rows = []
    for arm, seed, split, group in itertools.product(("none", "ce", "dfr", "cft", "cft_fgmask", "robustvit", "gradmask",
                                                      "rrr", "rrda"), range(3),
                                                     SPLITS, ("all", "seen", "unseen")):
        top1 = BASE[split] + {"cft": GAIN[split][seed], "ce": CE.get(split, 0.01 * seed), "dfr": 0.2,
                              "none": 0.0}.get(arm, 0.01 * seed)
        rows.append(dict(model="vit", arm=arm, seed=seed, split=split, group=group, top1=top1, top5=1.0))
    for arm, seed, split in itertools.product(("none", "ce", "cft"), range(3), ("test", "bg_conflict")):
        top1 = {"test": 0.9 + (cnn_test if arm == "cft" else 0),
                "bg_conflict": 0.01 + 0.02 * (arm == "cft") + 0.001 * seed}[split]
        rows.append(dict(model="cnn", arm=arm, seed=seed, split=split, group="all", top1=top1, top5=1.0))
    return pd.DataFrame(rows)


def _align():
    rows = [dict(model="vit", arm=arm, seed=s, split=split, concept_mass=0.3 + (0.1 if arm == "cft" else 0) + 0.01 * s,
                 pointing=0.5 + (0.2 if arm == "cft" else 0))
            for arm in ("none", "ce", "cft") for s in range(3) for split in ("test", "bg_conflict")]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def verdicts():
    P = config.parse({})
    return {r["claim"]: r for r in claims.claims(_acc(), _align(), P)}


def _find(verdicts, text):
    (row,) = [r for c, r in verdicts.items() if text in c]
    return row


def _cmp(row, versus):
    (c,) = [c for c in row["comparisons"] if c["versus"] == versus and c.get("group", "all") != "seen"]
    return c


def test_ood_claims_need_both_the_base_and_ce(verdicts):
    bg = _find(verdicts, "accuracy on ImageNet-A")
    assert bg["verdict"] == claims.SUPPORTED  # +11 ± 2.5 over the base, +4 ± 2.5 over CE
    assert _cmp(bg, "none")["mean"] == pytest.approx(0.11) and _cmp(bg, "ce")["mean"] == pytest.approx(0.04)
    assert "CFT − base: +11.0 ± 2.5 (3 pairs) ✓" in bg["evidence"]
    r = _find(verdicts, "accuracy on ImageNet-R")
    # vs CE: −1 ± 2.5
    assert _cmp(r, "none")["verdict"] == claims.SUPPORTED and _cmp(r, "ce")["verdict"] == claims.INCONCLUSIVE
    assert r["verdict"] == claims.INCONCLUSIVE and r["why"] == "vs base supported, vs CE inconclusive"
    assert _find(verdicts, "accuracy on ImageNet-v2")["verdict"] == claims.CONTRADICTED  # −2.5 ± 1.2: a loss


def test_a_split_without_a_shortcut_gap_is_not_testable(verdicts):
    pose = _find(verdicts, "accuracy on ObjectNet")  # the base is 1 point below test there: nothing to remove
    assert pose["verdict"] == claims.UNTESTABLE and "not clear of the margin" in pose["why"]
    assert _cmp(pose, "none")["verdict"] == claims.SUPPORTED  # CFT's +2.5 is reported, but cannot count
    (gap,) = [c for c in pose["conditions"] if "shortcut gap" in c["what"]]
    assert gap["value"] == pytest.approx(1.0) and gap["ok"] is False


def test_an_improvement_below_chance_or_at_the_cost_of_test_does_not_hold():
    def cnn(acc, P):
        return _find({r["claim"]: r for r in claims.claims(acc, _align(), P)}, "CNN")

    P = config.parse({})
    ok = cnn(_acc(), P)  # 1 % → 3 % on bg_conflict, over base and CE; chance 1/50 = 2 %; test unchanged
    assert ok["verdict"] == claims.SUPPORTED and all(c["ok"] for c in ok["conditions"])
    low = cnn(_acc(), config.parse({"world": {"n_species": 10}}))  # chance 10 %: 3 % is no success
    assert ([c["ok"] for c in low["conditions"] if "chance" in c["rule"]] == [False]
            and low["verdict"] == claims.CONTRADICTED)
    hurt = cnn(_acc(cnn_test=-0.05), P)  # bought with 5 points of test
    assert [c["ok"] for c in hurt["conditions"] if "in-distribution" in c["what"]] == [False]
    assert hurt["verdict"] == claims.CONTRADICTED


def test_in_distribution_kept_within_tolerance(verdicts):
    row = _find(verdicts, "in-distribution")
    assert row["verdict"] == claims.SUPPORTED  # −0.5 ± 0.25: above −1 point
    assert not _cmp(row, "ce")["decides"]


def test_colour_dfr_alignment_concept_masks_few_shot_and_untested_claims(verdicts):
    assert _find(verdicts, "on-object shortcut")["verdict"] == claims.SUPPORTED  # +6 over base, +5 over CE
    dfr = _find(verdicts, "DFR")
    assert dfr["verdict"] == claims.CONTRADICTED and _cmp(dfr, "dfr")["mean"] == pytest.approx(0.11 - 0.2)
    assert _find(verdicts, "semantic parts")["verdict"] == claims.SUPPORTED
    acc = pd.concat([_acc(), claims.ood_mean(_acc())])
    d = intervals.paired_difference(acc, "top1", "cft", "cft_fgmask", split="ood_mean", group="all", model="vit")
    assert _cmp(_find(verdicts, "segmentation"), "cft_fgmask")["mean"] == pytest.approx(d["mean"])
    assert _find(verdicts, "segmentation")["verdict"] == claims.verdict(d)
    assert _find(verdicts, "suffice")["verdict"] == claims.SUPPORTED  # unseen classes gain on bg_conflict
    mean = _find(verdicts, "on average over the paper's benchmarks")  # the four stand-ins, not the colour split
    assert _cmp(mean, "none")["mean"] == pytest.approx((0.0375 + 0.045 + 0.0375) / 3)
    assert _cmp(mean, "ce")["mean"] == pytest.approx((0.005 + 0.0075 - 0.005) / 3)
    assert mean["verdict"] == claims.INCONCLUSIVE and mean["why"] == "vs base supported, vs CE inconclusive"
    assert mean["paper"].startswith("+13.8 (Table 1, mean of IN-A, ObjectNet, IN-R, IN-Sketch)")
    no_cnn = claims.claims(_acc()[lambda f: f["model"] == "vit"], _align(), config.parse({}))
    row = _find({r["claim"]: r for r in no_cnn}, "CNN")
    assert row["verdict"] == claims.UNTESTABLE and "not measured" in row["evidence"]


def test_claims_json_carries_every_comparison_in_points(tmp_path):
    import json

    P = config.parse({})
    rows = claims.write_claims(tmp_path / "claims.md", _acc(), _align(), P, json_path=tmp_path / "claims.json")
    j = json.loads((tmp_path / "claims.json").read_text())
    assert j["counts"][claims.SUPPORTED] == sum(r["verdict"] == claims.SUPPORTED for r in rows)
    (bg,) = [c for c in j["claims"] if "ImageNet-A" in c["claim"]]
    assert bg["comparisons"][0] | {} == {**bg["comparisons"][0], "versus": "none", "mean": 11.0, "n": 3,
                                         "verdict": claims.SUPPORTED, "decides": True}
    assert bg["data"] == "plots/evaluate_accuracy.csv" and "cftlib/report/claims.py" in bg["code"]
    text = (tmp_path / "claims.md").read_text()
    assert "(../plots/evaluate_accuracy.csv)" in text and "inconclusive (vs base supported, vs CE inconclusive)" in text
    assert bg["power"]["versus"] == "none" and bg["power"]["paper"] == pytest.approx(14.5)
    assert bg["power"]["detected"] is True and 0 < bg["power"]["mde"] < 14.5


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
    d = claims.heldout_alignment(_epochs([0.1, 0.12, 0.11]))
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.11) and d["base"] == pytest.approx(0.5)
    assert "**lowers** it" in claims.heldout_sentence(d, P)
    up = claims.heldout_alignment(_epochs([-0.1, -0.12, -0.11]))  # "best" by total loss, worse alignment
    assert up["mean"] == pytest.approx(0.11) and "does **not** lower" in claims.heldout_sentence(up, P)
    spans = claims.heldout_alignment(_epochs([0.1, -0.05, 0.04]))  # lower on average, the interval spans zero
    assert "interval reaches zero" in claims.heldout_sentence(spans, P)
    assert claims.heldout_alignment(_epochs([])) is None


def test_single_seed_decides_on_the_point_estimate():
    assert claims.verdict({"mean": 0.02, "ci": float("nan"), "n": 1}) == claims.SUPPORTED
    assert claims.verdict({"mean": 0.02, "ci": 0.03, "n": 3}) == claims.INCONCLUSIVE  # the interval covers 0
    assert claims.verdict({"mean": -0.05, "ci": 0.03, "n": 3}) == claims.CONTRADICTED  # it lies below
    assert claims.verdict({"mean": -0.005, "ci": 0.003, "n": 3}, -0.01) == claims.SUPPORTED  # above a −1 bar
    assert claims.verdict(None) == claims.UNTESTABLE
    assert claims.verdict({"mean": float("nan"), "ci": float("nan"), "n": 0}) == claims.UNTESTABLE


def test_tables_and_report_text(tmp_path):
    P = config.parse({"finetune": {"lr": 0.0005}})
    s = intervals.summarise(_acc()[lambda f: (f["group"] == "all") & (f["model"] == "vit")], ["arm", "split"], ["top1"])
    t = tables.pivot(s, "arm", "split", "top1", order=list(SPLITS))
    assert list(t.columns) == list(SPLITS)
    assert list(t.index) == ["none", "ce", "dfr", "cft", "cft_fgmask", "robustvit", "gradmask", "rrr", "rrda"]
    assert t.loc["none", "test"] == "90.0 ± 0.0" and t.loc["cft", "bg_conflict"] == "61.0 ± 2.5"
    tables.write_table(t, tmp_path / "acc", "Top-1")
    assert (tmp_path / "acc.md").read_text().startswith("# Top-1\n\n| arm | test |")
    assert pd.read_csv(tmp_path / "acc.csv").shape == (9, 7)
    rows = claims.write_claims(tmp_path / "claims.md", _acc(), _align(), P)
    text = (tmp_path / "claims.md").read_text()
    assert f"**{sum(r['verdict'] == claims.SUPPORTED for r in rows)} supported," in text
    assert "lr 0.0005" in text and "## Deviations from the official code" in text


def test_metrics_json_has_means_intervals_and_null_for_one_seed():
    import json

    acc = _acc()
    one = acc[(acc["seed"] == 0) & (acc["model"] == "vit")]
    s = intervals.summarise(one, ["model", "arm", "split", "group"], ["top1", "top5"])
    g = intervals.summarise(accuracy.gaps_frame(one), ["model", "arm", "split"], ["gap"])
    a = intervals.summarise(_align()[lambda f: f["seed"] == 0], ["model", "arm", "split"], ["concept_mass"])
    m = json.loads(json.dumps(tables.metrics(s, g, a), allow_nan=False))
    assert m["vit"]["cft"]["accuracy"]["bg_conflict"]["all"] == {"top1": 0.6, "top1_ci": None, "top5": 1.0,
                                                                 "top5_ci": None}
    assert m["vit"]["cft"]["gap"]["bg_conflict"]["mean"] == pytest.approx(
        BASE["test"] + GAIN["test"][0] - BASE["bg_conflict"] - GAIN["bg_conflict"][0])
    assert m["vit"]["cft"]["alignment"]["test"]["concept_mass"] == pytest.approx(0.4)


def test_usage_table_lists_each_classes_concept_parts_per_arm():
    usage = pd.DataFrame([dict(model="vit", arm=arm, seed=s, split="bg_conflict", label=label, part=part,
                               mass=m + 0.1 * (arm == "cft"), images=2)
                          for arm in ("none", "cft") for s in range(2) for label, part, m in
                          ((0, "beak", 0.1), (0, "wing", 0.2), (0, "background", 0.7), (1, "tail", 0.3))])
    t = tables.usage_table(usage, [["beak", "wing"], ["tail", "all"]], ["finch", "wren"], "bg_conflict")
    assert list(t.columns) == ["images", "none", "cft"]
    assert t.loc["finch", "none"] == "beak 10.0 · wing 20.0" and t.loc["finch", "cft"] == "beak 20.0 · wing 30.0"
    assert t.loc["wren", "cft"] == "tail 40.0" and t.loc["wren", "images"] == 2
    assert tables.usage_table(usage.iloc[:0], [], [], "bg_conflict").empty


def test_cft_against_the_papers_baselines_with_the_papers_figure_beside_it(verdicts):
    """Each baseline is base + 0.01 · seed (so CFT − baseline on bg_conflict is +10 ± 0): the claim holds, every
    deciding comparison is CFT − baseline, and the paper's column carries Table 1's IN-A difference to RRDA and
    the others."""
    row = _find(verdicts, "saliency-regularisation baselines")
    assert row["verdict"] == claims.SUPPORTED
    assert {c["versus"] for c in row["comparisons"] if c["decides"]} == {"gradmask", "rrr", "rrda"}
    assert _cmp(row, "rrr")["mean"] == pytest.approx(0.10)
    assert row["paper"].startswith("+2.6 (Table 1, IN-A, CFT − RRDA") and "CFT − GradMask +12.4" in row["paper"]
    ina = _find(verdicts, "accuracy on ImageNet-A")
    assert ina["paper"] == "+14.5 (Table 1, IN-A); Table 5: +10.0, Table 6: +8.0"  # the paper disagrees with itself


def test_testability_comes_from_the_gaps_interval_over_the_distinct_bases():
    P = config.parse({})  # 5 seeds per base: seeds 0–4 are base 0, 5–9 base 1
    rows = [dict(model="vit", arm="none", seed=seed, split=split, group="all", top1=top1, top5=1.0)
            for seed in range(10)
            for split, top1 in (("test", 0.9), ("color_conflict", 0.9 - (0.06 if seed < 5 else 0.0)))]
    gap = claims.base_gap(pd.DataFrame(rows), "vit", "color_conflict", "test", P)
    assert gap["n"] == 2 and gap["mean"] == pytest.approx(3.0)  # two bases, not ten runs
    assert gap["ci"] > 1.0  # 6 and 0 points: the mean clears 2 points, its interval does not
    acc = pd.concat([pd.DataFrame(rows), pd.DataFrame([dict(r, arm=a) for r in rows for a in ("cft", "ce")])])
    comps, conds, testable = claims.improvement(acc, P, "vit", "color_conflict")
    assert testable is False and conds[0]["ok"] is False and "its interval lies above 2" in conds[0]["rule"]


def test_power_says_whether_the_papers_effect_would_have_been_detected():
    c = claims.compare(pd.DataFrame([dict(model="vit", arm=a, seed=s, split="bg_conflict", group="all",
                                          top1=0.5 + (0.01 * (s % 3) if a == "cft" else 0)) for a in ("cft", "none")
                                     for s in range(15)]),
                       "top1", "cft", "none", 0.95, model="vit", split="bg_conflict")
    assert c["mde"] == pytest.approx(intervals.detectable(c["ci"], 15, 0.95, claims.POWER))
    assert c["mde"] > c["ci"]  # clearing the bar 80 % of the time takes more than the half-width
    big = claims.power([c], paper.FIGURES["bg_conflict"])  # +14.5: far above what 15 pairs resolve
    assert big["detected"] is True and big["paper"] == pytest.approx(14.5)
    small = claims.power([dict(c, mde=0.2)], paper.FIGURES["bg_conflict"])  # a design that resolves only 20 points
    assert small["detected"] is False and "would be missed" in claims.power_text(small)
    assert claims.power([c], paper.FIGURES["parts"])["detected"] is None  # the paper's figure is another metric


def test_the_in_distribution_note_says_what_its_interval_can_show(verdicts):
    row = _find(verdicts, "in-distribution")
    h = _cmp(row, "none")["ci"] * 100
    assert f"half-width ±{h:.1f}" in row["evidence"] and f"above {-1 + h:+.1f} shows accuracy kept" in row["evidence"]


def test_every_benchmark_has_the_papers_name_and_every_ood_one_its_figure():
    assert set(tables.BENCHMARK_NAMES) == set(datasets.LOADERS)
    assert all(paper.FIGURES[b].value is not None for b in datasets.LOADERS if b not in datasets.IN_DISTRIBUTION)
    assert paper.FIGURES["si_size"].text() == "+7.9 (Table 2, SI-Score size); Table 5: +6.3, Table 6: +6.5"
    assert paper.FIGURES["imagenet_sketch"].value == pytest.approx(37.06 - 35.49)


def test_the_cnns_relevance_is_a_declared_deviation_at_paper_scale():
    """The paper's CNN relevance (feature maps x LRP scores, after IIA) is not what runs: the paper profile's report
    says so, with the method and model that do run; the world's deviations are as before."""
    from conftest import ROOT

    P = config.load(ROOT / "profiles" / "paper.yaml")
    (row,) = [r for r in claims.deviations(P) if r["what"] == "CNN relevance"]
    assert "IIA" in row["official"]
    assert row["here"] == f"`{P.finetune.cnn.relevance}` on `{P.finetune.cnn.zoo}`'s last feature map"
    assert not [r for r in claims.deviations(config.Params()) if r["what"] == "CNN relevance"]
