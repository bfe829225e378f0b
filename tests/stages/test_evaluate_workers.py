"""Scoring the world's runs side by side (`evaluate.workers`) gives the tables scoring them in one process gives,
and a worker's failure names its command."""

import shutil

import pandas as pd
import pytest
import torch
import yaml

from cftlib.core import config, launch
from cftlib.stages import evaluate, finetune
from cftlib.training import runspec


@pytest.fixture(scope="module")
def trained(smoke_project, tmp_path_factory):
    """The smoke project with the base model and one CFT run per base trained for one epoch (ViT and CNN)."""
    root = tmp_path_factory.mktemp("scored") / "project"
    shutil.copytree(smoke_project, root)
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["finetune"].update(arms=["none", "cft"], epochs=1, workers=1)
    p["finetune"]["cnn"]["arms"] = ["none", "cft"]
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    threads = torch.get_num_threads()
    try:
        finetune.main(["--params", str(root / "params.yaml"), "--masks", str(root / "data/masks"),
                       "--data", str(root / "data/world"), "--base", str(root / "models/base"),
                       "--out", str(root / "runs"), "--concepts", str(root / "data/concepts"), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return root


def _folders(root):
    return ["--data", root / "data/world", "--masks", root / "data/masks", "--concepts", root / "data/concepts",
            "--runs", root / "runs"]


def test_scores_side_by_side_equal_the_scores_in_one_process(trained):
    P = config.load(trained / "params.yaml")
    runs = runspec.plan(P.finetune, P.base.seed, P.bases.seeds)
    data = evaluate.inputs(P, runs, trained / "data/world", trained / "data/masks", trained / "data/concepts")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same arithmetic
    try:
        one = evaluate.evaluate_runs(runs, trained / "runs", **data, cfg=P.evaluate)
    finally:
        torch.set_num_threads(threads)
    with evaluate.score_side_by_side(trained / "params.yaml", 2, 1, _folders(trained)) as scored:
        assert len(list(scored.glob("*.json"))) == len({(r.model, r.base) for r in runs}) * 2  # none and cft, once each
        two = evaluate.evaluate_runs(runs, trained / "runs", **data, cfg=P.evaluate, scored_dir=scored)
    assert not scored.exists()  # the scores are temporary
    for a, b in zip(one, two):
        assert not a.empty
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_one_worker_scores_in_this_process_and_a_failed_worker_names_its_command(trained, tmp_path):
    with evaluate.score_side_by_side(trained / "params.yaml", 1, 2, _folders(trained)) as scored:
        assert scored is None
    with pytest.raises(launch.LaunchError, match="--shard 1/2"):
        with evaluate.score_side_by_side(trained / "params.yaml", 2, 1, [*_folders(trained)[:-1], tmp_path / "no"]):
            pass
