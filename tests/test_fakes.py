"""The fake paper-scale world (tests/fakes.py) is what the paper profile expects: each dataset reads through its
own loader with valid ImageNet labels, the tiny models load from their folders and answer as taught, the fake
weights load into the zoo's models, and the profile pointed at the fakes passes the config check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import CLASSES, CNN, CNN_KWARGS, N_CONCEPTS, TRAIN_IMAGES, VIT_KWARGS, class_infos, paper_params

from cftlib import concepts, grounding
from cftlib.core import config
from cftlib.data import datasets, fewshot

INDICES = [c[0] for c in CLASSES]


def test_imagenet_train_folder_is_wnid_folders_of_non_square_images(paper_fakes):
    from PIL import Image

    paths, labels, dirs = fewshot.list_folder(paper_fakes["imagenet_train"])
    assert dirs == sorted(c[1] for c in CLASSES) and np.bincount(labels).tolist() == [TRAIN_IMAGES] * len(CLASSES)
    for p in paths:
        with Image.open(p) as im:
            assert im.width != im.height and p.suffix == ".JPEG" and p.name.startswith(p.parent.name)


@pytest.mark.parametrize("name", datasets.LOADERS)
def test_every_benchmark_loader_reads_its_fake(paper_fakes, name):
    roots = paper_params(paper_fakes)["evaluate"]["benchmarks"]
    b = datasets.load(name, roots[name])
    extra = {409} if name == "objectnet" else set()  # alarm_clock: analog clock (409); digital clock (530)
    expected = {c[0] for c in CLASSES if name != "objectnet" or c[3]} | extra
    assert set(b.labels.tolist()) == expected and all(p.is_file() for p in b.paths)
    if b.subset is not None:
        assert set(b.labels.tolist()) <= set(b.subset.tolist())


def test_objectnet_fake_maps_through_all_four_files(paper_fakes):
    b = datasets.load("objectnet", paper_fakes["objectnet"])
    mapping = datasets.objectnet_mapping(paper_fakes["objectnet"] / "mappings")
    assert mapping == {"alarm_clock": [409, 530], "banana": [954], "candle": [470], "lemon": [951]}
    assert not any("air_freshener" in str(p) for p in b.paths)  # an unmapped folder is left out
    assert b.border == 1 and b.accepted[b.labels.tolist().index(409)] == (409, 530)


def test_segmentation_fake_reads_as_images_with_object_masks(paper_fakes):
    pairs = list(datasets.segmentation(paper_fakes["segmentation"]))
    assert len(pairs) == 4
    for k, (img, gt) in enumerate(pairs):
        assert img.shape == (224, 224, 3) and gt.shape == (224, 224) and 0.03 < gt.mean() < 0.6
        colour = np.array(CLASSES[k][5])  # the mask sits on the drawn object, not transposed
        assert np.abs(img[gt].mean(0) - colour).max() < 25 < np.abs(img[~gt].mean(0) - colour).max()


def test_paper_params_pass_the_config_check_and_keep_the_profile(paper_fakes):
    import yaml
    from conftest import ROOT

    params = paper_params(paper_fakes)
    P = config.parse(params, "paper_params")
    profile = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    assert (P.concepts.proposer, P.concepts.dataset, P.masks.grounder) == ("llm", "imagenet", "groundingsam")
    assert (P.pretrain.zoo, P.finetune.cnn.zoo, P.finetune.arms) == ("vit_b", CNN, profile["finetune"]["arms"])
    assert P.pretrain.model_kwargs == VIT_KWARGS and P.finetune.cnn.pretrain.model_kwargs == CNN_KWARGS
    assert set(P.evaluate.benchmarks) == set(profile["evaluate"]["benchmarks"])
    for path in [*P.evaluate.benchmarks.values(), P.evaluate.segmentation, P.concepts.image_dir, P.pretrain.weights,
                 P.finetune.cnn.weights, P.concepts.llm.model, P.masks.groundingsam.detector,
                 P.masks.groundingsam.segmenter]:
        assert path.startswith(str(paper_fakes["imagenet_train"].parents[1])), path
    assert params["masks"] == {**profile["masks"], "groundingsam": params["masks"]["groundingsam"]}


def test_tiny_llm_gives_the_proposer_each_class_its_concepts(paper_fakes, tmp_path):
    params = paper_params(paper_fakes)
    params["concepts"]["llm"]["cache_dir"] = str(tmp_path / "cache")
    cfg = config.parse(params).concepts
    assert cfg.llm.n_concepts == N_CONCEPTS
    bank, dropped = concepts.propose(cfg, class_infos())
    assert [[k["text"] for k in c["concepts"]] for c in bank["classes"]] == [c[6] for c in CLASSES] and not dropped


def test_tiny_groundingsam_loads_and_grounds_a_fake_image(paper_fakes):
    P = config.parse(paper_params(paper_fakes))
    g = grounding.GroundingSAM(P.masks.groundingsam)
    img = fewshot.load_image(fewshot.list_folder(paper_fakes["imagenet_train"])[0][0])
    assert g(img, CLASSES[0][6]).shape == (N_CONCEPTS, *img.shape[:2])


@pytest.mark.parametrize("name, kwargs", [("vit_b", VIT_KWARGS), (CNN, CNN_KWARGS)])
def test_zoo_builds_the_fake_pretrained_weights(paper_fakes, name, kwargs):
    zoo = pytest.importorskip("cftlib.models.zoo")

    model = zoo.build(name, weights=str(paper_fakes[name]), num_classes=1000, **kwargs)
    saved = torch.load(paper_fakes[name], weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
