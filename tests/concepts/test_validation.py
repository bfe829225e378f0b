"""Concept validation (cftlib.validation): which images it reads, what occurrence and coverage measure, how the
thresholds drop concepts, and the config's checks."""

import numpy as np
import pytest

from cftlib import concepts, grounding, validation
from cftlib.core import config
from cftlib.data import world
from cftlib.stages import params

HEADER = {"proposer": "x", "model": None, "prompt": None, "prompt_sha256": None, "params": {}, "date": None}


def _bank(*classes):
    return concepts.validate({"schema": concepts.SCHEMA, "header": HEADER, "classes": [
        {"label": i, "name": f"c{i}", "concepts": [{"text": t} for t in texts]} for i, texts in enumerate(classes)]})


def test_held_out_images_leave_the_few_shot_choice_out():
    labels = np.repeat([0, 1, 2], 10)
    selection = {"train": np.array([0, 1, 10, 11, 20, 21]), "val": np.array([2, 12, 22])}
    got = validation.images(labels, selection, 5, seed=0)
    assert len(got) == 15 and not set(got) & {0, 1, 2, 10, 11, 12, 20, 21, 22}
    assert all((labels[got] == c).sum() == 5 for c in range(3))
    assert np.array_equal(got, validation.images(labels, selection, 5, seed=0))  # seeded
    assert not np.array_equal(got, validation.images(labels, selection, 5, seed=1))
    assert len(validation.images(labels, selection, 30, seed=0)) == 21  # fewer left: all of them


class _Fake:
    """Concept 'wing' found in images 0 and 1 (IoU 1 and 0.5 with the object), never 'beak'."""

    def __call__(self, image, texts, *, parts=None, key=0, name=""):
        out = np.zeros((len(texts), 4, 4), bool)
        if key < 2:
            out[texts.index("wing"), :2 if key else 4, :] = True  # the object is the whole image
        return out


def _item(key):
    return {"image": np.zeros((4, 4, 3), np.uint8), "label": 0, "parts": None, "key": key}


def test_occurrence_is_the_share_found_and_coverage_the_mean_iou_where_found():
    def objects(image, texts, **kw):
        return np.ones((1, 4, 4), bool)

    rows = validation.measure(map(_item, range(4)), _bank(["wing", "beak"]), config.Masks(), 0, _Fake(), objects)
    got = {r["text"]: (r["images"], r["found"], r["occurrence"], r["coverage"]) for r in rows}
    assert got == {"wing": (4, 2, 0.5, 0.75), "beak": (4, 0, 0.0, 0.0)}


def test_with_exact_world_masks_coverage_is_the_part_share_of_the_bird():
    parts = np.zeros((8, 8), np.uint8)
    parts[2:6, 2:6] = world.PARTS.index("body") + 1
    parts[2:4, 6:8] = world.PARTS.index("beak") + 1  # 4 px of a 20 px bird
    exact = grounding.WorldGrounder(config.WorldNoise(boundary=0, p_miss=0.0, q_spurious=0.0), 0)
    item = {"image": np.zeros((8, 8, 3), np.uint8), "label": 0, "parts": parts, "key": 0}
    rows = validation.measure([item], _bank(["long beak"]), config.Masks(), 0, exact)
    assert rows[0]["occurrence"] == 1.0 and rows[0]["coverage"] == pytest.approx(4 / 20)


def _rate(label, text, occurrence, coverage):
    return {"label": label, "name": f"c{label}", "text": text, "weight": 1.0, "source": "", "images": 20,
            "found": round(occurrence * 20), "occurrence": occurrence, "coverage": coverage}


def test_thresholds_drop_by_occurrence_first_and_a_class_keeps_its_best():
    bank = _bank(["a", "b", "c"], ["d", "e"])
    rates = [_rate(0, "a", 0.9, 0.5), _rate(0, "b", 0.1, 0.9), _rate(0, "c", 0.5, 0.1),
             _rate(1, "d", 0.5, 0.15), _rate(1, "e", 0.1, 0.8)]
    kept, dropped = validation.apply(bank, rates, 0.15, 0.2)
    assert [[k["text"] for k in c["concepts"]] for c in kept["classes"]] == [["a"], ["d"]]
    assert {d["text"]: d["reason"] for d in dropped} == {"b": "occurrence < 0.15", "c": "coverage < 0.2",
                                                        "e": "occurrence < 0.15"}  # d: class 1's best survivor
    assert kept["header"]["params"]["validation"] == {"occurrence": 0.15, "coverage": 0.2, "images": 20}
    concepts.validate(kept)  # still a valid bank
    nothing, _ = validation.apply(bank, [_rate(0, t, 0.0, 0.0) for t in "abc"] + [_rate(1, "d", 0.1, 0),
                                                                                 _rate(1, "e", 0.05, 0)], 0.15, 0.2)
    assert [[k["text"] for k in c["concepts"]] for c in nothing["classes"]] == [["a"], ["d"]]  # most often found
    everything, none = validation.apply(bank, rates, 0.0, 0.0)
    assert everything["classes"] == bank["classes"] and none == []


def test_a_grounder_without_concepts_cannot_validate():
    with pytest.raises(grounding.GroundingError, match="foreground.*ignores the concepts"):
        validation.measure([], _bank(["a"]), config.Masks(grounder="foreground"), 0)


def test_config_errors_name_the_key():
    with pytest.raises(config.ConfigError, match="concepts.validation.coverage"):
        params.parse({"concepts": {"validation": {"coverage": 1.5}}})
    with pytest.raises(config.ConfigError, match="concepts.validation.apply"):
        params.parse({"concepts": {"validation": {"images": 0, "apply": True}}})
    with pytest.raises(config.ConfigError, match="ablations.validation"):
        params.parse({"ablations": {"validation": [[0.15]]}})
    with pytest.raises(config.ConfigError, match="ablations.validation.*repeated"):
        params.parse({"ablations": {"validation": [[0.15, 0.2], [0.15, 0.2]]}})


def test_the_missing_rates_name_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="validation.json.*concepts.validation.images"):
        validation.load(tmp_path)
