"""Shared fixtures: the smoke profile and a small generated world (session-scoped, generated once)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_params():
    from cftlib.core import config

    return config.load(ROOT / "profiles" / "smoke.yaml")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory, smoke_params):
    """The smoke world generated once into a temp folder: (config, seed, data_dir)."""
    from cftlib.data import world

    out = tmp_path_factory.mktemp("world") / "world"
    world.generate(smoke_params.world, smoke_params.base.seed, out)
    return smoke_params.world, smoke_params.base.seed, out


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory, small_world, smoke_params):
    """A project folder the fine-tuning code runs in: the smoke profile's params, world, concepts and masks stages,
    and random tiny base models (ViT and CNN) where the world stage puts its trained ones. Read-only: a test that
    writes into it copies it first."""
    from cftlib import concepts, grounding
    from cftlib.data import fewshot, maskstore, world
    from cftlib.models import checkpoints
    from cftlib.training import pretrain

    P, (_, seed, world_dir) = smoke_params, small_world
    root = tmp_path_factory.mktemp("project")
    bank, _ = concepts.propose(P.concepts, concepts.classes_from_guide(world.load_guide(world_dir)), seed)
    concepts.save(bank, root / "data" / "concepts")
    pool = fewshot.Pool("world", world_dir)
    sel = fewshot.select(pool.labels, P.masks.k, seed)
    maskstore.write_store(root / "data" / "masks", grounding.ground_items(pool.items(sel), bank, P.masks, seed),
                          grounding.store_header(P, bank, sel))
    for b in range(P.bases.seeds):
        for role, cfg, size in (("vit", P.pretrain, P.world.image_size), ("cnn", P.finetune.cnn.pretrain, None)):
            model, build = pretrain.fresh(cfg, P.world.n_species, size, b)
            checkpoints.save_checkpoint(pretrain.base_path(root / "models" / "base", role, b), model, build)
    shutil.copy(ROOT / "profiles" / "smoke.yaml", root / "params.yaml")
    shutil.copytree(world_dir, root / "data" / "world")
    return root


@pytest.fixture(scope="session")
def paper_fakes(tmp_path_factory):
    """The fake paper-scale world (tests/fakes.py) built once: {name: path}."""
    from fakes import make_paper_fakes

    return make_paper_fakes(tmp_path_factory.mktemp("paper_fakes"))
