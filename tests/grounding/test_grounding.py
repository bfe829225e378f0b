"""Concept grounding (CFT §3.1): the world grounder's noise model has the statistics it claims,
GroundingDINO + SAM run end to end on tiny random models, masks combine as in the official code, the
quality flags and the empty-mask policy do what they say, and the few-shot choice is the paper's."""

import numpy as np
import pandas as pd
import pytest

from cftlib import concepts, grounding
from cftlib.core import config, launch
from cftlib.data import fewshot, maskstore, world
from cftlib.grounding import GroundingError
from cftlib.metrics import alignment
from cftlib.models import factory
from cftlib.stages import ground, nbrun


def _masks(**kw):
    return config.parse({"masks": kw}).masks


def _noise(**kw):
    return config.WorldNoise(**{"boundary": 0, "p_miss": 0.0, "q_spurious": 0.0, **kw})


def _parts(size=32):
    """A part-label map: body block, a 2×6 beak and a 6×8 wing, everything else background."""
    p = np.zeros((size, size), np.uint8)
    p[10:22, 6:24] = 1
    p[12:14, 24:30] = 3
    p[14:20, 10:18] = 4
    return p


# ----------------------------------------------------------------------------- the world grounder

@pytest.mark.parametrize("text, part", [
    ("long thin beak", "beak"), ("barred wings", "wing"), ("fan-shaped tail", "tail"), ("tufted crest", "crest"),
    ("bird eye ring", "eye"), ("bird tail feathers", "tail"), ("bird primary feathers", "wing"), ("bird", "all"),
    ("bird nostrils", "beak"), ("bird legs", None), ("habitat", None)])
def test_concept_part_maps_phrases_to_world_parts(text, part):
    assert world.concept_part(text) == part


def test_noise_free_world_grounder_returns_exact_part_masks():
    parts = _parts()
    g = grounding.WorldGrounder(_noise(), seed=0)
    m = g(None, ["long thin beak", "striped wings", "bird"], parts=parts)
    assert m.shape == (3, 32, 32) and m.dtype == bool
    assert (m[0] == (parts == 3)).all() and (m[1] == (parts == 4)).all() and (m[2] == (parts > 0)).all()


def test_world_grounder_unknown_concept_is_an_error_or_not_found():
    with pytest.raises(GroundingError, match="concept 'bird legs' .*names no world part"):
        grounding.WorldGrounder(_noise(), 0)(None, ["bird legs"], parts=_parts(), name="glen wren")
    m = grounding.WorldGrounder(_noise(), 0, "empty")(None, ["bird legs", "beak"], parts=_parts())
    assert not m[0].any() and m[1].any()


def test_grow_dilates_and_erodes_by_whole_pixels():
    dot = np.zeros((7, 7), bool)
    dot[3, 3] = True
    assert grounding._grow(dot, 1).sum() == 9 and grounding._grow(dot, 2).sum() == 25
    assert (grounding._grow(grounding._grow(dot, 2), -1) == grounding._grow(dot, 1)).all()


def test_noise_model_statistics_match_its_parameters():
    parts, n = _parts(), 4000
    truth = parts == 4
    rng = np.random.default_rng(0)
    miss = [not grounding.degrade(truth, _noise(p_miss=0.3), rng).any() for _ in range(n)]
    assert abs(np.mean(miss) - 0.3) < 0.03
    spur = [(grounding.degrade(truth, _noise(q_spurious=0.2), rng) & ~truth).any() for _ in range(n)]
    assert abs(np.mean(spur) - 0.2) < 0.03
    areas = np.array([grounding.degrade(truth, _noise(boundary=1), rng).sum() for _ in range(n)])
    eroded, grown = grounding._grow(truth, -1).sum(), grounding._grow(truth, 1).sum()
    assert set(np.unique(areas)) == {eroded, truth.sum(), grown}
    assert all(abs(np.mean(areas == a) - 1 / 3) < 0.03 for a in (eroded, truth.sum(), grown))


