"""The few-shot fine-tuning loop (CFT paper §3; the official protocol, docs/paper.md §3): arms looked up by name —
`cft`, `cft_fgmask`, `robustvit`, `ce`, `confidence`, the paper's baselines `gradmask`, `rrr`, `rrda`, `none` — run on the masks stage's few-shot images under one
seeded protocol (AdamW, lr · decay^⌊epoch / every⌋, joint image–mask augmentation, an epoch selected on the
validation images by `finetune.selection`, `select_epoch`), resumable per epoch, on CPU, CUDA (bfloat16 autocast)
or under torchrun (gradients all-reduced, rank 0 writes).

A run is (model, arm, seed); its folder `<out>/<model>/<arm>/seed<seed>/` holds
    run.json     the run's spec, parameters, config hash and summary (written last: the run is complete)
    best.pt      weights at the selected epoch (`select_epoch`), `checkpoints.save_checkpoint` format
    last.pt      weights after the last epoch, same format
    history.csv  per step: epoch, step, lr, loss, context, concept, confidence, saturated, skipped
    epochs.csv   per epoch (0 = before fine-tuning): lr, train_loss, val_loss, val_context, val_concept,
                 val_confidence, val_cft_align, val_acc, best (1 on the selected epoch)
    state.pt     the resume state while the run is in progress (removed when it completes)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from cftlib import grounding, relevance
from cftlib.core import config, launch
from cftlib.core.io import atomic_path, read_json, read_torch, write_csv, write_json
from cftlib.core.progress import bar
from cftlib.data import fewshot, maskstore
from cftlib.data.augment import augment
from cftlib.models import checkpoints, factory
from cftlib.training import baselines, dfr, losses, runspec

STEP_COLUMNS = ("epoch", "step", "lr", "loss", "context", "concept", "confidence", "saturated", "skipped")
EPOCH_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_context", "val_concept", "val_confidence",
                 "val_cft_align", "val_acc", "best")


class NonFiniteLoss(RuntimeError):
    """A run that keeps producing non-finite losses or gradients."""


def select_epoch(epochs: list[dict], selection: str) -> int:
    """The epoch a run keeps, read off its validation rows (`epochs`, epoch 0 = the base model first).
    `val_loss` (official): the trained epoch of the lowest validation total loss, later epochs winning ties
    (the official `val_loss <= best_loss`). `alignment` (benchmarks/dose_response.py's rule): the trained epoch
    of the lowest held-out CFT alignment loss among those whose validation top-1 is at least the base's,
    earlier epochs winning ties; the base itself (0) where none is."""
    trained = [e for e in epochs if e["epoch"] >= 1]
    if selection == "val_loss":
        return min(trained, key=lambda e: (e["val_loss"], -e["epoch"]))["epoch"] if trained else 0
    ok = [e for e in trained if e["val_acc"] >= epochs[0]["val_acc"] - 1e-9]
    return min(ok, key=lambda e: (e["val_cft_align"], e["epoch"]))["epoch"] if ok else 0


def lr_at(epoch: int, lr: float, cfg: config.Finetune) -> float:
    """The official step decay: lr · decay^⌊epoch / every⌋ (0.85 every 2 epochs), set per epoch."""
    return lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every)


# ----------------------------------------------------------------------------- few-shot data

def _tensors(images: list, masks: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, size, size), normalised, and masks (N, 1, size, size) in [0, 1]; images of another size
    are resized (bilinear, antialiased; masks too, so their edges become fractional, as in the official code)."""
    xs, ms = [], []
    for img, m in zip(images, masks):
        x, m = factory.to_tensor(np.asarray(img)[None]), torch.from_numpy(np.asarray(m, np.float32))[None, None]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            m = F.interpolate(m, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        xs.append(x)
        ms.append(m)
    return torch.cat(xs), torch.cat(ms)


def foreground_masks(masks_cfg: config.Masks, names: list[str]):
    """`item -> (H, W) bool` foreground mask (the world's silhouette; GroundingSAM with the class name on real
    images): the masks of the `cft_fgmask` and `robustvit` arms, RobustViT's segmentation-mask target."""
    fg = grounding.Foreground(masks_cfg.groundingsam)
    return lambda it: fg(it["image"], [], parts=it["parts"], key=it["key"], name=names[it["label"]])[0]


def load_data(masks_dir: str | Path, pool: fewshot.Pool, k: int, size: int, foreground=None) -> dict:
    """The few-shot data of the masks stage, every class: the first k training images of each class (the store
    holds masks.k, in sorted order) and every validation image, as tensors {x, y (the model's output index of
    the class, `pool.class_index`), labels (the store's), concept, foreground, ids} per split, with `classes`,
    `class_fraction` (the store's) and `records` (the chosen store items) for `for_subset`, plus `counts`:
    images, quality flags and policy actions of the chosen images (dropped ones are skipped and counted). A
    missing or outdated store, a class with fewer than k images, or no image left are errors."""
    store = maskstore.load_store(masks_dir)
    classes, class_fraction = maskstore.store_classes(store, masks_dir)
    items = store["items"]
    per_class: dict[int, list] = {}
    for r in items:
        if r["split"] == "train":
            per_class.setdefault(r["label"], []).append(r)
    if not per_class:
        raise runspec.FinetuneError(f"{masks_dir}: the masks store has no training images")
    short = {c: len(rs) for c, rs in per_class.items() if len(rs) < k}
    if short:
        raise runspec.FinetuneError(f"finetune.k={k}, but the masks store {masks_dir} holds fewer images of class(es) "
                            f"{short} (label: images); lower finetune.k or re-run masks with masks.k >= {k}")
    chosen = {r["id"] for rs in per_class.values() for r in rs[:k]} | {r["id"] for r in items if r["split"] == "val"}
    data, records = {}, {}
    for split in ("train", "val"):
        recs = [r for r in items if r["split"] == split and r["id"] in chosen]
        d = fewshot.load(masks_dir, split, pool)
        keep = [i for i, id_ in enumerate(d["ids"]) if id_ in chosen]
        if not keep:
            raise runspec.FinetuneError(f"{masks_dir}: no {split} image left (all dropped by masks.policy?)")
        x, concept = _tensors([d["images"][i] for i in keep], [d["masks"][i] for i in keep], size)
        fg = None
        if foreground is not None:  # the store's (real images), else `foreground` (the world's silhouette)
            fg = _tensors([d["images"][i] for i in keep],
                          [d["foregrounds"][i] if d["foregrounds"][i] is not None
                           else foreground(pool.item(int(d["ids"][i]), split)) for i in keep], size)[1]
        data[split] = {"x": x, "y": torch.tensor([int(pool.class_index[d["labels"][i]]) for i in keep]),
                       "labels": np.array([d["labels"][i] for i in keep]), "concept": concept, "foreground": fg,
                       "ids": [d["ids"][i] for i in keep]}
        records[split] = recs
    data["counts"] = _counts(records)
    data["records"] = records
    data["classes"], data["class_fraction"] = np.array(classes), class_fraction
    return data


def _counts(records: dict[str, list[dict]]) -> dict:
    """Per split: images used, and the quality flags and policy actions of the chosen store items."""
    return {split: {"images": sum(r["action"] != "dropped" for r in recs),
                    "flags": {f: sum(r["flag"] == f for r in recs) for f in grounding.FLAGS},
                    "actions": {a: sum(r["action"] == a for r in recs) for a in ("kept", "dropped", "foreground")}}
            for split, recs in records.items()}


def for_subset(data: dict, subset: int) -> dict:
    """One run's few-shot data (`load_data`'s, narrowed): the training images of its classes and the
    validation images of the others (`fewshot.subset` with seed `subset`), and `train_classes`. Data already
    narrowed (no `classes`) is returned as it is."""
    if "classes" not in data:
        return data
    train_classes, val_classes = fewshot.subset(data["classes"], data["class_fraction"], subset)
    out = {k: v for k, v in data.items() if k not in ("classes", "class_fraction", "records")}
    mine = {s: [r for r in data["records"][s] if r["label"] in set(c.tolist())]
            for s, c in (("train", train_classes), ("val", val_classes))}
    out["counts"] = _counts(mine)
    for split, classes in (("train", train_classes), ("val", val_classes)):
        d = data[split]
        keep = np.flatnonzero(np.isin(d["labels"], classes))
        if not len(keep):
            raise runspec.FinetuneError(f"class subset {subset}: no {split} image of classes {classes.tolist()} in "
                                        "the masks store (all dropped by masks.policy?)")
        t = torch.from_numpy(keep)
        out[split] = {k: v[t] if torch.is_tensor(v) else v[keep] if isinstance(v, np.ndarray) else
                      [v[i] for i in keep] if isinstance(v, list) else v for k, v in d.items()}
    out["train_classes"] = train_classes
    return out


# ----------------------------------------------------------------------------- one step

def objective(model, arm: runspec.Arm, x, m, y, cfg: config.Finetune, method: str):
    """The arm's loss terms on a batch ({loss, context, concept, confidence, saturated}; `ce`: {loss}) and
    the logits of the same forward (explain returns both, so one forward serves relevance and confidence)."""
    if arm.loss == "ce":
        logits = model(x)
        return {"loss": F.cross_entropy(logits.float(), y)}, logits
    if arm.loss in baselines.KINDS:
        return baselines.objective(model, arm.loss, x, m, y, cfg.loss)
    # an arm without the alignment term logs the map but takes no gradient through it: no second-order graph
    r, logits = relevance.explain(model, x, method, target=y, create_graph=arm.align, output="pixel")
    return losses.objective(r, m, logits, y, arm.loss, arm_loss(arm, cfg)), logits


def arm_loss(arm: runspec.Arm, cfg: config.Finetune) -> config.Loss:
    """The loss weights an arm trains and is selected with: `finetune.loss`, with λ_align = 0 for an arm
    without the alignment term (`confidence`)."""
    return cfg.loss if arm.align else cfg.loss.model_copy(update={"lambda_align": 0.0})


def terms_logged(arm: runspec.Arm) -> tuple[str, ...]:
    """The loss terms an arm's steps report (the rest of `STEP_COLUMNS`' terms stay empty)."""
    if arm.loss == "ce":
        return ("loss",)
    return baselines.TERMS.get(arm.loss, ("loss", "context", "concept", "confidence"))


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if launch.rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def train_step(model, opt, arm: runspec.Arm, x, m, y, n_global: int, cfg: config.Finetune, method: str, amp) -> dict:
    """One optimiser step on this process's shard (x, m, y) of a global batch of `n_global` images. The loss
    is weighted by shard / global size and gradients are summed over processes, so N processes take the
    step one process would (unlike DDP's mean over uneven shards). A non-finite loss or gradient skips
    the step on every process. Returns the global batch means of the terms, `saturated`, `skipped`."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    keys = terms_logged(arm)
    stats = torch.zeros(len(keys) + 1, dtype=torch.float64, device=x.device)
    if len(y):
        with amp:
            terms, _ = objective(model, arm, x, m, y, cfg, method)
        w = len(y) / n_global
        (terms["loss"] * w).backward()
        stats[:len(keys)] = torch.stack([terms[k].detach().double() * w for k in keys])
        stats[-1] = terms["saturated"].double() if "saturated" in terms else 0.0
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if launch.rank_world()[1] > 1:
        flat = _all_sum(torch.cat([g.reshape(-1) for g in grads] + [stats.to(grads[0].dtype)]))
        for g, v in zip(grads, flat[:-len(stats)].split([g.numel() for g in grads])):
            g.copy_(v.view_as(g))
        stats = flat[-len(stats):].double()
    for p, g in zip(params, grads):
        p.grad = g
    skipped = not (torch.isfinite(stats).all() and torch.isfinite(torch.nn.utils.get_total_norm(grads)))
    if skipped:
        opt.zero_grad(set_to_none=True)
    else:
        opt.step()
    out = {k: float(v) for k, v in zip(keys, stats[:len(keys)])}
    return {**out, "saturated": int(stats[-1]), "skipped": int(skipped)}


@torch.no_grad()
def validate(model, arm: runspec.Arm, val: dict, cfg: config.Finetune, method: str, amp) -> dict:
    """On the validation images (no augmentation): the arm's total loss (model selection) and terms, CFT's
    alignment on concept masks for every arm (a common yardstick), accuracy. Sharded over processes."""
    rank, world = launch.rank_world()
    n = len(val["y"])
    idx = torch.arange(rank, n, world)
    keys = ("val_loss", "val_context", "val_concept", "val_confidence", "val_cft_align", "val_acc")
    sums = torch.zeros(len(keys), dtype=torch.float64, device=val["x"].device)
    for b in range(0, len(idx), cfg.batch_size):
        i = idx[b:b + cfg.batch_size]
        x, y, concept = val["x"][i], val["y"][i], val["concept"][i]
        with amp:
            r, logits = relevance.explain(model, x, method, target=y, output="pixel")
        if arm.loss == "ce":
            terms = {"loss": F.cross_entropy(logits.float(), y)}
        elif arm.loss in baselines.KINDS:  # the arm's own loss, on the images as they are (no RRDA mixing)
            terms = {k: v.detach() for k, v in baselines.objective(model, arm.loss, x, val[arm.mask][i], y,
                                                                   cfg.loss, create_graph=False)[0].items()}
        else:
            terms = losses.objective(r, val[arm.mask][i], logits, y, arm.loss, arm_loss(arm, cfg))
        cft = losses.alignment(r, concept, "bce", cfg.loss)["align"]
        vals = [terms.get(k, torch.tensor(math.nan)) for k in ("loss", "context", "concept", "confidence")]
        vals += [cft, (logits.argmax(1) == y).float().mean()]
        sums += torch.stack([v.double().to(sums.device) for v in vals]) * len(i)
    return {k: float(v) / n for k, v in zip(keys, _all_sum(sums))}


# ----------------------------------------------------------------------------- a run

def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_config(spec: runspec.RunSpec, cfg: config.Finetune, base: torch.nn.Module, data: dict) -> dict:
    """What determines a run's result: its spec, the protocol parameters, the base weights and the data.
    Its hash decides whether a finished run is reused and whether a saved state may be resumed."""
    arm, data = runspec.ARMS[spec.arm], for_subset(data, spec.subset)
    split_digest = {s: _digest(data[s]["x"], data[s]["y"], data[s]["concept"],
                               *([data[s]["foreground"]] if arm.mask == "foreground" else []))
                    for s in ("train", "val")}
    if spec.arm == "dfr":
        split_digest["dfr"] = _digest(torch.from_numpy(data["dfr"]["images"]), torch.from_numpy(data["dfr"]["label"]))
        split_digest["dfr_l2"] = data["dfr"]["l2"]
    other_runs = ("arms", "seeds", "relevance", "lr", "arm_lr", "cnn", "device", "processes")  # in the spec, or not the result's
    params = {k: v for k, v in config.as_dict(cfg).items() if k not in other_runs}
    conf = {"spec": asdict(spec), "params": params, "base": _digest(*base.state_dict().values()), "data": split_digest}
    conf["hash"] = hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()[:16]
    return conf


_PROBES: dict[tuple, dict] = {}
"""DFR heads refitted in this process, by (digest of the base and the dfr split, l2): one refit per base model."""


def prepare(spec: runspec.RunSpec, base: torch.nn.Module, build: dict, data: dict, device: torch.device):
    """A run's model (a trainable copy of `base` in eval mode: no dropout, frozen BatchNorm statistics; DFR's
    refitted for `dfr`) and its train / val tensors, on `device`; `data` already narrowed (`for_subset`)."""
    model = copy.deepcopy(base).eval()
    if spec.arm == "dfr":
        d = data["dfr"]
        key = _digest(*base.state_dict().values(), torch.from_numpy(d["images"]), torch.from_numpy(d["label"])), d["l2"]
        if key not in _PROBES:  # the refit depends on the base and the dfr split alone, not on the class subset
            _PROBES[key] = dfr.reweight(model, d["images"], d["label"], d["l2"]).get_classifier().state_dict()
        model.get_classifier().load_state_dict(_PROBES[key])
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    train = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data["train"].items()}
    val = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data["val"].items()}
    train["x"], val["x"] = checkpoints.renormalise(train["x"], build), checkpoints.renormalise(val["x"], build)
    return model, train, val


def autocast(device: torch.device, cfg: config.Finetune):
    """bfloat16 autocast on CUDA with `finetune.amp`, else nothing."""
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp
            else contextlib.nullcontext())


def saved_state(folder: Path, conf: dict, device: torch.device) -> dict | None:
    """The run's resume state (`state.pt`) if one was saved under the same config hash."""
    state_path = folder / "state.pt"
    saved = (read_torch(state_path, "delete it to restart this run from its first epoch", device)
             if state_path.is_file() else None)
    return saved if saved is not None and saved["hash"] == conf["hash"] else None


def epoch_row(epoch: int, lr: float, losses_: list[float], model, arm: runspec.Arm, val: dict,
              cfg: config.Finetune, method: str, amp) -> dict:
    """An `epochs.csv` row: the mean training loss of the epoch's steps that were taken, and `validate`'s."""
    return {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses_)) if losses_ else math.nan,
            **validate(model, arm, val, cfg, method, amp), "best": 0}


