"""Can the world's parts be learnt? Each architecture trained on habitat- and colour-random birds (the pretrain
stage's recipe, `pretrain.images` of them) and scored on held-out ones: species accuracy per epoch, and at the
end each part attribute's accuracy (with attribute labels). Prints a Markdown table; the README's learnability
table was measured with it.

    python benchmarks/learnability.py [params.yaml] [variant ...]     # variants: see VARIANTS; default all

Slow (minutes per variant on 2 cores): it is the study behind the pretrain stage's choices, not a test.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from cftlib.data import world
from cftlib.models.factory import predict
from cftlib.stages import params
from cftlib.training import pretrain

VARIANTS = {  # name -> (role, model_kwargs overrides, attribute labels)
    "vit-linear": ("vit", {"conv_stem": 0}, True),  # timm's patch embedding: one strided convolution
    "vit-stem": ("vit", {}, True),  # the profile's ViT (conv stem)
    "vit-stem, species only": ("vit", {}, False),
    "cnn": ("cnn", {}, True),
}


def main(path: str = "params.yaml", *names: str) -> None:
    P = params.load(path)
    torch.set_num_threads(P.base.threads)
    train_set, val_set = pretrain.pretraining_sets(P)
    species = world.make_species(P.world.n_species, P.base.seed)
    table, sizes = world.attribute_table(species)
    rows = []
    for name in names or VARIANTS:
        role, kwargs, attrs = VARIANTS[name]
        cfg = P.pretrain if role == "vit" else P.finetune.cnn.pretrain
        cfg = cfg.model_copy(update=dict(model_kwargs={**cfg.model_kwargs, **kwargs}))
        t = time.perf_counter()
        extra = pretrain.extra_labels(P, train_set) if attrs else None
        outputs = P.world.n_species + (sum(extra[1]) if extra else 0)
        model, _ = pretrain.fresh(cfg, outputs, P.world.image_size if role == "vit" else None, P.base.seed)
        model, history = pretrain.train(model, cfg, train_set, val_set, P.base.seed, extra=extra)
        dt = time.perf_counter() - t
        per_attr = ""
        if attrs:
            logits, start, accs = predict(model, val_set["images"]), P.world.n_species, []
            for a, n in enumerate(sizes):
                accs.append(f"{np.mean(logits[:, start:start + n].argmax(1) == table[val_set['label'], a]):.0%}")
                start += n
            per_attr = ", ".join(f"{k} {v}" for k, v in zip(world.ATTRIBUTES, accs))
        curve = " ".join(f"{h['val_acc']:.2f}" for h in history[4::5])
        rows.append(f"| {name} | {cfg.epochs} | {max(h['val_acc'] for h in history):.1%} | {curve} | {per_attr} | "
                    f"{dt:.0f} s |")
        print(rows[-1], flush=True)
    print(f"\n{P.pretrain.images} training images, {P.pretrain.val_images} held out, {P.world.n_species} species "
          f"(chance {1 / P.world.n_species:.1%}), {P.base.threads} threads\n")
    print("| variant | epochs | held-out species accuracy (best) | every 5th epoch | attributes (held out) | time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
