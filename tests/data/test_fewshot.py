"""The few-shot pool over an ImageNet folder: bank labels number the folders, `class_index` maps them to the
model's ImageNet-1k outputs."""

import numpy as np
import pytest
from PIL import Image

from cftlib import concepts
from cftlib.data import fewshot
from cftlib.data.datasets import imagenet_synsets


def _folder(root, names):
    for n in names:
        (root / n).mkdir(parents=True)
        Image.new("RGB", (12, 9), (1, 2, 3)).save(root / n / "a.JPEG")
    return root


def test_imagenet_pool_maps_labels_to_imagenet_indices(tmp_path):
    wnids = imagenet_synsets()
    pick = [wnids[951], wnids[7], wnids[300]]
    pool = fewshot.Pool("imagenet", image_dir=_folder(tmp_path, pick))
    assert pool.labels.tolist() == [0, 1, 2]  # folders sorted by wnid: 7, 300, 951
    assert pool.class_index.tolist() == sorted([951, 7, 300], key=lambda i: wnids[i])
    assert pool.item(2, "train")["image"].shape == (9, 12, 3)
    names = concepts.classes_from_imagenet(pool.class_dirs)
    assert names[0].wnid == wnids[7] and names[0].name.split(",")[0] == "cock"


def test_folder_pool_keeps_its_own_labels_and_imagenet_rejects_other_folders(tmp_path):
    root = _folder(tmp_path / "f", ["cat", "dog"])
    (root / "cat" / "._a.JPEG").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: not an image
    pool = fewshot.Pool("folder", image_dir=root)
    assert np.array_equal(pool.class_index, [0, 1]) and [p.name for p in pool.paths] == ["a.JPEG", "a.JPEG"]
    with pytest.raises(FileNotFoundError, match="cat, dog.*not ImageNet-1k wnids"):
        fewshot.Pool("imagenet", image_dir=tmp_path / "f")