def save_epoch(spec: runspec.RunSpec, folder: Path, build: dict, conf: dict, model, optimizer: dict,
               gen: torch.Generator, st: dict, best: bool) -> None:
    """After epoch `st["epoch"]` (rank 0): `best.pt` if it is the selected one, and the resume state."""
    if best:
        checkpoints.save_checkpoint(folder / "best.pt", model, {**build, "run": asdict(spec), "epoch": st["epoch"]})
    with atomic_path(folder / "state.pt") as tmp:
        torch.save({"hash": conf["hash"], "model": model.state_dict(), "optimizer": optimizer,
                    "generator": gen.get_state(), "state": st}, tmp)


def finish(spec: runspec.RunSpec, base: torch.nn.Module, build: dict, data: dict, cfg: config.Finetune,
           folder: Path, conf: dict, model, st: dict, epochs: int, rank: int, world: int) -> dict:
    """The run's summary, and on rank 0 its files (`last.pt`, `best.pt` of the base where no trained epoch was
    selected, history.csv, epochs.csv, run.json last) with the resume state removed."""
    arm = runspec.ARMS[spec.arm]
    chosen = select_epoch(st["epochs"], cfg.selection)
    summary = {"config": conf, "arm": asdict(arm), "counts": data["counts"],
               "train_classes": [int(c) for c in data.get("train_classes", [])], "epochs": epochs,
               "steps": len(st["history"]),
               "best_epoch": chosen, "best_val_loss": st["epochs"][chosen]["val_loss"],
               "last": st["epochs"][-1], "nonfinite_steps": st["nonfinite"],
               "saturated_steps": sum(r["saturated"] > 0 for r in st["history"]), "processes": world}
    if rank == 0:
        checkpoints.save_checkpoint(folder / "last.pt", model, {**build, "run": asdict(spec), "epoch": epochs})
        if chosen == 0:  # no fine-tuning, or no trained epoch selected: the (DFR-refitted) base itself
            checkpoints.save_checkpoint(folder / "best.pt", base if epochs else model,
                                        {**build, "run": asdict(spec), "epoch": 0})
        write_csv(folder / "history.csv", pd.DataFrame(st["history"], columns=list(STEP_COLUMNS)))
        rows = [{**e, "best": int(e["epoch"] == chosen)} for e in st["epochs"]]
        write_csv(folder / "epochs.csv", pd.DataFrame(rows, columns=list(EPOCH_COLUMNS)))
        write_json(folder / "run.json", summary)
        (folder / "state.pt").unlink(missing_ok=True)
    return summary


