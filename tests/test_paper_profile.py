"""The paper profile end to end on fakes: `cftlib.stages.preflight` then `dvc repro` of the committed pipeline with
profiles/paper.yaml pointed at a fake ImageNet, every benchmark and tiny pretrained models (tests/fakes.py) —
every stage a GPU user runs, here on CPU (slow: `make test` and CI)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT
from fakes import CLASSES, paper_params

DVC = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")


def _outputs(dataset: str, only: str | None = None) -> list[str]:
    """Every out, metric and plot file dvc.yaml declares (the `${concepts.dataset}` template resolved), or only
    those of stage `only`."""
    found = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if only is not None and name != only:
            continue
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                found.append(path.replace("${concepts.dataset}", dataset))
    return found


def _on(params: dict, device: str) -> dict:
    """The fake paper profile with every device key set to `device` (cuda: autocast on, as the profile has it)."""
    params["concepts"]["llm"]["device"] = params["masks"]["groundingsam"]["device"] = device
    params["finetune"]["device"] = params["evaluate"]["device"] = device
    return params


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=pytest.mark.gpu)])
def test_paper_profile_runs_end_to_end_on_fakes(tmp_path, paper_fakes, device):
    proj = tmp_path / "proj"
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for folder in ("notebooks", "cftlib", "inputs"):
        shutil.copytree(ROOT / folder, proj / folder, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    for out in _outputs("imagenet", "pretrain"):  # the frozen stage's committed outputs, as a fresh clone has them
        (proj / out).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / out).is_dir() else shutil.copy)(ROOT / out, proj / out)
    (proj / "params.yaml").write_text(yaml.safe_dump(_on(paper_params(paper_fakes), device), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(proj)}

    def run(*cmd):
        return subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    assert run(DVC, "init", "--no-scm", "-q").returncode == 0
    pre = run(sys.executable, "-m", "cftlib.stages.preflight")
    assert pre.returncode == 0 and "\n0 missing" in pre.stdout, pre.stdout + pre.stderr
    done = run(DVC, "repro")
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]

    missing = [f for f in _outputs("imagenet") if not (proj / f).exists()]
    assert not missing, missing
    bench = set(paper_params(paper_fakes)["evaluate"]["benchmarks"])
    base = json.loads((proj / "reports" / "base.json").read_text())
    assert base["model"] == "vit_b" and set(base["accuracy"]) == bench
    bank = json.loads(next((proj / "data" / "concepts").glob("bank-*.json")).read_text())
    assert bank["header"]["proposer"] == "llm" and len(bank["classes"]) == len(CLASSES)
    masks = json.loads((proj / "reports" / "masks.json").read_text())
    assert masks["grounder"] == "groundingsam" and masks["images"] == len(CLASSES) * (3 + 1)  # k = 3 + 1 per class
    runs = json.loads((proj / "reports" / "finetune.json").read_text())["runs"]
    arms = paper_params(paper_fakes)["finetune"]
    assert {"gradmask", "rrr", "rrda", "cft"} <= set(arms["arms"])  # the paper's baselines run at paper scale
    assert set(runs) == {f"vit/{a}/seed0" for a in arms["arms"]} | {f"cnn/{a}/seed0" for a in arms["cnn"]["arms"]}
    acc = pd.read_csv(proj / "plots" / "evaluate_accuracy.csv")
    assert set(acc["split"]) == bench and set(acc["model"]) == {"vit", "cnn"}
    claims = (proj / "reports" / "claims.md").read_text()
    assert "CFT improves OOD accuracy on ImageNet-A" in claims and "imagenet_segmentation" in claims
    assert len(list((proj / "cache" / "benchmarks").glob("*.json"))) >= 2  # per-model results: a re-run resumes
    again = run(DVC, "status")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout  # nothing half-written or dirty
