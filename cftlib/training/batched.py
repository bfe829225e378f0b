"""Several fine-tuning runs in one process, one step for all (issue 27; a ViT-B step at batch 8 leaves a GPU mostly
idle, docs of the H200 timings): runs of one architecture, arm, relevance method and learning rate, differing in base
weights, seed and class subset, train as one `StackedViT` (`cftlib.models.stacked`) on the concatenation of their
batches, each run's loss on its own rows. The sum of the runs' losses gives each copy the gradient its own run would
(no layer mixes the copies), and `StackedAdamW` updates each copy as its own AdamW would, skipping a run's step where
its loss or gradient is not finite, as `trainer.train_step` does. Every run draws from its own generator in the order
`trainer.fit` does, validates, selects and saves as `fit` does, and its resume state is `fit`'s: a run started here
may be finished by `fit` and the other way round."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cftlib import relevance
from cftlib.core import config, launch
from cftlib.data import fewshot
from cftlib.models import stacked
from cftlib.training import losses, runspec, trainer

LOSSES = ("bce", "mse", "ce", "rrda")
"""The arm losses a batched step computes (every arm that trains but the input-gradient baselines)."""


class StackedAdamW:
    """torch's AdamW (decoupled weight decay, no amsgrad) on stacked parameters (model axis first), with a step
    count per run: a run whose step is skipped keeps its weights, moments and count. Elementwise, so each copy moves
    as its own `torch.optim.AdamW` would."""

    def __init__(self, params, runs: int, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.steps = torch.zeros(runs, dtype=torch.float64)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, take: torch.Tensor) -> None:
        """Step the runs where `take` (M,) bool is set, with the gradients in `.grad` (None: zero)."""
        b1, b2 = self.betas
        self.steps += take.cpu().double()
        n = self.steps.clamp_min(1)
        step_size = self.lr / (1 - b1 ** n)
        bc2_sqrt = (1 - b2 ** n).sqrt()
        for p, m1, m2 in zip(self.params, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.ndim - 1)
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            on = take.to(p.device).view(shape)
            new_m1 = m1.lerp(g, 1 - b1)
            new_m2 = (m2 * b2).addcmul_(g, g, value=1 - b2)
            denom = (new_m2.sqrt() / bc2_sqrt.to(p).view(shape)).add_(self.eps)
            new_p = (p * (1 - self.lr * self.weight_decay)) - step_size.to(p).view(shape) * (new_m1 / denom)
            p.copy_(torch.where(on, new_p, p))
            m1.copy_(torch.where(on, new_m1, m1))
            m2.copy_(torch.where(on, new_m2, m2))

    def state_dict(self, m: int) -> dict:
        """Run m's state as `torch.optim.AdamW.state_dict()` of its own model writes it (what `trainer.fit` resumes)."""
        template = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1)) for _ in self.params], lr=self.lr,
                                     betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)
        step = torch.tensor(float(self.steps[m]), dtype=torch.float32)
        return {"state": {i: {"step": step.clone(), "exp_avg": a[m].clone(), "exp_avg_sq": s[m].clone()}
                          for i, (a, s) in enumerate(zip(self.exp_avg, self.exp_avg_sq))},
                "param_groups": template.state_dict()["param_groups"]}

    def load_state_dict(self, m: int, state: dict) -> None:
        """Run m's state from a `torch.optim.AdamW` state dict of its own model (parameters in the same order)."""
        saved = state["state"]
        self.steps[m] = float(saved[0]["step"]) if 0 in saved else 0.0
        for i, (a, s) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            if i in saved:
                a[m].copy_(saved[i]["exp_avg"])
                s[m].copy_(saved[i]["exp_avg_sq"])


# ----------------------------------------------------------------------------- one step of every run

