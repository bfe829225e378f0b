"""Evaluation metrics give known answers on hand-built fixtures: top-k under a logit subset and the
any-of rule, the images a run corrects and breaks against its own base, intervals over seeds, RobustViT's
segmentation scores for a relevance box on a mask box, and concept alignment."""

import numpy as np
import pytest

from cftlib.data.world import PARTS
from cftlib.metrics import accuracy, alignment, intervals
from cftlib.stages.evaluate import FLIP_COLUMNS, flip_rows
from cftlib.training.runspec import RunSpec


def test_topk_all_logits_subset_and_any_of():
    logits = np.array([[0.0, 5, 4, 3, 2, 1],   # label 2: second → top-1 miss, top-2 hit
                       [9.0, 1, 2, 3, 4, 5]])  # label 5: argmax 0 (outside the subset {1, 5}), then 5
    labels = np.array([2, 5])
    assert accuracy.accuracy(logits, labels, ks=(1, 2)) == {"top1": 0.0, "top2": 1.0}
    assert accuracy.accuracy(logits, labels, subset=np.array([1, 5]), ks=(1,)) == {"top1": 0.5}
    assert accuracy.topk_correct(logits, [(1, 2), (0,)], 1).tolist() == [True, True]
    # k larger than the competing classes is clipped: every label inside the subset is a top-5 hit
    assert accuracy.accuracy(logits, labels, subset=np.array([2, 5]), ks=(5,)) == {"top5": 1.0}


def test_ties_go_to_the_lower_class_index():
    assert accuracy.topk_correct(np.zeros((1, 4)), np.array([0])).tolist() == [True]


def test_split_report_separates_seen_and_unseen_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[[0, 1, 1, 1, 0, 0]]  # class 0: 1/2, class 1: 2/2, class 2: 0/2
    r = accuracy.split_report(logits, labels, seen=np.array([0, 1]))
    assert r["all"]["top1"] == pytest.approx(3 / 6)
    assert r["seen"]["top1"] == pytest.approx(3 / 4)
    assert r["unseen"]["top1"] == 0.0


def test_shortcut_gaps_are_test_minus_ood():
    assert (accuracy.shortcut_gaps({"test": 0.9, "bg_conflict": 0.6, "train": 1.0})
            == {"bg_conflict": pytest.approx(0.3)})


def test_flips_count_corrections_and_regressions_against_the_base():
    labels = np.array([0, 1, 2, 3, 4])
    base = np.array([0, 1, 9, 9, 9])  # right on 0, 1
    pred = np.array([0, 9, 2, 3, 9])  # keeps 0, breaks 1, fixes 2 and 3, both miss 4
    assert accuracy.flips(pred, base, labels) == {"images": 5, "corrected": 2, "regressed": 1}
    # top-1 moves by corrected − regressed
    assert (pred == labels).sum() - (base == labels).sum() == 2 - 1


def test_flip_rows_compare_each_run_with_the_none_run_of_its_own_base():
    labels = np.array([0, 1, 2])

    def onehot(pred):
        return {"test": np.eye(3)[pred]}

    runs = [RunSpec("vit", "none", 0, "attnlrp", 1e-4, base=0), RunSpec("vit", "none", 1, "attnlrp", 1e-4, base=1),
            RunSpec("vit", "cft", 0, "attnlrp", 1e-4, base=0), RunSpec("vit", "cft", 1, "attnlrp", 1e-4, base=1),
            RunSpec("cnn", "cft", 0, "gradcam", 1e-4, base=0)]  # no CNN base run: left out
    logits = dict(zip(runs, [onehot([0, 1, 0]), onehot([0, 0, 0]), onehot([0, 1, 2]), onehot([0, 1, 2]),
                             onehot([2, 2, 2])]))
    rows = flip_rows(runs, logits, {"test": {"label": labels}})
    assert list(rows.columns) == FLIP_COLUMNS
    assert rows[["seed", "corrected", "regressed"]].to_dict("records") == [
        {"seed": 0, "corrected": 1, "regressed": 0},   # base 0 missed image 2 only
        {"seed": 1, "corrected": 2, "regressed": 0}]   # base 1 missed images 1 and 2
    assert flip_rows(runs[2:4], logits, {"test": {"label": labels}}).empty


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_t_quantile_matches_tables(df, expected):
    assert intervals.t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3)


def test_mean_ci_over_three_seeds():
    r = intervals.mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["n"] == 3
    assert r["ci"] == pytest.approx(4.3027 / np.sqrt(3), abs=2e-3)  # t(0.975, 2) · sd 1 / √3
    assert np.isnan(intervals.mean_ci([0.5])["ci"])


def test_average_precision_known_values():
    assert alignment.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert alignment.average_precision([1, 1], [1, 0]) == pytest.approx(0.5)  # tied scores form one step
    assert np.isnan(alignment.average_precision([0.3], [0]))


def _box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_relevance_box_on_mask_box_scores_perfectly():
    gt = _box((10, 10), 2, 6, 2, 6)[None]
    s = alignment.segmentation_scores(alignment.segmentation_counts(gt.astype(float), gt))
    assert s == {"pixAcc": 1.0, "mIoU": 1.0, "mAP": 1.0}


def test_shifted_relevance_box_gives_known_scores():
    gt = _box((10, 10), 2, 6, 2, 6)[None]  # 16 px
    rel = _box((10, 10), 2, 6, 4, 8)[None].astype(float)  # 16 px, 8 of them on the mask
    s = alignment.segmentation_scores(alignment.segmentation_counts(rel, gt))
    assert s["pixAcc"] == pytest.approx(0.84)  # 8 fg + 76 bg pixels right
    assert s["mIoU"] == pytest.approx((8 / 24 + 76 / 92) / 2)
    # [1−R, R] vs one-hot: 100 scores of 1 (84 right), 100 of 0 → AP = 0.84·0.84 + 0.16·0.5
    assert s["mAP"] == pytest.approx(0.84 * 0.84 + 0.16 * 0.5)


