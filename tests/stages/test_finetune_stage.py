"""The finetune stage's function, without papermill: it trains the runs and writes every output dvc.yaml declares
for the stage — the curves with their columns, the metrics with a row per run, the figures."""

import json

import pandas as pd
from smoke_stages import declared, finetuned

from cftlib.report import headline


def test_finetune_stage_writes_every_declared_output(smoke_project, tmp_path_factory):
    root, result = finetuned(smoke_project, tmp_path_factory)
    for out in declared("finetune"):
        assert (root / out).exists(), out
    names = ["vit/none/seed0", "vit/ce/seed0", "vit/cft/seed0", "cnn/none/seed0", "cnn/cft/seed0"]
    full = json.loads((root / "reports" / "finetune.json").read_text())
    assert set(full) == {"runs", "data"} and sorted(full["runs"]) == sorted(names)
    headline.check(json.loads((root / "metrics" / "finetune.json").read_text()), "finetune")
    steps = pd.read_csv(root / "plots" / "finetune_steps.csv")
    epochs = pd.read_csv(root / "plots" / "finetune_epochs.csv")
    assert {"model", "arm", "seed", "step", "epoch", "loss"} <= set(steps.columns)
    assert {"model", "arm", "seed", "epoch", "val_cft_align", "val_acc", "best"} <= set(epochs.columns)
    wide = pd.read_csv(root / "plots" / "finetune_val_align.csv")
    assert list(wide.columns) == ["epoch", *(n.rsplit("/", 1)[0].replace("/", "_") for n in names)]
    assert set(result["figures"]) == {p.split("/")[1][:-4] for p in declared("finetune") if p.startswith("figures/")}
    for name in result["figures"]:
        assert (root / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert len(result["moved"]) == 3  # ce and cft of the ViT, cft of the CNN: the arms that train
