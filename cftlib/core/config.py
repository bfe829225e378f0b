"""Typed, validated parameters: `params.yaml` is read once, and a wrong key, type or value fails at
once with a message naming the file and the dotted key (nanoGPT-configurator style)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the file and key."""


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a number, list or mapping (YAML's .nan and .inf parse as floats)."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def _unique(err, key: str, values: list) -> None:
    """A list that names each thing once: a repeated arm or split would be run, or counted, twice."""
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    if repeated:
        err(key, f"{', '.join(repeated)} repeated; list each once")


SPLITS = ("train", "val", "test", "v2", "bg_conflict", "color_conflict", "pose", "rendition", "bg_random",
          "parts_only", "dfr")


@dataclass(frozen=True)
class Base:
    seed: int = 0
    profile: str = "default"
    threads: int = 2

    def check(self, err):
        if self.profile not in ("default", "smoke", "paper"):
            err("profile", f"unknown profile {self.profile!r}; choose default, smoke or paper")
        if self.threads < 1:
            err("threads", "must be >= 1")


@dataclass(frozen=True)
class World:
    image_size: int = 48
    supersample: int = 2
    n_species: int = 50
    rho_bg: float = 0.98
    rho_color: float = 0.9
    noise: float = 0.03
    splits: dict = field(default_factory=lambda: dict(
        train=5000, val=1000, test=1000, v2=1000, bg_conflict=1000, color_conflict=1000,
        pose=1000, rendition=1000, bg_random=1000, parts_only=1000, dfr=1000))
    chunk: int = 500

    def check(self, err):
        for key in ("rho_bg", "rho_color"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                err(key, f"{getattr(self, key)} outside [0, 1]")
        if self.n_species < 3:
            err("n_species", f"{self.n_species}: need at least 3 species (with 2, any part tells them apart)")
        if self.image_size < 16:
            err("image_size", f"{self.image_size}: need at least 16 px")
        if not 1 <= self.supersample <= 4:
            err("supersample", f"{self.supersample}: choose 1-4")
        if not 0.0 <= self.noise < 0.5:
            err("noise", f"{self.noise} outside [0, 0.5)")
        if self.chunk < 1:
            err("chunk", "must be >= 1")
        for name, n in self.splits.items():
            if name not in SPLITS:
                err(f"splits.{name}", f"unknown split; known: {', '.join(SPLITS)}")
            if type(n) is not int or n < 1:
                err(f"splits.{name}", f"{n!r}: need a positive integer image count")
        for name in ("train", "val", "test"):
            if name not in self.splits:
                err(f"splits.{name}", "missing; train, val and test are required")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained on labelled world images: AdamW, linear warm-up then cosine decay, label
    smoothing, random flips and zoom (cftlib.training.pretrain.train, cftlib.data.augment)."""
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.001
    weight_decay: float = 0.05
    warmup: float = 0.05
    label_smoothing: float = 0.1
    flip: bool = True
    # > 1: random-resized crops, each image resized by a factor drawn in [1, scale] and cropped back, so that the
    # images as they are and fine-tuning's zoom (finetune.scale) are both inside what the model sees
    scale: float = 1.1428571428571428
    keep_epoch: int = 0  # the model kept: 0 = the epoch of the best held-out accuracy; N = the model after epoch N

    def check(self, err):
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if not 1 <= self.scale < float("inf"):
            err("scale", "must be >= 1 (resize up, then crop back)")
        if not 0 <= self.keep_epoch <= self.epochs:
            err("keep_epoch", f"in [0, epochs = {self.epochs}] (0: the best held-out epoch)")
        if self.lr <= 0:
            err("lr", "must be > 0")
        if self.weight_decay < 0:
            err("weight_decay", "must be >= 0")
        if not 0 <= self.warmup < 1:
            err("warmup", "fraction of steps in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            err("label_smoothing", "in [0, 1)")


@dataclass(frozen=True)
class Pretrain(Recipe):
    """The world's "ImageNet-21k" (stage pretrain): the ViT trained once on `images` birds of every species
    whose habitat and colour are drawn at random, so that only the parts tell species apart; at paper scale
    a pretrained model of cftlib.models.zoo instead (the fields but zoo/weights/model_kwargs unused)."""
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=lambda: dict(
        patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, conv_stem=32))
    epochs: int = 20
    keep_epoch: int = 4  # ship the model after epoch 4 (benchmarks/validity_sweep.py); the run goes on to `epochs`
    images: int = 10000  # the pre-training set (habitat and colour random)
    val_images: int = 1000  # held out from the same distribution: the learnability figure
    attributes: bool = True  # the set is labelled with the part attributes too (one extra loss per attribute)
    context: bool = True  # ... and with each image's habitat and body colour (context features exist)
    zoo: str = ""  # paper scale: a pretrained model of cftlib.models.zoo instead of training one (fields above unused)
    weights: str = ""  # its weights: a local file; empty = the hub / timm cache

    def check(self, err):
        if self.weights and not self.zoo:
            err("weights", "set zoo too (the model these weights belong to)")
        for key in ("images", "val_images"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        super().check(err)


@dataclass(frozen=True)
class Bases(Recipe):
    """The target classifiers (stage world): each pretrained checkpoint (ViT and CNN), its head re-initialised,
    trained on the world's biased `train` split, once per seed; every fine-tuning arm runs on each."""
    seeds: int = 3  # base models per architecture, training seeds base.seed, base.seed + 1, ...
    epochs: int = 2
    lr: float = 0.0003
    dfr_l2: float = 0.001  # the features-exist probe (cftlib.training.dfr): L2 strength of the refitted last layer

    def check(self, err):
        if self.seeds < 1:
            err("seeds", "must be >= 1")
        if not 0 <= self.dfr_l2 < float("inf"):
            err("dfr_l2", "a finite number >= 0")
        super().check(err)


PROPOSERS = ("fieldguide", "llm", "wordnet", "bank")
GROUNDERS = ("world", "groundingsam", "foreground")
DATASETS = ("world", "folder", "imagenet")
MASK_POLICIES = ("keep", "drop", "foreground")


@dataclass(frozen=True)
class LLM:
    model: str = ""  # local folder or Hugging Face hub id of a causal LM with a chat template
    n_concepts: int = 8
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy decoding
    retries: int = 2
    cache_dir: str = "cache/llm"
    device: str = "auto"

    def check(self, err):
        for key in ("n_concepts", "max_new_tokens"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if self.retries < 0:
            err("retries", "must be >= 0")
        if self.temperature < 0:
            err("temperature", "must be >= 0")


@dataclass(frozen=True)
class WordNetProposer:
    dict_dir: str = ""  # empty: search $WNSEARCHDIR, $WNHOME/dict, /usr/share/wordnet, nltk_data
    max_depth: int = 8
    max_concepts: int = 12
    prefix: bool = True  # "bird wing" rather than "wing" (the official bank's style); not for the class's own parts

    def check(self, err):
        if self.max_depth < 0:
            err("max_depth", "must be >= 0")
        if self.max_concepts < 1:
            err("max_concepts", "must be >= 1")


OFFICIAL_BANK = "cftlib/data/cft_official_concept_bank.json"
"""The official repository's bank, shipped: the bank proposer's default."""
WORLD_DIR = "data/world"
"""The world stage's output: the world's images (concepts.image_dir of the world dataset)."""


@dataclass(frozen=True)
class BankProposer:
    path: str = OFFICIAL_BANK  # a bank of ours or in the official format; a DVC dependency of the concepts stage
    dataset: str = "cub_birds"

    def check(self, err):
        if not self.path:
            err("path", f"empty; give a bank file (the official one: {OFFICIAL_BANK})")


@dataclass(frozen=True)
class ConceptValidation:
    """The paper's concept validation (supp. §6; cftlib.validation): each candidate concept grounded in `images`
    training images of its class that the few-shot choice did not take; kept if found in at least `occurrence` of
    them and, where found, its mask's mean IoU with the object is at least `coverage`."""
    images: int = 30  # P per class; 0: not measured
    occurrence: float = 0.15
    coverage: float = 0.20
    apply: bool = False  # False: measured and reported, the bank kept whole (the world's exact part masks: README)

    def check(self, err):
        if self.images < 0:
            err("images", "must be >= 0")
        for key in ("occurrence", "coverage"):
            if not 0 <= getattr(self, key) <= 1:
                err(key, "in [0, 1]")
        if self.apply and not self.images:
            err("apply", "true needs images > 0 to measure the concepts on")


@dataclass(frozen=True)
class Concepts:
    proposer: str = "fieldguide"
    dataset: str = "world"  # world: data/world; folder: <image_dir>/<class>/<image>; imagenet: wnid folders
    image_dir: str = WORLD_DIR  # the images (a DVC dependency of the stages that read them)
    class_names: str = ""  # folder dataset: optional JSON {folder: "name, synonym, ..."}
    max_chars: int = 30  # Label-free CBM filters
    name_similarity: float = 0.85
    duplicate_similarity: float = 0.9
    llm: LLM = field(default_factory=LLM)
    wordnet: WordNetProposer = field(default_factory=WordNetProposer)
    bank: BankProposer = field(default_factory=BankProposer)
    validation: ConceptValidation = field(default_factory=ConceptValidation)

    def check(self, err):
        if self.proposer not in PROPOSERS:
            err("proposer", f"unknown proposer {self.proposer!r}; choose {', '.join(PROPOSERS)}")
        if self.dataset not in DATASETS:
            err("dataset", f"unknown dataset {self.dataset!r}; choose {', '.join(DATASETS)}")
        if self.dataset == "world" and self.image_dir != WORLD_DIR:
            err("image_dir", f"{self.image_dir!r}: the world's images are the world stage's {WORLD_DIR}; set that "
                             f"when dataset is world")
        if self.dataset != "world" and self.image_dir in ("", WORLD_DIR):
            err("image_dir", f"required when dataset is {self.dataset}: the folder of <class>/<image>")
        if self.proposer == "fieldguide" and self.dataset != "world":
            err("proposer", "fieldguide reads the world's field guide; use llm, wordnet or bank for a folder")
        if self.proposer == "llm" and not self.llm.model:
            err("llm.model", "required when proposer is llm (a local folder or hub id)")
        if self.max_chars < 1:
            err("max_chars", "must be >= 1")
        for key in ("name_similarity", "duplicate_similarity"):
            if not 0 < getattr(self, key) <= 1:
                err(key, "in (0, 1]")


@dataclass(frozen=True)
class WorldNoise:
    boundary: int = 1  # each concept mask dilated (+) or eroded (-) by up to this many px
    p_miss: float = 0.1  # P(a concept's part is not found)
    q_spurious: float = 0.1  # P(a spurious blob is added to a concept's mask)
    blob_radius: float = 0.08  # spurious blob radius, fraction of the image side

    def check(self, err):
        if self.boundary < 0:
            err("boundary", "must be >= 0")
        for key in ("p_miss", "q_spurious"):
            if not 0 <= getattr(self, key) <= 1:
                err(key, f"{getattr(self, key)} outside [0, 1]")
        if not 0 < self.blob_radius <= 0.5:
            err("blob_radius", "in (0, 0.5]")


@dataclass(frozen=True)
class GroundingSAM:
    detector: str = "IDEA-Research/grounding-dino-base"
    segmenter: str = "facebook/sam2.1-hiera-large"  # transformers SamModel or Sam2Model checkpoint
    box_threshold: float = 0.35
    text_threshold: float = 0.65
    device: str = "auto"
    fp16: bool = True  # autocast on CUDA, as the official script
    batch_size: int = 8  # images per GroundingDINO forward

    def check(self, err):
        if self.batch_size < 1:
            err("batch_size", "must be >= 1")
        for key in ("box_threshold", "text_threshold"):
            if not 0 <= getattr(self, key) <= 1:
                err(key, f"{getattr(self, key)} outside [0, 1]")


@dataclass(frozen=True)
class Masks:
    grounder: str = "world"
    k: int = 3  # few-shot images per training class
    class_fraction: float = 0.5  # share of classes fine-tuned on; the rest give 1 validation image each
    policy: str = "keep"  # what to do with a non-ok mask: keep, drop, foreground (fall back to the object)
    min_fraction: float = 0.001  # below: flagged too_small (0: empty)
    max_fraction: float = 0.98  # above: flagged too_large
    unknown_concept: str = "error"  # world grounder, a concept naming no part: error, or empty (not found)
    processes: int = 1  # > 1: the stage runs its grounding under torchrun, images sharded over processes
    world: WorldNoise = field(default_factory=WorldNoise)
    groundingsam: GroundingSAM = field(default_factory=GroundingSAM)

    def check(self, err):
        if self.grounder not in GROUNDERS:
            err("grounder", f"unknown grounder {self.grounder!r}; choose {', '.join(GROUNDERS)}")
        if self.policy not in MASK_POLICIES:
            err("policy", f"unknown policy {self.policy!r}; choose {', '.join(MASK_POLICIES)}")
        if self.unknown_concept not in ("error", "empty"):
            err("unknown_concept", "choose error or empty")
        for key in ("k", "processes"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if not 0 < self.class_fraction < 1:
            err("class_fraction", "in (0, 1): some classes train, the others validate")
        if not 0 <= self.min_fraction < self.max_fraction <= 1:
            err("min_fraction", "need 0 <= min_fraction < max_fraction <= 1")


ARMS = ("cft", "cft_fgmask", "robustvit", "ce", "confidence", "gradmask", "rrr", "rrda", "none", "dfr")
FOREGROUND_ARMS = ("cft_fgmask", "robustvit", "gradmask", "rrr", "rrda")  # they need foreground masks
REPORTED = ("none", "cft")
"""Arms every later stage needs: each claim, table and figure compares CFT with the base model."""


def _check_arms(err, key: str, arms: list) -> None:
    for a in arms:
        if a not in ARMS:
            err(key, f"unknown arm {a!r}; choose from {', '.join(ARMS)}")
    _unique(err, key, arms)
    missing = [a for a in REPORTED if a not in arms]
    if missing:
        err(key, f"{arms}: needs {' and '.join(missing)} (the evaluation compares cft with the base model, none)")


RELEVANCE = ("attnlrp", "cplrp", "gae_rollout", "grad_x_input", "gradcam")


@dataclass(frozen=True)
class Loss:
    """CFT's loss as in the official code (docs/paper.md §3.5) and RobustViT's MSE version."""
    lambda_align: float = 0.8
    lambda_acc: float = 0.2
    lambda_ctx: float = 1.2  # CFT: BCE(R ⊙ (1 − M), 0)
    lambda_concept: float = 0.5  # CFT: BCE(R ⊙ M, M)
    lambda_bg: float = 2.0  # RobustViT: MSE(R ⊙ (1 − M), 0)
    lambda_fg: float = 0.3  # RobustViT: MSE(R ⊙ M, M)
    temperature: float = 1.0
    squeeze: float = 0.001  # δ: the map is squeezed into [δ, 1 − δ]; 0 = official (BCE(1, 0) saturates at 100)
    reverse_mask: str = "complement"  # complement: 1 − M; official: only exact 0/1 flipped (docs/paper.md §6.16)
    confidence_target: str = "argmax"  # argmax: the model's own prediction (official); label
    # the paper's baselines (cftlib.training.baselines); world values chosen on validation data
    # (benchmarks/baselines.py), the paper's Table 8 in profiles/paper.yaml
    rrr_lambda: float = 0.1  # RRR λ₁: the squared input gradient of Σ log p outside the foreground
    rrr_l2: float = 0.0  # RRR λ₂: Σ θ²
    gradmask_lambda: float = 1.0  # GradMask: |∂z_y/∂x| outside the foreground
    gradmask_ce: float = 1.0  # GradMask: the label cross-entropy
    rrda_prob: float = 1.0  # RRDA: the share of images whose context is replaced

    def check(self, err):
        for key in ("lambda_align", "lambda_acc", "lambda_ctx", "lambda_concept", "lambda_bg", "lambda_fg",
                    "rrr_lambda", "rrr_l2", "gradmask_lambda", "gradmask_ce"):
            if getattr(self, key) < 0:
                err(key, "must be >= 0")
        if self.temperature <= 0:
            err("temperature", "must be > 0")
        if not 0 <= self.squeeze < 0.5:
            err("squeeze", "in [0, 0.5)")
        if self.reverse_mask not in ("complement", "official"):
            err("reverse_mask", "choose complement or official")
        if self.confidence_target not in ("argmax", "label"):
            err("confidence_target", "choose argmax or label")
        if not 0 <= self.rrda_prob <= 1:
            err("rrda_prob", "in [0, 1]")


@dataclass(frozen=True)
class CNNPretrain(Recipe):
    """The CNN's pre-training, beside the ViT's (stage pretrain, on the same images, pretrain.images): a small
    timm ResNet with output stride 8, so Grad-CAM has a 6×6 map at 48 px. Its base models are trained like
    the ViT's (section bases)."""
    model: str = "resnet10t"
    model_kwargs: dict = field(default_factory=lambda: dict(
        channels=[16, 32, 64, 128], stem_width=16, output_stride=8))
    epochs: int = 30
    batch_size: int = 128


@dataclass(frozen=True)
class FinetuneCNN:
    """The paper's "additional CNN model": fine-tuned with the same protocol and loss on Grad-CAM."""
    arms: list = field(default_factory=lambda: ["none", "ce", "cft"])  # empty: no CNN
    relevance: str = "gradcam"
    lr: float = 0.0001  # chosen on validation data (benchmarks/finetune_budget.py)
    pretrain: CNNPretrain = field(default_factory=CNNPretrain)
    zoo: str = ""  # paper scale: a pretrained CNN of cftlib.models.zoo (pretrain above unused)
    weights: str = ""  # its weights: a local file; empty = the hub / timm cache

    def check(self, err):
        if self.weights and not self.zoo:
            err("weights", "set zoo too (the model these weights belong to)")
        if self.arms:
            _check_arms(err, "arms", self.arms)
        if self.relevance not in RELEVANCE:
            err("relevance", f"unknown relevance method {self.relevance!r}; choose {', '.join(RELEVANCE)}")
        if self.lr <= 0:
            err("lr", "must be > 0")


@dataclass(frozen=True)
class Finetune:
    """The few-shot fine-tuning protocol (docs/paper.md §3): arms × seeds, AdamW, lr · decay^⌊epoch/every⌋,
    an epoch selected on the validation images (cftlib.training.trainer.select_epoch; the last epoch kept too)."""
    arms: list = field(default_factory=lambda: [
        "none", "ce", "confidence", "dfr", "gradmask", "rrr", "rrda", "robustvit", "cft_fgmask", "cft"])
    seeds: int = 5  # class subsets (fewshot.subset), each run on every base model (bases.seeds): the (base, subset)
    # pairs arms are compared over; seeds numbered across bases (runspec.plan)
    relevance: str = "attnlrp"  # the ViT's map (cftlib.relevance); gae_rollout is the official code's
    k: int = 3  # training images per class, the first k of the masks stage's (<= masks.k)
    epochs: int = 5  # chosen on validation data (benchmarks/finetune_budget.py)
    selection: str = "alignment"  # val_loss (official) | alignment (benchmarks/dose_response.py's rule chose it)
    batch_size: int = 8
    lr: float = 0.0001
    # arm -> its own lr (the world's baselines: reports/baselines.md; the paper's: its Table 8)
    arm_lr: dict = field(default_factory=lambda: {"gradmask": 1e-4, "rrr": 1e-4, "rrda": 3e-5})
    # arm -> its own number of class subsets (< seeds): a secondary arm, not one of the paper's, on fewer pairs
    arm_seeds: dict = field(default_factory=lambda: {"robustvit": 1})
    weight_decay: float = 0.0001
    lr_decay: float = 0.85
    lr_decay_every: int = 2
    scale: float = 1.1428571428571428  # joint resize by 256/224, then a random crop back to size (official)
    flip: bool = True  # joint horizontal flip, p = 0.5
    max_nonfinite: int = 20  # this many consecutive non-finite steps stop a run
    device: str = "auto"  # auto: cuda when present
    amp: bool = True  # bfloat16 autocast on CUDA (CPU runs in float32)
    processes: int = 1  # > 1: the stage runs each run under torchrun with this many processes (one per GPU)
    workers: int = 2  # > 1 (and processes 1): runs side by side, base.threads split between them
    batch_runs: int = 1  # > 1: ViT runs that can share a step train this many at a time in one process (a GPU)
    loss: Loss = field(default_factory=Loss)
    cnn: FinetuneCNN = field(default_factory=FinetuneCNN)

    def check(self, err):
        _check_arms(err, "arms", self.arms)
        if self.relevance not in RELEVANCE:
            err("relevance", f"unknown relevance method {self.relevance!r}; choose {', '.join(RELEVANCE)}")
        if self.weight_decay < 0:
            err("weight_decay", "must be >= 0")
        for key in ("seeds", "k", "epochs", "batch_size", "lr_decay_every", "max_nonfinite", "processes", "workers",
                    "batch_runs"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if self.lr <= 0:
            err("lr", "must be > 0")
        for arm, lr in self.arm_lr.items():
            if arm not in ARMS:
                err("arm_lr", f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
            elif not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
                err("arm_lr", f"{arm}: {lr!r} must be a number > 0")
        for arm, n in self.arm_seeds.items():
            if arm not in ARMS:
                err("arm_seeds", f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
            elif not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.seeds:
                err("arm_seeds", f"{arm}: {n!r} must be a whole number in [1, seeds = {self.seeds}]")
        if not 0 < self.lr_decay <= 1:
            err("lr_decay", "in (0, 1]")
        if self.scale < 1:
            err("scale", "must be >= 1 (resize up, then crop back)")
        if self.device not in ("auto", "cpu", "cuda"):
            err("device", "choose auto, cpu or cuda")
        if self.selection not in ("val_loss", "alignment"):
            err("selection", f"unknown selection {self.selection!r}; choose val_loss or alignment")


BENCHMARKS = ("imagenet_val", "imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_v2", "objectnet", "si_location",
              "si_rotation", "si_size")
"""The paper's classification benchmarks by name (cftlib.data.datasets.LOADERS)."""
IN_DISTRIBUTION = ("imagenet_val", "imagenet_v2")
"""The benchmarks the paper reports as in-distribution references, apart from its five OOD sets (ImageNet-A,
ObjectNet, ImageNet-R, ImageNet-Sketch, SI-Score); ImageNet val is the reference of the gaps and claims."""
PROTOCOLS = ("chefer", "standard")
"""Evaluation protocols: the official code's and the benchmarks' own (cftlib.stages.benchmarks)."""


@dataclass(frozen=True)
class Evaluate:
    """What the evaluate stage measures (CFT §5): top-1/top-5 on every world split per run, intervals over
    seeds, relevance alignment on a few splits, and at paper scale the benchmarks of cftlib.stages.benchmarks."""
    splits: list = field(default_factory=lambda: ["test", "v2", "bg_conflict", "color_conflict", "pose", "rendition"])
    max_images: int = 100  # per split, the first N (a split's images are in random order); 0 = all
    split_images: dict = field(default_factory=lambda: {"test": 250, "bg_conflict": 250})  # split -> N instead
    level: float = 0.95  # confidence level of the intervals over seeds (Student t)
    alignment_splits: list = field(default_factory=lambda: ["test", "bg_conflict"])
    alignment_images: int = 32  # the first N images of each alignment split
    relevance: str = "attnlrp"  # one method explains every arm, so their maps compare (cftlib.relevance)
    batch_size: int = 500
    benchmarks: dict = field(default_factory=dict)  # paper scale: name (cftlib.data.datasets.LOADERS) -> root
    protocols: list = field(default_factory=lambda: ["chefer", "standard"])
    segmentation: str = ""  # paper scale: path of gtsegs_ijcv.mat (ImageNet-Segmentation)
    tolerance: float = 0.01  # claims: in-distribution accuracy is kept if CFT − base stays above −tolerance
    shortcut_gap: float = 0.02  # claims: a split is testable when the base's top-1 there is this far below test
    benchmark_images: int = 0  # per benchmark, a seeded sample of this many images (0 = all)
    device: str = "auto"  # auto: cuda when present
    amp: bool = True  # bfloat16 autocast on CUDA for predictions and maps
    processes: int = 1  # > 1: benchmarks are scored under torchrun, images sharded over processes
    workers: int = 2  # > 1 (the world): runs scored by this many processes side by side, base.threads split between them

    def images(self, split: str) -> int:
        """How many of `split`'s first images are scored (0: all): `split_images`, else `max_images`. The
        splits the deciding comparisons read get more (test: the in-distribution tolerance; bg_conflict)."""
        return self.split_images.get(split, self.max_images)

    def check(self, err):
        if self.device not in ("auto", "cpu", "cuda"):
            err("device", "choose auto, cpu or cuda")
        for key in ("processes", "workers"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if self.benchmark_images < 0:
            err("benchmark_images", "must be >= 0 (0: all)")
        if not 0 < self.level < 1:
            err("level", "in (0, 1)")
        if not 0 <= self.tolerance < 1:
            err("tolerance", "in [0, 1)")
        if not 0 <= self.shortcut_gap < 1:
            err("shortcut_gap", "in [0, 1)")
        for key in ("splits", "alignment_splits", "protocols"):
            _unique(err, key, getattr(self, key))
        for key in ("splits", "alignment_splits"):
            for s in getattr(self, key):
                if s not in SPLITS:
                    err(key, f"unknown split {s!r}; known: {', '.join(SPLITS)}")
        for s in self.alignment_splits:
            if s not in self.splits:
                err("alignment_splits", f"{s!r} is not among evaluate.splits")
        if self.splits and "test" not in self.splits:
            err("splits", "must include test (the in-distribution reference of the gaps and claims)")
        if self.max_images < 0:
            err("max_images", "must be >= 0 (0: all)")
        for s, n in self.split_images.items():
            if s not in SPLITS:
                err("split_images", f"unknown split {s!r}; known: {', '.join(SPLITS)}")
            elif isinstance(n, bool) or not isinstance(n, int) or n < 0:
                err("split_images", f"{s}: {n!r}; need an integer >= 0 (0: all)")
        for key in ("alignment_images", "batch_size"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")
        if self.relevance not in RELEVANCE:
            err("relevance", f"unknown relevance method {self.relevance!r}; choose {', '.join(RELEVANCE)}")
        for p in self.protocols:
            if p not in PROTOCOLS:
                err("protocols", f"unknown protocol {p!r}; choose {', '.join(PROTOCOLS)}")
        for name, root in self.benchmarks.items():
            if name not in BENCHMARKS:
                err(f"benchmarks.{name}", f"unknown benchmark; choose from {', '.join(BENCHMARKS)}")
            if not isinstance(root, str) or not root:
                err(f"benchmarks.{name}", "need the dataset's root folder")


ABLATION_LOSSES = ("no_cls", "no_non_concept", "no_concept", "label_ce")
"""The paper's Table 6 variants of CFT's loss (cftlib.stages.ablations.LOSSES)."""


@dataclass(frozen=True)
class Ablations:
    """The paper's ablations on the world (cftlib.stages.ablations): CFT runs varying one setting of the main run."""
    k: list = field(default_factory=list)  # images per class (<= masks.k); ours, not the paper's: off by default
    noise: list = field(default_factory=list)  # the world grounder's noise, × masks.world (0: exact); ours: off by default
    relevance: list = field(default_factory=lambda: ["attnlrp", "gae_rollout", "gradcam"])  # Table 7's we have
    loss: list = field(default_factory=lambda: list(ABLATION_LOSSES))  # Table 6 (cftlib.stages.ablations.LOSSES)
    # concept-validation thresholds [occurrence, coverage] (the paper's supp. §6: its 15/20, 40/40 and 5/10)
    validation: list = field(default_factory=lambda: [[0.15, 0.2], [0.4, 0.4], [0.05, 0.1]])
    seeds: int = 3  # 2+ gives intervals

    def check(self, err):
        for m in self.loss:
            if m not in ABLATION_LOSSES:
                err("loss", f"unknown loss variant {m!r}; choose from {', '.join(ABLATION_LOSSES)}")
        for key in ("k", "noise", "relevance", "loss"):
            _unique(err, key, getattr(self, key))
        if any(not isinstance(t, list) or len(t) != 2 or any(type(x) not in (int, float) or not 0 <= x <= 1 for x in t)
               for t in self.validation):
            err("validation", f"{self.validation!r}: pairs [occurrence, coverage], each in [0, 1]")
        _unique(err, "validation", [tuple(t) for t in self.validation])
        if any(type(k) is not int or k < 1 for k in self.k):
            err("k", "positive integers")
        if any(type(s) not in (int, float) or s < 0 for s in self.noise):
            err("noise", "non-negative scales")
        for m in self.relevance:
            if m not in RELEVANCE:
                err("relevance", f"{m!r}: choose from {', '.join(RELEVANCE)}")
        if self.seeds < 1:
            err("seeds", "must be >= 1")


@dataclass(frozen=True)
class Figures:
    dpi: int = 110
    grid_images: int = 8  # rows of the image | concept mask | base | CFT relevance grid

    def check(self, err):
        for key in ("dpi", "grid_images"):
            if getattr(self, key) < 1:
                err(key, "must be >= 1")


@dataclass(frozen=True)
class Params:
    base: Base = field(default_factory=Base)
    world: World = field(default_factory=World)
    pretrain: Pretrain = field(default_factory=Pretrain)
    bases: Bases = field(default_factory=Bases)
    concepts: Concepts = field(default_factory=Concepts)
    masks: Masks = field(default_factory=Masks)
    finetune: Finetune = field(default_factory=Finetune)
    evaluate: Evaluate = field(default_factory=Evaluate)
    ablations: Ablations = field(default_factory=Ablations)
    figures: Figures = field(default_factory=Figures)


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is float:
        return type(value) in (int, float)  # YAML writes 1.0 as 1 often enough
    if hint is dict:
        return isinstance(value, dict)
    return type(value) is hint


def _build(cls: type, data: Any, where: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {prefix}{key!s}; known: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, value, where, f"{prefix}{f.name}.")
        elif not _type_ok(value, hint):
            raise ConfigError(f"{where}: {prefix}{f.name} must be {hint.__name__}, "
                              f"got {type(value).__name__} {value!r}")
        elif not _finite(value):
            raise ConfigError(f"{where}: {prefix}{f.name}: {value!r}; need a finite number (no NaN or infinity)")
        else:
            values[f.name] = float(value) if hint is float else value
    obj = cls(**values)
    if hasattr(obj, "check"):
        def err(key: str, msg: str):
            raise ConfigError(f"{where}: {prefix}{key}: {msg}")
        obj.check(err)
    return obj


def _cross_check(p: Params, where: str) -> None:
    if p.concepts.dataset == "world":
        if not p.evaluate.splits:
            raise ConfigError(f"{where}: evaluate.splits: empty; the world's evaluation needs at least test")
    else:
        # no world: the base models come from the zoo, the evaluation from the benchmarks
        needs = [("pretrain.zoo", p.pretrain.zoo,
                  "a pretrained model of cftlib.models.zoo (there is no world to train on)")]
        if p.finetune.cnn.arms:
            needs.append(("finetune.cnn.zoo", p.finetune.cnn.zoo, "a pretrained CNN, or set finetune.cnn.arms: []"))
        for key, value, what in needs:
            if not value:
                raise ConfigError(f"{where}: {key}: required when concepts.dataset is {p.concepts.dataset}: {what}")
        if p.bases.seeds != 1:
            raise ConfigError(f"{where}: bases.seeds: {p.bases.seeds}; a pretrained zoo model is one base model, set 1 "
                              f"when concepts.dataset is {p.concepts.dataset}")
        if p.evaluate.splits:
            raise ConfigError(f"{where}: evaluate.splits: {p.evaluate.splits} are world splits; set [] when "
                              f"concepts.dataset is {p.concepts.dataset} (benchmarks replace them)")
        if "imagenet_val" not in p.evaluate.benchmarks:
            raise ConfigError(f"{where}: evaluate.benchmarks: needs imagenet_val (the in-distribution reference of the "
                              f"gaps and claims) when concepts.dataset is {p.concepts.dataset}")
        for key, arms in (("finetune.arms", p.finetune.arms), ("finetune.cnn.arms", p.finetune.cnn.arms)):
            if "dfr" in arms:
                raise ConfigError(f"{where}: {key}: dfr refits the head on the world's habitat-balanced split, which "
                                  f"{p.concepts.dataset} does not have; remove it")
        if p.ablations.k or p.ablations.noise or p.ablations.relevance or p.ablations.validation:
            raise ConfigError(f"{where}: ablations: the ablations run on the world; set k, noise, relevance and "
                              f"validation to [] "
                              f"when concepts.dataset is {p.concepts.dataset}")
        return
    patch = p.pretrain.model_kwargs.get("patch_size")
    if isinstance(patch, int) and p.world.image_size % patch:
        raise ConfigError(f"{where}: world.image_size {p.world.image_size} is not divisible by "
                          f"pretrain.model_kwargs.patch_size {patch}")
    for key, k in [("finetune.k", p.finetune.k)] + [("ablations.k", k) for k in p.ablations.k]:
        if k > p.masks.k:
            raise ConfigError(f"{where}: {key} {k} is larger than masks.k {p.masks.k}, the images per class the masks "
                              f"stage grounds")
    if p.masks.grounder == "world" and p.concepts.dataset != "world":
        raise ConfigError(f"{where}: masks.grounder world needs the world's part maps; "
                          f"concepts.dataset is {p.concepts.dataset!r} (use groundingsam)")


def parse(data: dict, where: str = "<params>") -> Params:
    """Validate a parsed params mapping (all sections optional; defaults fill the rest)."""
    params = _build(Params, data or {}, where, "")
    _cross_check(params, where)
    return params


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, which follows YAML 1.1, plus YAML 1.2's exponent floats without a dot (`5e-07`): what
    `dvc exp run -S finetune.lr=5e-7` writes into params.yaml, and what PyYAML alone would read as a string."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse(data, str(path))


def as_dict(obj: Any) -> dict:
    """Plain-dict view of a params section, for manifests and checkpoints."""
    return dataclasses.asdict(obj)
