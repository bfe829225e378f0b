"""The world keeps its promises: determinism, masks that match the pixels, species that take parts
to tell apart, the planted correlations at their parameters, and OOD splits that break them."""

import itertools
import json

import numpy as np
import pytest

from cftlib.core import config, io
from cftlib.data import world

SPLITS = list(world.SPLIT_SPECS)


@pytest.fixture(scope="module")
def splits(small_world):
    cfg, seed, out = small_world
    return {s: world.load_split(out, s) for s in cfg.splits}


@pytest.fixture(scope="module")
def species(small_world):
    cfg, seed, _ = small_world
    return world.make_species(cfg.n_species, seed)


def test_same_seed_gives_identical_bytes(tmp_path, small_world):
    cfg, seed, out = small_world
    world.generate(cfg, seed, tmp_path / "again")
    for f in sorted(out.iterdir()):
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes(), f.name
    for split in cfg.splits:  # each manifest carries its split's checksum, which load_split verifies
        assert json.loads((out / f"{split}.json").read_text())["sha256"] == io.sha256(out / f"{split}.npz")


def test_other_seed_gives_other_world(small_world, splits):
    cfg, seed, _ = small_world
    other = world.make_split(cfg, world.make_species(cfg.n_species, seed + 1), "train", seed + 1)
    assert not np.array_equal(other["images"], splits["train"]["images"])


def test_arrays_have_documented_shapes(small_world, splits):
    cfg, _, out = small_world
    for s, a in splits.items():
        n = cfg.splits[s]
        assert a["images"].shape == (n, cfg.image_size, cfg.image_size, 3) and a["images"].dtype == np.uint8
        assert a["parts"].shape == (n, cfg.image_size, cfg.image_size) and a["parts"].max() <= len(world.PARTS)
        assert a["pose"].shape == (n, 5)
        assert np.bincount(a["label"]).max() - np.bincount(a["label"]).min() <= 1  # balanced classes
        manifest = json.loads((out / f"{s}.json").read_text())
        assert manifest["n"] == n


def test_every_drawn_part_has_a_mask_and_absent_parts_none(splits, species):
    for s, a in splits.items():
        present = np.stack([(a["parts"] == k).any((1, 2)) for k in range(1, len(world.PARTS) + 1)], 1)
        expected = np.ones_like(present)
        for part in ("crest", "cap"):  # optional parts: drawn only where the species has them
            expected[:, world.PARTS.index(part)] = [getattr(species[y], part) != "none" for y in a["label"]]
        assert (present == expected).all(), \
            f"{s}: parts missing or spurious in images {np.nonzero((present != expected).any(1))[0]}"


def _interior(m):
    out = m.copy()
    out[:, 1:-1, 1:-1] &= m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]
    out[:, [0, -1]] = False
    out[:, :, [0, -1]] = False
    return out


@pytest.mark.parametrize("style, share", [("natural", 0.99), ("rendition", 0.9)])  # rendition: ink between parts
def test_masks_agree_with_pixels(species, style, share):
    """Re-render the same birds with another body colour: exactly the pixels of the body-coloured
    parts change (up to the one-pixel blended rim), and beak and eye pixels do not."""
    n, size = 40, 48
    rng = np.random.default_rng(0)
    labels = np.arange(n) % len(species)
    habitats = rng.integers(0, len(world.HABITATS), n)
    poses = world._poses(rng, n, "normal")
    col_a = np.zeros(n, int)  # red ...
    col_b = np.full(n, list(world.COLORS).index("blue"))  # ... against blue
    img_a, parts_a = world.render(labels, habitats, col_a, poses, species, size, 2, style, 0.0,
                                  np.random.default_rng(1))
    img_b, parts_b = world.render(labels, habitats, col_b, poses, species, size, 2, style, 0.0,
                                  np.random.default_rng(1))
    assert np.array_equal(parts_a, parts_b)
    changed = np.abs(img_a.astype(int) - img_b).max(-1) > 3
    obj = parts_a > 0
    rim = obj.copy()
    rim[:, 1:] |= obj[:, :-1]
    rim[:, :-1] |= obj[:, 1:]
    rim[:, :, 1:] |= obj[:, :, :-1]
    rim[:, :, :-1] |= obj[:, :, 1:]
    assert not (changed & ~rim).any(), "pixels outside the object changed with the body colour"
    pid = {p: i + 1 for i, p in enumerate(world.PARTS)}
    coloured = _interior(np.isin(parts_a, [pid["body"], pid["head"], pid["tail"]]))
    assert changed[coloured].mean() > share
    fixed = _interior(np.isin(parts_a, [pid["beak"], pid["eye"]]))
    assert fixed.sum() > n and changed[fixed].mean() < 0.1  # their own colour, bar blended block edges


