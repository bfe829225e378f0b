"""Parameters are validated once, up front (cftlib.core.config each field, cftlib.stages.params across fields and
registries), and errors name the file and the dotted key."""

import json
import re
from pathlib import Path

import pydantic
import pytest
import yaml
from conftest import ROOT

from cftlib.core import config
from cftlib.stages import params

PROFILES = ["params.yaml", "profiles/default.yaml", "profiles/smoke.yaml", "profiles/paper.yaml"]
PIN = json.loads((Path(__file__).parent / "as_dict_pin.json").read_text())
"""repr(config.as_dict(section)) of every section of every profile (and of the defaults), written by the dataclass
config this module replaced (issue 28): manifests and run configs hash these dicts."""


@pytest.mark.parametrize("path", PROFILES)
def test_shipped_params_files_are_valid(path):
    p = params.load(ROOT / path)
    if p.concepts.dataset == "world":
        assert p.world.image_size % p.pretrain.model_kwargs["patch_size"] == 0


def test_defaults_match_params_yaml():
    """config.py's defaults are the default profile, so a partial params file means the same thing."""
    assert params.load(ROOT / "params.yaml") == config.Params() == params.load(ROOT / "profiles" / "default.yaml")


@pytest.mark.parametrize("profile", sorted(PIN))
def test_as_dict_is_byte_for_byte_what_the_dataclass_config_gave(profile):
    """Same keys in the same order, same values and types (int vs float, list vs tuple), for every section."""
    P = config.Params() if profile == "<defaults>" else params.load(ROOT / profile)
    got = {s: repr(config.as_dict(getattr(P, s))) for s in config.Params.model_fields}
    assert {**got, "<all>": repr(config.as_dict(P))} == PIN[profile]


def test_numbers_keep_their_yaml_type_where_the_dataclass_config_kept_it():
    """A YAML int fills a float field as a float (`lr: 1`); inside lists and mappings numbers stay as written."""
    p = params.parse({"finetune": {"lr": 1, "arm_lr": {"rrr": 1}}, "ablations": {"noise": [0, 1.5]}})
    assert type(p.finetune.lr) is float and p.finetune.lr == 1.0
    assert type(p.finetune.arm_lr["rrr"]) is int and [type(x) for x in p.ablations.noise] == [int, float]


def test_sections_are_frozen():
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.Params().finetune.lr = 1.0


