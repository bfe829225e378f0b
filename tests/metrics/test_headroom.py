"""What fine-tuning can still move: the oracle map at a token grid, and the augmentation gap of a base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cftlib.data import world
from cftlib.metrics import alignment
from cftlib.training import pretrain


def _blobs(n=4, size=48, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((n, size, size), bool)
    for i in range(n):
        r, c = rng.integers(4, size - 12, 2)
        m[i, r:r + 7, c:c + 9] = True
    return m


def test_the_oracle_holds_less_of_a_small_concept_the_coarser_the_grid():
    m = _blobs()
    mass = {g: alignment.concept_alignment(alignment.oracle_maps(m, g), m, m)["concept_mass"].mean()
            for g in (3, 6, 12, 48)}
    assert mass[48] == pytest.approx(1.0)  # at the pixel grid the oracle is the mask itself
    assert mass[3] < mass[6] < mass[12] < mass[48]
    r = alignment.oracle_maps(m, 6)
    assert r.shape == m.shape and np.allclose(r.min((1, 2)), 0) and np.allclose(r.max((1, 2)), 1)


def test_world_concept_parts_are_the_parts_each_field_guide_names():
    species = world.make_species(12, 0)
    for s, parts in zip(species, world.concept_parts(species)):
        assert {"beak", "wing", "tail", "breast"} <= set(parts)
        assert ("crest" in parts) == (s.crest != "none") and ("cap" in parts) == (s.cap != "none")


class _Left(torch.nn.Module):
    """Class 1 when the image's left half is brighter than its right, else class 0: flips change its answer."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        d = x[..., : x.shape[-1] // 2].mean((1, 2, 3)) - x[..., x.shape[-1] // 2:].mean((1, 2, 3))
        return torch.stack([-d, d], 1) + self.w


def test_augmentation_gap_is_zero_without_augmentation_and_large_for_a_model_flips_fool():
    images = np.zeros((40, 16, 16, 3), np.uint8)
    images[:20, :, :8] = 255  # bright left: class 1
    images[20:, :, 8:] = 255
    labels = np.r_[np.ones(20), np.zeros(20)].astype(int)
    none = pretrain.augmentation_gap(_Left(), images, labels, 1.0, False, seed=0)
    assert none == {"as_is": 1.0, "augmented": 1.0, "gap_points": 0.0}
    flips = pretrain.augmentation_gap(_Left(), images, labels, 1.0, True, seed=0, draws=20)
    assert flips["as_is"] == 1.0 and 30 < flips["gap_points"] < 70  # about half the images flipped each draw
    assert pretrain.augmentation_gap(_Left(), images, labels, 1.0, True, seed=0, draws=20) == flips  # seeded
