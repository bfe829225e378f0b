"""A run's parameters: cftlib.core.config's typed params file, and each name it gives (arm, relevance method,
proposer, grounder, split, benchmark, protocol, ablation) checked against the registry that defines it, so that
a wrong name fails before any work, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

from cftlib import relevance
from cftlib.concepts import PROPOSERS
from cftlib.core import config
from cftlib.core.config import ConfigError, Params
from cftlib.data.datasets import LOADERS
from cftlib.data.world import SPLIT_SPECS
from cftlib.grounding import GROUNDERS
from cftlib.metrics.accuracy import PROTOCOLS
from cftlib.training.losses import ABLATIONS
from cftlib.training.runspec import ARMS, REPORTED


def check(P: Params, where: str = "<params>") -> Params:
    """`P` when every name it gives is registered, and each arm list holds the arms the report compares."""
    F, E, A = P.finetune, P.evaluate, P.ablations
    named = [  # (dotted key, what it names, the names given, the registry)
        ("finetune.arms", "arm", F.arms, ARMS), ("finetune.cnn.arms", "arm", F.cnn.arms, ARMS),
        ("finetune.arm_lr", "arm", F.arm_lr, ARMS), ("finetune.arm_seeds", "arm", F.arm_seeds, ARMS),
        ("finetune.relevance", "relevance method", [F.relevance], relevance.METHODS),
        ("finetune.cnn.relevance", "relevance method", [F.cnn.relevance], relevance.METHODS),
        ("evaluate.relevance", "relevance method", [E.relevance], relevance.METHODS),
        ("ablations.relevance", "relevance method", A.relevance, relevance.METHODS),
        ("concepts.proposer", "proposer", [P.concepts.proposer], PROPOSERS),
        ("masks.grounder", "grounder", [P.masks.grounder], GROUNDERS),
        ("world.splits", "split", P.world.splits, SPLIT_SPECS), ("evaluate.splits", "split", E.splits, SPLIT_SPECS),
        ("evaluate.alignment_splits", "split", E.alignment_splits, SPLIT_SPECS),
        ("evaluate.split_images", "split", E.split_images, SPLIT_SPECS),
        ("evaluate.benchmarks", "benchmark", E.benchmarks, LOADERS),
        ("evaluate.protocols", "protocol", E.protocols, PROTOCOLS),
        ("ablations.loss", "loss variant", A.loss, ABLATIONS)]
    for key, what, given, registry in named:
        for name in given:
            if name not in registry:
                raise ConfigError(f"{where}: {key}: unknown {what} {name!r}; choose from {', '.join(registry)}")
    for key, arms in (("finetune.arms", F.arms), ("finetune.cnn.arms", F.cnn.arms or REPORTED)):  # [] = no CNN
        if missing := [a for a in REPORTED if a not in arms]:
            raise ConfigError(f"{where}: {key}: {arms}: needs {' and '.join(missing)} (the evaluation compares cft "
                              f"with the base model, none)")
    return P


def parse(data: dict, where: str = "<params>") -> Params:
    """config.parse, then every name checked against its registry."""
    return check(config.parse(data, where), where)


def load(path: str | Path = "params.yaml") -> Params:
    """config.load, then every name checked against its registry: what a stage, its notebook or CLI runs with."""
    return check(config.load(path), str(path))
