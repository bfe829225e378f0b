"""Source notebooks are committed clean, and each stage notebook runs through papermill on the smoke
profile (slow: marked, run by `make test` and CI)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT

from cftlib.core import config
from cftlib.stages import nbrun

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
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="[done] a: 5 epochs"),
                    nbformat.v4.new_output("stream", name="stderr",
                                           text=f"w /tmp/ipykernel_123/1.py {sys.prefix}/x.py"),
                    nbformat.v4.new_output("stream", name="stdout", text="\n1\n")]
    out = nbrun.scrub(nb)
    assert out.metadata["papermill"] == {"parameters": {"a": 1}}
    assert out.metadata["language_info"] == {"name": "python"}
    assert "execution" not in cell.metadata and cell.metadata["papermill"] == {"status": "completed"}
    assert [o.name for o in cell.outputs] == ["stdout", "stderr"]  # one of each, however the kernel cut them
    assert cell.outputs[0].text == "[done] a: 5 epochs\n1\n"
    assert "/tmp/ipykernel/" in cell.outputs[1].text and "<venv>/x.py" in cell.outputs[1].text


def _smoke_project(tmp_path: Path) -> Path:
    """A copy of the project's notebooks with the smoke profile as its params.yaml."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(ROOT / "profiles" / "smoke.yaml", proj / "params.yaml")
    return proj


@pytest.mark.slow
def test_pretrain_and_world_stages_run_on_smoke_profile_deterministically(tmp_path):
    """00_pretrain then 00_world on the smoke profile, the world twice: byte-identical executed notebooks, every
    base model saved, and base.json with the validity figures over all bases."""
    proj = _smoke_project(tmp_path)
    nbrun.run(proj / "notebooks" / "00_pretrain.ipynb", proj / "executed" / "00_pretrain.ipynb", {"progress": False},
              cwd=proj)
    learn = json.loads((proj / "metrics" / "pretrain.json").read_text())
    assert set(learn["models"]) == {"vit", "cnn"} and all(0 <= m["held_out"] <= 1 for m in learn["models"].values())
    runs = []
    for i in range(2):
        out = proj / "executed" / f"00_world_{i}.ipynb"
        nbrun.run(proj / "notebooks" / "00_world.ipynb", out, {"progress": False}, cwd=proj)
        runs.append(out.read_bytes())
    assert runs[0] == runs[1], "executed notebooks must be byte-identical for identical inputs"
    P = config.load(proj / "params.yaml")
    base = json.loads((proj / "reports" / "base.json").read_text())
    assert base["bases"] == P.bases.seeds and base["species"] == P.world.n_species
    assert set(base["learnability"]) == {"vit", "cnn"} and set(base["validity"]["bars"]) == {
        "test >= 0.85", "test - bg_conflict >= 0.30", "DFR: test - bg_conflict <= 0.15",
        "few-shot top-1 under the fine-tuning augmentation within 3 points (every base)",
        "oracle concept mass at the token grid >= 0.60", "parts-only learnability >= 0.90 (every pre-trained model)"}
    fit = base["fine_tuning_fit"]  # per ViT base: the augmentation gap and the concept-mass headroom
    assert set(fit) == {f"vit{b}" for b in range(P.bases.seeds)}
    for f in fit.values():
        assert f["gap_points"] == pytest.approx(100 * (f["as_is"] - f["augmented"]))
        assert f["grid"] == P.world.image_size // P.pretrain.model_kwargs["patch_size"]
        assert 0 <= f["concept_mass"] <= 1 and f["concept_area"] < f["oracle_concept_mass"] <= 1
    assert set(base["accuracy"]["vit"]) == set(P.world.splits) - {"train", "val", "dfr"}
    small = json.loads((proj / "metrics" / "base.json").read_text())  # the headline: the same numbers in percent
    assert small["vit"]["shortcut_gap"] == round(100 * base["validity"]["gap"], 1)
    assert small["cnn"]["pretrain_held_out"] == round(100 * learn["models"]["cnn"]["held_out"], 1)
    for f in ("figures/world_samples.png", "figures/base_accuracy.png", "figures/pretrain_curves.png",
              "plots/pretrain_history.csv", "plots/bases_history.csv",
              "models/pretrain/vit.pt", "models/pretrain/cnn.pt",
              *[f"models/base/{r}/base{b}.pt" for r in ("vit", "cnn") for b in range(P.bases.seeds)],
              "data/world/train.npz", "data/world/dfr.npz", "data/world/field_guide.json"):
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


