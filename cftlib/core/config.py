"""Typed parameters: each field with its type, default and bounds (pydantic); a wrong key, type or value fails at once
naming the file and dotted key. Checks across fields and names against the registries: cftlib.stages.params."""

import functools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WrapValidator

from cftlib.core.io import read_yaml


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the file and key."""


class Section(BaseModel):
    """A params section: strict types (an int still fills a float field), no unknown key, no NaN or infinity."""
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)


def _unique(values: list) -> list:
    """A list that names each thing once: a repeated arm or split would be run, or counted, twice."""
    if repeated := sorted({repr(v) for v in values if values.count(v) > 1}):
        raise ValueError(f"{', '.join(repeated)} repeated; list each once")
    return values


def _finite(value: Any) -> Any:
    """No NaN or infinity anywhere in a free-form mapping (YAML's .nan and .inf parse as floats)."""
    def ok(v):
        inside = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return all(map(ok, inside)) if inside is not None else not isinstance(v, float) or math.isfinite(v)
    if not ok(value):
        raise ValueError(f"{value!r}; need a finite number (no NaN or infinity)")
    return value


def _as_written(value: Any, check) -> Any:  # checked as a float, an int kept an int (manifests hash it)
    checked = check(value)
    return value if type(value) is int else checked


Count, Size = Annotated[int, Field(ge=1)], Annotated[int, Field(ge=0)]  # a Size of 0: none, or all
Positive, NonNegative = Annotated[float, Field(gt=0)], Annotated[float, Field(ge=0)]
Fraction, Share = Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, lt=1)]
Number = Annotated[float, WrapValidator(_as_written)]
Names = Annotated[list[str], AfterValidator(_unique)]
Kwargs = Annotated[dict[str, Any], AfterValidator(_finite)]
Pair = Annotated[list[Annotated[Number, Field(ge=0, le=1)]], Field(min_length=2, max_length=2)]
Device = Literal["auto", "cpu", "cuda"]
ZOOM = 1.1428571428571428  # 256/224: resize up, then crop back to size (official)
OFFICIAL_BANK = "cftlib/data/cft_official_concept_bank.json"  # the official repository's bank, shipped
WORLD_DIR = "data/world"  # the world stage's output: the world's images (concepts.image_dir of the world)


class Base(Section):
    seed: int = 0
    profile: Literal["default", "smoke", "paper"] = "default"
    threads: Count = 2


class World(Section):
    image_size: Annotated[int, Field(ge=16)] = 48
    supersample: Annotated[int, Field(ge=1, le=4)] = 2
    n_species: Annotated[int, Field(ge=3)] = 50  # with 2, any part tells them apart
    rho_bg: Fraction = 0.98
    rho_color: Fraction = 0.9
    noise: Annotated[float, Field(ge=0, lt=0.5)] = 0.03
    splits: dict[str, Count] = dict(train=5000, val=1000, test=1000, v2=1000, bg_conflict=1000, color_conflict=1000,
                                    pose=1000, rendition=1000, bg_random=1000, parts_only=1000, dfr=1000)
    chunk: Count = 500


class Recipe(Section):
    """Training on labelled images: AdamW, warm-up, cosine decay, label smoothing, flips, zoom (training.pretrain)."""
    epochs: Count = 12
    batch_size: Count = 64
    lr: Positive = 0.001
    weight_decay: NonNegative = 0.05
    warmup: Share = 0.05
    label_smoothing: Share = 0.1
    flip: bool = True
    scale: Annotated[float, Field(ge=1)] = ZOOM  # random-resized crops: zoomed by a factor in [1, scale], cropped back
    keep_epoch: Size = 0  # the model kept: 0 = the epoch of the best held-out accuracy; N = the model after epoch N


class Pretrain(Recipe):
    """The world's "ImageNet-21k": the ViT trained on random-context birds; at paper scale a cftlib.models.zoo model."""
    model: str = "vit_tiny_patch16_224"
    model_kwargs: Kwargs = dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, conv_stem=32)
    epochs: Count = 20
    keep_epoch: Size = 4  # ship the model after epoch 4 (benchmarks/validity_sweep.py); the run goes on to `epochs`
    images: Count = 10000  # the pre-training set (habitat and colour random)
    val_images: Count = 1000  # held out from the same distribution: the learnability figure
    attributes: bool = True  # the set is labelled with the part attributes too (one extra loss per attribute)
    context: bool = True  # ... and with each image's habitat and body colour (context features exist)
    zoo: str = ""  # paper scale: a pretrained model of cftlib.models.zoo instead of training one (fields above unused)
    weights: str = ""  # its weights: a local file; empty = the hub / timm cache


