"""cftlib.relevance keeps its promises: maps of the right shape from one forward, equal to lxt's AttnLRP,
conservative where declared, exact second-order gradients, and no trace on any model's gradients.
Tiny random timm models in float64; 200 cases in about 30 s on one core."""

import copy
from contextlib import contextmanager
from functools import partial
from types import MethodType

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention

from cftlib import relevance
from cftlib.relevance import METHODS, explain
from cftlib.relevance.rollout import gae_rollout_official

VIT = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
VITS = {  # name -> (timm architecture, overrides): CLS only, CLS + distillation, registers + non-square, and
    # DeiT-III's / DINOv2's LayerScale with the class token outside the position embedding, on 7-pixel patches
    "vit": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "vit_reg_16x24": ("vit_tiny_patch16_224", dict(reg_tokens=2, img_size=(16, 24))),
    "layerscale_p7": ("vit_tiny_patch16_224", dict(init_values=0.5, no_embed_class=True, patch_size=7,
                                                   img_size=(14, 21))),
}
B = 3


def make(name="vit", seed=0, fused=True):
    """A tiny float64 model with every parameter perturbed (no special zeros or ones)."""
    torch.manual_seed(seed)
    if name == "resnet":
        model = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    else:
        arch, kw = VITS[name]
        model = timm.create_model(arch, pretrained=False, **{**VIT, **kw})
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused_attn = fused
    model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def images(model, n=B, seed=1):
    torch.manual_seed(seed)
    size = (64, 64) if not hasattr(model, "patch_embed") else model.patch_embed.img_size
    return torch.randn(n, 3, *size, dtype=torch.float64)


def cases(exact_only=False):
    """(method, output, model name) for every combination the registry declares."""
    out = []
    for m in METHODS.values():
        if exact_only and not m.exact_gradient:
            continue
        outputs = ["patch", "pixel"] + (["input"] if "input" in m.levels else [])
        models = [n for k in m.model_kinds for n in (VITS if k == "vit" else ["resnet"])]
        out += [(m.name, o, n) for o in outputs for n in models]
    return out


