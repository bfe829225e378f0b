"""Paper-scale loaders on tiny fake copies of each dataset's released layout, built in tmp dirs: known
labels, known accuracies under both protocols, ObjectNet's mappings and border, SI-Score labels,
ImageNet-Segmentation's HDF5 references, and a missing dataset named with where to get it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from fakes import write_gtsegs
from PIL import Image

from cftlib import concepts
from cftlib.core import config, launch
from cftlib.data import datasets
from cftlib.metrics import accuracy, alignment
from cftlib.models import checkpoints, factory
from cftlib.stages import benchmarks


def _png(path, rgb, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


class Lookup(torch.nn.Module):
    """A fake classifier: the grey level of an image's top-left pixel selects a row of `table`."""

    def __init__(self, table: dict[int, np.ndarray]):
        super().__init__()
        self.table = table

    def forward(self, x):
        grey = ((x[:, 0, 0, 0] * 0.5 + 0.5) * 255).round().long().tolist()  # undo mean = std = 0.5
        return torch.tensor(np.stack([self.table[g] for g in grey]), dtype=torch.float32)


def _logits(*ranked):
    """1000 logits with `ranked` classes first, in that order."""
    z = np.zeros(1000)
    for i, c in enumerate(ranked):
        z[c] = 10.0 - i
    return z


def test_timm_index_files_agree_with_the_synsets():
    syn = datasets.imagenet_synsets()
    assert len(syn) == 1000
    for which in ("a", "r"):
        idx = datasets.subset_indices(which)
        wnids = datasets._timm_info(f"imagenet_{which}_synsets.txt")
        assert len(idx) == 200 and [syn[i] for i in idx] == wnids


def test_fake_imagenet_a_known_accuracies_under_both_protocols(tmp_path):
    syn, sub = datasets.imagenet_synsets(), datasets.subset_indices("a")
    a, b, c = (int(i) for i in sub[:3])
    outside = 0  # tench: not an ImageNet-A class
    assert outside not in sub
    images = {10: (a, _logits(a)),                  # right under both
              20: (a, _logits(outside, a)),         # 1000-way: tench; masked to 200: a
              30: (b, _logits(c, b)),               # wrong under both (c is an A class); b in the top 5
              40: (b, _logits(outside, c, b))}      # wrong under both
    for grey, (label, _) in images.items():
        _png(tmp_path / "imagenet-a" / syn[label] / f"{grey}.png", (grey,) * 3)
    bench = datasets.imagenet_a(tmp_path / "imagenet-a")
    assert sorted(bench.labels.tolist()) == sorted([a, a, b, b])
    model = Lookup({g: z for g, (_, z) in images.items()})
    for protocol, top1 in (("chefer", 0.25), ("standard", 0.5)):
        logits = benchmarks.predict(model, bench, protocol, batch_size=3)
        assert accuracy.benchmark_score(bench, logits, protocol) == {"top1": top1, "top5": 1.0}


def test_imagenet_r_rejects_a_folder_outside_its_200_classes(tmp_path):
    syn, sub = datasets.imagenet_synsets(), set(datasets.subset_indices("r").tolist())
    other = next(i for i in range(1000) if i not in sub)
    _png(tmp_path / syn[other] / "x.png", (0, 0, 0))
    with pytest.raises(datasets.DatasetMissing, match=syn[other]):
        datasets.imagenet_r(tmp_path)


def test_imagenet_val_and_v2_labels(tmp_path):
    syn = datasets.imagenet_synsets()
    _png(tmp_path / "val" / syn[0] / "a.JPEG.png", (1, 1, 1))
    _png(tmp_path / "val" / syn[999] / "b.png", (1, 1, 1))
    assert datasets.imagenet_val(tmp_path / "val").labels.tolist() == [0, 999]
    _png(tmp_path / "v2" / "7" / "a.png", (1, 1, 1))
    _png(tmp_path / "v2" / "12" / "b.png", (1, 1, 1))
    assert datasets.imagenet_v2(tmp_path / "v2").labels.tolist() == [12, 7]  # folders sorted as strings


def test_imagenet_sketch_labels_every_class_from_its_wnid_folder(tmp_path):
    syn, sub = datasets.imagenet_synsets(), set(datasets.subset_indices("r").tolist())
    outside = next(i for i in range(1000) if i not in sub)  # a class ImageNet-R lacks: Sketch has all 1000
    _png(tmp_path / "sketch" / syn[999] / "sketch_0.JPEG", (1, 1, 1))
    _png(tmp_path / "sketch" / syn[outside] / "sketch_0.JPEG", (1, 1, 1))
    _png(tmp_path / "sketch" / syn[outside] / "sketch_1.JPEG", (1, 1, 1))
    b = datasets.load("imagenet_sketch", tmp_path / "sketch")
    assert b.name == "imagenet_sketch" and b.labels.tolist() == [outside, outside, 999] and b.subset is None
    assert [p.name for p in b.paths] == ["sketch_0.JPEG", "sketch_1.JPEG", "sketch_0.JPEG"]


