"""The verdicts do not hang on the CPU's floating-point path. The same code and data train different weights
under different CPU kernels (AVX-512 vs AVX2: docs/costs.md, "Same verdicts on any machine"); the smoke pipeline run
under the machine's default ISA and under AVX2 must reach the same claims verdicts."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
STAGES = ("00_pretrain", "00_world", "01_concepts", "02_masks", "03_finetune", "04_evaluate")


def verdicts(claims_json: str) -> dict[str, str]:
    """claim → verdict, from reports/claims.json."""
    return {c["claim"]: c["verdict"] for c in json.loads(claims_json)["claims"]}


def test_verdicts_reads_the_claims_metrics():
    text = json.dumps({"claims": [{"claim": "A", "verdict": "holds"}, {"claim": "B", "verdict": "not testable here"}]})
    assert verdicts(text) == {"A": "holds", "B": "not testable here"}


def _pipeline(proj, env):
    code = ("from cftlib.stages import nbrun\n"
            f"for nb in {STAGES!r}:\n"
            "    nbrun.run(f'notebooks/{nb}.ipynb', f'executed/{nb}.ipynb', {'progress': False})\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=proj, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return (proj / "reports" / "claims.json").read_text()


@pytest.mark.slow
def test_smoke_verdicts_agree_under_the_default_isa_and_avx2(tmp_path):
    out = {}
    for name, env in (("default", {}), ("avx2", AVX2)):
        proj = tmp_path / name
        shutil.copytree(ROOT / "notebooks", proj / "notebooks")
        shutil.copy(ROOT / "profiles" / "smoke.yaml", proj / "params.yaml")
        out[name] = verdicts(_pipeline(proj, env))
    assert len(out["default"]) >= 12 and out["default"] == out["avx2"]
