"""The synthetic bird world: a spurious-correlation benchmark with exact part masks.

Species are defined by their parts (beak, wing pattern, tail, crest, breast, cap); the training data also
ties each species to a home habitat (background) and a home body colour with probabilities `rho_bg` and
`rho_color`, the two shortcuts a ViT learns instead of the parts. Habitats and colours are shared: each is
home to several species (as context on ImageNet narrows a class to a group), and no two species share both.
Out-of-distribution splits break
one shortcut each, mirroring the paper's benchmarks (ImageNet-v2, -A, -R, ObjectNet/SI-Score).
Birds are drawn as implicit shapes in a canonical body frame, vectorised over a batch with numpy,
rendered at `supersample`× and box-downsampled; the part-label map is downsampled by coverage.
"""

from __future__ import annotations

import io
import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cftlib.core.config import World
from cftlib.core.io import atomic_path, read_json, read_npz, remedy, sha256, write_json
from cftlib.core.progress import bar

PARTS = ("body", "head", "beak", "wing", "tail", "crest", "eye", "breast", "cap")
"""Part names; the part-label map stores index + 1 (0 is background)."""

ATTRIBUTES = {
    "beak": ("short", "long", "hooked", "conical"),
    "wing": ("plain", "striped", "spotted", "barred"),
    "tail": ("fan", "forked", "pointed"),
    "crest": ("none", "tuft"),
    "breast": ("plain", "pale", "spotted"),
    "cap": ("none", "black"),
}
"""The part attributes that define a species."""

PHRASES = {
    "beak": {"short": "short stubby beak", "long": "long thin beak", "hooked": "hooked beak",
             "conical": "thick conical beak"},
    "wing": {"plain": "plain wings", "striped": "striped wings", "spotted": "spotted wings",
             "barred": "barred wings"},
    "tail": {"fan": "fan-shaped tail", "forked": "forked tail", "pointed": "long pointed tail"},
    "crest": {"tuft": "tufted crest"},
    "breast": {"plain": "plain breast", "pale": "pale breast", "spotted": "spotted breast"},
    "cap": {"black": "black cap"},
}
"""Field-guide wording of each attribute: the text the offline concept proposer reads."""

HABITATS = ("water", "reeds", "sand", "snow", "foliage", "rock", "tiles", "sky", "bark", "pebbles")
COLORS = {
    "red": (200, 45, 40), "orange": (235, 135, 35), "yellow": (235, 215, 60), "green": (70, 165, 60),
    "teal": (40, 170, 165), "blue": (50, 85, 205), "purple": (135, 65, 185), "pink": (235, 125, 175),
    "brown": (125, 82, 45), "gray": (140, 140, 140),
}
BEAK_RGB = np.array([245, 175, 40], np.float32) / 255
_NAME_A = ("ashen", "dusk", "fen", "glen", "moor", "sedge", "tarn", "vale", "heath", "brook", "cinder",
           "marl", "holt", "mere", "scree", "carr")
_NAME_B = ("piper", "warbler", "finch", "lark", "tern", "plover", "wren", "shrike", "dipper", "pipit",
           "bunting", "thrush")

# Each split: which shortcut it keeps or breaks. None = the world's rho; "uniform" = independent.
SPLIT_SPECS = {
    "train": dict(),
    "val": dict(),
    "test": dict(),
    "v2": dict(variant="v2"),
    "bg_conflict": dict(rho_bg=0.0),
    "color_conflict": dict(rho_color=0.0),
    "pose": dict(pose="strong"),
    "rendition": dict(style="rendition", rho_bg="none"),
    "bg_random": dict(rho_bg="uniform"),
    "parts_only": dict(rho_bg="uniform", rho_color="uniform"),  # only the parts tell species apart
    "dfr": dict(rho_bg="uniform"),  # habitat-balanced labelled images for last-layer retraining (cftlib.training.dfr)
}
SPLITS = tuple(SPLIT_SPECS)


# ----------------------------------------------------------------------------- species and guide