class Bases(Recipe):
    """The target classifiers: each pretrained checkpoint, head re-initialised, trained on the biased `train` split."""
    seeds: Count = 3  # base models per architecture, training seeds base.seed, base.seed + 1, ...
    epochs: Count = 2
    lr: Positive = 0.0003
    dfr_l2: NonNegative = 0.001  # the features-exist probe (cftlib.training.dfr): L2 of the refitted last layer


class LLM(Section):
    model: str = ""  # local folder or Hugging Face hub id of a causal LM with a chat template
    n_concepts: Count = 8
    max_new_tokens: Count = 256
    temperature: NonNegative = 0.0  # 0: greedy decoding
    retries: Size = 2
    cache_dir: str = "cache/llm"
    device: str = "auto"


class WordNetProposer(Section):
    dict_dir: str = ""  # empty: search $WNSEARCHDIR, $WNHOME/dict, /usr/share/wordnet, nltk_data
    max_depth: Size = 8
    max_concepts: Count = 12
    prefix: bool = True  # "bird wing" rather than "wing" (the official bank's style); not for the class's own parts


class BankProposer(Section):
    path: Annotated[str, Field(min_length=1)] = OFFICIAL_BANK  # ours or the official format; a DVC dependency
    dataset: str = "cub_birds"


class ConceptValidation(Section):
    """The paper's concept validation (supp. §6; cftlib.validation): kept if found in `occurrence` of `images`
    held-out images of its class, with a mean IoU of at least `coverage` with the object where found."""
    images: Size = 30  # P per class; 0: not measured
    occurrence: Fraction = 0.15
    coverage: Fraction = 0.20
    apply: bool = False  # False: measured and reported, the bank kept whole (the world's exact part masks: README)


class Concepts(Section):
    proposer: str = "fieldguide"  # cftlib.concepts.PROPOSERS
    dataset: Literal["world", "folder", "imagenet"] = "world"  # folder: <image_dir>/<class>/<image>; imagenet: wnids
    image_dir: str = WORLD_DIR  # the images (a DVC dependency of the stages that read them)
    class_names: str = ""  # folder dataset: optional JSON {folder: "name, synonym, ..."}
    max_chars: Count = 30  # Label-free CBM filters
    name_similarity: Annotated[float, Field(gt=0, le=1)] = 0.85
    duplicate_similarity: Annotated[float, Field(gt=0, le=1)] = 0.9
    llm: LLM = LLM()
    wordnet: WordNetProposer = WordNetProposer()
    bank: BankProposer = BankProposer()
    validation: ConceptValidation = ConceptValidation()


class WorldNoise(Section):
    boundary: Size = 1  # each concept mask dilated (+) or eroded (-) by up to this many px
    p_miss: Fraction = 0.1  # P(a concept's part is not found)
    q_spurious: Fraction = 0.1  # P(a spurious blob is added to a concept's mask)
    blob_radius: Annotated[float, Field(gt=0, le=0.5)] = 0.08  # spurious blob radius, fraction of the image side


class GroundingSAM(Section):
    detector: str = "IDEA-Research/grounding-dino-base"
    segmenter: str = "facebook/sam2.1-hiera-large"  # transformers SamModel or Sam2Model checkpoint
    box_threshold: Fraction = 0.35
    text_threshold: Fraction = 0.65
    device: str = "auto"
    fp16: bool = True  # autocast on CUDA, as the official script
    batch_size: Count = 8  # images per GroundingDINO forward


class Masks(Section):
    grounder: str = "world"  # cftlib.grounding.GROUNDERS
    k: Count = 3  # few-shot images per training class
    class_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5  # share of classes fine-tuned on; the rest validate
    policy: Literal["keep", "drop", "foreground"] = "keep"  # a non-ok mask: kept, dropped, or the object instead
    min_fraction: NonNegative = 0.001  # below: flagged too_small (0: empty)
    max_fraction: Fraction = 0.98  # above: flagged too_large
    unknown_concept: Literal["error", "empty"] = "error"  # world grounder, a concept naming no part: error or empty
    processes: Count = 1  # > 1: the stage runs its grounding under torchrun, images sharded over processes
    world: WorldNoise = WorldNoise()
    groundingsam: GroundingSAM = GroundingSAM()