@pytest.mark.slow
def test_a_failure_is_one_line_and_a_later_success_leaves_no_litter(tmp_path, capsys):
    """The CLI's error names the cause in one line; after a success no failed notebook and no temporary folder
    of a killed run (`kill -9` skips atomic_path's cleanup) are left."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("fail = True", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("if fail:\n    raise ValueError('params.yaml: finetune.lr: must be > 0')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "n.ipynb", tmp_path / "executed" / "n.ipynb"
    nbformat.write(nb, src)
    assert nbrun.main([str(src), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"{src} failed in cell 2: ValueError: params.yaml: finetune.lr: must be > 0 "
        f"(traceback: {tmp_path / 'executed' / 'n.failed.ipynb'}). ")
    assert "make profile PROFILE=default" in err[0]  # how to get the outputs DVC deleted back
    assert not out.exists() and nbrun.failed_path(out).is_file()
    killed = tmp_path / "executed" / ".n.ipynb.abc123"
    killed.mkdir()
    (killed / "n.ipynb").write_text("half")
    assert nbrun.main([str(src), str(out), "-p", "fail", "false"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["n.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_stage_notebook_writes_under_out(path):
    """A hand run writes under scratch/: each notebook declares `out = "scratch"` and moves what it writes (with
    `session.start(params_file, stage, out, ...)`, or `paths.under(out, ...)`)."""
    nb = json.loads(path.read_text())
    params = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert 'out = "scratch"' in params
    moves = re.compile(r'= paths\.under\(out, |session\.start\(params_file, "\w+", out\b')
    assert any(moves.search("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code")


WRITES = re.compile(r"\b(write_json|write_csv|write_table|write_text|save_checkpoint|savefig|to_csv|mkdir|open)\(|"
                    r"\b(figures|headline|torch|concepts|json|yaml)\.(save|write|dump)\(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_cell_writes_a_file(path):
    """What a stage writes is its module's (cftlib.stages.<stage>), testable without papermill: a cell shows."""
    nb = json.loads(path.read_text())
    writes = [line.strip() for c in nb["cells"] if c["cell_type"] == "code"
              for line in "".join(c["source"]).splitlines() if WRITES.search(line)]
    assert not writes, writes


def test_the_write_pattern_finds_what_a_cell_could_write():
    for line in ('io.write_json(Path(r) / "x.json", d)', 'figures.save(fig, F / "a.png", 110)', "df.to_csv(p)",
                 "headline.write(p, h)", 'checkpoints.save_checkpoint(p, m, b)', "Path(d).mkdir(parents=True)"):
        assert WRITES.search(line), line
    assert not WRITES.search("display(R.figure)")


def _writer(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('metrics_dir = "metrics"\nout = "scratch"',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os\nfrom pathlib import Path\nfrom cftlib.core import paths\n"
                                          "metrics_dir, = paths.under(out, metrics_dir)\n"
                                          "Path(metrics_dir).mkdir(parents=True)\n"
                                          "(Path(metrics_dir) / 'm.json').write_text('{}')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "w.ipynb"
    nbformat.write(nb, src)
    return src


def test_nbrun_writes_the_project_folders_and_a_plain_papermill_run_writes_scratch(tmp_path):
    import papermill as pm

    src = _writer(tmp_path)
    nbrun.run(src, tmp_path / "executed" / "w.ipynb", cwd=tmp_path)
    assert (tmp_path / "metrics" / "m.json").is_file() and not (tmp_path / "scratch").exists()
    (tmp_path / "metrics" / "m.json").unlink()
    # as Jupyter would
    pm.execute_notebook(str(src), str(tmp_path / "hand.ipynb"), cwd=str(tmp_path), progress_bar=False)
    assert (tmp_path / "scratch" / "metrics" / "m.json").is_file() and not (tmp_path / "metrics" / "m.json").exists()
    nbrun.run(src, tmp_path / "executed" / "w2.ipynb", {"out": "elsewhere"}, cwd=tmp_path)
    assert (tmp_path / "elsewhere" / "metrics" / "m.json").is_file()


@pytest.mark.slow
def test_a_notebook_run_by_hand_leaves_git_status_clean(tmp_path, small_world):
    """01_concepts run the way Jupyter runs it (no parameters) in a git repo of the project's files: its outputs
    go to the ignored scratch/, the committed ones are untouched."""
    import subprocess

    import papermill as pm

    proj = _smoke_project(tmp_path)
    shutil.copy(ROOT / ".gitignore", proj / ".gitignore")
    shutil.copytree(small_world[2], proj / "data" / "world")
    git = lambda *a: subprocess.run(["git", *a], cwd=proj, capture_output=True, text=True, check=True).stdout  # noqa: E731
    git("init", "-q")
    git("add", "-f", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    pm.execute_notebook(str(proj / "notebooks" / "01_concepts.ipynb"), str(tmp_path / "hand.ipynb"),
                        parameters={"progress": False}, cwd=str(proj), progress_bar=False)
    assert ((proj / "scratch" / "metrics" / "concepts.json").is_file()
            and (proj / "scratch" / "data" / "concepts").is_dir())
    assert not (proj / "metrics").exists() and not (proj / "data" / "concepts").exists()
    assert git("status", "--porcelain") == ""


@pytest.mark.slow
def test_a_stage_log_carries_no_kernel_transport_or_progress_bar_warning(tmp_path):
    """The kernel talks over private IPC sockets (no 'TCP without encryption' warning), and tqdm.auto, which
    huggingface_hub imports, finds ipywidgets (no 'IProgress not found'); the socket folder is removed."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import huggingface_hub, tqdm.auto, timm\nprint('ran')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "n.ipynb")
    done = subprocess.run([sys.executable, "-m", "cftlib.stages.nbrun", str(tmp_path / "n.ipynb"),
                           str(tmp_path / "out.ipynb")], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr
    log = done.stdout + done.stderr
    for warning in ("without encryption", "IProgress", "Parent appears to have exited", "Warning"):
        assert warning not in log, log
    assert not list(tmp_path.glob("cft-kernel-*")) and not list(tmp_path.glob("kernel-*"))
