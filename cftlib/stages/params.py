"""A run's parameters: cftlib.core.config's typed params file (each field on its own), then the checks across fields
and each name it gives (arm, relevance method, proposer, grounder, split, benchmark, protocol, ablation) against the
registry that defines it, so that a wrong combination or name fails before any work, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

from cftlib import relevance
from cftlib.concepts import PROPOSERS
from cftlib.core import config
from cftlib.core.config import WORLD_DIR, ConfigError, Params
from cftlib.data.datasets import LOADERS
from cftlib.data.world import SPLIT_SPECS
from cftlib.grounding import GROUNDERS
from cftlib.metrics.accuracy import PROTOCOLS
from cftlib.training.losses import ABLATIONS
from cftlib.training.runspec import ARMS, REPORTED


def relations(P: Params, where: str = "<params>") -> Params:
    """`P` when every check across fields holds, as (dotted key or "" when `why` names the keys, failed, why); the
    first failure fails."""
    W, R, B, C, F, E, A = P.world, P.pretrain, P.bases, P.concepts, P.finetune, P.evaluate, P.ablations
    data, patch, M = C.dataset, R.model_kwargs.get("patch_size"), P.masks
    world, other = data == "world", f"when concepts.dataset is {data}"
    checks = [
        *[(f"world.splits.{s}", s not in W.splits, "missing; train, val and test are required")
          for s in ("train", "val", "test")],
        *[(f"{key}.keep_epoch", r.keep_epoch > r.epochs,
           f"{r.keep_epoch}: in [0, epochs = {r.epochs}] (0: the best held-out epoch)")
          for key, r in (("pretrain", R), ("bases", B), ("finetune.cnn.pretrain", F.cnn.pretrain))],
        *[(f"{key}.weights", s.weights and not s.zoo, "set zoo too (the model these weights belong to)")
          for key, s in (("pretrain", R), ("finetune.cnn", F.cnn))],
        ("concepts.validation.apply", C.validation.apply and not C.validation.images,
         "true needs images > 0 to measure the concepts on"),
        ("concepts.image_dir", world and C.image_dir != WORLD_DIR,
         f"{C.image_dir!r}: the world's images are the world stage's {WORLD_DIR}; set that when dataset is world"),
        ("concepts.image_dir", not world and C.image_dir in ("", WORLD_DIR),
         f"required when dataset is {data}: the folder of <class>/<image>"),
        ("concepts.proposer", C.proposer == "fieldguide" and not world,
         "fieldguide reads the world's field guide; use llm, wordnet or bank for a folder"),
        ("concepts.llm.model", C.proposer == "llm" and not C.llm.model,
         "required when proposer is llm (a local folder or hub id)"),
        ("masks.min_fraction", M.min_fraction >= M.max_fraction, "need 0 <= min_fraction < max_fraction <= 1"),
        *[(f"finetune.arm_seeds.{arm}", n > F.seeds, f"{n} must be a whole number in [1, seeds = {F.seeds}]")
          for arm, n in F.arm_seeds.items()],
        *[("evaluate.alignment_splits", s not in E.splits, f"{s!r} is not among evaluate.splits")
          for s in E.alignment_splits],
        ("evaluate.splits", E.splits and "test" not in E.splits,
         "must include test (the in-distribution reference of the gaps and claims)"),
        # the world: its splits evaluate, its masks are of masks.k images per class
        ("evaluate.splits", world and not E.splits, "empty; the world's evaluation needs at least test"),
        ("", world and isinstance(patch, int) and W.image_size % patch,
         f"world.image_size {W.image_size} is not divisible by pretrain.model_kwargs.patch_size {patch}"),
        *[("", world and k > M.k, f"{key} {k} is larger than masks.k {M.k}, the images per class the masks stage "
           f"grounds") for key, k in [("finetune.k", F.k)] + [("ablations.k", k) for k in A.k]],
        # no world: the base models come from the zoo, the evaluation from the benchmarks
        ("pretrain.zoo", not world and not R.zoo,
         f"required {other}: a pretrained model of cftlib.models.zoo (there is no world to train on)"),
        ("finetune.cnn.zoo", not world and F.cnn.arms and not F.cnn.zoo,
         f"required {other}: a pretrained CNN, or set finetune.cnn.arms: []"),
        ("bases.seeds", not world and B.seeds != 1, f"{B.seeds}; a pretrained zoo model is one base model, set 1 "
         f"{other}"),
        ("evaluate.splits", not world and E.splits, f"{E.splits} are world splits; set [] {other} (benchmarks "
         f"replace them)"),
        ("evaluate.benchmarks", not world and "imagenet_val" not in E.benchmarks,
         f"needs imagenet_val (the in-distribution reference of the gaps and claims) {other}"),
        *[(key, not world and "dfr" in arms,
           f"dfr refits the head on the world's habitat-balanced split, which {data} does not have; remove it")
          for key, arms in (("finetune.arms", F.arms), ("finetune.cnn.arms", F.cnn.arms))],
        ("ablations", not world and (A.k or A.noise or A.relevance or A.validation),
         f"the ablations run on the world; set k, noise, relevance and validation to [] {other}")]
    if failed := next(((key, why) for key, bad, why in checks if bad), None):
        key, why = failed
        raise ConfigError(f"{where}: {key}: {why}" if key else f"{where}: {why}")
    return P


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
    """config.parse, then the checks across fields and every name against its registry."""
    return check(relations(config.parse(data, where), where), where)


def load(path: str | Path = "params.yaml") -> Params:
    """config.load, then the checks across fields and every name against its registry: what a stage, its notebook
    or CLI runs with."""
    return check(relations(config.load(path), str(path)), str(path))
