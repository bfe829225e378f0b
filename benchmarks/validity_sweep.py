"""Is the world a valid test bed, and for which pre-training? One pre-training run of the profile's ViT recipe,
snapshotted after chosen epochs; from each snapshot a base model is trained as the world stage trains one (new
head, section `bases`, biased `train` split, best `val` epoch) and scored on the three validity figures of
`metrics/base.json`: `test` accuracy, the shortcut gap `test` − `bg_conflict`, and the features-exist probe (the
last layer refitted on habitat-balanced images, DFR) measured as `test` − DFR's `bg_conflict`.

The question it answers: the parts must be in the features (the probe recovers `bg_conflict`) while the head
trained on biased data ignores them (a large gap). A pre-training that teaches the parts perfectly leaves no
reason to take the shortcut; one that teaches nothing leaves nothing to recover.

Rule, written before the run: the validity figures are measured on fresh images (independent streams of the
`test`, `bg_conflict` and `dfr` splits, never the committed ones), so the world's evaluation splits play no part
in its design. A pre-training length is acceptable when its base has `test` ≥ 85 %, gap ≥ 30 points and
DFR gap ≤ 15 points (World v3 adds: |zoom gap| ≤ 3 points, the bar of `reports/base.json`); the profile's
pre-training is set to the acceptable length with the largest
min(gap − 30, 15 − DFR gap), ties to the longer one; if none is acceptable, that is the finding. Added after the
first table (none was), before the variants were run: the same rule over (variant, length), the variants being
`world.rho_bg` and the probe's size `world.splits.dfr`. Results: reports/validity_sweep.md.

    python benchmarks/validity_sweep.py [params.yaml] [epoch ...] [section.key=value ...]

Default epochs 2 3 4 5 6 8 12 20; `key=value` (YAML values) override the profile for a variant, e.g.
`world.rho_bg=0.97`. The snapshots are kept in `$CFT_SWEEP_CACHE` (default `/tmp/cft_validity_sweep`), keyed by the
pre-training's own parameters and code, so variants of the world stage reuse them; the pre-training stops after the last
epoch asked for (its schedule is still the full run's). Slow (a minute or more per pre-training epoch, then two to
three minutes per snapshot on 2 cores): a study, not a test.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch
import yaml

from cftlib.core import config
from cftlib.core.io import json_sha256
from cftlib.data import augment, world
from cftlib.models.factory import build_model, predict
from cftlib.stages import params
from cftlib.stages.world import AUGMENTATION_BAR, DFR_GAP_BAR, GAP_BAR, TEST_BAR
from cftlib.training import dfr, pretrain

CACHE = Path(os.environ.get("CFT_SWEEP_CACHE", "/tmp/cft_validity_sweep"))

DESIGN_STREAM = 7
"""The independent image stream the validity figures are measured on (not the world's committed splits)."""
FEW = 300
"""Images of that `test` stream the zoom gap is measured on: top-1 as they are minus top-1 under the fine-tuning
augmentation (`pretrain.augmentation_gap`, World v3's bar: ≤ 3 points)."""


def accuracy(model: torch.nn.Module, split: dict) -> float:
    return float((predict(model, split["images"]).argmax(1) == split["label"]).mean())


def load(path: str, overrides: list[str]) -> config.Params:
    """The profile with dotted `key=value` overrides (values parsed as YAML)."""
    data = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = data
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return params.parse(data, f"{path} + {' '.join(overrides)}")


def snapshots(P: config.Params, keep: list[int]) -> tuple[dict, dict, int]:
    """{epoch: (state_dict, held-out parts accuracy)} of one pre-training run, the build and output count;
    cached on disk by the pre-training's parameters."""
    drawing = {k: v for k, v in config.as_dict(P.world).items() if k not in ("rho_bg", "rho_color", "splits")}
    recipe = config.as_dict(P.pretrain) | {"keep_epoch": 0}  # every epoch is snapshotted whatever is shipped
    code = [Path(m.__file__).read_text() for m in (pretrain, augment)]  # a change to the training code is a new run
    key = json_sha256([recipe, drawing, P.base.seed, code], default=str)[:12]
    path = CACHE / f"{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if all(e in saved["snaps"] for e in keep):
            return saved["snaps"], saved["build"], saved["outputs"]
    pre_train, pre_val = pretrain.pretraining_sets(P)
    extra = pretrain.extra_labels(P, pre_train)
    outputs = P.world.n_species + (sum(extra[1]) if extra else 0)
    model, build = pretrain.fresh(P.pretrain, outputs, P.world.image_size, P.base.seed)
    snaps = {}

    def snapshot(record: dict, m: torch.nn.Module) -> bool:
        snaps[record["epoch"]] = (copy.deepcopy(m.state_dict()), record["val_acc"])
        # the schedule is the full run's; the epochs after the last kept are not needed
        return record["epoch"] >= keep[-1]

    t = time.perf_counter()
    pretrain.train(model, P.pretrain.model_copy(update={"keep_epoch": 0}), pre_train, pre_val, P.base.seed, extra=extra,
                   on_epoch=snapshot)
    print(f"pre-training: {len(snaps)} of {P.pretrain.epochs} epochs, {time.perf_counter() - t:.0f} s\n", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"snaps": snaps, "build": build, "outputs": outputs}, path)
    return snaps, build, outputs


