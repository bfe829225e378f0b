"""Preflight: before any compute, check that a profile can run — packages, GPUs, data folders, model
weights — and list every missing piece with where to get it, so a run never stops half-way.

    python -m cftlib.stages.preflight --params profiles/paper.yaml --stage masks finetune
    python -m cftlib.stages.preflight --pretrained   # exit 3: models/pretrain is another profile's
    preflight.require(P, "masks")   # first cell of each stage notebook: raises listing what is missing
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from packaging.requirements import Requirement

from cftlib.concepts import ConceptError, WordNet
from cftlib.core import config, hub
from cftlib.core.io import list_folders, read_torch
from cftlib.data import datasets
from cftlib.data.datasets import SOURCES, imagenet_synsets
from cftlib.models import zoo
from cftlib.stages import params
from cftlib.training import pretrain, runspec

STAGES = ("pretrain", "world", "concepts", "masks", "finetune", "evaluate", "figures", "ablations")
"""The stages of dvc.yaml, in order."""
PRETRAINED = "models/pretrain"
"""Where the pretrain stage keeps its checkpoints (relative to the project root)."""
MISFIT = 3
"""Exit status of `--pretrained` when a checkpoint is missing or built for another profile."""
EVERY = "all stages"
"""The stage name of the checks every stage shares (the packages)."""

REQUIREMENTS = ("torch>=2.4", "torchvision>=0.19", "timm>=1.0.31,<2", "transformers>=4.56,<5",
                "numpy>=1.24", "pandas>=2.0", "pillow>=10", "pyyaml>=6", "tqdm>=4.60", "seaborn>=0.13",
                "matplotlib>=3.7", "papermill>=2.6", "ipykernel>=6.29", "ipywidgets>=8", "nbformat>=5.9",
                "dvc>=3.50,<4", "pydantic>=2.7,<3")
"""pyproject.toml's dependencies that every stage imports (a test keeps the two equal)."""
H5PY = "h5py>=3.9"
"""Read by the evaluate stage only, for ImageNet-Segmentation (evaluate.segmentation)."""
WHY = {"transformers": "SAM 2 needs 4.56; lxt breaks on transformers 5.x",
       "timm": "the relevance rules call timm 1.0.31's attention helpers"}

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
IMAGENET_TRAIN = ("ILSVRC-2012 training set, https://image-net.org/download-images (ILSVRC2012_img_train.tar; "
                  "untar each class's tar into its own folder)", "<image_dir>/<wnid>/<image>.JPEG, 1000 folders")


class PreflightError(RuntimeError):
    """A stage that cannot run; the message lists every missing piece and where to get it."""


@dataclass(frozen=True)
class Check:
    """One thing a stage needs. `detail`: what was found, or what to get, from where, and where to put it (or
    which params key to set). `warning`: ok, but worth knowing (e.g. a GPU-sized job on CPU)."""
    stage: str
    kind: str  # package | gpu | data | weights
    name: str
    ok: bool
    detail: str
    warning: bool = False


# ----------------------------------------------------------------------------- packages

def _package(stage: str, requirement: str) -> Check:
    req = Requirement(requirement)
    fix = f"pip install '{requirement}' (or `make setup`)"
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return Check(stage, "package", req.name, False, f"not installed: {fix}")
    if not req.specifier.contains(version, prereleases=True):
        why = f" ({WHY[req.name]})" if req.name in WHY else ""
        return Check(stage, "package", req.name, False, f"{version} installed, need {req.specifier}{why}: {fix}")
    return Check(stage, "package", req.name, True, version)


# ----------------------------------------------------------------------------- GPUs

@functools.cache
def _gpus() -> int:
    """CUDA devices torch sees; counts without initialising CUDA."""
    return torch.cuda.device_count()


def _device(stage: str, key: str, value: str, real_images: bool) -> Check:
    n = _gpus()
    if value == "cuda" and not n:
        return Check(stage, "gpu", key, False, "cuda, but torch sees no CUDA device: run on a GPU machine (with a "
                                               f"CUDA build of torch), or set {key}: auto or cpu")
    if value == "auto" and not n and real_images:
        return Check(stage, "gpu", key, True, "auto: no CUDA device, so it runs on CPU — hours to days at ImageNet "
                                              "scale; run on a GPU machine", warning=True)
    return Check(stage, "gpu", key, True, f"{value}: " + (f"{n} CUDA device(s)" if n else "CPU"))


