"""Ablation variants vary exactly one setting of the main run, and the noise scale scales the world
grounder's noise model (0: exact masks)."""

import json

import pandas as pd
from smoke_stages import declared, dirs, finetuned

from cftlib import concepts
from cftlib.core import config
from cftlib.data import fewshot, world
from cftlib.report import headline
from cftlib.stages import ablations, params


def test_each_variant_changes_one_setting_of_the_main_run():
    P = config.parse({"ablations": {"k": [1, 3], "noise": [0.0, 2.0], "relevance": ["gae_rollout"],
                                    "loss": ["no_cls", "label_ce"], "validation": [[0.15, 0.2], [0.4, 0.4]]}})
    main = {"k": P.finetune.k, "noise": 1.0, "method": P.finetune.relevance, "loss": "full", "validation": None}
    rows = ablations.variants(P)
    assert [(r["ablation"], r["value"]) for r in rows] == [
        ("k", "1"), ("k", "3"), ("mask noise", "×0"), ("mask noise", "×2"), ("relevance", "gae_rollout"),
        ("loss", "full"), ("loss", "no_cls"), ("loss", "label_ce"), ("concept validation", "none"),
        ("concept validation", "15/20"), ("concept validation", "40/40")]
    which = {"k": "k", "mask noise": "noise", "relevance": "method", "loss": "loss",
             "concept validation": "validation"}
    for r in rows:
        changed = {key for key in main if r[key] != main[key]}
        assert changed <= {which[r["ablation"]]}
    # k 3, the full loss and no validation are the main setting: one folder (the others' banks are keyed apart)
    assert len({ablations._key(r) for r in rows if r["validation"] is None}) == len(rows) - 4


def test_a_profile_that_validates_reads_its_main_bank_and_rebuilds_the_others(tmp_path):
    """Main thresholds 15/20 applied: the main row is 15/20 (the concepts stage's bank), "none" is every
    candidate, 5/10 is rebuilt from the saved rates."""
    P = config.parse({"concepts": {"validation": {"apply": True}},
                      "ablations": {"validation": [[0.15, 0.2], [0.05, 0.1]]}})
    rows = [r for r in ablations.variants(P) if r["ablation"] == "concept validation"]
    assert [r["value"] for r in rows] == ["15/20", "none", "5/10"]
    def cls(texts):
        return {"label": 0, "name": "a", "concepts": [{"text": t, "weight": 1.0, "source": ""} for t in texts]}

    header = {"proposer": "x", "model": None, "prompt": None, "prompt_sha256": None, "params": {}, "date": None}
    candidates = {"schema": concepts.SCHEMA, "header": header, "classes": [cls(["big wing", "small beak"])]}
    rates = [{"label": 0, "name": "a", "text": "big wing", "weight": 1.0, "source": "", "images": 10, "found": 9,
              "occurrence": 0.9, "coverage": 0.3},
             {"label": 0, "name": "a", "text": "small beak", "weight": 1.0, "source": "", "images": 10, "found": 8,
              "occurrence": 0.8, "coverage": 0.12}]
    (tmp_path / "validation.json").write_text(json.dumps({"candidates": candidates, "rates": rates, "images": []}))
    main = {**candidates, "classes": [cls(["big wing"])]}
    got = {r["value"]: ablations.bank_for(P, r, main, tmp_path) for r in rows}
    assert got["15/20"] is main
    assert got["none"] == candidates
    assert [k["text"] for k in got["5/10"]["classes"][0]["concepts"]] == ["big wing", "small beak"]
    P = config.parse({"ablations": {"validation": [[0.15, 0.2], [0.4, 0.4]]}})  # both keep only "big wing"
    same = [ablations.bank_for(P, r, candidates, tmp_path) for r in ablations.variants(P) if r["value"] != "none"
            and r["ablation"] == "concept validation"]
    assert len(same) == 2 and concepts.content_hash(same[0]) == concepts.content_hash(same[1])


def test_loss_variants_change_only_their_term():
    P = config.parse({})
    full = P.finetune.loss
    for name, change in ablations.LOSSES.items():
        got = ablations.variant_config(P, dict(k=3, noise=1.0, method="attnlrp", loss=name)).loss
        diff = {f: getattr(got, f) for f in type(full).model_fields if getattr(got, f) != getattr(full, f)}
        assert diff == change
    assert ablations.variant_config(P, dict(k=3, noise=1.0, method="attnlrp", loss="no_cls")).loss.lambda_acc == 0