def alignment(r, seed=2):
    """RobustViT's smooth alignment loss (docs/paper.md §3.5) against a fixed random mask."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(r.shape, generator=g, dtype=r.dtype) > 0.5).to(r)
    return 2 * (r * (1 - mask)).pow(2).mean() + 0.3 * (r * mask - mask).pow(2).mean()


# --- registry and API ---------------------------------------------------------------------------

def test_registry_declares_properties_and_rejects_unknown_names():
    assert set(METHODS) == {"attnlrp", "cplrp", "gae_rollout", "grad_x_input", "gradcam"}
    assert [n for n, m in METHODS.items() if m.conservative] == ["cplrp"]  # AttnLRP leaks (test below)
    assert [n for n, m in METHODS.items() if not m.exact_gradient] == ["gae_rollout"]
    assert all(m.differentiable for m in METHODS.values())
    with pytest.raises(KeyError, match="choose one of"):
        relevance.get("lrp")


@pytest.mark.parametrize("method,output,model_name", [
    ("gradcam", "input", "vit"), ("attnlrp", "pixel", "resnet"), ("gae_rollout", "input", "vit"),
    ("attnlrp", "pixels", "vit")])
def test_unsupported_combinations_fail(method, output, model_name):
    model = make(model_name)
    with pytest.raises(ValueError):
        explain(model, images(model), method, output=output)


@pytest.mark.parametrize("method,output,model_name", cases())
def test_maps_have_the_model_grid_and_range(method, output, model_name):
    model = make(model_name)
    x = images(model)
    with torch.no_grad():  # a picture needs no graph of its own
        r, logits = explain(model, x, method, output=output)
    if output == "patch":
        grid = (model.patch_embed.grid_size if hasattr(model, "patch_embed")
                else model.forward_features(x).shape[-2:])
        assert r.shape == (B, 1, *grid)
    else:
        assert r.shape == (B, 1, *x.shape[-2:])
    assert torch.allclose(logits, model(x), rtol=0, atol=1e-12)  # one forward serves both terms
    flat = r.flatten(1)
    assert not r.requires_grad
    assert torch.equal(flat.amin(1), torch.zeros(B, dtype=r.dtype))
    assert torch.allclose(flat.amax(1), torch.ones(B, dtype=r.dtype))


@pytest.mark.parametrize("method", ["attnlrp", "cplrp", "grad_x_input"])
def test_patch_relevance_sits_where_the_input_is(method):
    """Known answer: with all biases at zero, only the one non-zero patch has a non-zero token, so only
    its grid cell (row 1, column 4 of the 4x6 grid) gets relevance; pixel relevance stays inside it."""
    model = make("vit_reg_16x24")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n == "patch_embed.proj.bias":
                p.zero_()
    x = torch.zeros(1, 3, 16, 24, dtype=torch.float64)
    x[..., 4:8, 16:20] = torch.randn(3, 4, 4, dtype=torch.float64)
    r, _ = explain(model, x, method, output="patch", normalize=False)
    assert r[0, 0, 1, 4] != 0 and torch.count_nonzero(r) == 1
    r, _ = explain(model, x, method, output="input", normalize=False)
    assert r[..., 4:8, 16:20].abs().sum() > 0 and torch.count_nonzero(r) == torch.count_nonzero(r[..., 4:8, 16:20])


def test_target_may_be_an_index_a_tensor_or_the_argmax():
    model = make()
    x = images(model)
    by_argmax, logits = explain(model, x, "attnlrp")
    assert torch.equal(by_argmax, explain(model, x, "attnlrp", logits.argmax(1))[0])
    assert torch.equal(explain(model, x, "attnlrp", 2)[0], explain(model, x, "attnlrp", torch.full((B,), 2))[0])


def test_minmax_known_answers():
    r = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[7.0, 7.0], [7.0, 7.0]]]])
    out = relevance.minmax(r)
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(1, 2, 2))  # constant map: zeros, not NaN


# --- agreement with references ------------------------------------------------------------------

def lxt_relevance(model, x, target, rule):
    """Pixel relevance from lxt 2.1's own rule functions on a copy of the timm ViT (instance patches:
    lxt's `monkey_patch` would change torch classes for the whole test process)."""
    from lxt.efficient.patches import layer_norm_forward
    from lxt.efficient.rules import divide_gradient, identity_rule_implicit, stop_gradient

    def attention(self, x, attn_mask=None, is_causal=False):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if rule == "cp":
            q, k = stop_gradient(q), stop_gradient(k)
        else:
            q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = MethodType(attention, m)
        elif isinstance(m, nn.LayerNorm):
            m.forward = MethodType(layer_norm_forward, m)
        elif isinstance(m, nn.GELU):
            m.forward = partial(identity_rule_implicit, m.forward)
    x = x.clone().requires_grad_()
    model(x).gather(1, target[:, None]).sum().backward()
    return (x * x.grad).sum(1, keepdim=True)


@pytest.mark.parametrize("method,rule", [("attnlrp", "attnlrp"), ("cplrp", "cp")])
@pytest.mark.parametrize("model_name", list(VITS))
def test_agrees_with_lxt(method, rule, model_name):
    model = make(model_name)
    x = images(model)
    target = torch.tensor([0, 3, 4])
    ours, _ = explain(model, x, method, target, output="input", normalize=False)
    ref = lxt_relevance(model, x, target, rule)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("model_name", list(VITS))
def test_gae_rollout_equals_the_official_per_block_procedure(model_name):
    """Same map and same parameter gradients as the official code's procedure (one autograd.grad per
    block, hooks, second forward), here from one forward and one autograd call."""
    model = make(model_name)
    x, target = images(model), torch.tensor([1, 2, 0])
    ours, logits = explain(model, x, "gae_rollout", target, create_graph=True)
    ref, ref_logits = gae_rollout_official(model, x, target)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-10) and torch.allclose(logits, ref_logits, rtol=1e-12)
    params = list(model.parameters())
    g_ours = torch.autograd.grad(alignment(ours), params, allow_unused=True)
    g_ref = torch.autograd.grad(alignment(ref), params, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, rtol=1e-8, atol=1e-14)


# --- promises about the raw map -----------------------------------------------------------------

