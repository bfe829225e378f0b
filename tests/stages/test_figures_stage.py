"""The figures stage's function, without papermill: from the evaluate stage's rows and the fine-tuned models it
writes every figure dvc.yaml declares for the stage, and the lines that read them."""

from smoke_stages import declared, dirs, evaluated

from cftlib.core import config
from cftlib.stages import figures


def test_figures_stage_writes_every_declared_figure(smoke_project, tmp_path_factory):
    root, _ = evaluated(smoke_project, tmp_path_factory)
    out = root / "figures_stage"
    P = config.load(root / "params.yaml")
    result = figures.run_stage(P, figures_dir=out, **dirs(root, data_dir="data/world", concepts_dir="data/concepts",
                                                          finetune_dir="models/finetune", plots_dir="plots"))
    names = [p.removeprefix("figures/") for p in declared("figures") if p.startswith("figures/")]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert list(result["figures"]) == [n.removesuffix(".png") for n in names]  # dvc.yaml lists them in order
    assert result["grid"].startswith("vit/cft/") and "bg_conflict" in result["grid"]
    assert result["summary"][0].startswith("ViT, bg_conflict: CFT − none")
    assert result["dfr"] == []  # no DFR arm in this project
