"""The few-shot fine-tuning loop (CFT paper §3; the official protocol, docs/paper.md §3): arms looked up by name —
`cft`, `cft_fgmask`, `robustvit`, `ce`, `confidence`, the paper's baselines `gradmask`, `rrr`, `rrda`, `none` — run
on the masks stage's few-shot images under one
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
import dataclasses
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from cftlib import relevance
from cftlib.core import config, launch
from cftlib.core.io import atomic_path, json_sha256, read_json, read_torch, tensors_sha256, write_csv, write_json
from cftlib.core.progress import bar
from cftlib.data import fewshot
from cftlib.data.augment import augment
from cftlib.models import checkpoints
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


def step_decay_lr(epoch: int, lr: float, cfg: config.Finetune) -> float:
    """The official step decay: lr · decay^⌊epoch / every⌋ (0.85 every 2 epochs), set per epoch."""
    return lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every)


# ----------------------------------------------------------------------------- one step

def batch_loss(model, arm: runspec.Arm, x, m, y, cfg: config.Finetune, method: str):
    """The arm's loss terms on a batch ({loss, context, concept, confidence, saturated}; `ce`: {loss}) and
    the logits of the same forward (explain returns both, so one forward serves relevance and confidence)."""
    if arm.loss == "ce":
        logits = model(x)
        return {"loss": F.cross_entropy(logits.float(), y)}, logits
    if arm.loss in baselines.KINDS:
        return baselines.baseline_loss(model, arm.loss, x, m, y, cfg.loss)
    # an arm without the alignment term logs the map but takes no gradient through it: no second-order graph
    r, logits = relevance.explain(model, x, method, target=y, create_graph=arm.align, output="pixel")
    return losses.relevance_loss(r, m, logits, y, arm.loss, arm_loss(arm, cfg)), logits


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
            terms, _ = batch_loss(model, arm, x, m, y, cfg, method)
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
            terms = {k: v.detach() for k, v in baselines.baseline_loss(model, arm.loss, x, val[arm.mask][i], y,
                                                                   cfg.loss, create_graph=False)[0].items()}
        else:
            terms = losses.relevance_loss(r, val[arm.mask][i], logits, y, arm.loss, arm_loss(arm, cfg))
        cft = losses.alignment(r, concept, "bce", cfg.loss)["align"]
        vals = [terms.get(k, torch.tensor(math.nan)) for k in ("loss", "context", "concept", "confidence")]
        vals += [cft, (logits.argmax(1) == y).float().mean()]
        sums += torch.stack([v.double().to(sums.device) for v in vals]) * len(i)
    return {k: float(v) / n for k, v in zip(keys, _all_sum(sums))}


# ----------------------------------------------------------------------------- a run

def run_config(spec: runspec.RunSpec, cfg: config.Finetune, base: torch.nn.Module, data: dict) -> dict:
    """What determines a run's result: its spec, the protocol parameters, the base weights and the data.
    Its hash decides whether a finished run is reused and whether a saved state may be resumed."""
    arm, data = runspec.ARMS[spec.arm], fewshot.for_subset(data, spec.subset)
    split_digest = {s: tensors_sha256(data[s]["x"], data[s]["y"], data[s]["concept"],
                                      *([data[s]["foreground"]] if arm.mask == "foreground" else []))[:16]
                    for s in ("train", "val")}
    if spec.arm == "dfr":
        split_digest["dfr"] = tensors_sha256(torch.from_numpy(data["dfr"]["images"]),
                                             torch.from_numpy(data["dfr"]["label"]))[:16]
        split_digest["dfr_l2"] = data["dfr"]["l2"]
    # in the spec, or not the result's
    other_runs = ("arms", "seeds", "relevance", "lr", "arm_lr", "cnn", "device", "processes")
    params = {k: v for k, v in config.as_dict(cfg).items() if k not in other_runs}
    conf = {"spec": asdict(spec), "params": params, "base": tensors_sha256(*base.state_dict().values())[:16],
            "data": split_digest}
    conf["hash"] = json_sha256(conf)[:16]
    return conf


_PROBES: dict[tuple, dict] = {}
"""DFR heads refitted in this process, by (digest of the base and the dfr split, l2): one refit per base model."""


def prepare(spec: runspec.RunSpec, base: torch.nn.Module, build: dict, data: dict, device: torch.device):
    """A run's model (a trainable copy of `base` in eval mode: no dropout, frozen BatchNorm statistics; DFR's
    refitted for `dfr`) and its train / val tensors, on `device`; `data` already narrowed (`fewshot.for_subset`)."""
    model = copy.deepcopy(base).eval()
    if spec.arm == "dfr":
        d = data["dfr"]
        key = tensors_sha256(*base.state_dict().values(), torch.from_numpy(d["images"]),
                             torch.from_numpy(d["label"]))[:16], d["l2"]
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


@dataclass
class RunState:
    """A run under way: what it is (spec, folder, config, build), its model and random generator, and its progress,
    which `state.pt` saves (`progress`) and a resumed run goes on from: the epochs finished, the `history.csv` and
    `epochs.csv` rows so far, the skipped steps in all and in a row. `saved_optimizer`: the optimizer state a
    resumed run loads (None on a fresh start)."""
    spec: runspec.RunSpec
    folder: Path
    conf: dict
    build: dict
    model: torch.nn.Module
    gen: torch.Generator
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    nonfinite: int = 0
    consecutive: int = 0
    saved_optimizer: dict | None = None

    def progress(self) -> dict:
        """What `state.pt` keeps under "state" (a plain dict: states saved by earlier versions resume)."""
        return {"epoch": self.epoch, "history": self.history, "epochs": self.epochs, "nonfinite": self.nonfinite,
                "consecutive": self.consecutive}


def finished_run(folder: Path, conf: dict) -> dict | None:
    """The run.json of the complete run in `folder` if it has the same config hash (it is reused as it is)."""
    done = folder / "run.json"
    if done.is_file() and (summary := read_json(done))["config"]["hash"] == conf["hash"]:
        return summary
    return None


def saved_state(folder: Path, conf: dict, device: torch.device) -> dict | None:
    """The run's resume state (`state.pt`) if one was saved under the same config hash."""
    state_path = folder / "state.pt"
    saved = (read_torch(state_path, "delete it to restart this run from its first epoch", device)
             if state_path.is_file() else None)
    return saved if saved is not None and saved["hash"] == conf["hash"] else None