@pytest.mark.parametrize("data, key", [
    ({"world": {"rho_bgg": 0.9}}, "world.rho_bgg: unknown key; known: image_size,"),
    ({"wrold": {}}, "wrold: unknown key; known: base, world,"),
    ({"world": 3}, "world: must be a valid dictionary"),
    ({"world": {"n_species": "10"}}, "world.n_species: must be a valid integer, got str '10'"),
    ({"pretrain": {"lr": "fast"}}, "pretrain.lr: must be a valid number, got str 'fast'"),  # "1e-3" unquoted: a number
    ({"world": {"rho_bg": 1.2}}, "world.rho_bg: must be less than or equal to 1, got 1.2"),
    ({"world": {"rho_color": -0.1}}, "world.rho_color"),
    ({"world": {"n_species": 0}}, "world.n_species: must be greater than or equal to 3, got 0"),
    ({"world": {"image_size": 50}}, "world.image_size 50 is not divisible by pretrain.model_kwargs.patch_size 4"),
    ({"world": {"splits": {"train": 10, "val": 5}}}, "world.splits.test: missing"),
    ({"world": {"splits": {"train": 10, "val": 5, "test": 0}}},
     "world.splits.test: must be greater than or equal to 1"),
    ({"pretrain": {"epochs": 0}}, "pretrain.epochs"),
    ({"pretrain": {"keep_epoch": 30}}, "pretrain.keep_epoch: 30: in [0, epochs = 20]"),
    ({"pretrain": {"weights": "w.pt"}}, "pretrain.weights: set zoo too"),
    ({"base": {"profile": "laptop"}}, "base.profile: must be 'default', 'smoke' or 'paper', got 'laptop'"),
    ({"base": {"seed": 1.5}}, "base.seed: must be a valid integer, got float 1.5"),
    ({"base": {"seed": True}}, "base.seed: must be a valid integer, got bool True"),
    ({"finetune": {"lr": True}}, "finetune.lr: must be a valid number, got bool True"),
    ({"finetune": {"arms": "cft"}}, "finetune.arms: must be a valid list, got str 'cft'"),
    ({"finetune": {"loss": {"squeeze": 0.5}}}, "finetune.loss.squeeze: must be less than 0.5"),
    ({"finetune": {"loss": {"reverse_mask": "1-M"}}}, "finetune.loss.reverse_mask: must be 'complement' or 'official'"),
    ({"finetune": {"arm_seeds": {"robustvit": 6}}}, "finetune.arm_seeds.robustvit: 6 must be a whole number in [1,"),
    ({"finetune": {"arm_lr": {"rrr": 0}}}, "finetune.arm_lr.rrr: must be greater than 0"),
    ({"finetune": {"cnn": {"pretrain": {"zoo": "resnet50"}}}}, "finetune.cnn.pretrain.zoo: unknown key"),
    ({"masks": {"min_fraction": 0.99}}, "masks.min_fraction: need 0 <= min_fraction < max_fraction <= 1"),
    ({"masks": {"policy": "ignore"}}, "masks.policy: must be 'keep', 'drop' or 'foreground'"),
    ({"concepts": {"dataset": "coco"}}, "concepts.dataset: must be 'world', 'folder' or 'imagenet'"),
    ({"concepts": {"image_dir": "imgs"}}, "concepts.image_dir: 'imgs': the world's images are"),
    ({"concepts": {"proposer": "llm"}}, "concepts.llm.model: required when proposer is llm"),
    ({"concepts": {"bank": {"path": ""}}}, "concepts.bank.path"),
    ({"concepts": {"validation": {"coverage": 1.5}}}, "concepts.validation.coverage"),
    ({"concepts": {"validation": {"images": 0, "apply": True}}}, "concepts.validation.apply: true needs images > 0"),
    ({"evaluate": {"alignment_splits": ["bg_random"]}}, "evaluate.alignment_splits: 'bg_random' is not among"),
    ({"evaluate": {"splits": ["v2"], "alignment_splits": []}}, "evaluate.splits: must include test"),
    ({"evaluate": {"splits": [], "alignment_splits": []}}, "evaluate.splits: empty; the world's evaluation needs"),
    ({"evaluate": {"benchmarks": {"imagenet_a": ""}}}, "evaluate.benchmarks.imagenet_a"),
    ({"evaluate": {"device": "tpu"}}, "evaluate.device: must be 'auto', 'cpu' or 'cuda'"),
    ({"ablations": {"validation": [[0.15]]}}, "ablations.validation.0: List should have at least 2 items"),
    ({"ablations": {"validation": [[0.15, 1.2]]}}, "ablations.validation.0.1: must be less than or equal to 1"),
    ({"ablations": {"noise": [-1.0]}}, "ablations.noise.0: must be greater than or equal to 0"),
    ({"ablations": {"k": [0]}}, "ablations.k.0: must be greater than or equal to 1"),
    ({"figures": {"dpi": 0}}, "figures.dpi"),
])
def test_bad_params_fail_naming_the_key(tmp_path, data, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}: {key}")):
        params.load(path)


@pytest.mark.parametrize("text, message", [
    ("finetune: {loss: {lambda_ctx: .nan}}", "finetune.loss.lambda_ctx: must be a finite number, got nan"),
    ("finetune: {lr: .nan}", "finetune.lr: must be a finite number, got nan"),
    ("bases: {lr: .inf}", "bases.lr: must be a finite number, got inf"),
    ("evaluate: {tolerance: -.inf}", "evaluate.tolerance: must be a finite number, got -inf"),
    ("ablations: {noise: [0.0, .nan]}", "ablations.noise.1: must be a finite number, got nan"),
    ("pretrain: {model_kwargs: {mlp_ratio: .nan}}", "pretrain.model_kwargs: {'mlp_ratio': nan}; need a finite"),
    ("finetune: {weight_decay: -5}", "finetune.weight_decay: must be greater than or equal to 0, got -5"),
    ("finetune: {selection: best}", "finetune.selection: must be 'val_loss' or 'alignment', got 'best'"),
    ("finetune: {workers: 0}", "finetune.workers: must be greater than or equal to 1, got 0"),
    ("evaluate: {split_images: {test: -1}}", "evaluate.split_images.test: must be greater than or equal to 0, got -1"),
    ("bases: {weight_decay: -5}", "bases.weight_decay: must be greater than or equal to 0"),
    ("finetune: {arms: [none, cft, cft]}", "finetune.arms: 'cft' repeated; list each once"),
    ("finetune: {cnn: {arms: [none, none, cft]}}", "finetune.cnn.arms: 'none' repeated"),
    ("evaluate: {splits: [test, pose, pose]}", "evaluate.splits: 'pose' repeated"),
    ("ablations: {k: [1, 1]}", "ablations.k: 1 repeated"),
    ("ablations: {validation: [[0.15, 0.2], [0.15, 0.2]]}", "ablations.validation: [0.15, 0.2] repeated"),
    ("ablations: {k: [5]}", "ablations.k 5 is larger than masks.k 3"),
    ("finetune: {k: 5}", "finetune.k 5 is larger than masks.k 3"),
])
def test_non_finite_negative_and_repeated_values_fail_naming_the_key(tmp_path, text, message):
    """YAML's .nan and .inf are floats, and NaN passes every `<` check: they are refused by type, before the checks;
    a repeated entry fails here rather than stages later."""
    path = tmp_path / "params.yaml"
    path.write_text(text + "\n")
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}: {message}")):
        params.load(path)