def without_additive_sources(model):
    """Biases, position embedding and class token at zero: then only the pixels carry relevance."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or n in ("pos_embed", "cls_token"):
                p.zero_()
    return model


@pytest.mark.parametrize("output", ["input", "patch"])
def test_cplrp_is_exactly_conservative(output):
    """The raw map sums to the target logit: with attention, LayerNorm's std and the activation
    ratios frozen the network is linear in its input."""
    model = without_additive_sources(make(seed=3))
    r, logits = explain(model, images(model, n=4), "cplrp", output=output, normalize=False)
    assert torch.allclose(r.sum((1, 2, 3)), logits.max(1).values, rtol=1e-9, atol=0)


@pytest.mark.parametrize("output", ["input", "patch"])
def test_attnlrp_is_conservative_up_to_the_softmax_leak(output):
    """AttnLRP's softmax rule (gradient x input) absorbs relevance; everything else conserves it. Per
    block, relevance R_A = sum A dS/dA reaches the attention map and R_z = sum z dS/dz leaves into its
    logits z = log A + const (rows of A (dS/dA - sum A dS/dA)); q and k get R_z / 4 each, v gets
    R_A / 2, so the block leaks (R_A - R_z) / 2. Raw map + leaks = target logit. (At random init the
    attention is near uniform and about half the logit leaks.)"""
    from cftlib.relevance.attnlrp import patched
    from cftlib.relevance.gradients import target_score

    model = without_additive_sources(make(seed=3))
    x = images(model, n=4)
    r, logits = explain(model, x, "attnlrp", output=output, normalize=False)
    with patched(model, "attnlrp", keep_attn=True) as state:
        score = target_score(model(x))
        with state.lrp():
            grads = torch.autograd.grad(score, state.attn)
    leak = 0
    for A, g in zip(state.attn, grads):
        r_a = (A * g).sum((1, 2, 3))
        r_z = (A.log() * A * (g - (A * g).sum(-1, keepdim=True))).sum((1, 2, 3))
        leak = leak + (r_a - r_z) / 2
    assert (leak.abs() > 0.1 * logits.max(1).values.abs()).all()  # the leak is real, not a rounding
    assert torch.allclose(r.sum((1, 2, 3)) + leak, logits.max(1).values, rtol=1e-9, atol=0)


@pytest.mark.parametrize("method,output,model_name", cases())
def test_relevance_of_a_sample_ignores_the_rest_of_the_batch(method, output, model_name):
    model = make(model_name)
    x = images(model, n=4)
    batch, _ = explain(model, x, method, output=output, normalize=False)
    alone, _ = explain(model, x[2:3], method, output=output, normalize=False)
    assert torch.allclose(batch[2:3], alone, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("method,output,model_name", cases())
@pytest.mark.parametrize("value", [0.0, 0.7])
def test_constant_input_gives_finite_maps_and_gradients(method, output, model_name, value):
    model = make(model_name)
    x = torch.full_like(images(model), value)
    r, logits = explain(model, x, method, output=output, create_graph=True)
    (alignment(r) + logits.sum()).backward()
    assert torch.isfinite(r).all() and r.min() >= 0 and r.max() <= 1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if value == 0 and output == "input":  # zero input, zero relevance: normalised to zeros
        assert torch.equal(r, torch.zeros_like(r))


# --- gradients ----------------------------------------------------------------------------------

GROUPS = {"attention": ("attn.",), "mlp": ("mlp.",), "norms": ("norm",), "head": ("head",),
          "embeddings": ("patch_embed", "pos_embed", "cls_token", "dist_token", "reg_token")}


@pytest.mark.parametrize("method,output,model_name", [c for c in cases(exact_only=True) if c[2] in ("vit", "resnet")])
def test_second_order_gradient_matches_finite_differences(method, output, model_name):
    """Directional derivative of the alignment loss along a random unit direction within each parameter
    group: autograd through the relevance (create_graph) against float64 fourth-order central differences. (The
    ReLU/max-pool kinks of the CNN and the min-max selection are not crossed at this step.)"""
    model = make(model_name)
    x, target = images(model), torch.tensor([0, 1, 2])
    named = dict(model.named_parameters())
    groups = GROUPS if model_name != "resnet" else {"all": ("",)}

    def loss(create_graph):
        r, _ = explain(model, x, method, target, output=output, create_graph=create_graph)
        return alignment(r)

    def moved(u, step):  # the loss at theta + step * u, theta restored afterwards
        saved = {n: named[n].detach().clone() for n in u}
        with torch.no_grad():
            for n, d in u.items():
                named[n].add_(step * d)
        try:
            return loss(False).item()
        finally:
            with torch.no_grad():
                for n in u:
                    named[n].copy_(saved[n])

    grads = dict(zip(named, torch.autograd.grad(loss(True), list(named.values()), allow_unused=True,
                                                materialize_grads=True)))
    torch.manual_seed(4)
    h = 1e-4
    for group, prefixes in groups.items():
        u = {n: torch.randn_like(p) for n, p in named.items() if any(s in n for s in prefixes)}
        norm = sum(d.pow(2).sum() for d in u.values()).sqrt()
        u = {n: d / norm for n, d in u.items()}
        analytic = sum((grads[n] * d).sum() for n, d in u.items()).item()
        fd = (8 * (moved(u, h) - moved(u, -h)) - (moved(u, 2 * h) - moved(u, -2 * h))) / (12 * h)
        assert abs(analytic - fd) <= 1e-6 * abs(fd), f"{group}: autograd {analytic} vs FD {fd}"


def ce_grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_classification_gradients_of_this_and_another_model_are_unchanged():
    """The gates give plain gradients outside the relevance call, and nothing stays patched: CE
    gradients of the explained model and of a bystander model are bitwise the same before and after
    every method's CFT step, and CE through explain's logits equals CE through a plain forward."""
    model, other = make(fused=False), make(seed=5, fused=False)
    x, y = images(model), torch.tensor([0, 1, 2])
    before, before_other, logits_before = ce_grads(model, x, y), ce_grads(other, x, y), model(x)
    for method in ("attnlrp", "cplrp", "gae_rollout", "grad_x_input"):
        model.zero_grad()
        r, logits = explain(model, x, method, y, create_graph=True)
        assert torch.equal(logits, logits_before)
        F.cross_entropy(logits, y).backward(retain_graph=True)
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, before[n]), (method, n)
        alignment(r).backward()
        assert not any("forward" in m.__dict__ for m in model.modules())
        assert all(torch.equal(g, before[n]) for n, g in ce_grads(model, x, y).items())
    assert all(torch.equal(g, before_other[n]) for n, g in ce_grads(other, x, y).items())


@pytest.mark.parametrize("method", [m for m in METHODS])
def test_every_parameter_gets_a_finite_nonzero_gradient_from_the_cft_loss(method):
    model = make("vit" if "vit" in METHODS[method].model_kinds else "resnet")
    x, y = images(model), torch.tensor([0, 1, 2])
    r, logits = explain(model, x, method, y, create_graph=True)
    (alignment(r) + F.cross_entropy(logits, logits.argmax(1))).backward()
    for n, p in model.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("method", ["attnlrp", "cplrp", "grad_x_input"])
@pytest.mark.parametrize("output", ["pixel", "input"])
def test_alignment_gradient_is_zero_only_where_the_map_cannot_depend(method, output):
    """From the alignment loss alone every parameter gets a non-zero gradient, except the additive
    constants after the last non-linearity (the final norm's and the head's bias): ds/dx ignores them."""
    model = make()
    x, y = images(model), torch.tensor([0, 1, 2])
    r, _ = explain(model, x, method, y, create_graph=True, output=output)
    alignment(r).backward()
    zero = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert zero == {"norm.bias", "head.bias"}


@contextmanager
def tf32(enabled: bool):
    """cuDNN's and cuBLAS's TensorFloat-32 switched on or off, restored after."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["attnlrp", "gae_rollout"])
