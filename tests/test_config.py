"""Parameters are validated once, up front, and errors name the file and the dotted key."""

import re

import pytest
import yaml

from cftlib import config
from conftest import ROOT


@pytest.mark.parametrize("path", ["params.yaml", "profiles/smoke.yaml"])
def test_shipped_params_files_are_valid(path):
    p = config.load(ROOT / path)
    assert p.world.image_size % p.pretrain.model_kwargs["patch_size"] == 0


def test_defaults_match_params_yaml():
    """config.py's defaults are the default profile, so a partial params file means the same thing."""
    assert config.load(ROOT / "params.yaml") == config.Params()


@pytest.mark.parametrize("data, key", [
    ({"world": {"rho_bgg": 0.9}}, "world.rho_bgg"),
    ({"wrold": {}}, "wrold"),
    ({"world": {"n_species": "10"}}, "world.n_species"),
    ({"pretrain": {"lr": "1e-3"}}, "pretrain.lr"),
    ({"world": {"rho_bg": 1.2}}, "world.rho_bg"),
    ({"world": {"rho_color": -0.1}}, "world.rho_color"),
    ({"world": {"n_species": 0}}, "world.n_species"),
    ({"world": {"image_size": 50}}, "world.image_size"),
    ({"world": {"splits": {"train": 10, "val": 5, "test": 5, "tset": 5}}}, "world.splits.tset"),
    ({"world": {"splits": {"train": 10, "val": 5}}}, "world.splits.test"),
    ({"pretrain": {"epochs": 0}}, "pretrain.epochs"),
    ({"base": {"profile": "laptop"}}, "base.profile"),
    ({"base": {"seed": 1.5}}, "base.seed"),
])
def test_bad_params_fail_naming_the_key(tmp_path, data, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(config.ConfigError, match=re.escape(key)) as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("world: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")
