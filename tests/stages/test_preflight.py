"""Preflight: the paper profile on a bare machine lists every missing piece with where to get it; the same
profile over a tiny layout holding each piece passes; the default profile passes; a GPU asked for but absent
fails; require() raises naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tomllib
import yaml
from conftest import ROOT

from cftlib.core import config, hub
from cftlib.data import datasets
from cftlib.models import zoo
from cftlib.stages import preflight

BENCH = tuple(datasets.LOADERS)
PAPER_MISSING = {"pretrain.zoo", "concepts.image_dir", "concepts.llm.model", "masks.groundingsam.detector",
                 "masks.groundingsam.segmenter", "finetune.cnn.zoo", "evaluate.segmentation",
                 *(f"evaluate.benchmarks.{b}" for b in BENCH)}


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """An empty Hugging Face and torch.hub cache, offline, no CUDA device."""
    from huggingface_hub import constants

    env = dict(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), HF_HUB_OFFLINE="1",
               TORCH_HOME=str(tmp_path / "torch"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])  # read at import; this process imported it
    monkeypatch.setattr(preflight, "_gpus", lambda: 0)
    return env


def paper(tmp_path, **edits) -> dict:
    """The paper profile with its data paths moved under tmp_path (absent unless a test creates them)."""
    data = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    data["concepts"]["image_dir"] = str(tmp_path / "imagenet" / "train")
    data["evaluate"]["benchmarks"] = {b: str(tmp_path / ("si" if b.startswith("si_") else b)) for b in BENCH}
    data["evaluate"]["segmentation"] = str(tmp_path / "gtsegs_ijcv.mat")
    for dotted, value in edits.items():
        *path, key = dotted.split(".")
        sect = data
        for p in path:
            sect = sect.setdefault(p, {})
        sect[key] = value
    return data


def by_name(found):
    return {c.name: c for c in found}


def test_requirements_are_pyprojects():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(preflight.REQUIREMENTS + (preflight.H5PY,)) == sorted(deps)


def test_stages_are_dvcs():
    assert tuple(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) == preflight.STAGES


def test_package_versions():
    assert preflight._package("x", "transformers>=4.56,<5").ok
    bad = preflight._package("x", "transformers>=99")
    assert not bad.ok and "need >=99" in bad.detail and "lxt breaks" in bad.detail
    absent = preflight._package("x", "no-such-package-cft>=1")
    assert not absent.ok and "not installed: pip install 'no-such-package-cft>=1'" in absent.detail


def test_paper_profile_on_a_bare_machine_lists_every_missing_piece(tmp_path, bare):
    found = preflight.checks(config.parse(paper(tmp_path)))
    bad = by_name(c for c in found if not c.ok)
    assert set(bad) == PAPER_MISSING
    get = {"concepts.image_dir": "image-net.org", "evaluate.segmentation": "gtsegs_ijcv.mat",
           "evaluate.benchmarks.objectnet": "objectnet.dev", "evaluate.benchmarks.imagenet_a": "natural-adv-examples",
           "evaluate.benchmarks.imagenet_sketch": "HaohanWang/ImageNet-Sketch (ImageNet-Sketch.zip",
           "evaluate.benchmarks.si_size": "si/area: no such folder",
           "concepts.llm.model": "huggingface-cli download Qwen/Qwen2.5-7B-Instruct",
           "masks.groundingsam.detector": "huggingface-cli download IDEA-Research/grounding-dino-base",
           "masks.groundingsam.segmenter": "huggingface-cli download facebook/sam2.1-hiera-large",
           "pretrain.zoo": zoo.get("vit_b").url, "finetune.cnn.zoo": zoo.get("convnextv2_b").url}
    for name, where in get.items():
        assert where in bad[name].detail, (name, bad[name].detail)
    assert bare["HF_HUB_CACHE"] in bad["concepts.llm.model"].detail  # says which cache it looked in
    assert "set pretrain.weights" in bad["pretrain.zoo"].detail
    # no CUDA at ImageNet scale: ok, but a warning saying it would run on CPU
    dev = by_name(found)["finetune.device"]
    assert dev.ok and dev.warning and "CPU" in dev.detail
    # each piece once, under the first stage that needs it
    assert [c.stage for c in found if c.name == "concepts.image_dir"] == ["world"]  # 00_imagenet lists it first
    assert {c.stage for c in found if c.name.startswith("evaluate.benchmarks.")} == {"world"}  # and scores them
    assert by_name(found)["masks.groundingsam.detector"].stage == "concepts"  # concept validation grounds first


def test_cli_on_a_bare_machine_exits_1(tmp_path, bare):
    params = tmp_path / "paper.yaml"
    params.write_text(yaml.safe_dump(paper(tmp_path)))
    done = subprocess.run([sys.executable, "-m", "cftlib.stages.preflight", "--params", str(params)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **bare}, timeout=120)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert out.splitlines()[-1].startswith(f"{len(PAPER_MISSING)} missing")
    for header in ("all stages", "world", "concepts", "finetune", "evaluate"):
        assert f"\n{header}\n" in f"\n{out}"
    assert "✗ weights  masks.groundingsam.detector" in out and "✓ package  torch" in out


def layout(tmp_path) -> dict:
    """Tiny stand-ins for every piece of the paper profile: a couple of class folders per dataset, a local LLM and
    SAM folder, GroundingDINO in the Hugging Face cache, zoo weights files."""
    synsets = datasets.imagenet_synsets()
    folders = {"imagenet/train": synsets[:2], "imagenet_val": synsets[:2], "imagenet_sketch": synsets[-2:],
               "imagenet_v2": ["0", "1"],
               "imagenet_a": [synsets[i] for i in datasets.subset_indices("a")[:2]],
               "imagenet_r": [synsets[i] for i in datasets.subset_indices("r")[:2]],
               "objectnet/images": ["air_freshener"], "si/location": list(datasets.si_score_labels())[:2]}
    folders["si/rotation"] = folders["si/area"] = folders["si/location"]
    for root, names in folders.items():
        for n in names:
            (tmp_path / root / n).mkdir(parents=True)
    (tmp_path / "objectnet" / "mappings").mkdir()
    for f in ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
              "imagenet_to_label_2012_v2"):
        (tmp_path / "objectnet" / "mappings" / f).write_text("{}")
    (tmp_path / "gtsegs_ijcv.mat").write_bytes(b"MATLAB 7.3 MAT-file".ljust(512) + preflight.HDF5_SIGNATURE)
    for model in ("llm", "sam"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.json").write_text("{}")
    snapshot = tmp_path / "hf" / "hub" / "models--IDEA-Research--grounding-dino-base"
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    (snapshot / "snapshots" / "abc123" / "config.json").write_text("{}")
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text("abc123")
    for name in ("vit_b", "convnextv2_b"):
        e = zoo.get(name)
        for f in (e.file, e.head_file):
            if f:
                (tmp_path / "weights" / f).parent.mkdir(exist_ok=True)
                (tmp_path / "weights" / f).write_bytes(b"fake")
    return paper(tmp_path, **{"concepts.llm.model": str(tmp_path / "llm"),
                              "masks.groundingsam.segmenter": str(tmp_path / "sam"),
                              "pretrain.weights": str(tmp_path / "weights" / zoo.get("vit_b").file),
                              "finetune.cnn.weights": str(tmp_path / "weights" / zoo.get("convnextv2_b").file)})


def test_paper_profile_with_every_piece_present(tmp_path, bare):
    found = by_name(preflight.checks(config.parse(layout(tmp_path))))
    for name in PAPER_MISSING:
        assert found[name].ok, (name, found[name].detail)
    assert found["concepts.image_dir"].warning and "2 of 1000 class folders" in found["concepts.image_dir"].detail
    assert "Hugging Face cache" in found["masks.groundingsam.detector"].detail
    assert "local folder" in found["concepts.llm.model"].detail
    assert "si/area: 2 class folders" in found["evaluate.benchmarks.si_size"].detail  # the release's folder
    assert found["evaluate.benchmarks.imagenet_sketch"].warning  # 2 of its 1000 folders
    assert "imagenet_sketch: 2 of 1000 class folders" in found["evaluate.benchmarks.imagenet_sketch"].detail


def test_wrong_layouts_fail(tmp_path, bare):
    data = layout(tmp_path)
    (tmp_path / "imagenet" / "train" / "cats").mkdir()  # not a wnid
    (tmp_path / "imagenet_v2" / "1000").mkdir()  # not a class index
    (tmp_path / "imagenet_sketch" / "sketch").mkdir()  # the zip's top folder, not its sketch/
    (tmp_path / "objectnet" / "mappings" / "imagenet_to_label_2012_v2").unlink()
    (tmp_path / "gtsegs_ijcv.mat").write_bytes(b"not hdf5")
    (tmp_path / "sam" / "config.json").unlink()
    found = by_name(preflight.checks(config.parse(data)))
    for name, says in {"concepts.image_dir": "cats", "evaluate.benchmarks.imagenet_v2": "1000",
                       "evaluate.benchmarks.imagenet_sketch": "imagenet_sketch: folder(s) sketch are not classes",
                       "evaluate.benchmarks.objectnet": "missing imagenet_to_label_2012_v2",
                       "evaluate.segmentation": "not an HDF5 file",
                       "masks.groundingsam.segmenter": "holds no config.json"}.items():
        assert not found[name].ok and says in found[name].detail, (name, found[name].detail)


def test_default_profile_is_all_ok():
    found = preflight.checks(config.load(ROOT / "params.yaml"))
    assert all(c.ok and not c.warning for c in found), [c for c in found if not c.ok or c.warning]
    assert preflight.main(["--params", str(ROOT / "params.yaml")]) == 0


def test_cuda_asked_for_without_cuda_fails(monkeypatch):
    monkeypatch.setattr(preflight, "_gpus", lambda: 0)
    P = config.parse({"finetune": {"device": "cuda", "processes": 2}})
    found = by_name(preflight.checks(P, ["finetune"]))
    assert not found["finetune.device"].ok and "no CUDA device" in found["finetune.device"].detail
    assert not found["finetune.processes"].ok and "torch sees 0 CUDA" in found["finetune.processes"].detail
    assert by_name(preflight.checks(config.parse({}), ["finetune"]))["finetune.device"].ok  # auto on a world: fine
    monkeypatch.setattr(preflight, "_gpus", lambda: 2)
    found = by_name(preflight.checks(P, ["finetune"]))
    assert found["finetune.device"].ok and found["finetune.processes"].ok


def test_require_raises_naming_the_missing_piece(tmp_path, bare):
    P = config.parse(paper(tmp_path))
    with pytest.raises(preflight.PreflightError, match="masks.groundingsam.segmenter") as e:
        preflight.require(P, "masks")
    assert "concepts.image_dir" in str(e.value) and "stage masks cannot run, 3 missing" in str(e.value)
    P = config.parse({"finetune": {"device": "cuda"}})
    with pytest.raises(preflight.PreflightError, match="finetune.device"):
        preflight.require(P, "finetune")
    assert preflight.require(P, "world")  # other stages unaffected


def test_wordnet_dict(tmp_path):
    P = config.parse({"concepts": {"proposer": "wordnet", "wordnet": {"dict_dir": str(tmp_path)}}})
    check = by_name(preflight.checks(P, ["concepts"]))["concepts.wordnet.dict_dir"]
    assert not check.ok and "apt-get install wordnet-base" in check.detail
    (tmp_path / "data.noun").write_text("")
    assert by_name(preflight.checks(P, ["concepts"]))["concepts.wordnet.dict_dir"].ok


def test_uncached_model_with_a_reachable_hub_is_a_warning(tmp_path, bare, monkeypatch):
    monkeypatch.setattr(preflight, "_reachable", lambda: True)
    check = preflight._hub_model("masks", "masks.groundingsam.detector", "IDEA-Research/grounding-dino-base")
    assert check.ok and check.warning and "downloads on first use" in check.detail
    check = preflight._hub_model("masks", "masks.groundingsam.detector", str(tmp_path / "no" / "such"))
    assert not check.ok and "no such folder" in check.detail  # a path is never downloaded


def test_hub_missing(tmp_path, bare):
    assert "not in the Hugging Face cache" in hub.missing_model("org/model", "concepts.llm.model")
    assert hub.missing_model("org/model", "concepts.llm.model", reachable=True) is None
    (tmp_path / "m").mkdir()
    assert "holds no config.json" in hub.missing_model(str(tmp_path / "m"), "k")
    (tmp_path / "m" / "config.json").write_text("{}")
    assert hub.missing_model(str(tmp_path / "m"), "k") is None


def test_a_file_of_yours_outside_inputs_works_but_is_flagged_as_untracked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for where in ("inputs", "elsewhere"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "names.json").write_text("{}")
    inside = preflight._brought("concepts", "concepts.class_names", "inputs/names.json")
    assert inside.ok and not inside.warning
    outside = preflight._brought("concepts", "concepts.class_names", str(tmp_path / "elsewhere" / "names.json"))
    assert outside.ok and outside.warning and "DVC does not see edits to it" in outside.detail
    gone = preflight._brought("concepts", "concepts.class_names", "inputs/nope.json")
    assert not gone.ok and gone.detail == "inputs/nope.json: no such file"


def test_pretrained_checkpoints_of_another_profile_are_refused_by_key(tmp_path):
    """A smoke-sized checkpoint under the default profile (and the reverse): every differing key named, the
    remedy given, `--pretrained` exits 3; the profile it was built for fits."""
    from cftlib.models.checkpoints import save_checkpoint
    from cftlib.training import pretrain

    smoke, default = config.load(ROOT / "profiles" / "smoke.yaml"), config.load(ROOT / "params.yaml")
    for role, cfg in pretrain.roles(smoke).items():
        model, build = pretrain.fresh(cfg, pretrain.outputs(smoke), smoke.world.image_size if role == "vit" else None,
                                      0)
        save_checkpoint(tmp_path / f"{role}.pt", model, build)
    assert all(c.ok for c in preflight.pretrained(smoke, tmp_path))
    found = by_name(preflight.pretrained(default, tmp_path))
    vit, cnn = found[str(tmp_path / "vit.pt")], found[str(tmp_path / "cnn.pt")]
    assert not vit.ok and not cnn.ok and "make pretrain" in vit.detail
    for key in ("world.image_size: 48 here, the checkpoint was built for 32", "pretrain.model_kwargs.embed_dim: 128",
                "pretrain.model_kwargs.depth", "world.n_species: 88 outputs"):
        assert key in vit.detail, (key, vit.detail)
    assert "finetune.cnn.pretrain.model_kwargs.channels" in cnn.detail and "world.image_size" not in cnn.detail
    assert not found.keys() - {str(tmp_path / "vit.pt"), str(tmp_path / "cnn.pt")}
    (tmp_path / "vit.pt").unlink()
    missing = by_name(preflight.pretrained(smoke, tmp_path))[str(tmp_path / "vit.pt")]
    assert not missing.ok and "missing" in missing.detail


def test_cli_pretrained_exits_3_for_another_profiles_checkpoints():
    """The committed checkpoints are the default profile's: they fit it and not the smoke profile."""
    assert preflight.main(["--pretrained"]) == 0
    assert preflight.main(["--pretrained", "--params", str(ROOT / "profiles" / "smoke.yaml")]) == preflight.MISFIT
