"""The concepts and masks stages without papermill, on the smoke profile: every file they declare in dvc.yaml
written, with the keys and columns the later stages and the README read."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_world_stage import _declared

from cftlib import concepts as bank_io
from cftlib import grounding
from cftlib.core import io
from cftlib.data import maskstore
from cftlib.report import headline
from cftlib.stages import concepts, masks


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_concepts_stage_writes_its_outputs(tmp_path, smoke_params, small_world):
    P, (_, _, world_dir) = smoke_params, small_world
    C = concepts.run(P, world_dir, tmp_path / "data/concepts", tmp_path / "metrics", tmp_path / "figures",
                     tmp_path / "reports")
    assert all((tmp_path / f).is_file() for f in _declared("concepts")), _declared("concepts")
    assert bank_io.load(tmp_path / "data/concepts") == C.bank and C.bank_path.parent == tmp_path / "data/concepts"
    counts = [len(c["concepts"]) for c in C.bank["classes"]]
    assert len(counts) == P.world.n_species == len(C.classes)
    assert io.read_json(tmp_path / "metrics/concepts.json") == headline.concepts(len(counts), sum(counts),
                                                                                  len(C.dropped), 0)
    report = io.read_json(tmp_path / "reports/concepts.json")
    assert report["bank"] == C.bank_path.name and report["concepts"] == sum(counts)
    assert report["validation"]["candidates"] == len(C.rates) > 0 and report["validation"]["failing"] == len(C.failing)
    table = pd.read_csv(tmp_path / "reports/concept_validation.csv")
    assert len(table) == len(C.rates) and {"label", "text", "occurrence", "coverage", "found", "passes"} <= set(table)


def test_masks_stage_grounds_the_store_and_writes_its_outputs(tmp_path, smoke_params, smoke_project, threads):
    P, proj = smoke_params, smoke_project
    M = masks.run(P, proj / "params.yaml", proj / "data/world", proj / "data/concepts", tmp_path / "data/masks",
                  tmp_path / "metrics", tmp_path / "figures", tmp_path / "reports")
    assert all((tmp_path / f).is_file() for f in _declared("masks")), _declared("masks")
    assert not (tmp_path / "data/masks.partial").exists()
    assert maskstore.load_store(tmp_path / "data/masks") == M.manifest
    assert [(r["split"], int(r["id"])) for r in M.manifest["items"]] == [
        (s, int(i)) for s in ("train", "val") for i in M.selection[s]]  # every selected image, in selection order
    stats = grounding.summary(M.manifest["items"])
    assert io.read_json(tmp_path / "reports/masks.json") == {**stats, "bank": M.bank_name, "grounder": "world"}
    assert io.read_json(tmp_path / "metrics/masks.json") == headline.masks(stats)
    assert stats["train_images"] == P.masks.k * P.world.n_species == len(M.selection["train"])