@pytest.mark.parametrize("text, message", [
    ("base:\n  seed: 1\n  seed: 2\n", "base.seed: duplicate key"),
    ("base: {seed: 1}\nworld: {}\nbase: {seed: 2}\n", "base: duplicate key"),
    ("finetune:\n  loss: {lambda_ctx: 1.0, lambda_ctx: 2.0}\n", "finetune.loss.lambda_ctx: duplicate key"),
    ("ablations:\n  validation: [{a: 1, a: 2}]\n", "ablations.validation.0.a: duplicate key"),
    ("", "empty params file"),
    ("# only a comment\n", "empty params file"),
    ("- base\n", "must be a valid dictionary or instance of Params, got list"),
])
def test_duplicate_keys_and_an_empty_file_are_refused_by_name(tmp_path, text, message):
    """PyYAML keeps the last of two equal keys silently, and reads an empty file as None: both would run defaults
    the file does not say."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}: {message}")):
        params.load(path)


def test_a_cnn_may_be_left_out():
    assert params.parse({"finetune": {"cnn": {"arms": []}}}).finetune.cnn.arms == []


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        params.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("world: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        params.load(tmp_path / "bad.yaml")


def test_paper_profile_is_valid_and_has_the_official_hyper_parameters():
    p = params.load(ROOT / "profiles" / "paper.yaml")
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
    ("pretrain.zoo", "", "pretrain.zoo: required when concepts.dataset is imagenet"),
    ("finetune.cnn.zoo", "", "finetune.cnn.zoo: required when concepts.dataset is imagenet"),
    ("bases.seeds", 3, "bases.seeds: 3; a pretrained zoo model is one base model"),
    ("evaluate.splits", ["test"], "evaluate.splits: ['test'] are world splits"),
    ("evaluate.benchmarks", {"imagenet_a": "/x"}, "evaluate.benchmarks: needs imagenet_val"),
    ("finetune.arms", ["none", "cft", "dfr"], "finetune.arms: dfr refits the head on the world's"),
    ("ablations.k", [1], "ablations: the ablations run on the world"),
    ("concepts.proposer", "fieldguide", "concepts.proposer: fieldguide reads the world's field guide"),
    ("concepts.image_dir", "", "concepts.image_dir: required when dataset is imagenet"),
    ("finetune.cnn.pretrain.zoo", "resnet50", "finetune.cnn.pretrain.zoo"),
    ("masks.processes", 0, "masks.processes"),
])
def test_paper_scale_cross_checks_name_the_key(key, value, named):
    data = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    _set(data, key, value)
    with pytest.raises(config.ConfigError, match=re.escape(f"paper.yaml: {named}")):
        params.parse(data, "paper.yaml")


def test_exponent_floats_without_a_dot_load_as_numbers(tmp_path):
    """`dvc exp run -S finetune.lr=5e-7` writes `lr: 5e-07`, which YAML 1.1 (PyYAML) reads as a string: load reads it as
    YAML 1.2 does, a number; anything else stays a string and fails naming the key."""
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  lr: 5e-07\n  arm_lr: {rrr: 2E-6}\n  cnn: {lr: +3e-06}\n")
    p = params.load(path)
    assert (p.finetune.lr, p.finetune.arm_lr["rrr"], p.finetune.cnn.lr) == (5e-7, 2e-6, 3e-6)
    path.write_text("finetune:\n  lr: 5e-07x\n")
    with pytest.raises(config.ConfigError, match=re.escape("finetune.lr: must be a valid number, got str '5e-07x'")):
        params.load(path)