def test_segmentation_sums_over_images_before_dividing():
    gt = np.stack([_box((10, 10), 0, 10, 0, 5), _box((10, 10), 0, 1, 0, 1)])
    rel = np.stack([gt[0], _box((10, 10), 9, 10, 9, 10)]).astype(float)
    s = alignment.segmentation_scores(alignment.segmentation_counts(rel, gt))
    assert s["pixAcc"] == pytest.approx((100 + 98) / 200)
    # fg: Σ inter 50 / Σ union 52; bg: Σ inter 148 / Σ union 150 (per-image means would differ)
    assert s["mIoU"] == pytest.approx((50 / 52 + 148 / 150) / 2)


def test_threshold_is_the_map_mean():
    gt = _box((4, 4), 0, 2, 0, 4)[None]
    rel = np.where(gt, 0.6, 0.4)  # mean 0.5: the top half is foreground, though no pixel reaches 0.5+
    assert alignment.segmentation_scores(alignment.segmentation_counts(rel, gt))["pixAcc"] == 1.0


def test_concept_alignment_mass_area_and_pointing():
    concept = _box((10, 10), 0, 2, 0, 5)[None]  # 10 px
    fg = _box((10, 10), 0, 5, 0, 5)[None]
    rel = np.zeros((1, 10, 10))
    rel[0, 1, 1] = 3.0  # on the concept
    rel[0, 4, 4] = 1.0  # on the object, off the concept
    r = alignment.concept_alignment(rel, concept, fg)
    assert r["concept_mass"][0] == pytest.approx(0.75)
    assert r["object_mass"][0] == pytest.approx(1.0)
    assert r["concept_area"][0] == pytest.approx(0.1)
    assert r["pointing"][0]
    rel[0, 4, 4] = 4.0
    assert not alignment.concept_alignment(rel, concept, fg)["pointing"][0]


def test_part_masks_are_the_union_of_the_class_concept_parts():
    parts = np.array([[[0, PARTS.index("beak") + 1, PARTS.index("wing") + 1, PARTS.index("body") + 1]]] * 2)
    bank = {"classes": [{"concepts": [{"text": "long thin beak"}, {"text": "striped wings"}]},
                        {"concepts": [{"text": "bird"}]}]}
    class_parts = alignment.concept_parts(bank)
    assert class_parts == [["beak", "wing"], ["all"]]
    m = alignment.part_masks(parts, np.array([0, 1]), class_parts)
    assert m[0].tolist() == [[False, True, True, False]]
    assert m[1].tolist() == [[False, True, True, True]]


def test_part_mass_and_usage_per_class():
    parts = np.zeros((2, 2, 2), np.uint8)
    parts[:, 0, 0], parts[:, 0, 1] = 1, 3  # part 0 top-left, part 2 top-right, background below
    r = np.array([[[2.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]])
    m = alignment.part_mass(r, parts, 3)
    assert m.shape == (2, 4) and np.allclose(m.sum(1), 1)
    assert np.allclose(m[0], [0.5, 0.0, 0.25, 0.25]) and np.allclose(m[1], [0, 0, 0, 1])
    rows = alignment.usage_rows(r, parts, np.array([5, 5]), ("a", "b", "c"))
    assert [(u["label"], u["part"]) for u in rows] == [(5, "a"), (5, "b"), (5, "c"), (5, "background")]
    assert (rows[0]["mass"] == pytest.approx(0.25) and rows[-1]["mass"] == pytest.approx(0.625)
            and rows[0]["images"] == 2)


def test_concept_usage_from_overlapping_grounded_masks():
    r = np.array([[[2.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]])
    beak = np.array([[True, True], [False, False]])
    wing = np.array([[True, False], [True, False]])  # overlaps the beak at the top-left pixel
    concepts_ = [np.stack([beak, wing]), np.stack([beak, wing])]
    rows = alignment.concept_usage_rows(r, concepts_, np.array([4, 4]), [["beak", "wing"]] * 2)
    got = {u["part"]: u["mass"] for u in rows}
    assert [u["part"] for u in rows] == ["beak", "wing", alignment.ANY_CONCEPT, alignment.ELSEWHERE]
    # image 0: beak 3/4, wing 3/4, any 1 (the overlap counted once); image 1: all relevance outside both
    assert got["beak"] == pytest.approx(0.375) and got["wing"] == pytest.approx(0.375)
    assert got[alignment.ANY_CONCEPT] == pytest.approx(0.5) and got[alignment.ELSEWHERE] == pytest.approx(0.5)
    assert {u["images"] for u in rows} == {2} and {u["label"] for u in rows} == {4}


def test_fit_brings_images_and_masks_to_the_model_size():
    img = np.zeros((6, 4, 3), np.uint8)
    img[:3] = 200
    masks = np.zeros((2, 6, 4), bool)
    masks[0, :3] = True
    small = alignment.fit_image(img, 4)
    assert small.shape == (4, 4, 3) and small[0, 0, 0] == 200 and small[-1, 0, 0] == 0
    m = alignment.fit_masks(masks, 4)
    assert m.shape == (2, 4, 4) and m.dtype == bool and m[0, :2].all() and not m[0, 2:].any() and not m[1].any()
    square, stack = img[:4], masks[:, :4]
    assert alignment.fit_image(square, 4) is square and alignment.fit_masks(stack, 4) is stack  # already the size
