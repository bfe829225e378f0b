"""The later stages' functions run once per test session on a copy of the smoke project (conftest's
`smoke_project`), with fewer arms and one base model so they stay fast: each stage's tests read what the one
before wrote, as `dvc repro` would."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from conftest import ROOT

from cftlib.core import config
from cftlib.stages import evaluate, finetune

SMALL = {"bases": {"seeds": 1},
         "finetune": {"arms": ["none", "ce", "cft"], "epochs": 1, "cnn": {"arms": ["none", "cft"]}},
         "ablations": {"k": [1], "noise": [], "relevance": [], "loss": [], "validation": []}}
"""The smoke profile, smaller: three ViT arms and two CNN arms on one base model for one epoch, one ablation."""
_DONE: dict[tuple[str, Path], tuple[Path, dict]] = {}
"""(stage, smoke project) → (project, the stage function's result), once per session."""


def declared(stage: str) -> list[str]:
    """Every file or folder the stage declares in dvc.yaml (outs, metrics, plots), but its executed notebook."""
    st = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    outs = [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in st.get(key, [])]
    return [o for o in outs if not o.startswith("executed/")]


def _merge(into: dict, change: dict) -> None:
    for k, v in change.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = v


def dirs(root: Path, **names: str) -> dict[str, Path]:
    """The stage function's folder arguments, each `root / folder`."""
    return {k: root / v for k, v in names.items()}


def finetuned(smoke_project: Path, tmp_path_factory) -> tuple[Path, dict]:
    """(project, finetune.run_stage's result): a copy of the smoke project, params `SMALL`, its runs trained."""
    if ("finetune", smoke_project) in _DONE:
        return _DONE["finetune", smoke_project]
    root = tmp_path_factory.mktemp("stages") / "project"
    shutil.copytree(smoke_project, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    _merge(params, SMALL)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    P = config.load(root / "params.yaml")
    _DONE["finetune", smoke_project] = root, finetune.run_stage(P, root / "params.yaml", **dirs(
        root, data_dir="data/world", concepts_dir="data/concepts", masks_dir="data/masks", base_dir="models/base",
        runs_dir="models/finetune", metrics_dir="metrics", plots_dir="plots", figures_dir="figures",
        reports_dir="reports"))
    return _DONE["finetune", smoke_project]


def evaluated(smoke_project: Path, tmp_path_factory) -> tuple[Path, dict]:
    """(project, evaluate.run_stage's result) after `finetuned`."""
    if ("evaluate", smoke_project) in _DONE:
        return _DONE["evaluate", smoke_project]
    root, _ = finetuned(smoke_project, tmp_path_factory)
    P = config.load(root / "params.yaml")
    _DONE["evaluate", smoke_project] = root, evaluate.run_stage(P, root / "params.yaml", **dirs(
        root, data_dir="data/world", concepts_dir="data/concepts", masks_dir="data/masks",
        finetune_dir="models/finetune", metrics_dir="metrics", plots_dir="plots", reports_dir="reports"))
    return _DONE["evaluate", smoke_project]