def _processes(stage: str, key: str, n: int) -> list[Check]:
    """torchrun starts one process per GPU; a single process needs nothing."""
    if n == 1:
        return []
    if n > _gpus():
        return [Check(stage, "gpu", key, False, f"{n} processes (one per GPU), but torch sees {_gpus()} CUDA "
                                                f"device(s): set {key} to at most {max(_gpus(), 1)}")]
    return [Check(stage, "gpu", key, True, f"{n} processes on {_gpus()} CUDA devices")]


# ----------------------------------------------------------------------------- data

def _class_folders(stage: str, key: str, root: str, source: tuple[str, str], known: set[str] | None,
                   expected: int) -> Check:
    """A `<root>/<class>/<image>` tree: at least one folder, each a known class (None: any name); fewer than
    `expected` folders is a warning."""
    where, layout = source
    get = f"Get {where}; expected layout: {layout}; then set {key}"
    path = Path(root).expanduser()
    if not path.is_dir():
        return Check(stage, "data", key, False, f"{root}: no such folder. {get}")
    folders = [d.name for d in list_folders(path)]
    if not folders:
        return Check(stage, "data", key, False, f"{root}: no class folders inside. {get}")
    unknown = [] if known is None else [f for f in folders if f not in known]
    if unknown:
        more = " ..." if len(unknown) > 3 else ""
        return Check(stage, "data", key, False, f"{root}: folder(s) {', '.join(unknown[:3])}{more} are not classes "
                                                f"of this dataset. Expected layout: {layout}")
    found = f"{root}: {len(folders)}" + (f" of {expected} class folders" if expected else " class folders")
    if len(folders) < expected:
        return Check(stage, "data", key, True, f"{found} (incomplete: scores are not the paper's)", warning=True)
    return Check(stage, "data", key, True, found)


def _image_dir(stage: str, c: config.Concepts) -> Check:
    if c.dataset == "imagenet":
        return _class_folders(stage, "concepts.image_dir", c.image_dir, IMAGENET_TRAIN, set(imagenet_synsets()), 1000)
    return _class_folders(stage, "concepts.image_dir", c.image_dir,
                          ("your images", "<image_dir>/<class>/<image>"), None, 0)


def _benchmark(stage: str, name: str, root: str) -> Check:
    key = f"evaluate.benchmarks.{name}"
    if name == "objectnet":
        source = datasets.SOURCES["objectnet"]
        mappings = Path(root).expanduser() / "mappings"
        files = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
                 "imagenet_to_label_2012_v2")
        absent = [f for f in files if not (mappings / f).is_file()]
        if Path(root).expanduser().is_dir() and absent:
            return Check(stage, "data", key, False, f"{mappings}: missing {', '.join(absent)}. Get {source[0]}; "
                                                         f"expected layout: {source[1]}")
        return _class_folders(stage, key, str(Path(root) / "images"), source, None, 313)
    if name.startswith("si_"):
        folder = datasets.SI_FOLDERS[name[3:]]
        return _class_folders(stage, key, str(Path(root) / folder), datasets.SOURCES["si_score"],
                              set(datasets.si_score_labels()), 0)
    if name == "imagenet_v2":
        return _class_folders(stage, key, root, datasets.SOURCES[name], {str(i) for i in range(1000)}, 1000)
    synsets = datasets.imagenet_synsets()
    if name in ("imagenet_val", "imagenet_sketch"):
        return _class_folders(stage, key, root, datasets.SOURCES[name], set(synsets), 1000)
    subset = {synsets[i] for i in datasets.subset_indices(name[-1])}  # imagenet_a, imagenet_r
    return _class_folders(stage, key, root, datasets.SOURCES[name], subset, 200)


