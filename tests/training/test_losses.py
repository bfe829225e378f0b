"""CFT's loss (docs/paper.md §3.5) with known answers: the terms, the reverse mask, the saturation of the official
min-max + BCE pairing and the squeeze that removes it, the confidence target."""

import pytest
import torch
import torch.nn.functional as F

from cftlib.core import config
from cftlib.training import losses

CFG = config.Loss()
OFFICIAL = CFG.model_copy(update=dict(squeeze=0.0))


def _maps(n=4, size=8):
    torch.manual_seed(0)
    r = torch.rand(n, 1, size, size)
    r = (r - r.amin((1, 2, 3), keepdim=True)) / (r.amax((1, 2, 3), keepdim=True) - r.amin((1, 2, 3), keepdim=True))
    m = torch.zeros(n, 1, size, size)
    m[..., 2:6, 2:6] = 1
    return r, m


def test_terms_are_the_official_formula():
    r, m = _maps()
    logits = torch.randn(4, 5)
    t = losses.relevance_loss(r, m, logits, torch.tensor([0, 1, 2, 3]), "bce", OFFICIAL)
    context = F.binary_cross_entropy(r * (1 - m), torch.zeros_like(r))
    concept = F.binary_cross_entropy(r * m, m)
    conf = F.cross_entropy(logits, logits.argmax(1))
    assert torch.allclose(t["context"], context) and torch.allclose(t["concept"], concept)
    assert torch.allclose(t["loss"], 0.8 * (1.2 * context + 0.5 * concept) + 0.2 * conf)


def test_robustvit_mse_known_answer():
    r, m = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1  # half the image
    t = losses.alignment(r, m, "mse", OFFICIAL)
    assert t["context"].item() == pytest.approx(0.5) and t["concept"].item() == pytest.approx(0.0)
    assert t["align"].item() == pytest.approx(2.0 * 0.5)


def test_reverse_mask_complement_and_official_quirk():
    m = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(losses.reverse_mask(m, "complement"), torch.tensor([1.0, 0.75, 0.0]))
    assert torch.equal(losses.reverse_mask(m, "official"), torch.tensor([1.0, 0.25, 0.0]))  # edge pixel kept as M


def test_official_minmax_saturates_and_squeeze_does_not():
    """The map's maximum on the background: BCE(1, 0) = 100 at that pixel and a gradient ~1e12/N (official);
    squeezed into [δ, 1 − δ] the loss and gradient stay moderate."""
    r, m = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    r[..., 0, 0] = 1.0  # top pixel in the context
    r[..., 3, 3] = 0.5
    grads = {}
    for name, cfg in (("official", OFFICIAL), ("squeezed", CFG)):
        x = r.clone().requires_grad_(True)
        t = losses.alignment(x, m, "bce", cfg)
        t["context"].backward()
        grads[name] = (t, x.grad.abs().max().item())
    t, g = grads["official"]
    assert t["context"].item() == pytest.approx(100 / 64, rel=1e-4) and t["saturated"].item() >= 1
    assert g > 1e9
    t, g = grads["squeezed"]
    assert t["saturated"].item() == 0 and t["context"].item() < 0.2
    assert g <= 1 / (CFG.squeeze * 64)  # d(-log(1 - p))/dp / N at p = 1 - δ, times (1 - 2δ)


def test_concept_term_saturates_at_the_maps_minimum_inside_the_mask():
    r, m = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    r[..., 0, 0] = 0.0  # min-max puts a 0 somewhere; inside the mask BCE(0, 1) = 100
    assert losses.alignment(r, m, "bce", OFFICIAL)["saturated"].item() == 1
    assert losses.alignment(r, m, "bce", CFG)["saturated"].item() == 0


def test_confidence_target_is_own_argmax_before_temperature_or_the_label():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([2, 0])
    hot = CFG.model_copy(update=dict(temperature=0.5))
    assert torch.allclose(losses.confidence(logits, labels, hot), F.cross_entropy(logits / 0.5, torch.tensor([0, 1])))
    by_label = CFG.model_copy(update=dict(confidence_target="label"))
    assert torch.allclose(losses.confidence(logits, labels, by_label), F.cross_entropy(logits, labels))


def test_confidence_gradient_does_not_flow_through_its_target():
    logits = torch.randn(3, 4, requires_grad=True)
    losses.confidence(logits, None, CFG).backward()
    expected = (F.softmax(logits, 1) - F.one_hot(logits.argmax(1), 4)) / 3
    assert torch.allclose(logits.grad, expected.detach(), atol=1e-6)


def test_unknown_kind_and_mode_are_errors():
    r, m = _maps()
    with pytest.raises(ValueError, match="kind"):
        losses.alignment(r, m, "l1", CFG)
    with pytest.raises(ValueError, match="reverse_mask"):
        losses.reverse_mask(m, "flip")
