"""The shortcut-biased base model: a ViT trained from scratch on the world's biased `train` split
(AdamW, warm-up + cosine, label smoothing, flips), checkpoint chosen by `val` accuracy."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import Pretrain
from .models import build_model, to_tensor


def lr_at(step: int, total: int, cfg: Pretrain) -> float:
    """Linear warm-up over `cfg.warmup` of the steps, then cosine decay to zero."""
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train(cfg: Pretrain, train_set: dict, val_set: dict, num_classes: int, img_size: int, seed: int,
          progress: bool = False) -> tuple[torch.nn.Module, dict, list[dict]]:
    """Train from scratch. Returns the model at its best val epoch, its build config, and the
    per-epoch history (train loss/accuracy, val loss/accuracy, lr)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    build = dict(name=cfg.model, num_classes=num_classes, img_size=img_size, kwargs=dict(cfg.model_kwargs))
    model = build_model(build["name"], num_classes, img_size, **build["kwargs"])
    x, y = to_tensor(train_set["images"]), torch.from_numpy(train_set["label"].astype(np.int64))
    xv, yv = to_tensor(val_set["images"]), torch.from_numpy(val_set["label"].astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(x) / cfg.batch_size)
    total, history, best = cfg.epochs * steps, [], (-1.0, None)
    bar = tqdm(total=total, desc="pretrain", disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        loss_sum = correct = 0.0
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + i, total, cfg)
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if cfg.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        val_loss, val_acc = evaluate(model, xv, yv)
        history.append(dict(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], train_loss=loss_sum / len(x),
                            train_acc=correct / len(x), val_loss=val_loss, val_acc=val_acc))
        if val_acc > best[0]:
            best = (val_acc, copy.deepcopy(model.state_dict()))
    bar.close()
    model.load_state_dict(best[1])
    return model.eval(), build, history


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on tensors, in eval mode."""
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()
