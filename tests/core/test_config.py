"""Parameters are validated once, up front, and errors name the file and the dotted key."""

import re

import pytest
import yaml
from conftest import ROOT

from cftlib.core import config


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
    ({"pretrain": {"lr": "fast"}}, "pretrain.lr"),  # not "1e-3": unquoted, that is the number (YAML 1.2, as dvc)
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


@pytest.mark.parametrize("text, message", [
    ("finetune: {loss: {lambda_ctx: .nan}}", "finetune.loss.lambda_ctx: nan; need a finite number"),
    ("finetune: {lr: .nan}", "finetune.lr: nan; need a finite number"),
    ("bases: {lr: .inf}", "bases.lr: inf; need a finite number"),
    ("evaluate: {tolerance: -.inf}", "evaluate.tolerance: -inf; need a finite number"),
    ("ablations: {noise: [0.0, .nan]}", "ablations.noise: [0.0, nan]; need a finite number"),
    ("pretrain: {model_kwargs: {mlp_ratio: .nan}}", "pretrain.model_kwargs: {'mlp_ratio': nan}; need a finite"),
    ("finetune: {weight_decay: -5}", "finetune.weight_decay: must be >= 0"),
    ("finetune: {selection: best}", "finetune.selection: unknown selection 'best'; choose val_loss or alignment"),
    ("finetune: {workers: 0}", "finetune.workers: must be >= 1"),
    ("evaluate: {split_images: {posed: 10}}", "evaluate.split_images: unknown split 'posed'; known: "),
    ("evaluate: {split_images: {test: -1}}", "evaluate.split_images: test: -1; need an integer >= 0"),
    ("bases: {weight_decay: -5}", "bases.weight_decay: must be >= 0"),
    ("finetune: {arms: [none, cft, cft]}", "finetune.arms: 'cft' repeated; list each once"),
    ("finetune: {cnn: {arms: [none, none, cft]}}", "finetune.cnn.arms: 'none' repeated"),
    ("evaluate: {splits: [test, pose, pose]}", "evaluate.splits: 'pose' repeated"),
    ("ablations: {k: [1, 1]}", "ablations.k: 1 repeated"),
    ("finetune: {arms: [ce]}", "finetune.arms: ['ce']: needs none and cft (the evaluation compares cft with the base"),
    ("finetune: {arms: [none, ce]}", "finetune.arms: ['none', 'ce']: needs cft"),
    ("finetune: {cnn: {arms: [cft]}}", "finetune.cnn.arms: ['cft']: needs none"),
    ("ablations: {k: [5]}", "ablations.k 5 is larger than masks.k 3"),
])
def test_non_finite_negative_repeated_and_unreportable_values_fail_naming_the_key(tmp_path, text, message):
    """YAML's .nan and .inf are floats, and NaN passes every `<` check: they are refused by type, before the checks;
    an arm list the report cannot compare, or a repeated entry, fails here rather than stages later."""
    path = tmp_path / "params.yaml"
    path.write_text(text + "\n")
    with pytest.raises(config.ConfigError, match=re.escape(message)) as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_a_cnn_may_be_left_out():
    assert config.parse({"finetune": {"cnn": {"arms": []}}}).finetune.cnn.arms == []


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("world: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_paper_profile_is_valid_and_has_the_official_hyper_parameters():
    p = config.load(ROOT / "profiles" / "paper.yaml")
    assert (p.concepts.dataset, p.pretrain.zoo, p.finetune.cnn.zoo) == ("imagenet", "vit_b", "convnextv2_b")
    assert (p.masks.k, p.masks.class_fraction, p.finetune.epochs, p.finetune.batch_size) == (3, 0.5, 50, 8)
    # Table 8's lr for ViT-B and ConvNeXt-V2 (the official train.py's default is 3e-6; tests/models/test_zoo.py checks
    # the profile against every Table 8 value of its two models)
    assert (p.finetune.lr, p.finetune.cnn.lr) == (5e-7, 3e-6)
    assert (p.finetune.weight_decay, p.finetune.lr_decay, p.finetune.lr_decay_every) == (1e-4, 0.85, 2)
    L = p.finetune.loss
    assert (L.lambda_align, L.lambda_acc, L.lambda_ctx, L.lambda_concept) == (0.8, 0.2, 1.2, 0.5)
    assert "imagenet_val" in p.evaluate.benchmarks and not p.evaluate.splits
    assert p.pretrain.model_kwargs == {} and p.finetune.cnn.pretrain.model_kwargs == {}  # the zoo's own architectures


def _set(data, dotted, value):
    *path, last = dotted.split(".")
    for k in path:
        data = data.setdefault(k, {})
    data[last] = value


@pytest.mark.parametrize("key, value, named", [
    ("pretrain.zoo", "", "pretrain.zoo"),
    ("finetune.cnn.zoo", "", "finetune.cnn.zoo"),
    ("evaluate.splits", ["test"], "evaluate.splits"),
    ("evaluate.benchmarks", {"imagenet_a": "/x"}, "evaluate.benchmarks"),
    ("ablations.k", [1], "ablations"),
    ("finetune.cnn.pretrain.zoo", "resnet50", "finetune.cnn.pretrain.zoo"),
    ("masks.processes", 0, "masks.processes"),
])
def test_paper_scale_cross_checks_name_the_key(key, value, named):
    data = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    _set(data, key, value)
    with pytest.raises(config.ConfigError, match=re.escape(named)):
        config.parse(data, "paper.yaml")


def test_exponent_floats_without_a_dot_load_as_numbers(tmp_path):
    """`dvc exp run -S finetune.lr=5e-7` writes `lr: 5e-07`, which YAML 1.1 (PyYAML) reads as a string: load reads it as
    YAML 1.2 does, a number; anything else stays a string and fails naming the key."""
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  lr: 5e-07\n  arm_lr: {rrr: 2E-6}\n  cnn: {lr: +3e-06}\n")
    p = config.load(path)
    assert (p.finetune.lr, p.finetune.arm_lr["rrr"], p.finetune.cnn.lr) == (5e-7, 2e-6, 3e-6)
    path.write_text("finetune:\n  lr: 5e-07x\n")
    with pytest.raises(config.ConfigError, match=re.escape("finetune.lr must be float, got str '5e-07x'")):
        config.load(path)