def test_world_noise_is_reproducible_per_image():
    g = grounding.WorldGrounder(_noise(boundary=1, p_miss=0.5, q_spurious=0.5), seed=3)
    a = g(None, ["beak", "wings"], parts=_parts(), key=7)
    assert (a == g(None, ["beak", "wings"], parts=_parts(), key=7)).all()
    assert not all((a == g(None, ["beak", "wings"], parts=_parts(), key=k)).all() for k in range(8, 12))


# ----------------------------------------------------------------------------- combining, flags, policy

def test_union_and_weighted_max():
    m = np.zeros((2, 4, 4), bool)
    m[0, :2] = True
    m[1, 1:3] = True
    union, weighted = grounding.combine(m, [3.0, 1.5])
    assert (union == m.any(0)).all()
    assert weighted[0, 0] == 3.0 and weighted[1, 0] == 3.0 and weighted[2, 0] == 1.5 and weighted[3, 0] == 0


@pytest.mark.parametrize("n_on, flag", [(0, "empty"), (1, "too_small"), (2, "ok"), (999, "ok"), (1000, "too_large")])
def test_quality_flags(n_on, flag):
    mask = np.zeros(1020, bool)
    mask[:n_on] = True
    assert grounding.quality(mask.reshape(34, 30), 0.001, 0.98)[0] == flag


def _items(parts_per_item):
    img = np.zeros((32, 32, 3), np.uint8)
    return [dict(split="train", id=f"{i:06d}", label=i % 2, source=f"train:{i}", image=img, parts=p, key=i)
            for i, p in enumerate(parts_per_item)]


BANK = {"classes": [{"label": 0, "name": "a", "concepts": [{"text": "long beak", "weight": 2.0}]},
                    {"label": 1, "name": "b", "concepts": [{"text": "tufted crest", "weight": 1.0}]}]}


@pytest.mark.parametrize("policy, action", [("keep", "kept"), ("drop", "dropped"), ("foreground", "foreground")])
def test_empty_mask_policy(policy, action, tmp_path):
    cfg = _masks(policy=policy, world={"boundary": 0, "p_miss": 0.0, "q_spurious": 0.0})
    results = list(grounding.ground_items(_items([_parts(), _parts()]), BANK, cfg, 0))  # class 1: no crest drawn
    (r0, a0), (r1, a1) = results
    assert (r0["flag"], r0["action"]) == ("ok", "kept") and a0["weighted"].max() == 2.0
    assert (r1["flag"], r1["action"]) == ("empty", action)
    if action == "dropped":
        assert a1 is None
    elif action == "foreground":
        assert (a1["union"] == (_parts() > 0)).all() and not a1["concepts"].any()
    else:
        assert not a1["union"].any()
    manifest = maskstore.write_store(tmp_path / "masks", results, {"policy": policy})
    assert maskstore.load_store(tmp_path / "masks") == manifest
    assert (maskstore.read_masks(tmp_path / "masks", r0)["union"] == (_parts() == 3)).all()
    s = grounding.summary(manifest["items"])
    assert (s["flags"]["empty"] == 1 and s["actions"][action] == (2 if action == "kept" else 1)
            and s["per_class"]["1"]["empty"] == 1)


def test_foreground_grounder_ignores_concepts():
    cfg = _masks(grounder="foreground")
    (r, a), = grounding.ground_items(_items([_parts()]), BANK, cfg, 0)
    assert [c["text"] for c in r["concepts"]] == ["a"] and (a["union"] == (_parts() > 0)).all()


def test_truth_gives_iou_of_the_noisy_masks():
    cfg = _masks(world={"boundary": 0, "p_miss": 1.0, "q_spurious": 0.0})
    exact = grounding.WorldGrounder(_noise(), 0)
    (r, _), = grounding.ground_items(_items([_parts()]), BANK, cfg, 0, truth=exact)
    assert r["iou"] == 0.0 and r["flag"] == "empty"
    (r, _), = grounding.ground_items(_items([_parts()]), BANK, _masks(world={"p_miss": 0.0, "q_spurious": 0.0,
                                                                              "boundary": 0}), 0, truth=exact)
    assert r["iou"] == 1.0


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(GroundingError, match="no mask store; run the masks stage"):
        maskstore.load_store(tmp_path)


# ----------------------------------------------------------------------------- the few-shot choice