class Loss(Section):
    """CFT's loss as in the official code (docs/paper.md §3.5), RobustViT's, the baselines' (training.baselines)."""
    lambda_align: NonNegative = 0.8
    lambda_acc: NonNegative = 0.2
    lambda_ctx: NonNegative = 1.2  # CFT: BCE(R ⊙ (1 − M), 0)
    lambda_concept: NonNegative = 0.5  # CFT: BCE(R ⊙ M, M)
    lambda_bg: NonNegative = 2.0  # RobustViT: MSE(R ⊙ (1 − M), 0)
    lambda_fg: NonNegative = 0.3  # RobustViT: MSE(R ⊙ M, M)
    temperature: Positive = 1.0
    squeeze: Annotated[float, Field(ge=0, lt=0.5)] = 0.001  # δ: the map squeezed into [δ, 1 − δ]; 0 = official
    reverse_mask: Literal["complement", "official"] = "complement"  # official: only exact 0/1 flipped (§6.16)
    confidence_target: Literal["argmax", "label"] = "argmax"  # argmax: the model's own prediction (official)
    rrr_lambda: NonNegative = 0.1  # RRR λ₁: the squared input gradient of Σ log p outside the foreground
    rrr_l2: NonNegative = 0.0  # RRR λ₂: Σ θ²
    gradmask_lambda: NonNegative = 1.0  # GradMask: |∂z_y/∂x| outside the foreground
    gradmask_ce: NonNegative = 1.0  # GradMask: the label cross-entropy
    rrda_prob: Fraction = 1.0  # RRDA: the share of images whose context is replaced


class CNNPretrain(Recipe):
    """The CNN's pre-training beside the ViT's: a timm ResNet of output stride 8 (Grad-CAM: a 6×6 map at 48 px)."""
    model: str = "resnet10t"
    model_kwargs: Kwargs = dict(channels=[16, 32, 64, 128], stem_width=16, output_stride=8)
    epochs: Count = 30
    batch_size: Count = 128


class FinetuneCNN(Section):
    """The paper's "additional CNN model": fine-tuned with the same protocol and loss on Grad-CAM."""
    arms: Names = ["none", "ce", "cft"]  # empty: no CNN
    relevance: str = "gradcam"
    lr: Positive = 0.00001  # chosen on validation data (benchmarks/finetune_budget.py, World v3)
    pretrain: CNNPretrain = CNNPretrain()
    zoo: str = ""  # paper scale: a pretrained CNN of cftlib.models.zoo (pretrain above unused)
    weights: str = ""  # its weights: a local file; empty = the hub / timm cache


class Finetune(Section):
    """The few-shot protocol (docs/paper.md §3): arms × seeds, AdamW, lr · decay^⌊epoch/every⌋, an epoch chosen."""
    arms: Names = ["none", "ce", "confidence", "dfr", "gradmask", "rrr", "rrda", "robustvit", "cft_fgmask", "cft"]
    seeds: Count = 5  # class subsets, each run on every base model: the (base, subset) pairs arms are compared over
    relevance: str = "attnlrp"  # the ViT's map (cftlib.relevance); gae_rollout is the official code's
    k: Count = 3  # training images per class, the first k of the masks stage's (<= masks.k)
    epochs: Count = 5  # chosen on validation data (benchmarks/finetune_budget.py)
    selection: Literal["val_loss", "alignment"] = "alignment"  # val_loss (official) | alignment (dose_response.py)
    batch_size: Count = 8
    lr: Positive = 0.0001
    arm_lr: dict[str, Annotated[Number, Field(gt=0)]] = {"gradmask": 1e-4, "rrr": 1e-4, "rrda": 3e-5}  # arm -> lr
    arm_seeds: dict[str, Count] = {"robustvit": 1}  # arm -> its own number of class subsets (< seeds): a secondary arm
    weight_decay: NonNegative = 0.0001
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 0.85
    lr_decay_every: Count = 2
    scale: Annotated[float, Field(ge=1)] = ZOOM  # joint resize by 256/224, then a random crop back to size (official)
    flip: bool = True  # joint horizontal flip, p = 0.5
    max_nonfinite: Count = 20  # this many consecutive non-finite steps stop a run
    device: Device = "auto"  # auto: cuda when present
    amp: bool = True  # bfloat16 autocast on CUDA (CPU runs in float32)
    processes: Count = 1  # > 1: the stage runs each run under torchrun with this many processes (one per GPU)
    workers: Count = 2  # > 1 (and processes 1): runs side by side, base.threads split between them
    batch_runs: Count = 1  # > 1: ViT runs that can share a step train this many at a time in one process (a GPU)
    loss: Loss = Loss()
    cnn: FinetuneCNN = FinetuneCNN()


