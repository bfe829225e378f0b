"""The names a params file gives are checked against the registries that define them, before any work, naming the
file and the key; the registries are the only lists of those names."""

import re

import pytest
import yaml
from conftest import ROOT

from cftlib import relevance
from cftlib.concepts import PROPOSERS
from cftlib.core import config
from cftlib.data import datasets, world
from cftlib.grounding import GROUNDERS
from cftlib.metrics import accuracy
from cftlib.stages import ablations, params
from cftlib.training import losses, runspec


@pytest.mark.parametrize("path", ["params.yaml", "profiles/default.yaml", "profiles/smoke.yaml", "profiles/paper.yaml"])
def test_shipped_profiles_name_only_registered_things(path):
    assert params.load(ROOT / path) == config.load(ROOT / path)


@pytest.mark.parametrize("data, message", [
    ({"finetune": {"arms": ["none", "cft", "cft2"]}}, "finetune.arms: unknown arm 'cft2'; choose from cft, "),
    ({"finetune": {"cnn": {"arms": ["none", "cft", "robust"]}}}, "finetune.cnn.arms: unknown arm 'robust'"),
    ({"finetune": {"arm_lr": {"rrx": 1e-6}}}, "finetune.arm_lr: unknown arm 'rrx'"),
    ({"finetune": {"arm_seeds": {"rrx": 1}}}, "finetune.arm_seeds: unknown arm 'rrx'"),
    ({"finetune": {"relevance": "lrp"}}, "finetune.relevance: unknown relevance method 'lrp'; choose from attnlrp"),
    ({"finetune": {"cnn": {"relevance": "lrp"}}}, "finetune.cnn.relevance: unknown relevance method 'lrp'"),
    ({"evaluate": {"relevance": "iia"}}, "evaluate.relevance: unknown relevance method 'iia'"),
    ({"ablations": {"relevance": ["iia"]}}, "ablations.relevance: unknown relevance method 'iia'"),
    ({"ablations": {"loss": ["no_beta"]}}, "ablations.loss: unknown loss variant 'no_beta'; choose from no_cls"),
    ({"ablations": {"loss": ["full"]}}, "ablations.loss: unknown loss variant 'full'"),  # the main run, not a variant
    ({"concepts": {"proposer": "gpt"}}, "concepts.proposer: unknown proposer 'gpt'; choose from fieldguide"),
    ({"masks": {"grounder": "sam"}}, "masks.grounder: unknown grounder 'sam'; choose from world"),
    ({"world": {"splits": {"train": 10, "val": 5, "test": 5, "tset": 5}}}, "world.splits: unknown split 'tset'"),
    ({"evaluate": {"splits": ["test", "posed"], "alignment_splits": ["test"]}},
     "evaluate.splits: unknown split 'posed'"),
    ({"evaluate": {"split_images": {"posed": 10}}}, "evaluate.split_images: unknown split 'posed'"),
    ({"evaluate": {"benchmarks": {"imagenet_x": "/a"}}}, "evaluate.benchmarks: unknown benchmark 'imagenet_x'"),
    ({"evaluate": {"protocols": ["chefer", "mine"]}}, "evaluate.protocols: unknown protocol 'mine'"),
    ({"finetune": {"arms": ["ce"]}}, "finetune.arms: ['ce']: needs none and cft (the evaluation compares cft with"),
    ({"finetune": {"arms": ["none", "ce"]}}, "finetune.arms: ['none', 'ce']: needs cft"),
    ({"finetune": {"cnn": {"arms": ["cft"]}}}, "finetune.cnn.arms: ['cft']: needs none"),
])
def test_an_unregistered_name_fails_naming_the_key_and_the_registry(tmp_path, data, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    config.load(path)  # the typed file is fine: only the name is wrong
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}: {message}")):
        params.load(path)


def test_every_registered_name_is_accepted():
    """The check reads the registries themselves: each of their names passes where the params name one."""
    assert set(losses.ABLATIONS) == set(ablations.LOSSES) - {"full"}
    ok = [{"finetune": {"arms": [*runspec.REPORTED, a]}} for a in runspec.ARMS if a not in runspec.REPORTED]
    ok += [{"ablations": {"relevance": list(relevance.METHODS), "loss": list(losses.ABLATIONS)}},
           {"evaluate": {"protocols": list(accuracy.PROTOCOLS), "split_images": {s: 1 for s in world.SPLIT_SPECS}}},
           {"world": {"splits": {s: 1 for s in world.SPLIT_SPECS}}}]
    ok += [{"masks": {"grounder": g}} for g in GROUNDERS if g != "world"] + [{"concepts": {"proposer": "bank"}}]
    for data in ok:
        params.parse(data)
    paper = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    paper["evaluate"]["benchmarks"] = {b: "/data" for b in datasets.LOADERS}
    assert params.parse(paper).evaluate.benchmarks.keys() == datasets.LOADERS.keys()
    assert set(PROPOSERS) >= {"fieldguide", "llm", "wordnet", "bank"}


def test_the_constants_beside_the_registries_describe_their_entries():
    assert runspec.FOREGROUND_ARMS == tuple(a for a, arm in runspec.ARMS.items() if arm.mask == "foreground")
    assert set(runspec.REPORTED) <= set(runspec.ARMS) and set(datasets.IN_DISTRIBUTION) <= set(datasets.LOADERS)
    assert world.SPLITS == tuple(world.SPLIT_SPECS)