def test_fewshot_selection_is_the_papers_protocol():
    """The store: k training images and one validation image of every class, disjoint; a run's classes: a
    seeded half (the others validate), different for another seed, the same for the same seed."""
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(1).permutation(70)]
    s = fewshot.select(labels, k=3, seed=0)
    assert np.bincount(labels[s["train"]], minlength=10).tolist() == [3] * 10
    assert sorted(labels[s["val"]]) == list(range(10)) and s["classes"].tolist() == list(range(10))
    assert list(s["train"]) == sorted(s["train"]) and not set(s["train"]) & set(s["val"])
    again = fewshot.select(labels, k=3, seed=0)
    assert all((again[k] == s[k]).all() for k in s)
    assert not (fewshot.select(labels, 3, seed=1)["train"] == s["train"]).all()
    with pytest.raises(ValueError, match="has 7 images; the few-shot choice needs 8"):
        fewshot.select(labels, k=7, seed=0)
    train, val = fewshot.subset(s["classes"], 0.5, 0)
    assert len(train) == 5 and set(val) == set(range(10)) - set(train)
    assert (fewshot.subset(s["classes"], 0.5, 0)[0] == train).all()
    draws = {tuple(fewshot.subset(s["classes"], 0.5, seed)[0]) for seed in range(5)}
    assert len(draws) == 5  # each seed its own classes
    with pytest.raises(ValueError, match="leaves no train or no val class"):
        fewshot.subset(s["classes"], 0.01, 0)