@dataclass(frozen=True)
class Species:
    name: str
    beak: str
    wing: str
    tail: str
    crest: str
    breast: str
    cap: str
    habitat: int  # index into HABITATS: the home habitat
    color: int  # index into COLORS: the home body colour

    @property
    def description(self) -> str:
        parts = [f"a {PHRASES['beak'][self.beak]}", PHRASES["wing"][self.wing], f"a {PHRASES['tail'][self.tail]}",
                 f"a {PHRASES['breast'][self.breast]}"]
        parts += [f"a {PHRASES[k][getattr(self, k)]}" for k in ("crest", "cap") if getattr(self, k) != "none"]
        return f"The {self.name} has {', '.join(parts[:-1])} and {parts[-1]}."

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ATTRIBUTES}


def make_species(n: int, seed: int) -> list[Species]:
    """`n` species as attribute combinations, pairwise differing in at least two parts, with invented
    names and one home habitat and colour each: habitats round-robin, colours shifted by one every full
    round, so that each habitat and each colour is home to about n / 10 species and no two species share
    both (for n <= 100)."""
    rng = np.random.default_rng([seed, 7001])
    combos = sorted(itertools.product(*ATTRIBUTES.values()))
    chosen: list[tuple] = []
    for _ in range(64):  # greedy over seeded orders until one yields n valid species
        chosen = []
        for i in rng.permutation(len(combos)):
            if all(sum(a != b for a, b in zip(combos[i], d)) >= 2 for d in chosen):
                chosen.append(combos[i])
            if len(chosen) == n:
                break
        if len(chosen) == n and all(len({c[k] for c in chosen}) < n for k in range(len(ATTRIBUTES))):
            break
    else:
        raise ValueError(f"world.n_species={n}: found no {n} species that differ pairwise in two parts "
                         f"with no single part telling all apart")
    names = sorted(f"{a} {b}" for a in _NAME_A for b in _NAME_B)
    names = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
    habitats, colors = rng.permutation(len(HABITATS)), rng.permutation(len(COLORS))
    nh = len(HABITATS)
    return [Species(names[i], *chosen[i], int(habitats[i % nh]), int(colors[(i + i // nh) % len(COLORS)]))
            for i in range(n)]


def attribute_table(species: list[Species]) -> tuple[np.ndarray, list[int]]:
    """Each species' value index of each attribute (n_species, n_attributes), and the attributes' sizes:
    the part labels of the pre-training set (a field guide's attribute annotations, as CUB has)."""
    table = np.array([[ATTRIBUTES[a].index(getattr(s, a)) for a in ATTRIBUTES] for s in species], np.int64)
    return table, [len(v) for v in ATTRIBUTES.values()]


def concept_parts(species: list[Species]) -> list[list[str]]:
    """Per species, the parts its field-guide description names (beak, wings, tail and breast; crest and cap where
    it has one): the world's own concepts, known before any proposer runs."""
    return [sorted(a for a in ATTRIBUTES if getattr(s, a) != "none") for s in species]


def field_guide(species: list[Species]) -> list[dict]:
    """One entry per species: its name, part attributes and a one-sentence description."""
    return [{"label": i, "name": s.name, "description": s.description, "parts": s.attributes(),
             "home_habitat": HABITATS[s.habitat], "home_color": list(COLORS)[s.color]}
            for i, s in enumerate(species)]


# ----------------------------------------------------------------------------- geometry

def _ellipse(u, v, cu, cv, a, b, angle=0.0):
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    du, dv = u - cu, v - cv
    return ((c * du + s * dv) / a) ** 2 + ((-s * du + c * dv) / b) ** 2 <= 1.0


def _polygon(u, v, pts):
    """Inside a convex polygon given counter-clockwise."""
    inside = np.ones(u.shape, bool)
    for (u0, v0), (u1, v1) in zip(pts, pts[1:] + pts[:1]):
        inside &= (u1 - u0) * (v - v0) - (v1 - v0) * (u - u0) >= 0
    return inside


BEAKS = {  # shapes far enough apart to tell at 48 px (v1's differed by 1-2 px)
    "short": lambda u, v: _polygon(u, v, [(0.53, 0.17), (0.64, 0.215), (0.53, 0.26)]),
    "long": lambda u, v: _polygon(u, v, [(0.53, 0.17), (0.96, 0.205), (0.53, 0.25)]),
    "hooked": lambda u, v: _polygon(u, v, [(0.53, 0.14), (0.78, 0.23), (0.53, 0.31)])
    | _polygon(u, v, [(0.64, 0.29), (0.76, 0.0), (0.86, 0.22)]),
    "conical": lambda u, v: _polygon(u, v, [(0.53, 0.04), (0.82, 0.215), (0.53, 0.39)]),
}
TAILS = {
    "fan": lambda u, v: _polygon(u, v, [(-0.34, 0.05), (-0.80, 0.32), (-0.82, -0.26)])
    & ((u + 0.34) ** 2 + (v - 0.03) ** 2 <= 0.46 ** 2),
    "forked": lambda u, v: _polygon(u, v, [(-0.34, 0.11), (-0.90, 0.36), (-0.34, 0.0)])
    | _polygon(u, v, [(-0.34, 0.04), (-0.90, -0.30), (-0.34, -0.08)]),
    "pointed": lambda u, v: _polygon(u, v, [(-0.34, 0.09), (-0.98, 0.01), (-0.34, -0.07)]),
}
CRESTS = {
    "none": lambda u, v: np.zeros(u.shape, bool),
    "tuft": lambda u, v: _polygon(u, v, [(0.27, 0.30), (0.37, 0.34), (0.22, 0.60)])
    | _polygon(u, v, [(0.33, 0.35), (0.45, 0.35), (0.37, 0.66)])
    | _polygon(u, v, [(0.42, 0.34), (0.52, 0.30), (0.52, 0.60)]),
}
WING = dict(cu=-0.06, cv=0.04, a=0.31, b=0.16, angle=-8.0)
BREAST = dict(cu=0.22, cv=-0.12, a=0.30, b=0.18, angle=20.0)  # the lower front of the body, under the wing
CAP_FROM = 0.25  # the cap is the head above this height (the eye sits on its lower edge)


def _wing_pattern(u, v, kind: str):
    """Pattern indicator inside the wing, in the wing's own frame (period >= 2 px at 48 px)."""
    c, s = np.cos(np.radians(WING["angle"])), np.sin(np.radians(WING["angle"]))
    du, dv = u - WING["cu"], v - WING["cv"]
    wu, wv = c * du + s * dv, -s * du + c * dv
    if kind == "striped":
        return np.sin(2 * np.pi * wv / 0.11) > 0.2
    if kind == "barred":
        return np.sin(2 * np.pi * wu / 0.13) > 0.2
    if kind == "spotted":
        gu, gv = (wu / 0.12) % 1.0 - 0.5, (wv / 0.12 + 0.5) % 1.0 - 0.5
        return gu ** 2 + gv ** 2 <= 0.3 ** 2
    return np.zeros(u.shape, bool)


def _breast_spots(u, v):
    """Spots on the breast, in the body frame (period 0.13: about 3 px at 48 px)."""
    gu, gv = (u / 0.13) % 1.0 - 0.5, (v / 0.13 + 0.5) % 1.0 - 0.5
    return gu ** 2 + gv ** 2 <= 0.32 ** 2


def _part_masks(u, v, sp: list[Species], labels: np.ndarray) -> np.ndarray:
    """Label map (n, H, W) of the canonical bird, drawn back to front (later parts overwrite)."""
    lab = np.zeros(u.shape, np.uint8)
    pid = {p: i + 1 for i, p in enumerate(PARTS)}

    def by_attr(attr, shapes, part):
        for value, shape in shapes.items():
            idx = np.flatnonzero([getattr(sp[y], attr) == value for y in labels])
            if idx.size:
                m = shape(u[idx], v[idx])
                lab[idx] = np.where(m, pid[part], lab[idx])

    by_attr("tail", TAILS, "tail")
    by_attr("crest", CRESTS, "crest")
    body = _ellipse(u, v, 0.0, 0.0, 0.42, 0.24, 10.0)
    lab[body] = pid["body"]
    lab[body & _ellipse(u, v, **BREAST)] = pid["breast"]
    lab[_ellipse(u, v, **WING)] = pid["wing"]
    head = _ellipse(u, v, 0.40, 0.22, 0.17, 0.17)
    lab[head] = pid["head"]
    by_attr("cap", {"black": lambda u, v: _ellipse(u, v, 0.40, 0.22, 0.17, 0.17) & (v >= CAP_FROM)}, "cap")
    by_attr("beak", BEAKS, "beak")
    lab[_ellipse(u, v, 0.46, 0.27, 0.065, 0.065)] = pid["eye"]
    return lab


# ----------------------------------------------------------------------------- textures

def _noise(rng, n, x, y, k=4, fmin=1.5, fmax=5.0):
    """Smooth random field: a sum of `k` random plane waves per image, in [-1, 1]."""
    f, th, ph = (rng.uniform(lo, hi, (n, k, 1, 1)).astype(np.float32)
                 for lo, hi in ((fmin, fmax), (0, 2 * np.pi), (0, 2 * np.pi)))
    waves = np.sin(f * (np.cos(th) * x + np.sin(th) * y) + ph)
    return waves.mean(1) * np.sqrt(2.0 / k) * 1.2


def _mix(a, b, t):
    t = np.clip(t, 0, 1)[..., None]
    return np.asarray(a, np.float32) / 255 * (1 - t) + np.asarray(b, np.float32) / 255 * t


def _texture(name: str, rng, n: int, x, y):
    """Habitat backgrounds (n, H, W, 3) in [0, 1]; random phase and frequency per image."""
    ph = lambda: rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)  # noqa: E731
    jit = lambda lo, hi: rng.uniform(lo, hi, (n, 1, 1)).astype(np.float32)  # noqa: E731
    if name == "water":
        w = np.sin(jit(10, 16) * y + 1.5 * np.sin(jit(2, 4) * x + ph()) + ph())
        return _mix((30, 80, 160), (120, 185, 235), (w > 0.55) + 0.25 * _noise(rng, n, x, y))
    if name == "reeds":
        s = np.sin(jit(22, 30) * x + 1.2 * np.sin(jit(1.5, 3) * y + ph()) + ph())
        return _mix((185, 170, 105), (55, 105, 40), (s > 0.45) * 1.0 + 0.1 * _noise(rng, n, x, y))
    if name == "sand":
        r = np.sin(jit(8, 12) * (x + 0.6 * y) + 0.8 * _noise(rng, n, x, y) + ph())
        return _mix((225, 195, 140), (175, 140, 90), 0.35 + 0.3 * r)
    if name == "snow":
        blobs = _noise(rng, n, x, y, fmin=2, fmax=4)
        return _mix((245, 248, 252), (170, 190, 215), 0.6 * (blobs > 0.35) + 0.1 * blobs)
    if name == "foliage":
        leaf = _noise(rng, n, x, y, k=6, fmin=6, fmax=10)
        return _mix((25, 80, 25), (120, 180, 60), (leaf > 0.1) * 0.8 + 0.2 * _noise(rng, n, x, y))
    if name == "rock":
        cells = np.abs(np.sin(jit(5, 8) * x + ph()) * np.sin(jit(5, 8) * y + ph() + 0.7 * x))
        return _mix((70, 68, 66), (150, 145, 138), (cells > 0.12) * 0.85 + 0.15 * _noise(rng, n, x, y))
    if name == "tiles":
        f = jit(6, 9)
        t = np.sign(np.sin(f * x + ph())) * np.sign(np.sin(f * y + ph()))
        return _mix((120, 30, 50), (230, 215, 190), 0.5 + 0.5 * t)
    if name == "sky":
        clouds = _noise(rng, n, x, y, k=5, fmin=2, fmax=5)
        return _mix((70, 140, 225), (250, 250, 255), 0.25 * (1 - y) + (clouds > 0.3) * 0.7)
    if name == "bark":
        cx, cy = jit(-1.5, 1.5), jit(-1.5, 1.5)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        return _mix((90, 55, 25), (200, 150, 90), 0.5 + 0.5 * np.sin(jit(14, 20) * r + ph()))
    if name == "pebbles":
        f = jit(5, 7)
        gx, gy = (f * x + ph()) % (2 * np.pi) - np.pi, (f * y + ph()) % (2 * np.pi) - np.pi
        return _mix((150, 120, 95), (215, 210, 200), (gx ** 2 + gy ** 2 < 4.0) * 1.0)
    raise KeyError(name)


# ----------------------------------------------------------------------------- rendering

POSES = {  # (centre offset, scale range, rotation range in degrees)
    "normal": (0.06, (0.92, 1.08), 15.0),
    "strong": (0.30, (0.52, 0.72), 80.0),
}


def _grid(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c)  # x (left to right), y (top to bottom), in [-1, 1]


def _edges(mask):
    """Pixels of `mask` with a 4-neighbour outside it (one pixel wide)."""
    inner = mask.copy()
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return mask & ~inner


def render(labels, habitats, colors, poses, species: list[Species], size: int, supersample: int,
           style: str, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Draw birds. Returns uint8 images (n, size, size, 3) and part-label maps (n, size, size)."""
    n, s = len(labels), supersample
    hi = size * s
    x, y = _grid(hi)
    cx, cy, scale, angle, flip = (poses[:, i, None, None] for i in range(5))
    th = np.radians(angle)
    X, Y = x - cx, -(y - cy)
    u = (np.cos(th) * X + np.sin(th) * Y) / scale * flip
    v = (-np.sin(th) * X + np.cos(th) * Y) / scale
    lab = _part_masks(u, v, species, labels)

    # paint by index: one palette gather instead of a pass per part (wing pattern and pupil get their own slots)
    pid = {p: i + 1 for i, p in enumerate(PARTS)}
    pattern, pupil, spots = len(PARTS) + 1, len(PARTS) + 2, len(PARTS) + 3
    wing, breast = lab == pid["wing"], lab == pid["breast"]
    paint = lab.copy()
    for kind in ATTRIBUTES["wing"][1:]:
        idx = np.flatnonzero([species[k].wing == kind for k in labels])
        if idx.size:
            paint[idx] = np.where(wing[idx] & _wing_pattern(u[idx], v[idx], kind), pattern, paint[idx])
    idx = np.flatnonzero([species[k].breast == "spotted" for k in labels])
    if idx.size:
        paint[idx] = np.where(breast[idx] & _breast_spots(u[idx], v[idx]), spots, paint[idx])
    paint[(lab == pid["eye"]) & ((u - 0.46) ** 2 + (v - 0.27) ** 2 <= 0.04 ** 2)] = pupil
    body = np.array(list(COLORS.values()), np.float32)[colors] / 255  # (n, 3)
    wing_col = np.clip(body * np.where(body.mean(-1, keepdims=True) > 0.45, 0.72, 1.35), 0, 1)
    palette = np.empty((n, spots + 1, 3), np.float32)
    palette[:, :pupil] = body[:, None]
    plain = np.array([species[k].breast == "plain" for k in labels])[:, None]
    palette[:, pid["breast"]] = np.where(plain, body, 0.25 * body + 0.75 * 0.96)  # pale and spotted: near white
    palette[:, spots] = 0.1
    palette[:, pid["cap"]] = 0.08
    palette[:, pid["tail"]] = body * 0.85
    palette[:, pid["wing"]] = wing_col
    palette[:, pattern] = np.where(wing_col.mean(-1, keepdims=True) > 0.5, 0.12, 0.93)  # visible on any colour
    palette[:, pid["beak"]] = BEAK_RGB
    palette[:, pid["eye"]] = 0.95
    palette[:, pupil] = 0.05
    img = palette[np.arange(n)[:, None, None], paint]
    obj = lab > 0
    if style == "rendition":  # ImageNet-R: flat fills, ink outlines, paper background
        outline = np.zeros_like(obj)
        for k in range(1, len(PARTS) + 1):
            outline |= _edges(lab == k)
        img[outline] = 0.05
        img[~obj] = 1.0
        img *= np.where(obj, 1.0, rng.uniform(0.86, 1.0, (n, 1, 1)).astype(np.float32))[..., None]
    else:  # habitat behind, and a soft dark rim around the silhouette and the beak
        bg = np.empty((n, hi, hi, 3), np.float32)
        for h in np.unique(habitats):
            idx = np.flatnonzero(habitats == h)
            bg[idx] = _texture(HABITATS[h], rng, idx.size, x, y)
        img = np.where(obj[..., None], img, bg)
        img[_edges(obj) | _edges(lab == pid["beak"])] *= 0.45

    # box-downsample pixels; part labels by coverage: object where >= 1/4 covered, so thin tips and
    # prongs stay in the mask, labelled with the part covering most of the pixel
    offsets = [(i, j) for i in range(s) for j in range(s)]
    img = sum(img[:, i::s, j::s] for i, j in offsets) / (s * s)
    blocks = [lab[:, i::s, j::s] for i, j in offsets]
    cov = np.stack([sum((b == k).astype(np.uint8) for b in blocks) for k in range(len(PARTS) + 1)], -1)
    parts = np.where(4 * (s * s - cov[..., 0]) >= s * s, cov[..., 1:].argmax(-1) + 1, 0).astype(np.uint8)
    drawn = cov[..., 1:].any((1, 2))  # (n, parts): present at high resolution
    kept = np.stack([(parts == k + 1).any((1, 2)) for k in range(len(PARTS))], -1)
    for i, k in zip(*np.nonzero(drawn & ~kept)):  # a tiny part keeps its best-covered pixel
        r, c = np.unravel_index(cov[i, :, :, k + 1].argmax(), (size, size))
        parts[i, r, c] = k + 1

    if style != "rendition":  # lighting: gain, tilt and noise
        xs, ys = _grid(size)
        gain = rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32)
        tilt = rng.uniform(-0.1, 0.1, (n, 2, 1, 1)).astype(np.float32)
        img = img * gain + (tilt[:, 0] * xs + tilt[:, 1] * ys)[..., None]
    img += noise * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), parts


# ----------------------------------------------------------------------------- splits

def _assign(rng, labels, home: np.ndarray, rho, n_values: int) -> np.ndarray:
    """Nuisance value per image: the species' home with exact frequency `rho`, else another value."""
    n = len(labels)
    home = home[labels]
    if rho == "uniform":
        return rng.integers(0, n_values, n)
    if rho == "none":
        return np.full(n, -1)
    at_home = np.zeros(n, bool)
    at_home[rng.permutation(n)[: int(round(rho * n))]] = True
    other = (home + rng.integers(1, n_values, n)) % n_values
    return np.where(at_home, home, other)


def _poses(rng, n: int, kind: str) -> np.ndarray:
    off, (s0, s1), rot = POSES[kind]
    return np.stack([rng.uniform(-off, off, n), rng.uniform(-off, off, n), rng.uniform(s0, s1, n),
                     rng.uniform(-rot, rot, n), rng.choice([-1.0, 1.0], n)], 1).astype(np.float32)


def split_targets(cfg: World, split: str) -> dict[str, float]:
    """The correlations a split is meant to have (measured ones must match within sampling error)."""
    spec = SPLIT_SPECS[split]
    out = {}
    for key, n_values in (("rho_bg", len(HABITATS)), ("rho_color", len(COLORS))):
        rho = spec.get(key, getattr(cfg, key))
        if rho != "none":
            out[key] = 1.0 / n_values if rho == "uniform" else float(rho)
    return out


def make_split(cfg: World, species: list[Species], split: str, seed: int, progress: bool = False,
               n: int | None = None, stream: int | None = None) -> dict:
    """Generate one split: arrays `images`, `parts`, `label`, `habitat`, `color`, `pose`. `n` overrides the
    split's image count; `stream` draws an independent set of the same kind (the pre-training sets)."""
    spec = SPLIT_SPECS[split]
    n = cfg.splits[split] if n is None else n
    rng = np.random.default_rng([seed, SPLITS.index(split), *([] if stream is None else [1000 + stream])])
    labels = rng.permutation(np.arange(n) % len(species))
    hab = _assign(rng, labels, np.array([s.habitat for s in species]), spec.get("rho_bg", cfg.rho_bg), len(HABITATS))
    col = _assign(rng, labels, np.array([s.color for s in species]), spec.get("rho_color", cfg.rho_color), len(COLORS))
    poses = _poses(rng, n, spec.get("pose", "normal"))
    v2 = spec.get("variant") == "v2"  # ImageNet-v2: same world, re-collected with a slightly different camera
    supersample = cfg.supersample + 1 if v2 else cfg.supersample
    noise = cfg.noise * 1.5 if v2 else cfg.noise
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), np.uint8)
    parts = np.empty((n, cfg.image_size, cfg.image_size), np.uint8)
    for a in bar(range(0, n, cfg.chunk), desc=f"world/{split}", progress=progress, unit="chunks"):
        b = min(a + cfg.chunk, n)
        images[a:b], parts[a:b] = render(labels[a:b], hab[a:b], col[a:b], poses[a:b], species, cfg.image_size,
                                         supersample, spec.get("style", "natural"), noise, rng)
    return dict(images=images, parts=parts, label=labels.astype(np.int16), habitat=hab.astype(np.int16),
                color=col.astype(np.int16), pose=poses)


def measure(arrays: dict, species: list[Species]) -> dict[str, float]:
    """Measured shortcut strength: share of images whose habitat / colour is the species' home."""
    y = arrays["label"]
    out = {}
    if (arrays["habitat"] >= 0).all():
        out["rho_bg"] = float(np.mean(arrays["habitat"] == np.array([s.habitat for s in species])[y]))
    out["rho_color"] = float(np.mean(arrays["color"] == np.array([s.color for s in species])[y]))
    return out


# ----------------------------------------------------------------------------- storage

def save_npz(path: Path, arrays: dict) -> None:
    """Compressed .npz with fixed zip timestamps, so identical arrays give identical bytes."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for key in sorted(arrays):  # whole members via writestr: headers do not vary across Python releases
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def generate(cfg: World, seed: int, out_dir: str | Path, progress: bool = False) -> dict:
    """Generate every split of the world into `out_dir` (written under a temporary name, then renamed):
    `<split>.npz` + `<split>.json` manifests, `field_guide.json` and `world.json`. Returns the manifests."""
    species = make_species(cfg.n_species, seed)
    manifests = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split in cfg.splits:
            arrays = make_split(cfg, species, split, seed, progress)
            save_npz(tmp / f"{split}.npz", arrays)
            manifests[split] = dict(split=split, n=len(arrays["label"]), seed=seed, spec=SPLIT_SPECS[split],
                                    target=split_targets(cfg, split), measured=measure(arrays, species),
                                    counts=np.bincount(arrays["label"], minlength=len(species)).tolist(),
                                    sha256=sha256(tmp / f"{split}.npz"))
            write_json(tmp / f"{split}.json", manifests[split])
        write_json(tmp / "field_guide.json", field_guide(species))
        write_json(tmp / "world.json", dict(parts=list(PARTS), attributes=ATTRIBUTES, habitats=list(HABITATS),
                                            colors=list(COLORS), seed=seed, splits=list(cfg.splits),
                                            image_size=cfg.image_size, n_species=cfg.n_species))
    return manifests


def load_split(data_dir: str | Path, split: str) -> dict[str, np.ndarray]:
    """Arrays of one generated split (see `make_split`)."""
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        have = sorted(p.stem for p in Path(data_dir).glob("*.npz")) if Path(data_dir).is_dir() else []
        raise FileNotFoundError(f"{path}: no such split (have: {', '.join(have) or 'nothing'}); run the world stage")
    manifest = path.with_suffix(".json")
    sha = read_json(manifest).get("sha256") if manifest.is_file() else None  # checked: DVC sees size and mtime only
    return read_npz(path, remedy(path, "world"), sha)


def load_guide(data_dir: str | Path) -> list[dict]:
    """The field guide written by `generate`."""
    path = Path(data_dir) / "field_guide.json"
    return read_json(path, remedy(path, "world"))


# ----------------------------------------------------------------------------- the world's vocabulary

PART_WORDS = {
    "eye": ("eye", "eyes", "eyering"),
    "beak": ("beak", "beaks", "bill", "nostril", "nostrils"),
    "crest": ("crest", "tuft", "tufted"),
    "tail": ("tail", "tails"),
    "wing": ("wing", "wings", "feathers", "shoulder"),
    "cap": ("cap", "crown"),
    "breast": ("breast", "belly", "chest"),
    "head": ("head", "face", "throat"),
    "body": ("body", "back", "plumage"),
}
"""Words naming each world part, most specific first: "bird tail feathers" is the tail, "bird eye ring"
the eye. "bird" alone (or "object") is the whole bird."""
WHOLE = ("bird", "object")


def concept_part(text: str) -> str | None:
    """The world part a concept phrase names ("long thin beak" → beak, "bird" → all), else None."""
    words = set(text.lower().replace("-", " ").split())
    for part, names in PART_WORDS.items():
        if words & set(names):
            return part
    return "all" if words and words <= {*WHOLE, "a", "an", "the", "whole"} else None


def part_mask(parts: np.ndarray, part: str) -> np.ndarray:
    """Exact mask of a part (or "all": the silhouette) from a part-label map (index + 1, 0 background)."""
    return parts > 0 if part == "all" else parts == PARTS.index(part) + 1