def test_scaled_noise():
    noise = config.WorldNoise(boundary=1, p_miss=0.1, q_spurious=0.4)
    exact = config.WorldNoise(boundary=0, p_miss=0.0, q_spurious=0.0, blob_radius=noise.blob_radius)
    assert ablations.scaled_noise(noise, 0.0) == exact
    doubled = ablations.scaled_noise(noise, 3.0)
    assert (doubled.boundary, doubled.p_miss, doubled.q_spurious) == (3, 0.1 * 3.0, 1.0)  # a rate caps at 1


def test_ablation_params_are_checked():
    import pytest

    with pytest.raises(config.ConfigError, match="ablations.relevance"):
        params.parse({"ablations": {"relevance": ["iia"]}})
    with pytest.raises(config.ConfigError, match="ablations.loss.*no_beta"):
        params.parse({"ablations": {"loss": ["no_beta"]}})
    with pytest.raises(config.ConfigError, match="ablations.noise"):
        config.parse({"ablations": {"noise": [-1.0]}})


def test_a_noise_store_is_reused_only_while_its_params_hold(tmp_path, small_world, smoke_params):
    P, data = smoke_params, small_world[2]
    bank, _ = concepts.propose(P.concepts, concepts.classes_from_guide(world.load_guide(data)), seed=P.base.seed)
    pool = fewshot.Pool("world", data)
    store = ablations.masks_for(P, 2.0, bank, pool, tmp_path, "unused")
    first = (store / "manifest.json").read_text()
    (store / "manifest.json").touch()
    assert ablations.masks_for(P, 2.0, bank, pool, tmp_path, "unused") == store
    assert (store / "manifest.json").read_text() == first  # same params: the store is kept
    noisier = P.masks.world.model_copy(update=dict(p_miss=0.5))
    other = P.model_copy(update=dict(masks=P.masks.model_copy(update=dict(world=noisier))))
    ablations.masks_for(other, 2.0, bank, pool, tmp_path, "unused")
    header = json.loads((store / "manifest.json").read_text())["header"]
    assert header["params"]["world"]["p_miss"] == 1.0  # regrounded at the new noise (0.5 × 2)


def test_findings_say_whether_the_intervals_separate_the_values():
    s = pd.DataFrame([
        dict(ablation="k", value=1, bg_conflict=0.50, bg_conflict_ci=0.02),
        dict(ablation="k", value=3, bg_conflict=0.60, bg_conflict_ci=0.02),
        dict(ablation="noise", value=0.0, bg_conflict=0.55, bg_conflict_ci=0.05),
        dict(ablation="noise", value=2.0, bg_conflict=0.58, bg_conflict_ci=0.05),
        dict(ablation="relevance", value="attnlrp", bg_conflict=0.5, bg_conflict_ci=float("nan")),
    ])
    k, noise, rel = ablations.findings(s, "bg_conflict")
    assert k.startswith("k: `bg_conflict` top-1 from 50.0 % (1) to 60.0 % (3)") and "apart: 3 is better" in k
    assert "overlap: no effect shown" in noise
    assert "one seed" in rel


def test_ablations_stage_function_writes_every_declared_output(smoke_project, tmp_path_factory):
    """Without papermill, after the finetune stage's function (tests/smoke_stages.py): one ablation (k = 1)
    trained and scored beside the reference runs, its rows, metrics, table and figure written."""
    root, _ = finetuned(smoke_project, tmp_path_factory)
    P = config.load(root / "params.yaml")
    result = ablations.run_stage(P, root / "params.yaml", base_model=root / "models/base/vit/base0.pt", **dirs(
        root, data_dir="data/world", concepts_dir="data/concepts", masks_dir="data/masks",
        finetune_dir="models/finetune", runs_dir="models/ablations", metrics_dir="metrics", plots_dir="plots",
        reports_dir="reports", figures_dir="figures"))
    for out in declared("ablations"):
        assert (root / out).exists(), out
    acc = pd.read_csv(root / "plots" / "ablations_accuracy.csv")
    assert list(acc.columns)[:3] == ["ablation", "value", "seed"] and set(acc["ablation"]) == {"k", "reference"}
    assert list(pd.read_csv(root / "plots" / "ablations_alignment.csv").columns)[:3] == ["ablation", "value", "seed"]
    full = json.loads((root / "reports" / "ablations.json").read_text())
    assert set(full) == {"k", "reference"} and set(full["reference"]) == {"base", "CE"}
    headline.check(json.loads((root / "metrics" / "ablations.json").read_text()), "ablations")
    assert list(pd.read_csv(root / "reports" / "ablations.csv").iloc[:, 0]) == list(result["table"].index)
    assert (root / "figures" / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    assert {line.split(":")[0] for line in result["findings"]} == {"k", "reference"}
