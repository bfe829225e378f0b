"""Cost of one CFT fine-tune step per relevance method, against a plain CE step (issue 3).

A step is: forward, relevance with create_graph, alignment + confidence loss, backward, AdamW step.
The official formulation is the released code's: one autograd.grad per block, a second forward for the
logits, and a forward of the frozen original model (for its logging). Methods run round-robin in one
process so that load changes hit all of them alike; the table gives medians of wall and process CPU
time (the latter robust to other jobs on a shared machine) and their ratio to CE.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/relevance_step.py [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from cftlib.core.config import Loss
from cftlib.relevance import explain
from cftlib.relevance.rollout import gae_rollout_official
from cftlib.training import losses

MODELS = {  # name -> (timm architecture, kwargs, batch size)
    "default world ViT, B=32": ("vit_tiny_patch16_224", dict(
        img_size=48, patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10), 32),
    "ViT-S/16 @224, B=8": ("vit_small_patch16_224", dict(num_classes=1000), 8),
}
METHODS = ("attnlrp", "cplrp", "gae_rollout", "grad_x_input")
OFFICIAL = "official GAE (grad per block, 2nd fwd, frozen fwd)"


def step_fns(model, frozen, x, y, mask):
    cfg = Loss()  # the official CFT weights, BCE, map squeezed into [1e-3, 1 - 1e-3]

    def cft_loss(r, logits):
        return losses.relevance_loss(r, mask, logits, y, "bce", cfg)["loss"]

    opt = torch.optim.AdamW(model.parameters(), lr=3e-6, weight_decay=1e-4)

    def run(loss_fn):
        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
        return step

    def cft(method):
        def loss():
            r, logits = explain(model, x, method, y, create_graph=True)
            return cft_loss(r, logits)
        return loss

    def official():
        r, logits = gae_rollout_official(model, x, y)
        with torch.no_grad():
            frozen(x)
        return cft_loss(r, logits)

    fns = {"CE only": run(lambda: F.cross_entropy(model(x), y))}
    fns.update({f"CFT, {m}": run(cft(m)) for m in METHODS})
    fns[OFFICIAL] = run(official)
    return fns


def bench(arch, kwargs, batch, steps, device):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs).to(device)
    for blk in model.blocks:
        blk.attn.fused_attn = False  # CPU SDPA has no double backward; CE gets the same attention path
    frozen = copy.deepcopy(model).eval()
    size = model.patch_embed.img_size
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, kwargs["num_classes"], (batch,), device=device)
    mask = torch.zeros(batch, 1, *size, device=device)
    mask[..., size[0] // 4: 3 * size[0] // 4, size[1] // 4: 3 * size[1] // 4] = 1
    fns = step_fns(model, frozen, x, y, mask)
    times = {name: ([], []) for name in fns}
    for i in range(steps + 1):  # round 0 warms up
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return {name: tuple(map(statistics.median, t)) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed rounds (ViT-S uses a third, at least 3)")
    ap.add_argument("--threads", type=int, default=1, help="1 keeps CPU time meaningful on a shared machine")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, (arch, kwargs, batch) in MODELS.items():
        steps = args.steps if batch == 32 else max(3, args.steps // 3)
        results[name] = bench(arch, kwargs, batch, steps, args.device)
    ce = "CE only"
    print(f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}; median seconds per step (ratio to CE only)")
    print("| step | " + " | ".join(f"{c}: wall | {c}: CPU" for c in results) + " |")
    print("|---|" + "---|---|" * len(results))
    for row in results[next(iter(results))]:
        cells = [f"{t[row][k]:.3f} ({t[row][k] / t[ce][k]:.2f}x)" for t in results.values() for k in (0, 1)]
        print(f"| {row} | " + " | ".join(cells) + " |")
    for c, t in results.items():
        print(f"{c} (wall): attnlrp {t['CFT, attnlrp'][0] / t[ce][0]:.2f}x CE (target <= 3.0), "
              f"gae_rollout {t['CFT, gae_rollout'][0] / t[ce][0]:.2f}x CE (target <= 1.6), "
              f"official / gae_rollout {t[OFFICIAL][0] / t['CFT, gae_rollout'][0]:.2f}x (target >= 1.5)")

if __name__ == "__main__":
    main()
