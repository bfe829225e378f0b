"""Cost of the world stage's two parts on this machine: rendering (images/s per split kind) and
base-model training (s per epoch at the profile's size). Prints a Markdown table.

    python benchmarks/world_stage.py [params.yaml]
"""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from cftlib.core import config
from cftlib.data import world
from cftlib.models.factory import build_model
from cftlib.stages import params


def main(path: str = "params.yaml") -> None:
    P = params.load(path)
    torch.set_num_threads(P.base.threads)
    species = world.make_species(P.world.n_species, P.base.seed)
    rows = []
    for split in ("train", "v2", "pose", "rendition"):
        cfg = config.World(**{**P.world.__dict__, "splits": {**P.world.splits, split: 1000}})
        t = time.perf_counter()
        world.make_split(cfg, species, split, P.base.seed)
        dt = time.perf_counter() - t
        rows.append((f"render {split}", f"{1000 / dt:.0f} images/s",
                     f"{dt * P.world.splits.get(split, 0) / 1000:.1f} s for the profile's split"))
    c = P.pretrain
    m = build_model(c.model, P.world.n_species, P.world.image_size, **c.model_kwargs)
    opt = torch.optim.AdamW(m.parameters(), c.lr)
    x = torch.randn(c.batch_size, 3, P.world.image_size, P.world.image_size)
    y = torch.randint(0, P.world.n_species, (c.batch_size,))
    times = []
    for _ in range(13):
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = float(np.median(times[3:]))
    epoch = step * P.world.splits["train"] / c.batch_size
    rows.append(("train step", f"{step * 1000:.0f} ms (batch {c.batch_size})",
                 f"{epoch:.1f} s/epoch, {epoch * c.epochs:.0f} s for {c.epochs} epochs"))
    print(f"threads={P.base.threads}  params={sum(p.numel() for p in m.parameters()) / 1e6:.2f}M\n")
    print("| what | speed | at this profile |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