def _segmentation(path: str) -> Check:
    """gtsegs_ijcv.mat is a MATLAB v7.3 file: HDF5 with its superblock after a 512-byte MATLAB header."""
    where, layout = SOURCES["imagenet_segmentation"]
    p = Path(path).expanduser()
    if not p.is_file():
        return Check("evaluate", "data", "evaluate.segmentation", False, f"{path}: no such file. Get {where} "
                                                                         "and set evaluate.segmentation to its path")
    with open(p, "rb") as f:
        head = f.read(2056)
    if not any(head[o:o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
        return Check("evaluate", "data", "evaluate.segmentation", False, f"{path}: not an HDF5 file; expected {layout}."
                                                                         f" Get {where}")
    return Check("evaluate", "data", "evaluate.segmentation", True, f"{path} ({p.stat().st_size / 2**20:.0f} MiB)")


# ----------------------------------------------------------------------------- weights

@functools.cache
def _reachable() -> bool:
    return not hub.offline()


def _hub_model(stage: str, key: str, name: str) -> Check:
    msg = hub.missing_model(name, key)
    if msg is None:
        where = "local folder" if Path(name).expanduser().is_dir() else "Hugging Face cache"
        return Check(stage, "weights", key, True, f"{name} ({where})")
    if hub.missing_model(name, key, reachable=_reachable()) is None:
        return Check(stage, "weights", key, True, f"{name}: not in the Hugging Face cache; the hub is reachable, so "
                                                  "it downloads on first use", warning=True)
    return Check(stage, "weights", key, False, msg.removeprefix(f"{key}: "))


def _zoo_model(stage: str, key: str, name: str, weights: str, weights_key: str) -> Check:
    try:
        msg = zoo.missing_weights(name, weights, weights_key)
    except KeyError as e:  # an unknown zoo name
        msg = f"{key}: {e.args[0]}"
    if msg:
        return Check(stage, "weights", key, False, msg.removeprefix(f"{weights_key}: "))
    return Check(stage, "weights", key, True, name + (f" ({weights})" if weights else ""))


def pretrained(P: config.Params, folder: str | Path = PRETRAINED) -> list[Check]:
    """The pretrain stage's committed checkpoints: present, and built for this profile's models (architecture,
    input size, patch size, outputs; `pretrain.misfits`). Only the config is read, not the model built."""
    out = []
    for role in pretrain.roles(P):
        path = Path(folder) / f"{role}.pt"
        if not path.is_file():
            out.append(Check("world", "weights", str(path), False, "missing: the pretrain stage's checkpoint, "
                             "committed with the project; restore it (`git checkout models/pretrain`) or rebuild it "
                             "for this profile (`make pretrain`)"))
            continue
        bad = pretrain.misfits(P, role, read_torch(path)["config"])
        out.append(Check("world", "weights", str(path), not bad, "fits this profile" if not bad else
                         f"built for another profile ({'; '.join(bad)}): rebuild it for this one with `make pretrain` "
                         f"(`make repro` does so itself), or switch back (`make profile PROFILE=default`)"))
    return out


INPUTS = "inputs"
"""Where files the user brings belong: a DVC dependency of the stages that read them (inputs/README.md)."""


def _brought(stage: str, key: str, value: str) -> Check:
    """A file of the user's that `key` names; outside inputs/ it works, but DVC does not see edits to it."""
    if not Path(value).is_file():
        return Check(stage, "data", key, False, f"{value}: no such file")
    if Path(os.path.abspath(value)).is_relative_to(Path(os.path.abspath(INPUTS))):
        return Check(stage, "data", key, True, value)
    return Check(stage, "data", key, True, f"{value}: outside {INPUTS}/, so DVC does not see edits to it and keeps "
                                           f"old results; move or link it into {INPUTS}/ ({INPUTS}/README.md)",
                 warning=True)


def _wordnet(stage: str, dict_dir: str) -> Check:
    try:
        return Check(stage, "weights", "concepts.wordnet.dict_dir", True, str(WordNet(dict_dir).dir))
    except ConceptError as e:
        return Check(stage, "weights", "concepts.wordnet.dict_dir", False, str(e))


def _groundingsam(stage: str, P: config.Params, real_images: bool) -> list[Check]:
    g = P.masks.groundingsam
    return [_hub_model(stage, "masks.groundingsam.detector", g.detector),
            _hub_model(stage, "masks.groundingsam.segmenter", g.segmenter),
            _device(stage, "masks.groundingsam.device", g.device, real_images)]


# ----------------------------------------------------------------------------- stages

def _stage(P: config.Params, stage: str) -> list[Check]:
    """Everything `stage` needs beyond the shared packages."""
    real = P.concepts.dataset != "world"  # real images: ImageNet-scale work, a GPU advisable
    out = []
    if stage == "world" and not real:
        out += pretrained(P)
    if stage == "world" and P.pretrain.zoo:
        out.append(_zoo_model(stage, "pretrain.zoo", P.pretrain.zoo, P.pretrain.weights, "pretrain.weights"))
    cnn = P.finetune.cnn
    for key, readers, used, weights in (("pretrain.weights", ("world",), P.pretrain.zoo, P.pretrain.weights),
                                        ("finetune.cnn.weights", ("world", "finetune"), cnn.zoo and cnn.arms,
                                         cnn.weights)):
        if stage in readers and used and weights:
            out.append(_brought(stage, key, weights))
    if stage in ("world", "concepts", "masks", "finetune") and real:
        out.append(_image_dir(stage, P.concepts))
    if stage == "world" and real:  # 00_imagenet scores the base model on the benchmarks
        out += [_benchmark(stage, name, root) for name, root in P.evaluate.benchmarks.items()]
        out.append(_device(stage, "evaluate.device", P.evaluate.device, real))
    if stage == "concepts":
        if real and P.concepts.class_names:
            out.append(_brought(stage, "concepts.class_names", P.concepts.class_names))
        if P.concepts.proposer == "llm":
            out += [_hub_model(stage, "concepts.llm.model", P.concepts.llm.model),
                    _device(stage, "concepts.llm.device", P.concepts.llm.device, real)]
        if P.concepts.proposer == "wordnet":
            out.append(_wordnet(stage, P.concepts.wordnet.dict_dir))
        if P.concepts.validation.images and (P.masks.grounder == "groundingsam" or real):  # concept validation
            out += _groundingsam(stage, P, real)
    if stage == "masks":
        m = P.masks
        if m.grounder == "groundingsam" or (real and "foreground" in (m.grounder, m.policy)):
            out += _groundingsam(stage, P, real)
        out += _processes(stage, "masks.processes", m.processes)
    if stage == "finetune":
        f = P.finetune
        if f.cnn.arms and f.cnn.zoo:
            out.append(_zoo_model(stage, "finetune.cnn.zoo", f.cnn.zoo, f.cnn.weights, "finetune.cnn.weights"))
        if real and any(a in runspec.FOREGROUND_ARMS for a in f.arms + f.cnn.arms):
            out += _groundingsam(stage, P, real)
        out.append(_device(stage, "finetune.device", f.device, real))
        out += _processes(stage, "finetune.processes", f.processes)
    if stage == "evaluate":
        e = P.evaluate
        out += [_benchmark(stage, name, root) for name, root in e.benchmarks.items()]
        if e.segmentation:
            out += [_package(stage, H5PY), _segmentation(e.segmentation)]
        out.append(_device(stage, "evaluate.device", e.device, real))
        out += _processes(stage, "evaluate.processes", e.processes)
    return out


def checks(P: config.Params, stages: list[str] | tuple[str, ...] | None = None) -> list[Check]:
    """The checks of `stages` (default: all), the shared packages first. A piece several stages need is listed
    once, under the first of them."""
    stages = STAGES if stages is None else stages
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; choose from {', '.join(STAGES)}")
    out, seen = [_package(EVERY, r) for r in REQUIREMENTS], set()
    for s in STAGES:
        if s in stages:
            for c in _stage(P, s):
                if (c.kind, c.name) not in seen:
                    seen.add((c.kind, c.name))
                    out.append(c)
    return out


def require(P: config.Params, stage: str) -> list[Check]:
    """The checks of `stage`; raises PreflightError listing every missing piece when any is."""
    found = checks(P, [stage])
    bad = [c for c in found if not c.ok]
    if bad:
        lines = "\n".join(f"  - {c.name}: {c.detail}" for c in bad)
        raise PreflightError(f"stage {stage} cannot run, {len(bad)} missing (python -m cftlib.stages.preflight --stage "
                             f"{stage}):\n{lines}")
    return found


# ----------------------------------------------------------------------------- command line

def table(found: list[Check], width: int = 120) -> str:
    """The checks grouped by stage: ✓ ok, ! ok with a warning, ✗ missing; then "N missing"."""
    name_w = max((len(c.name) for c in found), default=0)
    lines, stage = [], None
    for c in found:
        if c.stage != stage:
            stage = c.stage
            lines.append(("\n" if lines else "") + stage)
        mark = "✗" if not c.ok else "!" if c.warning else "✓"
        head = f"  {mark} {c.kind:<8} {c.name:<{name_w}}  "
        lines.append(textwrap.fill(c.detail, width, initial_indent=head, subsequent_indent=" " * len(head),
                                   break_on_hyphens=False, break_long_words=False))
    missing, warnings = sum(not c.ok for c in found), sum(c.ok and c.warning for c in found)
    lines.append(f"\n{missing} missing" + (f", {warnings} warning(s)" if warnings else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cftlib.stages.preflight", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--stage", nargs="+", choices=STAGES, help="only these stages (default: all)")
    ap.add_argument("--pretrained", action="store_true", help="only whether the committed pre-trained checkpoints "
                    f"fit the profile; exit {MISFIT} when not (`make repro` then rebuilds them)")
    args = ap.parse_args(argv)
    try:
        P = params.load(args.params)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.pretrained:
        bad = [c for c in pretrained(P) if not c.ok]
        for c in bad:
            print(f"{c.name}: {c.detail}")
        return MISFIT if bad else 0
    found = checks(P, args.stage)
    print(table(found))
    return 1 if any(not c.ok for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())
