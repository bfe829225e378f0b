"""The paper's baselines as their papers define them: RRR's and GradMask's penalties vanish exactly when the input
gradient does outside the mask, GradMask's equals its closed form on a linear model, RRDA keeps each object and
gives it another image's context, and every baseline trains a tiny ViT with finite gradients."""

import pytest
import torch

from cftlib.core import config
from cftlib.models import checkpoints
from cftlib.stages import finetune, params
from cftlib.training import baselines, pretrain, runspec, trainer

CFG = config.Loss(rrr_lambda=1.0, rrr_l2=0.0, gradmask_lambda=1.0, gradmask_ce=1.0)


class Windowed(torch.nn.Module):
    """A linear classifier that reads only the pixels where `window` is 1."""

    def __init__(self, window: torch.Tensor, classes: int = 3):
        super().__init__()
        self.window = window
        self.head = torch.nn.Linear(window.numel() * 3, classes)

    def forward(self, x):
        return self.head((x * self.window).flatten(1))


def _window(size=6):
    w = torch.zeros(1, 1, size, size)
    w[..., 1:4, 2:5] = 1
    return w


@pytest.mark.parametrize("kind", ["rrr", "gradmask"])
def test_penalty_is_zero_when_the_input_gradient_vanishes_outside_the_mask(kind):
    torch.manual_seed(0)
    w = _window()
    model, x, y = Windowed(w), torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
    inside = baselines.baseline_loss(model, kind, x, w.expand(4, 1, 6, 6), y, CFG)[0]["context"]
    assert inside.item() == 0.0  # the model reads only the mask: nothing outside it to penalise
    outside = baselines.baseline_loss(model, kind, x, torch.zeros(4, 1, 6, 6), y, CFG)[0]["context"]
    assert outside.item() > 1e-6  # everything is context: the window's gradient counts