def count_step(st: dict, row: dict, folder: Path, epoch: int, cfg: config.Finetune) -> None:
    """Count a step's skip in the run's state; too many consecutive non-finite steps stop the run."""
    st["nonfinite"] += row["skipped"]
    st["consecutive"] = st["consecutive"] + 1 if row["skipped"] else 0
    if st["consecutive"] >= cfg.max_nonfinite:
        raise NonFiniteLoss(f"{folder}: {st['consecutive']} consecutive steps with a non-finite loss or "
                            f"gradient (epoch {epoch + 1}, step {len(st['history']) + 1}); lower finetune.lr "
                            f"or keep finetune.loss.squeeze > 0")


def check_moved(st: dict, folder: Path, epoch: int) -> None:
    """Stop a run whose every step so far was skipped: the weights never moved, later epochs would be the same."""
    if st["nonfinite"] == len(st["history"]):
        raise NonFiniteLoss(f"{folder}: every one of the {st['nonfinite']} training steps so far (epoch "
                            f"{epoch + 1}) had a non-finite loss or gradient; check finetune.loss and "
                            f"finetune.lr, and keep finetune.loss.squeeze > 0")


def fit(spec: runspec.RunSpec, base: torch.nn.Module, build: dict, data: dict, cfg: config.Finetune,
        out_dir: str | Path, progress: bool = False, on_epoch=None) -> dict:
    """Run `spec` into its folder and return its run.json. A complete run with the same config hash is
    reused; a saved state with the same hash is resumed at its last finished epoch (and ends with the same
    history as an uninterrupted run); anything else starts over. `on_epoch(row, model)` is called with each
    epoch's `epochs.csv` row (epoch 0, the base, included) and the model in eval mode (studies score it there)."""
    arm, folder = runspec.ARMS[spec.arm], spec.folder(out_dir)
    data = for_subset(data, spec.subset)
    conf = run_config(spec, cfg, base, data)
    rank, world = launch.rank_world()
    done = folder / "run.json"
    if done.is_file() and (summary := read_json(done))["config"]["hash"] == conf["hash"]:
        return summary
    device = launch.device(cfg.device, "finetune.device")
    amp = autocast(device, cfg)
    model, train, val = prepare(spec, base, build, data, device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(spec.seed)
    st = {"epoch": 0, "history": [], "epochs": [], "nonfinite": 0, "consecutive": 0}
    saved = saved_state(folder, conf, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"].cpu())  # a CPU generator; the state was loaded onto the run's device
        st = saved["state"]
    else:
        if rank == 0 and folder.exists():
            shutil.rmtree(folder)
        st["epochs"].append(epoch_row(0, spec.lr, [], model, arm, val, cfg, spec.relevance, amp))
        if on_epoch is not None:
            on_epoch(st["epochs"][-1], model)
    epochs = cfg.epochs if arm.trains else 0
    n, steps = len(train["y"]), math.ceil(len(train["y"]) / cfg.batch_size)
    steps_bar = tqdm(total=epochs * steps, initial=st["epoch"] * steps, desc=spec.name, unit="steps",
                     disable=not progress or rank != 0, leave=False)  # without a bar: run_all's line per run
    mask_key = arm.mask or "concept"
    for epoch in range(st["epoch"], epochs):
        lr = lr_at(epoch, spec.lr, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        order, losses_ = torch.randperm(n, generator=gen), []
        for b in range(steps):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, m = augment(train["x"][idx], train[mask_key][idx], gen, cfg.scale, cfg.flip)
            if arm.loss == "rrda":
                x = baselines.rrda_mix(x, m, gen, cfg.loss.rrda_prob)
            mine = slice(rank, None, world)
            row = train_step(model, opt, arm, x[mine], m[mine], train["y"][idx][mine], len(idx), cfg,
                             spec.relevance, amp)
            count_step(st, row, folder, epoch, cfg)
            st["history"].append({"epoch": epoch + 1, "step": len(st["history"]) + 1, "lr": lr, **row})
            if not row["skipped"]:
                losses_.append(row["loss"])
            steps_bar.update()
            steps_bar.set_postfix(loss=f"{row['loss']:.3f}")
        check_moved(st, folder, epoch)
        st["epochs"].append(epoch_row(epoch + 1, lr, losses_, model, arm, val, cfg, spec.relevance, amp))
        best = select_epoch(st["epochs"], cfg.selection) == epoch + 1
        st["epoch"] = epoch + 1
        if on_epoch is not None:
            on_epoch(st["epochs"][-1], model)
        if rank == 0:
            save_epoch(spec, folder, build, conf, model, opt.state_dict(), gen, st, best)
    steps_bar.close()
    summary = finish(spec, base, build, data, cfg, folder, conf, model, st, epochs, rank, world)
    if world > 1:
        dist.barrier()
    return summary


# ----------------------------------------------------------------------------- every run

def run_all(runs: list[runspec.RunSpec], bases: dict, data: dict, cfg: config.Finetune, out_dir: str | Path,
            progress: bool = False) -> pd.DataFrame:
    """Fit every run (bases: model role → (model, build)); folders of runs no longer planned are removed.
    Returns one row per run: model, arm, seed, best_epoch, best_val_loss, last val metrics, skipped steps."""
    out_dir = Path(out_dir)
    keep = {r.folder(out_dir) for r in runs}
    if launch.rank_world()[0] == 0:
        for stale in sorted(out_dir.glob("*/*/seed*")):
            if stale not in keep:
                shutil.rmtree(stale)
    rows, rank = [], launch.rank_world()[0]
    for spec in bar(runs, desc="fine-tuning", progress=progress, rank=rank, unit="runs"):
        line = None if progress else bar(desc=spec.name, rank=rank, unit="epochs")  # the same when reused
        s = fit(spec, *bases[spec.model, spec.base], data, cfg, out_dir, progress)
        if line is not None:
            line.update(cfg.epochs if runspec.ARMS[spec.arm].trains else 0)
            line.close()
        rows.append({"model": spec.model, "arm": spec.arm, "base": spec.base, "seed": spec.seed,
                     "best_epoch": s["best_epoch"],
                     "best_val_loss": s["best_val_loss"],
                     **{f"last_{k}": s["last"][k] for k in EPOCH_COLUMNS if k.startswith("val_")},
                     "nonfinite_steps": s["nonfinite_steps"], "saturated_steps": s["saturated_steps"]})
    return pd.DataFrame(rows)