def start(spec: runspec.RunSpec, folder: Path, conf: dict, build: dict, model, val: dict, cfg: config.Finetune,
          amp, device: torch.device, on_epoch=None) -> RunState:
    """The run resumed from its saved state (`saved_state`), or started afresh: its folder removed (rank 0) and
    epoch 0, the base, validated into the first `epochs.csv` row (passed to `on_epoch` with the model)."""
    state = RunState(spec, folder, conf, build, model, torch.Generator().manual_seed(spec.seed))
    saved = saved_state(folder, conf, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        state.gen.set_state(saved["generator"].cpu())  # a CPU generator; the state was loaded onto the run's device
        return dataclasses.replace(state, **saved["state"], saved_optimizer=saved["optimizer"])
    if launch.rank_world()[0] == 0 and folder.exists():
        shutil.rmtree(folder)
    state.epochs.append(epoch_row(0, spec.lr, [], model, runspec.ARMS[spec.arm], val, cfg, spec.relevance, amp))
    if on_epoch is not None:
        on_epoch(state.epochs[-1], model)
    return state


def training_batch(train: dict, idx: torch.Tensor, arm: runspec.Arm, gen: torch.Generator,
                   cfg: config.Finetune) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and masks (the arm's) of batch `idx`, augmented (and for `rrda` mixed) with draws from `gen`."""
    x, m = augment(train["x"][idx], train[arm.mask or "concept"][idx], gen, cfg.scale, cfg.flip)
    if arm.loss == "rrda":
        x = baselines.rrda_mix(x, m, gen, cfg.loss.rrda_prob)
    return x, m


def record_step(state: RunState, row: dict, epoch: int, lr: float, cfg: config.Finetune) -> None:
    """Add a step's `history.csv` row to the run, counting a skipped step; too many consecutive non-finite steps
    stop the run."""
    state.nonfinite += row["skipped"]
    state.consecutive = state.consecutive + 1 if row["skipped"] else 0
    if state.consecutive >= cfg.max_nonfinite:
        raise NonFiniteLoss(f"{state.folder}: {state.consecutive} consecutive steps with a non-finite loss or "
                            f"gradient (epoch {epoch + 1}, step {len(state.history) + 1}); lower finetune.lr "
                            f"or keep finetune.loss.squeeze > 0")
    state.history.append({"epoch": epoch + 1, "step": len(state.history) + 1, "lr": lr, **row})


def check_moved(state: RunState, epoch: int) -> None:
    """Stop a run whose every step so far was skipped: the weights never moved, later epochs would be the same."""
    if state.nonfinite == len(state.history):
        raise NonFiniteLoss(f"{state.folder}: every one of the {state.nonfinite} training steps so far (epoch "
                            f"{epoch + 1}) had a non-finite loss or gradient; check finetune.loss and "
                            f"finetune.lr, and keep finetune.loss.squeeze > 0")


def run_epoch(state: RunState, opt, train: dict, epoch: int, lr: float, cfg: config.Finetune, amp,
              steps_bar) -> list[float]:
    """Epoch `epoch`'s steps at learning rate `lr`, over an order drawn from the run's generator, each process
    taking its shard of every batch. Returns the losses of the steps taken (skipped ones left out)."""
    arm, (rank, world) = runspec.ARMS[state.spec.arm], launch.rank_world()
    for group in opt.param_groups:
        group["lr"] = lr
    n, mine = len(train["y"]), slice(rank, None, world)
    order, taken = torch.randperm(n, generator=state.gen), []
    for b in range(math.ceil(n / cfg.batch_size)):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        x, m = training_batch(train, idx, arm, state.gen, cfg)
        row = train_step(state.model, opt, arm, x[mine], m[mine], train["y"][idx][mine], len(idx), cfg,
                         state.spec.relevance, amp)
        record_step(state, row, epoch, lr, cfg)
        if not row["skipped"]:
            taken.append(row["loss"])
        steps_bar.update()
        steps_bar.set_postfix(loss=f"{row['loss']:.3f}")
    return taken


def epoch_row(epoch: int, lr: float, losses_: list[float], model, arm: runspec.Arm, val: dict,
              cfg: config.Finetune, method: str, amp) -> dict:
    """An `epochs.csv` row: the mean training loss of the epoch's steps that were taken, and `validate`'s."""
    return {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses_)) if losses_ else math.nan,
            **validate(model, arm, val, cfg, method, amp), "best": 0}


