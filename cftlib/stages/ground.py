"""The masks stage's grounding run: every selected image's concepts grounded into a mask store, resumably and
sharded over torchrun processes (one per GPU).

    python -m cftlib.stages.ground --params params.yaml --data data/world --concepts data/concepts --out data/masks
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cftlib import concepts, grounding
from cftlib.core import config, launch
from cftlib.core.io import json_sha256, read_json, read_npz, write_json
from cftlib.core.progress import bar
from cftlib.data import fewshot, maskstore
from cftlib.data.world import save_npz
from cftlib.stages import params


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def run_stage(P: config.Params, data_dir: str | Path, concepts_dir: str | Path, out_dir: str | Path,
              progress: bool = False, grounder=None) -> dict:
    """The masks stage: the few-shot selection grounded with the bank into the store at `out_dir`; returns
    its manifest. Each grounded item is written at once to `<out_dir>.partial/<split>/<index>.{npz,json}`, so
    a rerun after an interruption grounds only the rest; a work folder left by other inputs (header, bank,
    data) is discarded. Under torch.distributed, rank r grounds items r, r + world, ..., then rank 0
    assembles the store in selection order. The store's bytes do not depend on processes, batch size or
    interruptions (the world grounder's noise is drawn per item from (seed, item key))."""
    rank, world = launch.rank_world()
    bank = concepts.load(concepts_dir)
    pool = fewshot.Pool(P.concepts.dataset, data_dir, P.concepts.image_dir)
    selection = fewshot.select(pool.labels, P.masks.k, P.base.seed)
    header = grounding.store_header(P, bank, selection, pool.class_index)
    inputs = {"header": header, "bank": bank, "data": [str(data_dir), P.concepts.dataset, P.concepts.image_dir,
                                                       config.as_dict(P.world)]}
    digest = json_sha256(inputs)[:16]
    work = Path(f"{out_dir}.partial")
    if rank == 0:
        marker = work / "inputs.json"
        if work.exists() and (not marker.is_file() or read_json(marker)["hash"] != digest):
            shutil.rmtree(work)
        if not marker.is_file():
            write_json(marker, {"hash": digest})
    _barrier(world)

    order = [(split, int(i)) for split in ("train", "val") for i in selection[split]]
    # shard first, then skip what is done: a rank only ever looks at its own items, which only it writes
    mine = [(s, i) for s, i in order[rank::world] if not (work / s / f"{i}.json").is_file()]
    results = grounding.ground_items((pool.item(i, s) for s, i in mine), bank, P.masks, P.base.seed, grounder=grounder,
                           truth=grounding.truth_for(P))
    for (s, i), (record, arrays) in bar(zip(mine, results), desc="masks", total=len(mine), progress=progress,
                                        rank=rank, unit="images"):
        if arrays is not None:
            save_npz(work / s / f"{i}.npz", arrays)
        write_json(work / s / f"{i}.json", record)  # last: the item is done
    _barrier(world)

    if rank == 0:
        def done():
            for s, i in order:
                record = read_json(work / s / f"{i}.json")
                npz = work / s / f"{i}.npz"
                if npz.is_file():
                    yield record, read_npz(npz, fix="delete it: the masks stage grounds that image again")
                else:
                    yield record, None

        maskstore.write_store(out_dir, done(), header)
        shutil.rmtree(work)
    _barrier(world)
    return maskstore.load_store(out_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m cftlib.stages.ground`: the masks stage's grounding; under torchrun, one process per GPU."""
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.ground", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/world")
    ap.add_argument("--concepts", default="data/concepts")
    ap.add_argument("--out", default="data/masks")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    P = params.load(args.params)
    torch.set_num_threads(P.base.threads)
    cuda = launch.device(P.masks.groundingsam.device, "masks.groundingsam.device").type == "cuda"
    with launch.distributed(cuda, "masks.processes"):
        run_stage(P, args.data, args.concepts, args.out, args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