def main(path: str = "params.yaml", *args: str) -> None:
    overrides = [a for a in args if "=" in a]
    P = load(path, overrides)
    torch.set_num_threads(P.base.threads)
    keep = sorted({int(e) for e in args if "=" not in e} or {2, 3, 4, 5, 6, 8, 12, 20})
    if keep[-1] > P.pretrain.epochs:
        raise ValueError(f"epoch {keep[-1]} is past pretrain.epochs = {P.pretrain.epochs} of {path}")
    species = world.make_species(P.world.n_species, P.base.seed)
    split = {s: world.make_split(P.world, species, s, P.base.seed, stream=DESIGN_STREAM if s in ("test", "bg_conflict",
             "dfr") else None) for s in ("train", "val", "test", "bg_conflict", "dfr")}
    snaps, build, outputs = snapshots(P, keep)
    print(f"variant: {' '.join(overrides) or 'the profile'}\n")
    print("| pre-training epochs | parts held out | base test | bg_conflict | gap | DFR bg_conflict | DFR gap | "
          "zoom gap | acceptable |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for epoch in keep:
        state, learnt = snaps[epoch]
        base = build_model(build["name"], outputs, build["img_size"], **build["kwargs"])
        base.load_state_dict(state)
        torch.manual_seed(P.base.seed)
        base.reset_classifier(P.world.n_species)
        base, _ = pretrain.train(base, P.bases, split["train"], split["val"], P.base.seed, desc=f"base@{epoch}")
        test, bg = accuracy(base, split["test"]), accuracy(base, split["bg_conflict"])
        probe = dfr.reweight(base, split["dfr"]["images"], split["dfr"]["label"], P.bases.dfr_l2)
        dfr_bg = accuracy(probe, split["bg_conflict"])
        gap, dfr_gap = 100 * (test - bg), 100 * (test - dfr_bg)
        zoom = pretrain.augmentation_gap(base, split["test"]["images"][:FEW], split["test"]["label"][:FEW],
                                         P.finetune.scale, P.finetune.flip, P.base.seed)["gap_points"]
        ok = (test >= TEST_BAR and gap >= 100 * GAP_BAR and dfr_gap <= 100 * DFR_GAP_BAR
              and abs(zoom) <= AUGMENTATION_BAR)  # the world stage's validity bars
        print(f"| {epoch} | {learnt:.1%} | {test:.1%} | {bg:.1%} | {gap:.1f} | {dfr_bg:.1%} | {dfr_gap:.1f} | "
              f"{zoom:.1f} | {'yes' if ok else 'no'} |", flush=True)
    print(f"\n{P.world.n_species} species, {P.pretrain.images} pre-training images, bases: {P.bases.epochs} epochs "
          f"at lr {P.bases.lr}, {P.base.threads} threads")


if __name__ == "__main__":
    main(*sys.argv[1:])