def test_imagenet_sketch_names_a_missing_root_or_a_folder_that_is_no_wnid(tmp_path):
    with pytest.raises(datasets.DatasetMissing) as e:
        datasets.imagenet_sketch(tmp_path / "nowhere")
    assert f"{tmp_path / 'nowhere'}: no such folder" in str(e.value) and "HaohanWang/ImageNet-Sketch" in str(e.value)
    _png(tmp_path / "unzipped" / "sketch" / datasets.imagenet_synsets()[0] / "0.JPEG", (1, 1, 1))
    with pytest.raises(datasets.DatasetMissing) as e:  # the zip's top folder given instead of its sketch/
        datasets.imagenet_sketch(tmp_path / "unzipped")
    assert f"{tmp_path / 'unzipped' / 'sketch'}: folder 'sketch' is not a class" in str(e.value)
    assert "the zip's sketch/ folder is the root" in str(e.value)


def _objectnet(root):
    """Three folders: one mapped to two ImageNet classes, one to one, one unmapped."""
    names = ["tench, Tinca tinca", "analog clock", "digital clock", "banana", "wall clock"]
    pytorch_to_line = {"0": 0, "409": 1, "530": 2, "954": 3, "892": 4}
    m = root / "mappings"
    m.mkdir(parents=True)
    (m / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(pytorch_to_line))
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"alarm_clock": "Alarm clock", "banana": "Banana", "air_freshener": "Air freshener"}))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))


def test_objectnet_mapping_from_the_datasets_own_files(tmp_path):
    _objectnet(tmp_path)
    assert datasets.objectnet_mapping(tmp_path / "mappings") == {"alarm_clock": [409, 530], "banana": [954]}


def test_objectnet_first_index_vs_any_of_mapped(tmp_path):
    _objectnet(tmp_path)
    images = {10: ("alarm_clock", _logits(530)),      # the second mapped class: official wrong, standard right
              20: ("alarm_clock", _logits(892, 409)),  # wall clock is unmapped: only standard masks it away
              30: ("banana", _logits(954)),            # right under both
              40: ("air_freshener", _logits(0))}       # unmapped class: not evaluated
    for grey, (folder, _) in images.items():
        img = Image.new("RGB", (12, 10), (grey,) * 3)
        img.paste((255, 0, 0), (0, 0, 12, 1))  # ObjectNet's 1-px red border (top edge)
        (tmp_path / "images" / folder).mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "images" / folder / f"{grey}.png")
    bench = datasets.objectnet(tmp_path)
    assert len(bench) == 3 and bench.labels.tolist() == [409, 409, 954]
    assert bench.subset.tolist() == [409, 530, 954]
    logits = np.stack([images[g][1] for g in (10, 20, 30)])
    assert accuracy.benchmark_score(bench, logits, "chefer")["top1"] == pytest.approx(1 / 3)
    assert accuracy.benchmark_score(bench, logits, "standard")["top1"] == 1.0
    # the standard protocol crops the border before resizing: no red is left; the official one keeps it
    assert (datasets.load_centre_crop(bench.paths[0], border=1, resize=8, crop=8) == 10).all()
    assert datasets.load_centre_crop(bench.paths[0], border=0, resize=10, crop=10)[0, 0, 0] == 255