def test_union_of_parts_is_the_object(splits):
    for a in splits.values():
        union = np.zeros(a["parts"].shape, bool)
        for k in range(1, len(world.PARTS) + 1):
            part = a["parts"] == k
            assert not (union & part).any()  # parts are disjoint
            union |= part
        assert np.array_equal(union, a["parts"] > 0)
        assert 0.05 < union.mean() < 0.6  # a bird, not a speck or the whole frame


@pytest.mark.parametrize("n", [3, 4, 10, 18])
def test_species_need_parts_to_tell_apart(n):
    sp = world.make_species(n, 0)
    codes = [tuple(s.attributes().values()) for s in sp]
    for a, b in itertools.combinations(codes, 2):
        assert sum(x != y for x, y in zip(a, b)) >= 2
    for i, attr in enumerate(world.ATTRIBUTES):
        assert len({c[i] for c in codes}) < n, f"{attr} alone separates all species"
    assert len({s.name for s in sp}) == n
    for s in sp:  # the guide names parts, never the species' nuisance attributes
        assert s.name.split()[1] not in s.description.split()[3:]
        assert world.HABITATS[s.habitat] not in s.description


def test_too_many_species_fails_clearly():
    with pytest.raises(ValueError, match="n_species"):
        world.make_species(500, 0)


def test_measured_correlations_match_params(small_world):
    cfg, seed, out = small_world
    big = config.World(image_size=cfg.image_size, n_species=cfg.n_species, rho_bg=0.8, rho_color=0.7,
                       splits={s: 600 for s in SPLITS}, chunk=300)
    sp = world.make_species(big.n_species, seed)
    for s in SPLITS:
        a = world.make_split(big, sp, s, seed)
        measured, target = world.measure(a, sp), world.split_targets(big, s)
        assert measured.keys() == target.keys(), s
        for k in target:
            assert abs(measured[k] - target[k]) <= 0.03, (s, k, measured[k], target[k])


def test_ood_splits_break_their_shortcut(splits, species):
    home_bg = np.array([s.habitat for s in species])
    home_col = np.array([s.color for s in species])
    bg, col = splits["bg_conflict"], splits["color_conflict"]
    assert not (bg["habitat"] == home_bg[bg["label"]]).any()
    assert (bg["habitat"] >= 0).all()
    assert not (col["color"] == home_col[col["label"]]).any()
    assert (splits["rendition"]["habitat"] == -1).all()
    normal_rot = world.POSES["normal"][2]
    assert np.abs(splits["pose"]["pose"][:, 3]).max() > 2 * normal_rot
    assert np.abs(splits["test"]["pose"][:, 3]).max() <= normal_rot
    assert splits["pose"]["pose"][:, 2].max() < splits["test"]["pose"][:, 2].min()  # smaller birds


def test_guide_and_world_files(small_world, species):
    cfg, seed, out = small_world
    guide = world.load_guide(out)
    assert [g["description"] for g in guide] == [s.description for s in species]
    for g in guide:
        for attr, value in g["parts"].items():
            if value != "none":
                assert world.PHRASES[attr][value] in g["description"]


def test_missing_split_is_a_clear_error(small_world, tmp_path):
    _, _, out = small_world
    with pytest.raises(FileNotFoundError, match="nope.npz.*have: bg_conflict"):
        world.load_split(out, "nope")
    with pytest.raises(FileNotFoundError, match="run the world stage"):
        world.load_guide(tmp_path)


def test_failed_generation_leaves_nothing(tmp_path, small_world, monkeypatch):
    cfg, seed, _ = small_world

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(world, "measure", boom)
    with pytest.raises(RuntimeError):
        world.generate(cfg, seed, tmp_path / "w")
    assert list(tmp_path.iterdir()) == []