def per_run_loss(model, arm: runspec.Arm, x, m, y, runs: int, cfg: config.Finetune, method: str) -> list[dict]:
    """Each run's loss terms (`trainer.batch_loss`'s) on its rows of the concatenated batch (`runs` equal blocks)."""
    if arm.loss not in LOSSES:
        raise ValueError(f"arm {arm.name!r}: no batched step for loss {arm.loss!r}; choose an arm of {LOSSES}")
    if arm.loss in ("ce", "rrda"):  # RRDA is the label CE on mixed images (baselines.baseline_loss)
        logits = model(x)
        return [{"loss": F.cross_entropy(z.float(), t)} for z, t in zip(logits.chunk(runs), y.chunk(runs))]
    r, logits = relevance.explain(model, x, method, target=y, create_graph=arm.align, output="pixel")
    return [losses.relevance_loss(*parts, arm.loss, trainer.arm_loss(arm, cfg))
            for parts in zip(r.chunk(runs), m.chunk(runs), logits.chunk(runs), y.chunk(runs))]


def train_step(model, opt: StackedAdamW, arm: runspec.Arm, batches: list[tuple], cfg: config.Finetune, method: str,
               amp) -> list[dict]:
    """One optimiser step of every run on its batch (x, m, y) (all of one size): `trainer.train_step`'s rows, one a
    run. A run's non-finite loss or gradient skips that run's step only."""
    keys, runs = trainer.terms_logged(arm), len(batches)
    x, m, y = (torch.cat(t) for t in zip(*batches))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    with amp:
        terms = per_run_loss(model, arm, x, m, y, runs, cfg, method)
    torch.stack([t["loss"] for t in terms]).sum().backward()
    none = torch.zeros((), dtype=torch.float64, device=x.device)
    stats = torch.stack([torch.stack([t[k].detach().double() for k in keys] + [t.get("saturated", none).double()])
                         for t in terms]).cpu()
    norms = torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad.flatten(1), dim=1) for p in params if p.grad is not None]), dim=0)
    take = torch.isfinite(stats).all(1) & torch.isfinite(norms).cpu()
    opt.step(take)
    for p in params:
        p.grad = None
    return [{**{k: float(v) for k, v in zip(keys, s[:len(keys)])}, "saturated": int(s[-1]), "skipped": int(not ok)}
            for s, ok in zip(stats, take.tolist())]


# ----------------------------------------------------------------------------- runs

@dataclass
class _Run:
    """A run of a batch: its state (`trainer.RunState`), base model and few-shot data as tensors on the device."""
    state: trainer.RunState
    base: torch.nn.Module
    data: dict
    train: dict
    val: dict


def check(specs: list[runspec.RunSpec]) -> None:
    """Runs batch together when they share model role, arm (one that trains, with a batched loss), relevance method
    and learning rate, in one process; anything else is an error naming what differs."""
    for key in ("model", "arm", "relevance", "lr"):
        if len({getattr(s, key) for s in specs}) > 1:
            raise ValueError(f"batched runs share their {key}; got {sorted({str(getattr(s, key)) for s in specs})}")
    arm = runspec.ARMS[specs[0].arm]
    if not arm.trains or arm.loss not in LOSSES:
        raise ValueError(f"arm {arm.name!r} has no batched training; use trainer.fit")
    if launch.rank_world()[1] > 1:
        raise ValueError("batched runs take one process (torchrun shards one run instead)")


def fit_runs(specs: list[runspec.RunSpec], bases: list[tuple[torch.nn.Module, dict]], data: dict,
             cfg: config.Finetune, out_dir: str | Path, progress: bool = False) -> list[dict]:
    """`trainer.fit` of every spec (`bases[i]`: (model, build) of `specs[i]`), their steps batched; returns their
    run.json in order. Complete runs are reused, saved states resumed, as `fit` does; runs saved at different epochs
    go on in groups of one epoch. The runs' training sets must be of one size (their steps then line up)."""
    check(specs)
    arm = runspec.ARMS[specs[0].arm]
    device = launch.device(cfg.device, "finetune.device")
    amp = trainer.autocast(device, cfg)
    out, todo = {}, []
    for i, (spec, (base, build)) in enumerate(zip(specs, bases)):
        d = fewshot.for_subset(data, spec.subset)
        conf, folder = trainer.run_config(spec, cfg, base, d), spec.folder(out_dir)
        if (s := trainer.finished_run(folder, conf)) is not None:
            out[i] = s
            continue
        todo.append((i, spec, base, build, d, conf, folder))
    if len({len(t[4]["train"]["y"]) for t in todo}) > 1:
        raise ValueError(f"batched runs need training sets of one size; got "
                         f"{ {t[1].name: len(t[4]['train']['y']) for t in todo} }")
    runs = {}
    for i, spec, base, build, d, conf, folder in todo:
        model, train, val = trainer.prepare(spec, base, build, d, device)
        runs[i] = _Run(trainer.start(spec, folder, conf, build, model, val, cfg, amp, device), base, d, train, val)
    for epoch in sorted({r.state.epoch for r in runs.values()}):
        _train([r for r in runs.values() if r.state.epoch == epoch], arm, cfg, amp, progress)
    for i, r in runs.items():
        out[i] = trainer.finish(r.state, r.base, r.data, cfg, cfg.epochs, 0, 1)
    return [out[i] for i in range(len(specs))]