def test_load_centre_crop_resizes_the_shorter_side_then_centre_crops(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 200
    Image.fromarray(img).save(tmp_path / "x.png")
    out = datasets.load_centre_crop(tmp_path / "x.png", resize=10, crop=10)
    assert out.shape == (10, 10, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 200  # the centre 10 of 20 columns straddles the edge


def test_si_score_labels_from_package_data(tmp_path):
    labels = datasets.si_score_labels()
    assert labels["ambulance"] == 407 and len(set(labels.values())) == len(labels)
    _png(tmp_path / "rotation" / "ambulance" / "0.png", (0, 0, 0))
    _png(tmp_path / "rotation" / "banana" / "0.png", (0, 0, 0))
    b = datasets.load("si_rotation", tmp_path)
    assert b.name == "si_rotation" and b.labels.tolist() == [407, 954]
    with pytest.raises(datasets.DatasetMissing, match="si_score"):
        datasets.load("si_location", tmp_path)
    _png(tmp_path / "area" / "banana" / "0.png", (0, 0, 0))  # the paper's size subset, in the release's area/
    b = datasets.load("si_size", tmp_path)
    assert b.name == "si_size" and b.labels.tolist() == [954] and b.paths[0].parent.parent.name == "area"


def test_imagenet_segmentation_reads_referenced_arrays(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]  # H×W×3, random: a wrong
    gts = [rng.integers(0, 2, (8, 8), dtype=np.uint8) for _ in range(2)]        # transpose changes them
    path = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs(path, imgs, gts)  # MATLAB v7.3 layout: cell arrays of references, arrays transposed
    out = list(datasets.segmentation(path, size=8))  # native size: the resize is the identity
    assert len(out) == 2
    for (im, gt), (im0, gt0) in zip(out, zip(imgs, gts)):
        assert (im == im0).all() and (gt == gt0.astype(bool)).all()
    assert list(datasets.segmentation(path, size=4))[0][0].shape == (4, 4, 3)


def test_missing_dataset_names_it_where_to_get_it_and_the_layout(tmp_path):
    with pytest.raises(datasets.DatasetMissing) as e:
        datasets.load("objectnet", tmp_path / "nowhere")
    msg = str(e.value)
    assert "objectnet" in msg and "objectnet.dev" in msg and "mappings/" in msg
    with pytest.raises(datasets.DatasetMissing, match="gtsegs_ijcv.mat.*calvin-vision"):
        next(datasets.segmentation(tmp_path / "gtsegs_ijcv.mat"))
    with pytest.raises(KeyError, match="imagenet_a"):
        datasets.load("imagenet-a", tmp_path)


def test_evaluate_model_scores_each_benchmark_protocol_and_class_group(tmp_path):
    syn, sub = datasets.imagenet_synsets(), datasets.subset_indices("r")
    r, r2 = int(sub[0]), int(sub[1])
    _png(tmp_path / "r" / syn[r] / "10.png", (10,) * 3)
    _png(tmp_path / "r" / syn[r2] / "30.png", (30,) * 3)
    _png(tmp_path / "v2" / "3" / "20.png", (20,) * 3)
    model = Lookup({10: _logits(0, r), 20: _logits(3), 30: _logits(r2)})
    cfg = config.parse({"evaluate": {"benchmarks": {"imagenet_r": str(tmp_path / "r"),
                                                    "imagenet_v2": str(tmp_path / "v2")}}}).evaluate
    benches = {n: datasets.load(n, root) for n, root in cfg.benchmarks.items()}
    rows = benchmarks.evaluate_model(model, benches, np.array([r, 3]), cfg, "attnlrp")
    got = {(x["benchmark"], x["protocol"], x["group"]): (x["images"], x["top1"]) for x in rows}
    assert got == {("imagenet_r", "chefer", "all"): (2, 0.5), ("imagenet_r", "chefer", "seen"): (1, 0.0),
                   ("imagenet_r", "chefer", "unseen"): (1, 1.0),
                   ("imagenet_r", "standard", "all"): (2, 1.0), ("imagenet_r", "standard", "seen"): (1, 1.0),
                   ("imagenet_r", "standard", "unseen"): (1, 1.0),
                   ("imagenet_v2", "chefer", "all"): (1, 1.0), ("imagenet_v2", "chefer", "seen"): (1, 1.0),
                   ("imagenet_v2", "standard", "all"): (1, 1.0), ("imagenet_v2", "standard", "seen"): (1, 1.0)}


def test_sample_is_a_seeded_choice_of_the_sorted_paths(tmp_path):
    syn = datasets.imagenet_synsets()
    for c in (5, 1):
        for i in range(4):
            _png(tmp_path / syn[c] / f"{i}.png", (i,) * 3)
    bench = datasets.imagenet_val(tmp_path)
    a, b = datasets.sample(bench, 3, seed=0), datasets.sample(bench, 3, seed=0)
    assert a.paths == b.paths and len(a) == 3
    assert a.paths == sorted(a.paths) and set(a.paths) <= set(bench.paths)
    assert [bench.labels[bench.paths.index(p)] for p in a.paths] == a.labels.tolist()
    seeds = {tuple(datasets.sample(bench, 3, seed=s).paths) for s in range(10)}
    assert len(seeds) > 1  # the seed matters
    assert datasets.sample(bench, 0, seed=0).paths == sorted(bench.paths)  # 0: all
    assert datasets.sample(bench, 99, seed=0).paths == sorted(bench.paths)


def test_shards_are_whole_batches_covering_every_image_once():
    n, bs = 11, 3
    one = benchmarks.shard(n, bs)
    assert one == [(0, 3), (3, 6), (6, 9), (9, 11)]
    two = benchmarks.shard(n, bs, 0, 2) + benchmarks.shard(n, bs, 1, 2)
    assert sorted(two) == one  # the same batches, dealt round robin
    assert benchmarks.shard(2, bs, 1, 2) == []


# ----------------------------------------------------------------------------- the CLI, in one process and two

TREE_CONCEPTS = ("long beak", "red wing")
"""The concepts of the fake mask store's validation item (`_paper_tree`)."""


def _paper_tree(tmp_path):
    """Tiny timm ViT and CNN runs with 1000 outputs, ImageNet val / -A / ObjectNet / segmentation fakes, a mask
    store whose class_index maps store label 0 to ImageNet class 1, and a paper-profile params file."""
    import yaml

    rng = np.random.default_rng(0)
    syn, sub = datasets.imagenet_synsets(), datasets.subset_indices("a")

    def img(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (rng.integers(14, 24), rng.integers(14, 24), 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)

    for c in (1, 2):
        for i in range(3):
            img(tmp_path / "val" / syn[c] / f"{i}.png")
    for c in sub[:2]:
        for i in range(2):
            img(tmp_path / "a" / syn[c] / f"{i}.png")
    _objectnet(tmp_path / "objectnet")
    for folder in ("alarm_clock", "banana"):
        img(tmp_path / "objectnet" / "images" / folder / "0.png")
    write_gtsegs(tmp_path / "seg.mat", [rng.integers(0, 256, (20, 18, 3), dtype=np.uint8) for _ in range(3)],
         [np.pad(np.ones((8, 8), np.uint8), 5)[:20, :18] for _ in range(3)])
    (tmp_path / "masks" / "val").mkdir(parents=True)
    (tmp_path / "masks" / "manifest.json").write_text(json.dumps(
        {"header": {"class_index": [1, 7], "classes": [0, 1], "params": {"class_fraction": 0.5}},  # subset 0: class 0
         "items": [{"split": "train", "id": "000000", "label": 0, "action": "kept"},
                   {"split": "val", "id": "000003", "label": 1, "action": "kept",  # the pool's 4th image: val/syn[2]/0
                    "concepts": [{"text": t, "weight": 1.0} for t in TREE_CONCEPTS]}]}))
    h, w = np.asarray(Image.open(tmp_path / "val" / syn[2] / "0.png")).shape[:2]
    concept = np.zeros((2, h, w), np.uint8)
    concept[0, : h // 2], concept[1, :, : w // 2] = 1, 1
    concepts.save({"schema": concepts.SCHEMA, "classes": [
        {"label": i, "name": name, "concepts": [{"text": t, "weight": 1.0, "source": "test"} for t in TREE_CONCEPTS]}
        for i, name in enumerate(("goldfish", "great white shark"))],
        "header": {"proposer": "test", "model": None, "prompt": None, "prompt_sha256": None, "params": {},
                   "date": "2026-12-02"}}, tmp_path / "concepts")  # the class names of the usage table
    np.savez(tmp_path / "masks" / "val" / "000003.npz", union=concept.max(0),
             weighted=concept.max(0).astype(np.float32), concepts=concept, foreground=concept.max(0))
    torch.manual_seed(0)
    vit = dict(name="vit_tiny_patch16_224", num_classes=1000, img_size=224,
               kwargs=dict(patch_size=32, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0))
    cnn = dict(name="resnet10t", num_classes=1000, img_size=None, kwargs=dict(channels=[4, 4, 4, 4], stem_width=4))
    for model, arm, build in (("vit", "none", vit), ("vit", "cft", vit), ("cnn", "none", cnn), ("cnn", "cft", cnn)):
        m = factory.build_model(build["name"], build["num_classes"], build["img_size"], **build["kwargs"])
        checkpoints.save_checkpoint(tmp_path / "runs" / model / arm / "seed0" / "best.pt", m.eval(), build)
        epochs = [dict(epoch=e, val_cft_align=0.5 - 0.1 * e, best=int(e > 0)) for e in range(2)]  # a run's epochs.csv
        pd.DataFrame(epochs).to_csv(tmp_path / "runs" / model / arm / "seed0" / "epochs.csv", index=False)
    P = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    P["base"]["threads"] = 1
    P["finetune"].update(arms=["none", "cft"], seeds=1)
    P["finetune"]["cnn"]["arms"] = ["none", "cft"]
    P["concepts"]["image_dir"] = str(tmp_path / "val")  # the few-shot pool: the store's val item is its 4th image
    P["evaluate"].update(benchmarks={"imagenet_val": str(tmp_path / "val"), "imagenet_a": str(tmp_path / "a"),
                                     "objectnet": str(tmp_path / "objectnet")},
                         segmentation=str(tmp_path / "seg.mat"), benchmark_images=5, batch_size=2, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(P))
    return ["--params", str(tmp_path / "params.yaml"), "--runs", str(tmp_path / "runs"), "--masks",
            str(tmp_path / "masks")]


@pytest.mark.slow
def test_cli_scores_every_run_and_gives_the_same_file_on_one_and_two_processes(tmp_path):
    import pandas as pd

    args = _paper_tree(tmp_path)
    threads = torch.get_num_threads()
    try:
        launch.run("cftlib.stages.benchmarks", args + ["--out", str(tmp_path / "one.csv")], 1)
    finally:
        torch.set_num_threads(threads)
    launch.run("cftlib.stages.benchmarks", args + ["--out", str(tmp_path / "two.csv")], 2)  # torchrun, gloo
    one = (tmp_path / "one.csv").read_bytes()
    assert one == (tmp_path / "two.csv").read_bytes()
    r = pd.read_csv(tmp_path / "one.csv")
    assert list(r.columns) == list(benchmarks.RESULTS)
    cls = r[~r["benchmark"].isin([datasets.SEGMENTATION, alignment.MASKS_SPLIT])]
    # 4 runs × 3 benchmarks × 2 protocols; ImageNet val holds seen class 1 and unseen class 2, the others no seen one
    assert len(cls[cls["group"] == "all"]) == 4 * 3 * 2
    val = cls[(cls["benchmark"] == "imagenet_val") & (cls["protocol"] == "chefer")].set_index(["model", "arm", "group"])
    assert val.loc[("vit", "cft", "all"), "images"] == 5  # benchmark_images: 5 of 6
    assert val.loc[("vit", "cft", "seen"), "images"] + val.loc[("vit", "cft", "unseen"), "images"] == 5
    assert set(cls.loc[cls["benchmark"] == "imagenet_a", "group"]) == {"all", "unseen"}
    assert len(cls[cls["benchmark"] == "objectnet"]) == 4 * 2 * 2  # its 2 mapped images: all + unseen
    seg = r[r["benchmark"] == datasets.SEGMENTATION].set_index(["model", "arm"])
    assert len(seg) == 4 and (seg["images"] == 3).all()
    assert seg.loc[("vit", "none"), "method"] == "attnlrp" and seg.loc[("cnn", "none"), "method"] == "gradcam"
    assert seg[["pixAcc", "mIoU", "mAP"]].notna().all().all()
    usage = r[r["benchmark"] == alignment.MASKS_SPLIT]  # the store's val image, on rank 0, per run and concept
    assert len(usage) == 4 * 4 and set(usage["part"]) == {*TREE_CONCEPTS, alignment.ANY_CONCEPT, alignment.ELSEWHERE}
    both = usage.pivot_table(index=["model", "arm"], columns="part", values="mass")
    assert np.allclose(both[alignment.ANY_CONCEPT] + both[alignment.ELSEWHERE], 1) and (usage["images"] == 1).all()


@pytest.mark.slow
def test_cli_resumes_from_its_cache_and_recomputes_when_the_params_change(tmp_path, monkeypatch):
    import yaml

    args = _paper_tree(tmp_path) + ["--cache", str(tmp_path / "cache")]
    threads = torch.get_num_threads()
    try:
        launch.run("cftlib.stages.benchmarks", args + ["--out", str(tmp_path / "first.csv")], 1)
        assert len(list((tmp_path / "cache").glob("*.json"))) == 4  # one per distinct model (none shares weights)
        computed = []
        real = benchmarks.evaluate_model
        monkeypatch.setattr(benchmarks, "evaluate_model", lambda *a, **k: computed.append(1) or real(*a, **k))
        launch.run("cftlib.stages.benchmarks", args + ["--out", str(tmp_path / "again.csv")], 1)
        assert not computed and (tmp_path / "again.csv").read_bytes() == (tmp_path / "first.csv").read_bytes()
        P = yaml.safe_load((tmp_path / "params.yaml").read_text())
        P["evaluate"]["benchmark_images"] = 4
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(P))
        launch.run("cftlib.stages.benchmarks", args + ["--out", str(tmp_path / "other.csv")], 1)
        assert len(computed) == 4  # another sample: nothing reused
    finally:
        torch.set_num_threads(threads)
