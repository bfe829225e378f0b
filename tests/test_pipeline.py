"""The committed pipeline is consistent: every stage reads validated params, and dvc.lock matches
dvc.yaml, params.yaml and the code (someone changed the pipeline without re-running it otherwise)."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

from cftlib.core import config

DVC = shutil.which("dvc") or str(ROOT / ".venv" / "bin" / "dvc")


def test_stage_params_are_known_sections():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    sections = set(config.Params.model_fields)
    for name, stage in stages.items():
        assert "base" in stage["params"], name
        for p in stage["params"]:
            assert str(p).split(".")[0] in sections, (name, p)
        assert any(str(d).startswith("notebooks/") for d in stage["deps"]), name


@pytest.mark.parametrize("profile",
                         ["params.yaml", "profiles/default.yaml", "profiles/smoke.yaml", "profiles/paper.yaml"])
def test_every_stage_param_is_in_every_profile(profile):
    """DVC reads the keys a stage declares from params.yaml; a profile copied over it must have them all."""
    data = yaml.safe_load((ROOT / profile).read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    templated = re.findall(r"\$\{([\w.]+)\}", (ROOT / "dvc.yaml").read_text())  # ${...} in cmds and deps
    for name, stage in stages.items():
        for key in [*map(str, stage["params"]), *templated]:
            node = data
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{profile}: {key} (stage {name}) missing"
                node = node[part]


def test_dvc_lock_in_sync():
    """Only missing cached data is allowed (a fresh clone has no DVC cache); anything else means
    dvc.yaml, params or code changed without `dvc repro` and a commit of dvc.lock."""
    if not (ROOT / "dvc.lock").exists():
        pytest.fail("dvc.lock missing: run `dvc repro` and commit it")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run([DVC, "status", "--json"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout or "{}")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cached = {next(iter(o)) if isinstance(o, dict) else o for st in stages.values() for o in st.get("outs", [])
              if not (isinstance(o, dict) and next(iter(o.values())).get("cache") is False)}
    problems = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                problems.append((stage, change))
                continue
            for kind, items in change.items():
                missing = kind in ("changed outs", "changed deps") and all(
                    v in ("deleted", "not in cache") and k in cached for k, v in items.items())
                if not missing:
                    problems.append((stage, kind, items))
    assert not problems, f"pipeline out of sync with dvc.lock: {problems}"


def test_gitignore_patterns_match_the_paths_they_name():
    """git reads a `#` after a pattern as part of it: every ignored working path must really be ignored."""
    for path in ("data/masks.partial", "data/world", "models/base", "executed/03_finetune.failed.ipynb",
                 "inputs/vit_b.bin"):
        res = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert res.returncode == 0, f".gitignore does not ignore {path}"
    for path in ("inputs/README.md", "executed/03_finetune.ipynb"):
        res = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert res.returncode == 1, f".gitignore ignores {path}"


def _dvc(cwd, *args):
    res = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert res.returncode == 0, res.stderr
    return res.stdout


def _stub_stage(proj, stage):
    """Every dep and out of `stage` as a stub (a path without a suffix as a folder), then `dvc commit`: the
    stage is up to date without running it."""
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        (st,) = repo.stage.collect(stage)
        paths = [(d.def_path, d) for d in st.deps] + [(o.def_path, o) for o in st.outs]
    for path, _ in paths:
        p = proj / path
        if not p.exists():
            if p.suffix:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("{}\n")
            else:
                p.mkdir(parents=True)
                (p / "stub").write_text("stub\n")
    _dvc(proj, "commit", "-f", "-q", stage)
    return [path for path, _ in paths[:len(st.deps)]]


@pytest.mark.slow
def test_editing_a_file_that_params_name_makes_its_stage_changed(tmp_path, monkeypatch):
    """The bank at concepts.bank.path, an image under concepts.image_dir and a file in inputs/ are dependencies:
    editing one is what `dvc status` reports (and `dvc repro` re-runs), never a silent 'up to date'."""
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)  # DVC's Python API resolves ${...} with the params.yaml of the working directory
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    _dvc(proj, "init", "-q")
    shutil.copy(ROOT / "dvc.yaml", proj)
    P = yaml.safe_load((ROOT / "params.yaml").read_text())
    images = tmp_path / "images"  # a folder dataset outside the project, as at paper scale
    (images / "wren").mkdir(parents=True)
    (images / "wren" / "1.png").write_bytes(b"one")
    P["concepts"].update(dataset="folder", image_dir=str(images), proposer="bank",
                         bank={"path": "inputs/bank.json", "dataset": "cub_birds"})
    (proj / "params.yaml").write_text(yaml.safe_dump(P))
    (proj / "inputs").mkdir()
    (proj / "inputs" / "bank.json").write_text('{"cub_birds": [["long beak", 1.0]]}\n')
    deps = _stub_stage(proj, "concepts")
    assert {"inputs/bank.json", str(images), "inputs"} <= set(deps)
    assert "concepts" not in _dvc(proj, "status", "concepts")

    def changed(edit):
        edit()
        status = _dvc(proj, "status", "concepts")
        _dvc(proj, "commit", "-f", "-q", "concepts")
        return status

    assert "modified:           inputs/bank.json" in changed(
        lambda: (proj / "inputs" / "bank.json").write_text('{"cub_birds": [["short beak", 1.0]]}\n'))
    assert f"modified:           {images}" in changed(lambda: (images / "wren" / "1.png").write_bytes(b"two"))
    status = changed(lambda: (proj / "inputs" / "names.json").write_text("{}\n")).split()
    assert status[status.index("modified:") + 1] == "inputs"
    assert "concepts" not in _dvc(proj, "status", "concepts")  # committed again: up to date


def test_default_profile_is_the_committed_params():
    """`make profile PROFILE=default` must give back params.yaml byte for byte."""
    assert (ROOT / "profiles" / "default.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_switching_to_smoke_and_back_leaves_git_clean(tmp_path):
    """A run of another profile rewrites params.yaml and the committed outputs; switching back restores both."""
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "profiles", proj / "profiles")
    for f in ("Makefile", "params.yaml"):
        shutil.copy(ROOT / f, proj / f)
    (proj / "metrics").mkdir()
    (proj / "metrics" / "evaluate.json").write_text('{"cft": 1}\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "default results"]):
        subprocess.run(git + cmd, cwd=proj, check=True)

    def make(*args):
        return subprocess.run(["make", "--no-print-directory", "profile", *args], cwd=proj, capture_output=True,
                              text=True)

    assert make("PROFILE=smoke").returncode == 0
    assert (proj / "params.yaml").read_bytes() == (ROOT / "profiles" / "smoke.yaml").read_bytes()
    (proj / "metrics" / "evaluate.json").write_text('{"cft": 2}\n')  # what the smoke run writes
    (proj / "metrics" / "extra.json").write_text("{}\n")
    assert make("PROFILE=default").returncode == 0
    assert subprocess.run(["git", "status", "--porcelain"], cwd=proj, capture_output=True, text=True).stdout == ""
    with (proj / "params.yaml").open("a") as f:  # an edit in no profile is not overwritten
        f.write("# mine\n")
    refused = make("PROFILE=smoke")
    assert refused.returncode != 0 and "holds edits that are in no profile" in refused.stdout
    assert (proj / "params.yaml").read_text().endswith("# mine\n")
