"""README's commands as a new user types them, in a fresh clone: the smoke profile from `make repro
PROFILE=smoke` (its pre-trained checkpoints rebuilt first, since the committed ones are the default
profile's), then `make profile PROFILE=default` back to a clean `git status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_smoke_profile_from_a_fresh_clone_then_back_to_default(tmp_path):
    """The clone is of the committed HEAD. It borrows this environment as its `.venv` (what `make setup` builds,
    marked up to date so make does not reinstall it) and imports its own cftlib (PYTHONPATH), so the commands
    run are README's, literally, on the clone's code."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(Path(sys.prefix))
    (Path(sys.prefix) / ".installed").touch()  # newer than the clone's pyproject.toml: setup is done
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "CI": "true"}
    committed_claims = (clone / "reports" / "claims.json").read_bytes()

    def make(*args, timeout):
        done = subprocess.run(["make", "--no-print-directory", *args], cwd=clone, env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        assert done.returncode == 0, f"make {' '.join(args)}: rc {done.returncode}\n{done.stdout[-4000:]}\n" \
                                     f"{done.stderr[-4000:]}"
        return done.stdout + done.stderr

    log = make("repro", "PROFILE=smoke", timeout=1800)
    assert "rebuilding models/pretrain for this profile" in log
    claims = clone / "reports" / "claims.json"
    assert claims.read_bytes() != committed_claims and json.loads(claims.read_text())  # the smoke run's report
    for warning in ("without encryption", "IProgress not found"):
        assert warning not in log
    make("profile", "PROFILE=default", timeout=300)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", status
    assert (clone / "reports" / "claims.json").read_bytes() == committed_claims