def test_missing_images_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        fewshot.list_folder(tmp_path / "nope")
    (tmp_path / "imgs" / "n01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="class 'n01' has no images"):
        fewshot.list_folder(tmp_path / "imgs")


# ----------------------------------------------------------------------------- GroundingDINO + SAM

@pytest.fixture(scope="module")
def tiny_gsam(tmp_path_factory):
    from tiny_hf import tiny_grounding_dino, tiny_sam

    d = tmp_path_factory.mktemp("gsam")
    return tiny_grounding_dino(d / "dino", ["bird", "beak", "long", "wings", "striped"]), tiny_sam(d / "sam")


NO_WORLD = {"pretrain": {"zoo": "vit_b"}, "bases": {"seeds": 1},
            "ablations": {"k": [], "noise": [], "relevance": [], "validation": []},
            "evaluate": {"splits": [], "alignment_splits": [], "benchmarks": {"imagenet_val": "unused"}}}
"""What params on an image folder need besides the stages under test: a zoo model, benchmarks not world splits."""


def _gsam(tiny_gsam, box=0.0, text=0.0):
    dino, sam = tiny_gsam
    return grounding.GroundingSAM(config.GroundingSAM(detector=str(dino), segmenter=str(sam), box_threshold=box,
                                                      text_threshold=text, device="cpu"))


def _image(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_groundingsam_end_to_end_shapes_thresholds_union(tiny_gsam):
    g = _gsam(tiny_gsam)
    img = _image(40, 56)
    (boxes,) = g.detect([img], [["long beak", "striped wings."]])
    assert len(boxes) == 2 and all(b.shape[1] == 4 and len(b) > 0 for b in boxes)
    assert all((b[:, 2] > b[:, 0]).all() and (b[:, 2] <= 55).all() and (b[:, 3] <= 39).all() for b in boxes)
    (strict,) = _gsam(tiny_gsam, box=0.5).detect([img], [["long beak", "striped wings"]])
    assert all(len(s) <= len(b) for s, b in zip(strict, boxes))
    (per_box,) = g.segment([img], [boxes[0]])
    assert per_box.shape == (len(boxes[0]), 40, 56) and per_box.dtype == bool
    masks = g(img, ["long beak", "striped wings"])
    assert masks.shape == (2, 40, 56) and (masks[0] == per_box.any(0)).all()


def test_groundingsam_no_detection_gives_an_empty_mask(tiny_gsam):
    img = np.zeros((30, 45, 3), np.uint8)
    g = _gsam(tiny_gsam, box=1.0)
    assert [len(b) for b in g.detect([img], [["bird"]])[0]] == [0]
    assert g(img, ["bird", "long beak"]).shape == (2, 30, 45) and not g(img, ["bird"]).any()


def test_groundingsam_batched_equals_unbatched(tiny_gsam):
    """Images of three shapes, each with its own concepts: batches of 3 give the boxes and masks of one image
    at a time, in fewer detector forwards (only same-shape images share one)."""
    dino, sam = tiny_gsam
    images = [_image(*hw, seed=i) for i, hw in enumerate([(40, 56), (40, 56), (56, 40), (40, 56), (36, 60)])]
    texts = [["long beak", "striped wings"], ["bird"], ["striped wings", "bird", "long beak"], ["bird wings"],
             ["long beak"]]
    one, three = (grounding.GroundingSAM(config.GroundingSAM(
        detector=str(dino), segmenter=str(sam), box_threshold=0.0, text_threshold=0.0, device="cpu", batch_size=b))
        for b in (1, 3))
    forwards = {1: 0, 3: 0}
    for b, g in ((1, one), (3, three)):
        g.det.register_forward_hook(lambda *_, b=b: forwards.__setitem__(b, forwards[b] + 1))
    boxes = [one.detect([im], [t])[0] for im, t in zip(images, texts)]
    assert forwards[1] == 5
    batched = three.detect(images, texts)
    assert forwards[3] == 1 + 1 + 1  # (40, 56) ×3, (56, 40), (36, 60)
    for b1, b3 in zip(boxes, batched):
        assert ([len(b) for b in b1] == [len(b) for b in b3]
                and all(np.allclose(x, y, atol=1e-4) for x, y in zip(b1, b3)))
    single = [one(im, t) for im, t in zip(images, texts)]
    assert all((a == b).all() for a, b in zip(single, three.many([{"image": im, "concepts": t}
                                                                  for im, t in zip(images, texts)])))
    assert any(m.any() for m in single) and not all(m.all() for m in single)


def test_ground_items_batched_groundingsam_keeps_item_order(tiny_gsam):
    dino, sam = tiny_gsam
    bank = {"classes": [{"label": 0, "name": "a", "concepts": [{"text": "long beak", "weight": 2.0}]},
                        {"label": 1, "name": "b", "concepts": [{"text": "striped wings", "weight": 1.0},
                                                               {"text": "bird", "weight": 1.0}]}]}
    items = [dict(split="train", id=f"{i:06d}", label=i % 2, source=f"{i}.png", image=_image(*hw, seed=i),
                  parts=None, key=i) for i, hw in enumerate([(40, 56), (56, 40), (40, 56), (40, 56)])]
    runs = []
    for b in (1, 3):
        cfg = _masks(grounder="groundingsam", groundingsam={"detector": str(dino), "segmenter": str(sam),
                                                            "box_threshold": 0.0, "text_threshold": 0.0,
                                                            "device": "cpu", "batch_size": b})
        runs.append(list(grounding.ground_items(items, bank, cfg, 0)))
    assert [r["id"] for r, _ in runs[1]] == [it["id"] for it in items]
    for (r1, a1), (r3, a3) in zip(*runs):
        assert r1 == r3 and all((a1[k] == a3[k]).all() for k in a1)


def test_paper_path_llm_and_groundingsam_on_an_image_folder(tmp_path, tiny_gsam):
    """The paper profile's path (llm proposer + groundingsam grounder on <root>/<class>/<image>) through the
    functions the stage notebooks call, on tiny models saved to disk."""
    from PIL import Image
    from tiny_hf import tiny_llm

    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((32 + 8 * i, 48, 3)) * 255).astype(np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    classes = concepts.classes_from_folder(["n01", "n02"])
    answers = ['["long beak", "striped wings"]', '["bird wings"]']
    llm = tiny_llm(tmp_path / "llm", [(concepts.llm_messages(c, 8), a) for c, a in zip(classes, answers)])
    dino, sam = tiny_gsam
    P = config.parse({"concepts": {"proposer": "llm", "dataset": "folder", "image_dir": str(tmp_path / "imgs"),
                                   "llm": {"model": str(llm), "cache_dir": str(tmp_path / "cache"), "device": "cpu"}},
                      "masks": {"grounder": "groundingsam", "k": 1, "policy": "drop",
                                "groundingsam": {"detector": str(dino), "segmenter": str(sam), "device": "cpu",
                                                 "box_threshold": 0.0, "text_threshold": 0.0}},
                      "finetune": {"k": 1, "arms": ["none", "ce", "cft"], "cnn": {"arms": []}}, **NO_WORLD})
    pool = fewshot.Pool(P.concepts.dataset, image_dir=P.concepts.image_dir)
    bank, _ = concepts.propose(P.concepts, concepts.classes_from_folder(pool.class_dirs), seed=0)
    path = concepts.save(bank, tmp_path / "concepts")
    bank = concepts.load(path.parent)
    sel = fewshot.select(pool.labels, P.masks.k, 0)
    manifest = maskstore.write_store(tmp_path / "masks", grounding.ground_items(pool.items(sel), bank, P.masks, 0),
                                     {"bank": path.name})
    assert [r["split"] for r in manifest["items"]] == ["train", "train", "val", "val"]  # k + 1 of every class
    for r in manifest["items"]:
        assert r["source"].endswith(".png") and len(r["concepts"]) == len(bank["classes"][r["label"]]["concepts"])
    data = fewshot.load(tmp_path / "masks", "train", pool)
    kept = [r for r in manifest["items"] if r["split"] == "train" and r["action"] == "kept"]
    assert (len(data["masks"]) == len(kept)
            and all(m.shape == i.shape[:2] for m, i in zip(data["masks"], data["images"])))
    # the whole object (RobustViT's target) is grounded here too, with the class name, so fine-tuning reads it
    gsam = grounding.GroundingSAM(P.masks.groundingsam)
    assert kept
    for r, img, fg in zip(kept, data["images"], data["foregrounds"]):
        want = gsam(img, [bank["classes"][r["label"]]["name"]]).any(0)
        assert fg is not None and np.array_equal(fg, want)
    # the validation image's grounded concept masks measure a model's concept usage at its own input size
    val = fewshot.load(tmp_path / "masks", "val", pool)
    rec = [r for r in manifest["items"] if r["split"] == "val" and r["action"] != "dropped"][0]
    val = {k: v[:1] for k, v in val.items()}  # one image: its class's concepts
    assert val["texts"] == [[c["text"] for c in rec["concepts"]]]
    assert val["concepts"][0].shape == (len(rec["concepts"]), *val["images"][0].shape[:2])
    vit = factory.build_model("vit_tiny_patch16_224", 2, 32, patch_size=16, embed_dim=16, depth=1, num_heads=2)
    rows = alignment.concept_usage(vit, val, "attnlrp", 32)
    got = {u["part"]: u["mass"] for u in rows}
    assert {u["split"] for u in rows} == {alignment.MASKS_SPLIT} and set(got) == {*val["texts"][0],
                                                                              alignment.ANY_CONCEPT,
                                                                              alignment.ELSEWHERE}
    assert got[alignment.ANY_CONCEPT] + got[alignment.ELSEWHERE] == pytest.approx(1)
    assert max(got[t] for t in val["texts"][0]) <= got[alignment.ANY_CONCEPT] + 1e-9


# ----------------------------------------------------------------------------- the stage: resumable, sharded

@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, small_world, smoke_params):
    """(params, world folder, concepts folder): the smoke world and its field-guide bank."""
    P, data = smoke_params, small_world[2]
    bank, _ = concepts.propose(P.concepts, concepts.classes_from_guide(world.load_guide(data)), seed=P.base.seed)
    out = tmp_path_factory.mktemp("stage") / "concepts"
    concepts.save(bank, out)
    return P, data, out


def _files(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Counting:
    """The world grounder, counting its calls and failing (a power cut) once it has grounded `fail_after`."""

    def __init__(self, P, fail_after=None):
        self.inner, self.calls, self.fail_after = (grounding.GROUNDERS["world"].build(P.masks, P.base.seed), 0,
                                                   fail_after)

    def __call__(self, *args, **kwargs):
        if self.calls == self.fail_after:
            raise RuntimeError("power cut")
        self.calls += 1
        return self.inner(*args, **kwargs)


def _with(P, **masks):
    return P.model_copy(update=dict(masks=P.masks.model_copy(update=masks)))


def test_stage_store_is_the_notebooks_store(tmp_path, stage_inputs):
    """run_stage writes what selecting, grounding item by item and write_store wrote before it."""
    P, data, bank_dir = stage_inputs
    manifest = ground.run_stage(P, data, bank_dir, tmp_path / "masks")
    bank, pool = concepts.load(bank_dir), fewshot.Pool("world", data)
    sel = fewshot.select(pool.labels, P.masks.k, P.base.seed)
    header = grounding.store_header(P, bank, sel)
    maskstore.write_store(tmp_path / "direct", grounding.ground_items(pool.items(sel), bank, P.masks, P.base.seed,
                                                                      truth=grounding.truth_for(P)), header)
    assert _files(tmp_path / "masks") == _files(tmp_path / "direct")
    assert manifest == maskstore.load_store(tmp_path / "masks") and len(manifest["items"]) == 4 * (3 + 1)
    assert "processes" not in manifest["header"]["params"] and "iou" in manifest["items"][0]
    assert not (tmp_path / "masks.partial").exists()


def test_interrupted_stage_resumes_to_the_same_store(tmp_path, stage_inputs):
    P, data, bank_dir = stage_inputs
    ground.run_stage(P, data, bank_dir, tmp_path / "whole")
    with pytest.raises(RuntimeError, match="power cut"):
        ground.run_stage(P, data, bank_dir, tmp_path / "masks", grounder=_Counting(P, fail_after=3))
    assert not (tmp_path / "masks").exists() and len(list((tmp_path / "masks.partial").rglob("*.json"))) == 1 + 3
    again = _Counting(P)  # another batch size decides nothing: the work folder is kept
    ground.run_stage(_with(P, groundingsam=config.GroundingSAM(batch_size=5)), data, bank_dir, tmp_path / "masks",
                        grounder=again)
    assert again.calls == 16 - 3
    assert _files(tmp_path / "masks") == _files(tmp_path / "whole") and not (tmp_path / "masks.partial").exists()


def test_work_folder_of_other_inputs_is_discarded(tmp_path, stage_inputs):
    P, data, bank_dir = stage_inputs
    with pytest.raises(RuntimeError, match="power cut"):
        ground.run_stage(P, data, bank_dir, tmp_path / "masks", grounder=_Counting(P, fail_after=3))
    other = _with(P, world=config.WorldNoise(boundary=0, p_miss=0.5, q_spurious=0.0))
    fresh = _Counting(other)
    ground.run_stage(other, data, bank_dir, tmp_path / "masks", grounder=fresh)
    assert fresh.calls == 16
    ground.run_stage(other, data, bank_dir, tmp_path / "clean")
    assert _files(tmp_path / "masks") == _files(tmp_path / "clean")


def test_stage_under_torchrun_writes_the_same_store(tmp_path, stage_inputs):
    """`python -m cftlib.stages.ground` in-process, and as 2 torchrun processes (gloo) resuming a work folder an
    interrupted single process left: the same store files."""
    import yaml

    P, data, bank_dir = stage_inputs
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config.as_dict(_with(P, processes=2))))
    assert _with(config.load(tmp_path / "params.yaml"), processes=1) == P  # so the work folder is resumed
    args = ["--params", str(tmp_path / "params.yaml"), "--data", str(data), "--concepts", str(bank_dir)]
    launch.run("cftlib.stages.ground", [*args, "--out", str(tmp_path / "one")], 1)
    with pytest.raises(RuntimeError, match="power cut"):
        ground.run_stage(P, data, bank_dir, tmp_path / "two", grounder=_Counting(P, fail_after=3))
    launch.run("cftlib.stages.ground", [*args, "--out", str(tmp_path / "two")], 2)
    assert _files(tmp_path / "two") == _files(tmp_path / "one") and not (tmp_path / "two.partial").exists()


