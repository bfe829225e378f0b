"""Training a classifier on labelled world images: the world's pre-trained checkpoints (stage pretrain, the
world's "ImageNet-21k") and the shortcut-biased base models trained from them (stage world, the "21k → 1k"
step). AdamW, warm-up + cosine, label smoothing, flips and zoom (`cftlib.data.augment`, the fine-tuning
protocol's); the epoch with the best held-out accuracy is kept."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cftlib.core.config import Params, Pretrain, Recipe
from cftlib.data import world
from cftlib.data.augment import augment, to_tensor
from cftlib.models.checkpoints import load_checkpoint
from cftlib.models.factory import build_model


def warmup_cosine_lr(step: int, total: int, cfg: Recipe) -> float:
    """Linear warm-up over `cfg.warmup` of the steps, then cosine decay to zero."""
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def fresh(cfg: Pretrain, num_classes: int, img_size: int | None, seed: int) -> tuple[torch.nn.Module, dict]:
    """A randomly initialised model of `cfg.model` / `cfg.model_kwargs` (seeded) and its build config
    (CNNs take no `img_size`: pass None)."""
    torch.manual_seed(seed)
    build = dict(name=cfg.model, num_classes=num_classes, img_size=img_size, kwargs=dict(cfg.model_kwargs))
    return build_model(build["name"], num_classes, img_size, **build["kwargs"]), build


def outputs(P: Params) -> int:
    """The pre-trained models' outputs: the species, then the blocks of `extra_labels`."""
    return (P.world.n_species + (sum(map(len, world.ATTRIBUTES.values())) if P.pretrain.attributes else 0)
            + (len(world.HABITATS) + len(world.COLORS) if P.pretrain.context else 0))


def misfits(P: Params, role: str, build: dict) -> list[str]:
    """How a checkpoint's build config (`save_checkpoint`'s `config`) differs from the model this profile
    pre-trains for `role`: one line per params key, e.g. "world.image_size: 32 here, the checkpoint was built
    for 48"; empty when it fits. Checked before any work: a misfit otherwise fails deep in the world stage."""
    prefix = "pretrain" if role == "vit" else "finetune.cnn.pretrain"
    cfg, kwargs = roles(P)[role], build.get("kwargs", {})
    pairs = {f"{prefix}.model": (cfg.model, build.get("name")),
             "world.image_size": (P.world.image_size if role == "vit" else None, build.get("img_size")),
             "world.n_species": (outputs(P), build.get("num_classes")),  # outputs: species + extra labels
             **{f"{prefix}.model_kwargs.{k}": (cfg.model_kwargs.get(k), kwargs.get(k))
                for k in sorted(set(cfg.model_kwargs) | set(kwargs))}}
    what = {"world.n_species": " outputs (species + pretrain.attributes/context labels)"}
    return [f"{key}: {want!r}{what.get(key, '')} here, the checkpoint was built for {have!r}"
            for key, (want, have) in pairs.items() if want != have]


def from_pretrained(path, num_classes: int, seed: int) -> tuple[torch.nn.Module, dict]:
    """A pre-trained checkpoint with a new, seeded classifier head for `num_classes` (timm's
    `reset_classifier`), as a 21k model is given a 1k head; returns (model, build config)."""
    model, build = load_checkpoint(path)
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)
    build = {k: v for k, v in build.items() if k in ("name", "img_size", "kwargs")} | {"num_classes": num_classes}
    return model, build


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Mean cross-entropy of the extra labels: logits (B, C + sum(sizes)) carry, after the C species, one
    block per label; `targets` (B, A) is each image's value index of each."""
    out, start = 0.0, logits.shape[1] - sum(sizes)
    for a, n in enumerate(sizes):
        out = out + F.cross_entropy(logits[:, start:start + n], targets[:, a])
        start += n
    return out / len(sizes)