def end_epoch(state: RunState, epoch: int, lr: float, taken: list[float], val: dict, cfg: config.Finetune,
              amp) -> bool:
    """After epoch `epoch`'s steps (losses `taken`): stop a run that never moved, validate into the epoch's
    `epochs.csv` row, count the epoch done. True where it is the epoch the run selects so far."""
    check_moved(state, epoch)
    arm, method = runspec.ARMS[state.spec.arm], state.spec.relevance
    state.epochs.append(epoch_row(epoch + 1, lr, taken, state.model, arm, val, cfg, method, amp))
    state.epoch = epoch + 1
    return select_epoch(state.epochs, cfg.selection) == epoch + 1


def save_epoch(state: RunState, optimizer: dict, best: bool) -> None:
    """After epoch `state.epoch` (rank 0): `best.pt` if it is the selected one, and the resume state."""
    if best:
        checkpoints.save_checkpoint(state.folder / "best.pt", state.model,
                                    {**state.build, "run": asdict(state.spec), "epoch": state.epoch})
    with atomic_path(state.folder / "state.pt") as tmp:
        torch.save({"hash": state.conf["hash"], "model": state.model.state_dict(), "optimizer": optimizer,
                    "generator": state.gen.get_state(), "state": state.progress()}, tmp)


def finish(state: RunState, base: torch.nn.Module, data: dict, cfg: config.Finetune, epochs: int, rank: int,
           world: int) -> dict:
    """The run's summary, and on rank 0 its files (`last.pt`, `best.pt` of the base where no trained epoch was
    selected, history.csv, epochs.csv, run.json last) with the resume state removed."""
    spec, folder, build = state.spec, state.folder, state.build
    chosen = select_epoch(state.epochs, cfg.selection)
    summary = {"config": state.conf, "arm": asdict(runspec.ARMS[spec.arm]), "counts": data["counts"],
               "train_classes": [int(c) for c in data.get("train_classes", [])], "epochs": epochs,
               "steps": len(state.history),
               "best_epoch": chosen, "best_val_loss": state.epochs[chosen]["val_loss"],
               "last": state.epochs[-1], "nonfinite_steps": state.nonfinite,
               "saturated_steps": sum(r["saturated"] > 0 for r in state.history), "processes": world}
    if rank == 0:
        checkpoints.save_checkpoint(folder / "last.pt", state.model, {**build, "run": asdict(spec), "epoch": epochs})
        if chosen == 0:  # no fine-tuning, or no trained epoch selected: the (DFR-refitted) base itself
            checkpoints.save_checkpoint(folder / "best.pt", base if epochs else state.model,
                                        {**build, "run": asdict(spec), "epoch": 0})
        write_csv(folder / "history.csv", pd.DataFrame(state.history, columns=list(STEP_COLUMNS)))
        rows = [{**e, "best": int(e["epoch"] == chosen)} for e in state.epochs]
        write_csv(folder / "epochs.csv", pd.DataFrame(rows, columns=list(EPOCH_COLUMNS)))
        write_json(folder / "run.json", summary)
        (folder / "state.pt").unlink(missing_ok=True)
    return summary