# ----------------------------------------------------------------------------- the stage notebooks (slow)

def _project(tmp_path, params: str):
    """A project folder with the stage notebooks and the given params.yaml."""
    import shutil

    from conftest import ROOT

    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    (proj / "params.yaml").write_text(params)
    return proj


def _run(proj, *names):
    for name in names:
        nbrun.run(proj / "notebooks" / f"{name}.ipynb", proj / "executed" / f"{name}.ipynb", {"progress": False},
                  cwd=proj)
    return [(proj / "executed" / f"{n}.ipynb").read_bytes() for n in names]


@pytest.mark.slow
def test_concepts_and_masks_stages_run_on_smoke_profile_deterministically(tmp_path, small_world):
    import json
    import shutil

    from conftest import ROOT

    proj = _project(tmp_path, (ROOT / "profiles" / "smoke.yaml").read_text())
    shutil.copytree(small_world[2], proj / "data" / "world")
    first = _run(proj, "01_concepts", "02_masks")
    assert _run(proj, "01_concepts", "02_masks") == first, "executed notebooks must be byte-identical"
    m = json.loads((proj / "reports" / "masks.json").read_text())
    assert (m["images"] == 4 * (3 + 1)
            and m["bank"] == json.loads((proj / "reports" / "concepts.json").read_text())["bank"])
    assert json.loads((proj / "metrics" / "masks.json").read_text())["masks"]["images"] == 16
    for f in ("figures/concepts.png", "figures/masks_concepts.png", "figures/masks_failures.png",
              "data/masks/manifest.json"):
        assert (proj / f).is_file(), f
    cv = json.loads((proj / "reports" / "concepts.json").read_text())["validation"]
    rates = pd.read_csv(proj / "reports" / "concept_validation.csv")  # every candidate measured, the bank whole
    assert len(rates) == cv["candidates"] == json.loads((proj / "reports" / "concepts.json").read_text())["concepts"]
    assert rates["occurrence"].between(0, 1).all() and (rates["images"] > 0).all() and not cv["applied"]


