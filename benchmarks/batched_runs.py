"""M fine-tuning runs batched in one stacked model (`cftlib.training.batched`) against the same M runs stepped one at
a time (issue 27): training steps only (the augmented batch, forward, relevance with create_graph, loss, backward,
AdamW), as `trainer.train_step` and `batched.train_step` take them. On CUDA: a random timm ViT-B/16 at 224 px, 1000
classes, bfloat16 autocast (as `finetune.amp`); on the CPU the world's ViT of params.yaml's pretrain section. Prints
a Markdown table of medians: time of one round (a step of each of the M runs), run-steps per second, the speed-up
of batching, and paper runs per hour (`--run-steps`: 1,500 images at batch 8 for 50 epochs, validation excluded).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/batched_runs.py [--runs 1 2 4 8] [--steps 5] [--arm cft]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from cftlib.models import factory, stacked
from cftlib.stages import params
from cftlib.training import batched, pretrain, runspec, trainer


def build(device: torch.device, seed: int) -> tuple[torch.nn.Module, int, int]:
    """(model in eval mode, trainable, on device; image size; classes)."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        return factory.build_model("vit_base_patch16_224", 1000).to(device).eval(), 224, 1000
    P = params.load("params.yaml")
    classes = pretrain.outputs(P)
    return pretrain.fresh(P.pretrain, classes, P.world.image_size, seed)[0].eval(), P.world.image_size, classes


def batch(size: int, classes: int, batch_size: int, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, size, size, generator=g)
    m = torch.zeros(batch_size, 1, size, size)
    m[..., size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    return x.to(device), m.to(device), torch.randint(0, classes, (batch_size,), generator=g).to(device)


def timed(fn, steps: int, device) -> float:
    """Median seconds of `fn` after two warm-up calls."""
    out = []
    for _ in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out[2:])


def measure(M: int, args, cfg, arm, device, amp) -> tuple[float, float]:
    """Seconds per round of M runs stepped one at a time, and of the same M runs stacked into one model."""
    models, size, classes = zip(*(build(device, s) for s in range(M)))
    data = [batch(size[0], classes[0], args.batch_size, device, s) for s in range(M)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=cfg.weight_decay) for m in models]

    def one_by_one():
        for model, opt, (x, m, y) in zip(models, opts, data):
            trainer.train_step(model, opt, arm, x, m, y, len(y), cfg, args.relevance, amp)

    model = stacked.stack(list(models))
    opt = batched.StackedAdamW(model.parameters(), M, 1e-5, cfg.weight_decay)
    return (timed(one_by_one, args.steps, device),
            timed(lambda: batched.train_step(model, opt, arm, data, cfg, args.relevance, amp), args.steps, device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=5, help="timed rounds per setting (after 2 warm-up rounds)")
    ap.add_argument("--arm", default="cft", choices=[a for a in runspec.ARMS if runspec.ARMS[a].loss in batched.LOSSES])
    ap.add_argument("--relevance", default="attnlrp")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--run-steps", type=int, default=9400, help="steps of one run, for runs per hour")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = params.load("params.yaml").finetune
    arm = runspec.ARMS[args.arm]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    rows = []
    for M in args.runs:
        rows.append((M, *measure(M, args, cfg, arm, device, amp)))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arm} ({args.relevance}), batch {args.batch_size} per run, {name}; medians of {args.steps} rounds\n")
    print("| runs M | one at a time: s per round | batched: s per round | run-steps/s one at a time | "
          "run-steps/s batched | speed-up | paper runs/h one at a time | batched |")
    print("|---|---|---|---|---|---|---|---|")
    for M, t1, tb in rows:
        print(f"| {M} | {t1:.3f} | {tb:.3f} | {M / t1:.2f} | {M / tb:.2f} | {t1 / tb:.2f}x | "
              f"{3600 * M / t1 / args.run_steps:.2f} | {3600 * M / tb / args.run_steps:.2f} |")


if __name__ == "__main__":
    main()
