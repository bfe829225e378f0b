"""A run's outputs are pinned: a tiny CFT run writes the run.json, epochs.csv, history.csv, best.pt / last.pt and
the mid-run state.pt it wrote before the trainer was restructured (issue 28), so a refactor of the training loop
cannot change a result or the resume format unnoticed.

`fit_pin.json` was recorded by running `_outputs` on the smoke project with the code of commit 157c19a (the
trainer before issue 28), model and images in float64. A hash of the files would break on a CPU that rounds float32
differently, so the pin is the files' contents: keys, columns, integers and the config hash exactly, floats to
1e-7 relative (float64 keeps a machine's rounding far below that over the run's four steps). Where a change of
the protocol, the smoke profile or the world is meant to move the numbers, record the file anew with `_outputs`."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cftlib.core import config
from cftlib.models import checkpoints
from cftlib.stages import finetune
from cftlib.training import runspec, trainer

PIN = Path(__file__).with_name("fit_pin.json")
SPEC = runspec.RunSpec("vit", "cft", 1, "attnlrp", 1e-4, 1, 1)


def _weights(path: Path) -> dict:
    """A checkpoint's build config and, per tensor, its sum and sum of squares (float64)."""
    model, build = checkpoints.load_checkpoint(path)
    return {"config": build, "tensors": {k: [v.double().sum().item(), v.double().pow(2).sum().item()]
                                         for k, v in model.state_dict().items()}}


def _outputs(root: Path, out: Path) -> dict:
    """What a 2-epoch CFT run in float64 writes (its folder's files, read back), and the state.pt of the same run
    stopped in its second epoch."""
    P = config.load(root / "params.yaml")
    cfg = P.finetune.model_copy(update=dict(epochs=2))
    _, data, bases = finetune.setup(P.model_copy(update=dict(finetune=cfg)), root / "data" / "masks",
                                    root / "data" / "world", root / "models" / "base", root / "runs",
                                    root / "data" / "concepts")
    data = {**data, **{s: {**data[s], "x": data[s]["x"].double()} for s in ("train", "val")}}
    base, build = bases["vit", SPEC.base]
    trainer.fit(SPEC, base.double(), build, data, cfg, out / "whole")
    folder = SPEC.folder(out / "whole")
    got = {"run": json.loads((folder / "run.json").read_text()),
           **{name: pd.read_csv(folder / f"{name}.csv").to_dict("list") for name in ("epochs", "history")},
           **{name: _weights(folder / f"{name}.pt") for name in ("best", "last")}}
    real, calls = trainer.train_step, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second step of the second epoch (6 images, batch 4)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    trainer.train_step = killed
    try:
        trainer.fit(SPEC, base.double(), build, data, cfg, out / "killed")
    except KeyboardInterrupt:
        pass
    finally:
        trainer.train_step = real
    saved = torch.load(SPEC.folder(out / "killed") / "state.pt", weights_only=False)
    got["state"] = {"keys": sorted(saved), "hash": saved["hash"], "progress": saved["state"],
                    "optimizer_steps": sorted({float(s["step"]) for s in saved["optimizer"]["state"].values()})}
    return got


def _assert_close(got, want, where="") -> None:
    """Equal structure, strings, integers and booleans; floats to 1e-7 relative (NaN equal to NaN)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (where, list(got), list(want))
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, (int, float)) and got == pytest.approx(want, rel=1e-7, abs=1e-12, nan_ok=True), \
            (where, got, want)
    else:
        assert got == want and type(got) is type(want), (where, got, want)


def test_a_run_writes_what_the_trainer_before_issue_28_wrote(smoke_project, tmp_path):
    got = json.loads(json.dumps(_outputs(smoke_project, tmp_path)))  # as the pin file holds it
    _assert_close(got, json.loads(PIN.read_text()))