def groups(runs: list[runspec.RunSpec], data: dict, size: int) -> list[list[runspec.RunSpec]]:
    """The runs that can share a step (ViT runs of an arm with a batched loss, of one relevance method, lr and
    training-set size), in plan order, cut into groups of at most `size`; the other runs are left to `trainer.fit`."""
    by_key: dict[tuple, list] = {}
    for r in runs:
        arm = runspec.ARMS[r.arm]
        if r.model == "vit" and arm.trains and arm.loss in LOSSES:
            n = len(fewshot.for_subset(data, r.subset)["train"]["y"])
            by_key.setdefault((r.arm, r.relevance, r.lr, n), []).append(r)
    return [g[i:i + size] for g in by_key.values() for i in range(0, len(g), size)]


def fit_groups(runs: list[runspec.RunSpec], bases: dict, data: dict, cfg: config.Finetune, out_dir: str | Path,
               progress: bool = False) -> None:
    """With `cfg.batch_runs` > 1, the batchable runs (`groups`) trained `cfg.batch_runs` at a time by `fit_runs`
    (bases: (model role, base index) → (model, build)), so that `trainer.run_all` then reuses them."""
    if cfg.batch_runs > 1:
        for group in groups(runs, data, cfg.batch_runs):
            fit_runs(group, [bases[r.model, r.base] for r in group], data, cfg, out_dir, progress)


def _train(group: list[_Run], arm: runspec.Arm, cfg: config.Finetune, amp, progress: bool) -> None:
    """Train `group` (runs at one epoch) from that epoch to the last, as one stacked model."""
    spec, n = group[0].state.spec, len(group[0].train["y"])
    model = stacked.stack([r.state.model for r in group])
    opt = StackedAdamW(model.parameters(), len(group), spec.lr, cfg.weight_decay)
    for j, r in enumerate(group):
        if r.state.saved_optimizer is not None:
            opt.load_state_dict(j, r.state.saved_optimizer)
    steps, start = math.ceil(n / cfg.batch_size), group[0].state.epoch
    steps_bar = tqdm(total=(cfg.epochs - start) * steps, desc=f"{len(group)} x {spec.model}/{spec.arm}",
                     unit="steps", disable=not progress, leave=False)
    for epoch in range(start, cfg.epochs):
        opt.lr = lr = trainer.step_decay_lr(epoch, spec.lr, cfg)
        orders = [torch.randperm(n, generator=r.state.gen) for r in group]
        taken = [[] for _ in group]
        for b in range(steps):
            batches = []
            for r, order in zip(group, orders):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                batches.append((*trainer.training_batch(r.train, idx, arm, r.state.gen, cfg), r.train["y"][idx]))
            rows = train_step(model, opt, arm, batches, cfg, spec.relevance, amp)
            for r, row, t in zip(group, rows, taken):
                trainer.record_step(r.state, row, epoch, lr, cfg)
                if not row["skipped"]:
                    t.append(row["loss"])
            steps_bar.update()
        for j, (r, t) in enumerate(zip(group, taken)):
            r.state.model.load_state_dict(stacked.split(model, j))
            best = trainer.end_epoch(r.state, epoch, lr, t, r.val, cfg, amp)
            trainer.save_epoch(r.state, opt.state_dict(j), best)
    steps_bar.close()
