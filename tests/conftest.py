"""Shared fixtures: the smoke profile and a small generated world (session-scoped, generated once)."""

from __future__ import annotations

import os
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
def paper_fakes(tmp_path_factory):
    """The fake paper-scale world (tests/fakes.py) built once: {name: path}."""
    from fakes import make_paper_fakes

    return make_paper_fakes(tmp_path_factory.mktemp("paper_fakes"))
