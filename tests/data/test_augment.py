import pytest
import torch

from cftlib.data.augment import augment


def test_augmentation_moves_image_and_mask_together():
    gen = torch.Generator().manual_seed(0)
    m = (torch.rand(6, 1, 16, 16) > 0.5).float()
    x = m.expand(-1, 3, -1, -1).clone()  # the mask drawn into the image
    xa, ma = augment(x, m, gen, 8 / 7, True)
    assert xa.shape == x.shape and torch.allclose(xa[:, :1], ma) and not torch.equal(ma, m)


def _zoom(out: torch.Tensor, width: int) -> torch.Tensor:
    """Each image's zoom factor, read off a horizontal ramp 0..1: its slope shrinks by the factor."""
    slope = out[:, 0, :, 4:-4].diff(dim=-1).abs().mean(dim=(-2, -1))
    return (1 / (width - 1)) / slope


@pytest.mark.parametrize("jitter", [False, True])
def test_zoom_is_fixed_for_fine_tuning_and_ranges_for_pre_training(jitter):
    W, scale = 48, 8 / 7
    ramp = torch.linspace(0, 1, W).expand(64, 3, W, W).clone()
    out, _ = augment(ramp, ramp[:, :0], torch.Generator().manual_seed(1), scale, flip=False, jitter=jitter)
    zoom = _zoom(out, W)
    assert ((zoom > 0.99) & (zoom < scale + 0.01)).all()
    if jitter:  # random-resized crops: from the images as they are up to fine-tuning's zoom
        assert zoom.min() < 1.02 and zoom.max() > scale - 0.02
    else:
        assert torch.allclose(zoom, torch.full_like(zoom, scale), atol=0.01)
