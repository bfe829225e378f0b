"""session.start: run from the project root, params loaded, folders moved under `out`, and a stage whose inputs
are missing refused before any work."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import ROOT

from cftlib.stages import preflight, session


def test_start_moves_folders_and_loads_params(smoke_project, monkeypatch):
    monkeypatch.chdir(smoke_project / "data")  # a notebook runs from notebooks/: start goes to the root
    threads = torch.get_num_threads()
    try:
        P, D = session.start("params.yaml", "finetune", out="scratch", runs="models/finetune", plots="plots")
        assert os.getcwd() == str(smoke_project)
        assert P.base.profile == "smoke"
        assert (D.runs, D.plots) == (session.Path("scratch/models/finetune"), session.Path("scratch/plots"))
        assert torch.get_num_threads() == P.base.threads
    finally:
        torch.set_num_threads(threads)


def test_start_refuses_a_stage_with_missing_inputs(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "profiles" / "paper.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # the paper profile here, with none of its weights or datasets
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(preflight.PreflightError, match="stage finetune cannot run"):
        session.start("params.yaml", "finetune")