@pytest.mark.slow
def test_paper_profile_notebooks_run_llm_and_groundingsam_on_an_image_folder(tmp_path, tiny_gsam):
    """The paper profile's stages, as a GPU user runs them, on an image folder and tiny models saved to disk."""
    import json

    import yaml
    from PIL import Image
    from tiny_hf import tiny_llm

    rng = np.random.default_rng(0)
    for c in ("n01", "n02", "n03", "n04"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):  # 2 + 1 few-shot, 1 for concept validation
            Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / c / f"{i}.jpg")
    names = {"n01": "glen wren", "n02": "ashen piper", "n03": "fen tern", "n04": "moor lark"}
    (tmp_path / "names.json").write_text(json.dumps(names))
    classes = concepts.classes_from_folder(list(names), tmp_path / "names.json")
    llm = tiny_llm(tmp_path / "llm", [(concepts.llm_messages(c, 8), '["long beak", "striped wings"]') for c in classes])
    dino, sam = tiny_gsam
    params = {"base": {"seed": 0, "profile": "paper", "threads": 1},
              "concepts": {"proposer": "llm", "dataset": "folder", "image_dir": str(tmp_path / "imgs"),
                           "class_names": str(tmp_path / "names.json"),
                           "llm": {"model": str(llm), "cache_dir": str(tmp_path / "cache"), "device": "cpu"}},
              "masks": {"grounder": "groundingsam", "k": 2, "groundingsam": {
                  "detector": str(dino), "segmenter": str(sam), "device": "cpu"}},
              "finetune": {"k": 2, "arms": ["none", "ce", "cft"], "cnn": {"arms": []}}, **NO_WORLD}
    proj = _project(tmp_path, yaml.safe_dump(params))
    _run(proj, "01_concepts", "02_masks")
    m = json.loads((proj / "reports" / "masks.json").read_text())
    assert m["images"] == 4 * (2 + 1) and m["grounder"] == "groundingsam" and "mean_iou" not in m  # k + 1 per class
    assert len(list((tmp_path / "cache").glob("*.json"))) == 4  # one LLM answer per class, cached
    cm = json.loads((proj / "reports" / "concepts.json").read_text())
    assert cm["concepts"] == 8 and cm["repairs"] == 0
    assert cm["validation"]["candidates"] == 8  # measured with GroundingSAM on the one image left per class
    assert json.loads((proj / "metrics" / "concepts.json").read_text())["bank"] == {
        "classes": 4, "concepts": 8, "dropped": 0, "repairs": 0}  # every answer parsed at the first try