class Evaluate(Section):
    """The evaluation (CFT §5): top-1/5 per world split or benchmark, intervals over seeds, relevance alignment."""
    splits: Names = ["test", "v2", "bg_conflict", "color_conflict", "pose", "rendition"]
    max_images: Size = 100  # per split, the first N (a split's images are in random order); 0 = all
    split_images: dict[str, Size] = {"test": 250, "bg_conflict": 250}  # split -> N instead
    level: Annotated[float, Field(gt=0, lt=1)] = 0.95  # confidence level of the intervals over seeds (Student t)
    alignment_splits: Names = ["test", "bg_conflict"]
    alignment_images: Count = 32  # the first N images of each alignment split
    relevance: str = "attnlrp"  # one method explains every arm, so their maps compare (cftlib.relevance)
    batch_size: Count = 500
    benchmarks: dict[str, Annotated[str, Field(min_length=1)]] = {}  # paper scale: name -> root folder
    protocols: Names = ["chefer", "standard"]  # cftlib.metrics.accuracy.PROTOCOLS
    segmentation: str = ""  # paper scale: path of gtsegs_ijcv.mat (ImageNet-Segmentation)
    tolerance: Share = 0.01  # claims: in-distribution accuracy is kept if CFT − base stays above −tolerance
    shortcut_gap: Share = 0.02  # claims: a split is testable when the base's top-1 there is this far below test
    benchmark_images: Size = 0  # per benchmark, a seeded sample of this many images (0 = all)
    device: Device = "auto"  # auto: cuda when present
    amp: bool = True  # bfloat16 autocast on CUDA for predictions and maps
    processes: Count = 1  # > 1: benchmarks are scored under torchrun, images sharded over processes
    workers: Count = 2  # > 1 (the world): runs scored by this many processes side by side, base.threads split

    def images(self, split: str) -> int:
        """How many of `split`'s first images are scored (0: all): `split_images`, else `max_images`."""
        return self.split_images.get(split, self.max_images)


class Ablations(Section):
    """The paper's ablations on the world (cftlib.stages.ablations): CFT runs varying one setting of the main run."""
    k: Annotated[list[Count], AfterValidator(_unique)] = []  # images per class (<= masks.k); ours: off by default
    noise: Annotated[list[Annotated[Number, Field(ge=0)]], AfterValidator(_unique)] = []  # × masks.world (0: exact)
    relevance: Names = ["attnlrp", "gae_rollout", "gradcam"]  # Table 7's we have
    loss: Names = ["no_cls", "no_non_concept", "no_concept", "label_ce"]  # Table 6 (cftlib.training.losses.ABLATIONS)
    validation: Annotated[list[Pair], AfterValidator(_unique)] = [[0.15, 0.2], [0.4, 0.4], [0.05, 0.1]]  # supp. §6
    seeds: Count = 3  # 2+ gives intervals


class Figures(Section):
    dpi: Count = 110
    grid_images: Count = 8  # rows of the image | concept mask | base | CFT relevance grid


class Params(Section):
    base: Base = Base()
    world: World = World()
    pretrain: Pretrain = Pretrain()
    bases: Bases = Bases()
    concepts: Concepts = Concepts()
    masks: Masks = Masks()
    finetune: Finetune = Finetune()
    evaluate: Evaluate = Evaluate()
    ablations: Ablations = Ablations()
    figures: Figures = Figures()


def _message(e: dict, where: str) -> str:
    """One of pydantic's errors as `file: dotted.key: why`."""
    loc, value, ctx = [str(part) for part in e["loc"]], e.get("input"), e.get("ctx", {})
    got = f"{type(value).__name__} {value!r}" if e["type"].endswith("_type") else repr(value)
    why = str(ctx["error"]) if "error" in ctx else f"{e['msg'].replace('Input should', 'must')}, got {got}"
    if e["type"] == "extra_forbidden":
        section = functools.reduce(lambda model, key: model.model_fields[key].annotation, loc[:-1], Params)
        why = f"unknown key; known: {', '.join(section.model_fields)}"
    return f"{where}: {'.'.join(loc)}: {why}" if loc else f"{where}: {why}"


def parse(data: dict, where: str = "<params>") -> Params:
    """Validate a parsed params mapping (all sections optional; defaults fill the rest)."""
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_message(err, where) for err in e.errors())) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (cftlib.stages.params.load adds the checks across fields and registries)."""
    return parse(read_yaml(path, what="params file", error=ConfigError), str(path))


def as_dict(obj: Section) -> dict:
    """Plain-dict view of a params section, for manifests and checkpoints."""
    return obj.model_dump()
