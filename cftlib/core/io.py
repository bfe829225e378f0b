"""Files in and out: atomic writes (every file or folder appears complete under its final name or not at all)
and reads whose every failure names the file and what to do about it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

RERUN = "re-run the stage that writes it (`dvc repro -f <stage>`)"
"""The usual remedy for a damaged pipeline output; `remedy` names the stage where the path tells it."""

_STAGE_OF = {("data", "world"): "world", ("data", "concepts"): "concepts", ("data", "masks"): "masks",
             ("models", "base"): "world", ("models", "finetune"): "finetune", ("models", "ablations"): "ablations"}


def remedy(path: str | Path, stage: str = "") -> str:
    """What to do about a missing or damaged pipeline output at `path`: restore it from the DVC cache or re-run
    the stage that writes it (models/pretrain: the committed checkpoints); `stage`: the writer, when the path
    is not one of the pipeline's own folders."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == ("models", "pretrain"):
            return "restore it (`git checkout models/pretrain`) or rebuild it (`make pretrain`)"
        writer = _STAGE_OF.get(parts[i:i + 2])
        if writer:
            out = Path(*parts[:i + 2])
            return f"restore it from the DVC cache (`dvc checkout {out}`) or re-run its stage (`dvc repro -f {writer}`)"
    return f"re-run the {stage} stage (`dvc repro -f {stage}`)" if stage else RERUN


class CorruptFile(ValueError):
    """A file that exists but cannot be read as what it should be; the message names it and the remedy."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_sha256(obj: Any, **dumps: Any) -> str:
    """SHA-256 (hex) of `obj` as JSON with sorted keys (`dumps`: more `json.dumps` options): the cache key of
    everything that decides a result."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, **dumps).encode()).hexdigest()


def tensors_sha256(*tensors: Any) -> str:
    """SHA-256 (hex) of the tensors' bytes in order (values only, not dtype or shape): identical weights or data
    give the same key. Duck-typed on torch's Tensor, so this module does not import torch."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def nan_to_none(v: Any) -> Any:
    """NaN (one seed: no interval) → None, so JSON stays valid JSON; anything else unchanged."""
    return None if isinstance(v, float) and math.isnan(v) else v


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which follows YAML 1.1, plus YAML 1.2's exponent floats without a dot (`5e-07`): what
    `dvc exp run -S finetune.lr=5e-7` writes into params.yaml, and what PyYAML alone would read as a string."""


_YAMLLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def _duplicate(node: yaml.Node, key: str = "") -> str | None:
    """The dotted key of the first mapping key given twice (PyYAML would keep the last silently), or None."""
    pairs = node.value if isinstance(node, yaml.MappingNode) else []
    keys = [k.value for k, _ in pairs]
    if repeated := next((k for i, k in enumerate(keys) if k in keys[:i]), None):
        return f"{key}{repeated}"
    inside = [(f"{key}{k.value}.", v) for k, v in pairs] if pairs else \
        [(f"{key}{i}.", v) for i, v in enumerate(node.value)] if isinstance(node, yaml.SequenceNode) else []
    return next(filter(None, (_duplicate(v, k) for k, v in inside)), None)


def read_yaml(path: str | Path, what: str = "YAML file", error: type[ValueError] = ValueError) -> Any:
    """A YAML file's data, refusing what PyYAML would read silently: a key given twice (by its dotted key) and an
    empty file; `error` naming the file otherwise too (missing, not valid YAML)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=_YAMLLoader)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if node is None:
        raise error(f"{path}: empty {what}")
    if repeated := _duplicate(node):
        raise error(f"{path}: {repeated}: duplicate key")
    return yaml.load(text, Loader=_YAMLLoader)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as stable, sorted, indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, fix: str | None = None) -> Any:
    """A JSON file; missing, non-UTF-8 or truncated, the error names it and says `fix` (default: `remedy`)."""
    path = Path(path)
    fix = fix or remedy(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {fix}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{path}: not UTF-8 text (byte {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        raise CorruptFile(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {fix}") from None


def read_npz(path: str | Path, fix: str | None = None, sha: str | None = None) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles), read in full so that damage shows here; `sha`: the SHA-256 its
    manifest recorded, checked first. Errors name the file and say `fix` (default: `remedy`)."""
    path = Path(path)
    fix = fix or remedy(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {fix}")
    if sha is not None and sha256(path) != sha:
        raise CorruptFile(f"{path}: its SHA-256 is not the one its manifest recorded (changed or damaged "
                          f"since it was written); {fix}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise CorruptFile(f"{path}: damaged or truncated ({type(e).__name__}: {e}); {fix}") from None


def first_line(err: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message` (at most `limit` characters of it), for one-line errors; safe for
    exceptions without a message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


def read_torch(path: str | Path, fix: str | None = None, map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never code. A file holding anything
    else is refused, and a damaged one named, each with `fix` (never the advice to allow pickled code)."""
    import torch  # heavy; this module is also the notebooks' light-weight file layer

    path = Path(path)
    fix = fix or remedy(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = [line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise CorruptFile(f"{path}: refused: it holds objects other than tensors and plain containers"
                          f"{' (' + why[0].strip()[:200] + ')' if why else ''}, and cftlib loads no pickled code; "
                          f"{fix}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:  # an EOFError may carry no message
        raise CorruptFile(f"{path}: damaged or truncated ({first_line(e)}); {fix}") from None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """The image files in `folder`, sorted; hidden files (macOS `._x.jpg` resource forks, `.DS_Store`) skipped."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def list_folders(folder: str | Path) -> list[Path]:
    """The non-hidden sub-folders of `folder` (an image folder's classes), sorted; never deeper (ImageNet has
    1.3 M files)."""
    return sorted(d for d in Path(folder).iterdir() if d.is_dir() and not d.name.startswith("."))


MIN_SIDE = 8
"""Images smaller than this a side are refused: a thumbnail or a broken file, whose resizing to a model input would
invent nearly every pixel."""


def read_image(path: str | Path):
    """An 8-bit RGB PIL image as a viewer shows it: EXIF orientation applied, 16-bit grey scaled to 8 bits (PIL's
    own conversion clips it to white), palette images through RGBA (their transparency honoured, then dropped
    as for any alpha). A damaged, unreadable or too small (< MIN_SIDE px) image is an error naming the file."""
    path = Path(path)
    fix = "replace it, or remove it from the folder"
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except UnidentifiedImageError:
        raise CorruptFile(f"{path}: not an image PIL can read; {fix}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptFile(f"{path}: damaged or truncated image ({e}); {fix}") from None
    if min(im.size) < MIN_SIDE:
        raise CorruptFile(f"{path}: {im.width}×{im.height} px; images need at least {MIN_SIDE} px a side; {fix}")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey (PNG): scale 0..65535 to 0..255
        grey = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        raise CorruptFile(f"{path}: a floating-point image (mode F), whose range is unknown; save it as 8-bit; {fix}")
    elif im.mode == "P":
        im = im.convert("RGBA")
    return im.convert("RGB")


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as CSV (no index), atomically, with stable float formatting."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
