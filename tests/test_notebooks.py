"""Source notebooks are committed clean, and each stage notebook runs through papermill on the smoke
profile (slow: marked, run by `make test` and CI)."""

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from cftlib import nbrun
from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit notebooks stripped"
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "papermill" not in nb["metadata"]


def test_scrub_removes_volatile_fields():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nb.metadata["papermill"] = {"start_time": "t0", "duration": 1.0, "parameters": {"a": 1}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    cell = nb.cells[0]
    cell.metadata["execution"] = {"iopub.execute_input": "t"}
    cell.metadata["papermill"] = {"start_time": "t", "status": "completed"}
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=f"w /tmp/ipykernel_123/1.py {sys.prefix}/x.py"),
                    nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    out = nbrun.scrub(nb)
    assert out.metadata["papermill"] == {"parameters": {"a": 1}}
    assert out.metadata["language_info"] == {"name": "python"}
    assert "execution" not in cell.metadata and cell.metadata["papermill"] == {"status": "completed"}
    assert [o.name for o in cell.outputs] == ["stdout", "stderr"]
    assert "/tmp/ipykernel/" in cell.outputs[1].text and "<venv>/x.py" in cell.outputs[1].text


def _smoke_project(tmp_path: Path) -> Path:
    """A copy of the project's notebooks with the smoke profile as its params.yaml."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(ROOT / "profiles" / "smoke.yaml", proj / "params.yaml")
    return proj


@pytest.mark.slow
def test_world_stage_runs_on_smoke_profile_deterministically(tmp_path):
    proj = _smoke_project(tmp_path)
    runs = []
    for i in range(2):
        out = proj / "executed" / f"00_world_{i}.ipynb"
        nbrun.run(proj / "notebooks" / "00_world.ipynb", out, {"progress": False}, cwd=proj)
        runs.append(out.read_bytes())
    assert runs[0] == runs[1], "executed notebooks must be byte-identical for identical inputs"
    base = json.loads((proj / "metrics" / "base.json").read_text())
    assert set(base["accuracy"]) == set(json.loads((proj / "metrics" / "world.json").read_text()))
    for f in ("figures/world_samples.png", "figures/base_accuracy.png", "plots/pretrain_history.csv",
              "models/base/model.pt", "data/world/train.npz", "data/world/field_guide.json"):
        assert (proj / f).is_file(), f


@pytest.mark.slow
def test_failing_notebook_reports_and_writes_no_output(tmp_path):
    proj = _smoke_project(tmp_path)
    (proj / "params.yaml").write_text("world: {rho_bg: 3}\n")
    with pytest.raises(Exception, match="rho_bg"):
        nbrun.run(proj / "notebooks" / "00_world.ipynb", proj / "out.ipynb", {"progress": False}, cwd=proj)
    assert not (proj / "out.ipynb").exists()
    assert (proj / "out.failed.ipynb").exists()
    assert not (proj / "data").exists()  # failed before any work