def fit(spec: runspec.RunSpec, base: torch.nn.Module, build: dict, data: dict, cfg: config.Finetune,
        out_dir: str | Path, progress: bool = False, on_epoch=None) -> dict:
    """Run `spec` into its folder and return its run.json. A complete run with the same config hash is
    reused; a saved state with the same hash is resumed at its last finished epoch (and ends with the same
    history as an uninterrupted run); anything else starts over. `on_epoch(row, model)` is called with each
    epoch's `epochs.csv` row (epoch 0, the base, included) and the model in eval mode (studies score it there)."""
    folder, data = spec.folder(out_dir), fewshot.for_subset(data, spec.subset)
    conf = run_config(spec, cfg, base, data)
    if (summary := finished_run(folder, conf)) is not None:
        return summary
    device = launch.device(cfg.device, "finetune.device")
    amp = autocast(device, cfg)
    model, train, val = prepare(spec, base, build, data, device)
    state = start(spec, folder, conf, build, model, val, cfg, amp, device, on_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=cfg.weight_decay)
    if state.saved_optimizer is not None:
        opt.load_state_dict(state.saved_optimizer)
    rank, world = launch.rank_world()
    epochs, steps = cfg.epochs if runspec.ARMS[spec.arm].trains else 0, math.ceil(len(train["y"]) / cfg.batch_size)
    steps_bar = tqdm(total=epochs * steps, initial=state.epoch * steps, desc=spec.name, unit="steps",
                     disable=not progress or rank != 0, leave=False)  # without a bar: run_all's line per run
    for epoch in range(state.epoch, epochs):
        lr = step_decay_lr(epoch, spec.lr, cfg)
        taken = run_epoch(state, opt, train, epoch, lr, cfg, amp, steps_bar)
        best = end_epoch(state, epoch, lr, taken, val, cfg, amp)
        if on_epoch is not None:
            on_epoch(state.epochs[-1], model)
        if rank == 0:
            save_epoch(state, opt.state_dict(), best)
    steps_bar.close()
    summary = finish(state, base, data, cfg, epochs, rank, world)
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