def test_gradmask_penalty_is_the_masked_weight_norm_of_a_linear_model():
    """z = W x: ∂z_y/∂x = W_y, so the penalty is Σ |M̄ ⊙ W_y| averaged over the batch."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 3))
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([2, 0])
    m = (torch.rand(2, 1, 6, 6) > 0.5).float()
    got = baselines.baseline_loss(model, "gradmask", x, m, y, CFG)[0]["context"]
    W = model[1].weight.view(3, 3, 6, 6)
    want = torch.stack([((1 - m[b]) * W[y[b]]).abs().sum() for b in range(2)]).mean()
    assert torch.allclose(got, want, rtol=1e-5)


def test_rrr_l2_term_adds_the_squared_weights():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 3))
    x, y, m = torch.randn(2, 3, 6, 6), torch.tensor([1, 2]), torch.ones(2, 1, 6, 6)
    plain = baselines.baseline_loss(model, "rrr", x, m, y, CFG)[0]["loss"]
    l2 = baselines.baseline_loss(model, "rrr", x, m, y, CFG.model_copy(update=dict(rrr_l2=0.5)))[0]["loss"]
    assert torch.allclose(l2 - plain, 0.5 * sum(p.pow(2).sum() for p in model.parameters()), rtol=1e-5)


def test_rrda_keeps_each_object_and_gives_it_another_images_context():
    """Image b: object pixels b, context 10 + b. After mixing (p = 1) every object pixel is still b and every
    context pixel is 10 + d for one other image d — never the image's own, never a donor's object."""
    B, gen = 5, torch.Generator().manual_seed(0)
    m = torch.zeros(B, 1, 8, 8)
    for b in range(B):
        m[b, :, b:b + 3, 2:6] = 1  # objects at different places, so a donor's object overlaps the context
    x = torch.stack([torch.where(m[b] > 0, float(b), 10.0 + b).expand(3, 8, 8) for b in range(B)])
    mixed = baselines.rrda_mix(x, m, gen, prob=1.0)
    for b in range(B):
        obj, ctx = mixed[b][:, m[b, 0] > 0], mixed[b][:, m[b, 0] == 0]
        assert torch.all(obj == b)
        donors = ctx.unique()
        assert len(donors) == 1 and donors.item() != 10 + b and donors.item() >= 10
    assert torch.equal(baselines.rrda_mix(x, m, gen, prob=0.0), x)


# ----------------------------------------------------------------------------- on the smoke project's tiny ViT

@pytest.fixture(scope="module")
def tiny(smoke_project):
    P = config.load(smoke_project / "params.yaml")
    P = P.model_copy(update=dict(finetune=P.finetune.model_copy(update=dict(arms=["none", "cft", "rrr"], seeds=1))))
    _, data, _ = finetune.setup(P, smoke_project / "data" / "masks", smoke_project / "data" / "world",
                                smoke_project / "models" / "base", smoke_project / "runs",
                                smoke_project / "data" / "concepts")
    t = data["train"]
    return P, smoke_project, (t["x"][:4], t["foreground"][:4], t["y"][:4])


@pytest.mark.parametrize("arm", ["gradmask", "rrr", "rrda"])
def test_every_baseline_takes_a_finite_step_on_a_tiny_vit(tiny, arm):
    P, root, (x, m, y) = tiny
    model = checkpoints.load_checkpoint(pretrain.base_path(root / "models" / "base", "vit", 0))[0]
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    row = trainer.train_step(model, opt, runspec.ARMS[arm], x, m, y, len(y), P.finetune, "attnlrp",
                             torch.autocast("cpu", enabled=False))
    assert not row["skipped"] and all(torch.isfinite(torch.tensor(row[k])) for k in trainer.terms_logged(
        runspec.ARMS[arm]))
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert moved > 0 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kind", ["rrr", "gradmask"])
def test_a_step_on_the_penalty_lowers_it(tiny, kind):
    P, root, (x, m, y) = tiny
    model = checkpoints.load_checkpoint(pretrain.base_path(root / "models" / "base", "vit", 0))[0]
    cfg = P.finetune.loss.model_copy(update=dict(gradmask_ce=0.0))  # GradMask without its CE: the penalty alone
    before = baselines.baseline_loss(model, kind, x, m, y, cfg)[0]
    opt = torch.optim.SGD(model.parameters(), lr=1e-2 / max(before["context"].item(), 1e-6))
    opt.zero_grad()
    (before["context"]).backward()
    opt.step()
    assert baselines.baseline_loss(model, kind, x, m, y, cfg)[0]["context"].item() < before["context"].item()


def test_baselines_validate_on_their_own_loss(tiny):
    P, root, (x, m, y) = tiny
    model = checkpoints.load_checkpoint(pretrain.base_path(root / "models" / "base", "vit", 0))[0]
    val = {"x": x, "y": y, "foreground": m, "concept": m}
    row = trainer.validate(model, runspec.ARMS["rrr"], val, P.finetune, "attnlrp",
                           torch.autocast("cpu", enabled=False))
    want = baselines.baseline_loss(model, "rrr", x, m, y, P.finetune.loss, create_graph=False)[0]
    assert row["val_loss"] == pytest.approx(want["loss"].item(), rel=1e-5)
    assert row["val_context"] == pytest.approx(want["context"].item(), rel=1e-5)


def test_plan_gives_each_arm_its_own_lr_and_rejects_unknown_arms(tmp_path):
    cfg = config.Finetune().model_copy(update=dict(arms=["none", "cft", "rrr"], seeds=1, arm_lr={"rrr": 2e-6}))
    runs = runspec.plan(cfg, seed=0)
    assert {r.arm: r.lr for r in runs if r.model == "vit"} == {"none": cfg.lr, "cft": cfg.lr, "rrr": 2e-6}
    bad = tmp_path / "params.yaml"
    bad.write_text("finetune:\n  arm_lr: {rrx: 1.0e-6}\n")
    with pytest.raises(config.ConfigError, match="finetune.arm_lr.*rrx"):
        params.load(bad)


@pytest.mark.parametrize("kind", ["rrr", "gradmask"])
def test_penalties_differentiate_through_a_timm_vit_with_fused_attention(kind):
    """timm's default fused CPU attention has no second derivative: the penalty's backward must still run."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              num_classes=4)
    x, y, m = torch.randn(2, 3, 32, 32), torch.tensor([1, 3]), (torch.rand(2, 1, 32, 32) > 0.5).float()
    baselines.baseline_loss(model, kind, x, m, y, CFG)[0]["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))  # restored after the call
