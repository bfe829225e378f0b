"""Paper-scale loaders on tiny fake copies of each dataset's released layout, built in tmp dirs: known
labels, known accuracies under both protocols, ObjectNet's mappings and border, SI-Score labels,
ImageNet-Segmentation's HDF5 references, and a missing dataset named with where to get it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cftlib import benchmarks


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
    syn = benchmarks.imagenet_synsets()
    assert len(syn) == 1000
    for which in ("a", "r"):
        idx = benchmarks.subset_indices(which)
        wnids = benchmarks._timm_info(f"imagenet_{which}_synsets.txt")
        assert len(idx) == 200 and [syn[i] for i in idx] == wnids


def test_fake_imagenet_a_known_accuracies_under_both_protocols(tmp_path):
    syn, sub = benchmarks.imagenet_synsets(), benchmarks.subset_indices("a")
    a, b, c = (int(i) for i in sub[:3])
    outside = 0  # tench: not an ImageNet-A class
    assert outside not in sub
    images = {10: (a, _logits(a)),                  # right under both
              20: (a, _logits(outside, a)),         # 1000-way: tench; masked to 200: a
              30: (b, _logits(c, b)),               # wrong under both (c is an A class); b in the top 5
              40: (b, _logits(outside, c, b))}      # wrong under both
    for grey, (label, _) in images.items():
        _png(tmp_path / "imagenet-a" / syn[label] / f"{grey}.png", (grey,) * 3)
    bench = benchmarks.imagenet_a(tmp_path / "imagenet-a")
    assert sorted(bench.labels.tolist()) == sorted([a, a, b, b])
    model = Lookup({g: z for g, (_, z) in images.items()})
    for protocol, top1 in (("chefer", 0.25), ("standard", 0.5)):
        logits = benchmarks.predict(model, bench, protocol, batch_size=3)
        assert bench.score(logits, protocol) == {"top1": top1, "top5": 1.0}


def test_imagenet_r_rejects_a_folder_outside_its_200_classes(tmp_path):
    syn, sub = benchmarks.imagenet_synsets(), set(benchmarks.subset_indices("r").tolist())
    other = next(i for i in range(1000) if i not in sub)
    _png(tmp_path / syn[other] / "x.png", (0, 0, 0))
    with pytest.raises(benchmarks.DatasetMissing, match=syn[other]):
        benchmarks.imagenet_r(tmp_path)


def test_imagenet_val_and_v2_labels(tmp_path):
    syn = benchmarks.imagenet_synsets()
    _png(tmp_path / "val" / syn[0] / "a.JPEG.png", (1, 1, 1))
    _png(tmp_path / "val" / syn[999] / "b.png", (1, 1, 1))
    assert benchmarks.imagenet_val(tmp_path / "val").labels.tolist() == [0, 999]
    _png(tmp_path / "v2" / "7" / "a.png", (1, 1, 1))
    _png(tmp_path / "v2" / "12" / "b.png", (1, 1, 1))
    assert benchmarks.imagenet_v2(tmp_path / "v2").labels.tolist() == [12, 7]  # folders sorted as strings


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
    assert benchmarks.objectnet_mapping(tmp_path / "mappings") == {"alarm_clock": [409, 530], "banana": [954]}


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
    bench = benchmarks.objectnet(tmp_path)
    assert len(bench) == 3 and bench.labels.tolist() == [409, 409, 954]
    assert bench.subset.tolist() == [409, 530, 954]
    assert bench.score(np.stack([images[g][1] for g in (10, 20, 30)]), "chefer")["top1"] == pytest.approx(1 / 3)
    assert bench.score(np.stack([images[g][1] for g in (10, 20, 30)]), "standard")["top1"] == 1.0
    # the standard protocol crops the border before resizing: no red is left; the official one keeps it
    assert (benchmarks.load_image(bench.paths[0], border=1, resize=8, crop=8) == 10).all()
    assert benchmarks.load_image(bench.paths[0], border=0, resize=10, crop=10)[0, 0, 0] == 255


def test_load_image_resizes_the_shorter_side_then_centre_crops(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 200
    Image.fromarray(img).save(tmp_path / "x.png")
    out = benchmarks.load_image(tmp_path / "x.png", resize=10, crop=10)
    assert out.shape == (10, 10, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 200  # the centre 10 of 20 columns straddles the edge


def test_si_score_labels_from_package_data(tmp_path):
    labels = benchmarks.si_score_labels()
    assert labels["ambulance"] == 407 and len(set(labels.values())) == len(labels)
    _png(tmp_path / "rotation" / "ambulance" / "0.png", (0, 0, 0))
    _png(tmp_path / "rotation" / "banana" / "0.png", (0, 0, 0))
    b = benchmarks.load("si_rotation", tmp_path)
    assert b.name == "si_rotation" and b.labels.tolist() == [407, 954]
    with pytest.raises(benchmarks.DatasetMissing, match="si_score"):
        benchmarks.load("si_location", tmp_path)


def test_imagenet_segmentation_reads_referenced_arrays(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]  # H×W×3, random: a wrong
    gts = [rng.integers(0, 2, (8, 8), dtype=np.uint8) for _ in range(2)]        # transpose changes them
    path = tmp_path / "gtsegs_ijcv.mat"
    with h5py.File(path, "w") as f:  # MATLAB v7.3 layout: cell arrays of references, arrays transposed
        img_refs = f.create_dataset("/value/img", (2, 1), dtype=h5py.ref_dtype)
        gt_refs = f.create_dataset("/value/gt", (2, 1), dtype=h5py.ref_dtype)
        for i, (im, gt) in enumerate(zip(imgs, gts)):
            img_refs[i, 0] = f.create_dataset(f"#refs#/img{i}", data=im.transpose(2, 1, 0)).ref
            inner = f.create_dataset(f"#refs#/gt{i}", data=gt.transpose(1, 0)).ref
            cell = f.create_dataset(f"#refs#/cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = inner
            gt_refs[i, 0] = cell.ref
    out = list(benchmarks.segmentation(path, size=8))  # native size: the resize is the identity
    assert len(out) == 2
    for (im, gt), (im0, gt0) in zip(out, zip(imgs, gts)):
        assert (im == im0).all() and (gt == gt0.astype(bool)).all()
    assert list(benchmarks.segmentation(path, size=4))[0][0].shape == (4, 4, 3)


def test_missing_dataset_names_it_where_to_get_it_and_the_layout(tmp_path):
    with pytest.raises(benchmarks.DatasetMissing) as e:
        benchmarks.load("objectnet", tmp_path / "nowhere")
    msg = str(e.value)
    assert "objectnet" in msg and "objectnet.dev" in msg and "mappings/" in msg
    with pytest.raises(benchmarks.DatasetMissing, match="gtsegs_ijcv.mat.*calvin-vision"):
        next(benchmarks.segmentation(tmp_path / "gtsegs_ijcv.mat"))
    with pytest.raises(KeyError, match="imagenet_a"):
        benchmarks.load("imagenet-a", tmp_path)


def test_evaluate_model_scores_each_benchmark_under_each_protocol(tmp_path):
    from cftlib import config

    syn, sub = benchmarks.imagenet_synsets(), benchmarks.subset_indices("r")
    r = int(sub[0])
    _png(tmp_path / "r" / syn[r] / "10.png", (10,) * 3)
    _png(tmp_path / "v2" / "3" / "20.png", (20,) * 3)
    model = Lookup({10: _logits(0, r), 20: _logits(3)})
    cfg = config.parse({"evaluate": {"benchmarks": {"imagenet_r": str(tmp_path / "r"), "imagenet_v2": str(tmp_path / "v2")}}}).evaluate
    rows = {(x["benchmark"], x["protocol"]): x["top1"] for x in benchmarks.evaluate_model(model, cfg, "attnlrp")}
    assert rows == {("imagenet_r", "chefer"): 0.0, ("imagenet_r", "standard"): 1.0,
                    ("imagenet_v2", "chefer"): 1.0, ("imagenet_v2", "standard"): 1.0}