def test_cuda_matches_cpu(method):
    """The rules are the same on CUDA: in float64 to rounding (no TF32 there); in float32 without TF32 to float32
    reduction order (1e-4 on maps in [0, 1]); with cuDNN's default TF32 convolutions within 2e-3 — on an H200
    ViT-B's fp32 maps differed by 4.9e-4 (AttnLRP) and 5.6e-4 (GAE rollout) that way (gpu_h200.md)."""
    model = make()
    x = images(model)
    cpu, _ = explain(model, x, method, output="pixel")
    gpu, _ = explain(copy.deepcopy(model).cuda(), x.cuda(), method, output="pixel")
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-10)
    model, x = model.float(), x.float()
    cpu, _ = explain(model, x, method, output="pixel")
    for enabled, atol in ((False, 1e-4), (True, 2e-3)):
        with tf32(enabled):
            gpu, _ = explain(copy.deepcopy(model).cuda(), x.cuda(), method, output="pixel")
        assert (gpu.cpu() - cpu).abs().max() <= atol, (enabled, (gpu.cpu() - cpu).abs().max().item())


def test_layers_without_a_rule_fail_loudly():
    """An activation with no identity rule here (tanh-GELU) must not silently get the plain gradient."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, act_layer="gelu_tanh", **VIT)
    x = images(model).float()
    with pytest.raises(TypeError, match="no LRP rule"):
        explain(model, x, "attnlrp")
    assert not any("forward" in m.__dict__ for m in model.modules())
    explain(model, x, "grad_x_input")  # needs no rule