def extra_labels(P: Params, arrays: dict) -> tuple[np.ndarray, list[int]] | None:
    """The pre-training set's labels beyond the species, per image (N, A) and their sizes: each part attribute
    (`pretrain.attributes`, a field guide's annotation, as CUB has) and the habitat and body colour
    (`pretrain.context`, as ImageNet-21k also labels scenes); None with neither."""
    columns, sizes = [], []
    if P.pretrain.attributes:
        table, n = world.attribute_table(world.make_species(P.world.n_species, P.base.seed))
        columns.append(table[arrays["label"]])
        sizes += n
    if P.pretrain.context:
        columns.append(np.stack([arrays["habitat"], arrays["color"]], 1).astype(np.int64))
        sizes += [len(world.HABITATS), len(world.COLORS)]
    return (np.concatenate(columns, 1), sizes) if columns else None


def train(model: torch.nn.Module, cfg: Recipe, train_set: dict, val_set: dict, seed: int, progress: bool = False,
          desc: str = "train", extra: tuple[np.ndarray, list[int]] | None = None,
          on_epoch: Callable[[dict, torch.nn.Module], None] | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Train every weight of `model` on `train_set` (arrays `images`, `label`). Returns the model at its best
    `val_set` epoch, or after epoch `cfg.keep_epoch` when set (eval mode), and the per-epoch history (train
    loss/accuracy, val loss/accuracy, lr); the run always goes on to `cfg.epochs`.
    `extra` = (targets (N, A) of `train_set`, sizes), from `extra_labels`, adds `attribute_loss` (the model then
    has sum(sizes) more outputs, after the species); accuracies are the species'. `on_epoch(record, model)` is
    called after each epoch (studies snapshot the model there); a true return ends the run there (a study that
    needs only the first epochs of a longer schedule)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = to_tensor(train_set["images"]), torch.from_numpy(train_set["label"].astype(np.int64))
    xv, yv = to_tensor(val_set["images"]), torch.from_numpy(val_set["label"].astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(x) / cfg.batch_size)
    total, history, kept = cfg.epochs * steps, [], None
    if extra is not None:
        targets, sizes = torch.as_tensor(extra[0], dtype=torch.long), list(extra[1])
        n_cls = model.get_classifier().out_features - sum(sizes)
    bar = tqdm(total=total, desc=desc, disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        loss_sum = correct = 0.0
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = warmup_cosine_lr(epoch * steps + i, total, cfg)
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb, yb = augment(x[idx], x[idx][:, :0], gen, cfg.scale, cfg.flip, jitter=True)[0], y[idx]
            logits = model(xb)
            if extra is not None:
                loss = F.cross_entropy(logits[:, :n_cls], yb, label_smoothing=cfg.label_smoothing) + \
                    attribute_loss(logits, targets[idx], sizes)
                logits = logits[:, :n_cls]
            else:
                loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        val_loss, val_acc = evaluate(model, xv, yv, None if extra is None else n_cls)
        history.append(dict(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], train_loss=loss_sum / len(x),
                            train_acc=correct / len(x), val_loss=val_loss, val_acc=val_acc))
        if len(history) >= (cfg.keep_epoch or 0) and kept_epoch(history, cfg) is history[-1]:
            kept = copy.deepcopy(model.state_dict())
        if on_epoch is not None and on_epoch(history[-1], model):
            break
    bar.close()
    if not progress:  # papermill logs: one line per training
        print(f"{desc}: {len(history)} epochs, kept " + (f"epoch {cfg.keep_epoch}" if cfg.keep_epoch else "the best")
              + f" (val accuracy {kept_epoch(history, cfg)['val_acc']:.3f})", flush=True)
    model.load_state_dict(kept)
    return model.eval(), history


@torch.no_grad()
def augmentation_gap(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, scale: float, flip: bool,
                     seed: int, draws: int = 10) -> dict[str, float]:
    """Top-1 on `images` as they are and under the fine-tuning augmentation (`augment` with `scale`, `flip`; the
    mean over `draws` seeded draws), and the gap between the two in points. A large gap means fine-tuning first
    has to teach the model a new zoom: the augmentation is a distribution shift for it."""
    model.eval()
    x, y = to_tensor(images), torch.as_tensor(np.asarray(labels, np.int64))
    gen = torch.Generator().manual_seed(seed)
    plain = (model(x).argmax(1) == y).float().mean().item()
    moved = float(np.mean([(model(augment(x, x[:, :0], gen, scale, flip)[0]).argmax(1) == y).float().mean().item()
                           for _ in range(draws)]))
    return {"as_is": plain, "augmented": moved, "gap_points": 100 * (plain - moved)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int | None = None,
             batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on tensors, in eval mode (over the first `classes` outputs if given)."""
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])[:, :classes]
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------- the two stages

def pretraining_sets(P: Params, progress: bool = False) -> tuple[dict, dict]:
    """The pre-training set (`pretrain.images`) and its held-out twin (`pretrain.val_images`): birds of every
    species of the world whose habitat and colour are drawn at random (split `parts_only`, independent
    streams), so that only the parts predict the species."""
    species = world.make_species(P.world.n_species, P.base.seed)
    return tuple(world.make_split(P.world, species, "parts_only", P.base.seed, progress, n=n, stream=s)
                 for s, n in ((1, P.pretrain.images), (2, P.pretrain.val_images)))


def roles(P: Params) -> dict[str, Pretrain]:
    """Model role → its pre-training config: the ViT, and the CNN when the profile fine-tunes one; none off
    the world (paper scale: the zoo's pretrained models)."""
    if P.concepts.dataset != "world":
        return {}
    return {"vit": P.pretrain, **({"cnn": P.finetune.cnn.pretrain} if P.finetune.cnn.arms else {})}


def pretrain_all(P: Params, progress: bool = False) -> dict[str, tuple[torch.nn.Module, dict, list[dict]]]:
    """Stage pretrain: every role trained from scratch on `pretraining_sets` (ViTs at world.image_size), on
    the species and the labels of `extra_labels` (`attribute_loss`). Returns role →
    (model, build, history); the history's val_acc (species, held out) is the learnability figure."""
    if not roles(P):
        return {}
    train_set, val_set = pretraining_sets(P, progress)
    extra = extra_labels(P, train_set)
    out = {}
    for role, cfg in roles(P).items():
        model, build = fresh(cfg, outputs(P), P.world.image_size if role == "vit" else None, P.base.seed)
        model, history = train(model, cfg, train_set, val_set, P.base.seed, progress, desc=f"pretrain/{role}",
                               extra=extra)
        out[role] = (model, build, history)
    return out


def kept_epoch(history: list[dict], cfg: Recipe) -> dict:
    """The history row of the epoch `train` ships: after `cfg.keep_epoch` when set, else the first epoch with the
    best held-out accuracy."""
    return history[cfg.keep_epoch - 1] if cfg.keep_epoch else max(history, key=lambda r: r["val_acc"])


def shipped(P: Params, model_dir, history_csv) -> dict[str, tuple[torch.nn.Module, dict, list[dict]]]:
    """The committed pre-training as `pretrain_all` returns it — each role's checkpoint in `model_dir` and its
    history from the stage's `history_csv` — so that the frozen stage's notebook can be shown without
    re-training (histories at the CSV's 6 significant digits)."""
    history = pd.read_csv(history_csv)
    out = {}
    for role in roles(P):
        model, build = load_checkpoint(Path(model_dir) / f"{role}.pt")
        rows = history[history["model"] == role].drop(columns="model")
        out[role] = (model, build, rows.to_dict("records"))
    return out


def base_path(base_dir, model: str, base: int) -> Path:
    """Where the world stage keeps base model `base` of role `model` ("vit" or "cnn")."""
    return Path(base_dir) / model / f"base{base}.pt"


def bases_all(P: Params, pretrained_dir, data_dir, progress: bool = False):
    """Stage world: for every role and base index b, the pre-trained checkpoint with a new head (seed
    base.seed + b) trained on the world's biased `train` split (section bases), best `val` epoch kept.
    Yields (role, b, model, build, history)."""
    train_set, val_set = world.load_split(data_dir, "train"), world.load_split(data_dir, "val")
    for role in roles(P):
        for b in range(P.bases.seeds):
            seed = P.base.seed + b
            model, build = from_pretrained(Path(pretrained_dir) / f"{role}.pt", P.world.n_species, seed)
            model, history = train(model, P.bases, train_set, val_set, seed, progress, desc=f"base/{role}{b}")
            yield role, b, model, build, history
