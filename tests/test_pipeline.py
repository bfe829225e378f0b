"""The committed pipeline is consistent: every stage reads validated params, and dvc.lock matches
dvc.yaml, params.yaml and the code (someone changed the pipeline without re-running it otherwise)."""

import json
import os
import shutil
import subprocess

import pytest
import yaml

from cftlib import config
from conftest import ROOT

DVC = shutil.which("dvc") or str(ROOT / ".venv" / "bin" / "dvc")


def test_stage_params_are_known_sections():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    sections = {f.name for f in config.dataclasses.fields(config.Params)}
    for name, stage in stages.items():
        assert "base" in stage["params"], name
        for p in stage["params"]:
            assert str(p).split(".")[0] in sections, (name, p)
        assert any(str(d).startswith("notebooks/") for d in stage["deps"]), name


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/smoke.yaml", "profiles/paper.yaml"])
def test_every_stage_param_is_in_every_profile(profile):
    """DVC reads the keys a stage declares from params.yaml; a profile copied over it must have them all."""
    data = yaml.safe_load((ROOT / profile).read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in map(str, stage["params"]):
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
    for path in ("data/masks.partial", "data/world", "models/base"):
        res = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert res.returncode == 0, f".gitignore does not ignore {path}"
