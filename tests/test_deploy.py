"""deploy(): equivalence with the eval-mode original (fp32 and bf16), BatchNorm folding by data flow, packed
convolutions, and the bad inputs the issue lists."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import FrozenBatchNorm2d, build_backbone, deploy, list_backbones
from backbones.deploy import PackedConv2d, fold_batchnorm
from heads import build_segmentor, list_heads

BF16_OK = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def randomize_frozen(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


def batchnorms(model: nn.Module) -> list:
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]


def check_equivalent(model: nn.Module, x: torch.Tensor, **deploy_kwargs) -> nn.Module:
    """Deploy ``model`` (left in training mode) and compare with its eval-mode outputs; return the copy."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fast = deploy(model, **deploy_kwargs)
    assert model.training, "deploy must not touch the original's mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "original modified"
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert batchnorms(fast) == [], f"BatchNorm left after folding: {batchnorms(fast)}"
    with torch.no_grad():
        ref = model.eval()(x)
        dtype = deploy_kwargs.get("dtype") or torch.float32
        out = fast(x.to(dtype))
    refs, outs = (ref, out) if isinstance(ref, list) else ([ref], [out])
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for o, r in zip(outs, refs):
        assert o.shape == r.shape and o.dtype == dtype
        assert rel_err(o, r) < tol, (rel_err(o, r), dtype)
    return fast


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_deploys_fp32_and_bf16(name, randomize):
    model = randomize_frozen(randomize(build_backbone(name, out_strides=(2, 4, 8, 16, 32), output_stride=16)))
    x = torch.randn(1, 3, 33, 47)
    fast = check_equivalent(model, x)
    assert any(isinstance(m, PackedConv2d) for m in fast.modules())
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in fast(x))
    if BF16_OK:
        check_equivalent(model, x, dtype=torch.bfloat16)


@pytest.mark.parametrize("kwargs", [dict(norm="frozen_bn", output_stride=8), dict(norm="sync_bn"),
                                    dict(multi_grid=(1, 2))], ids=["frozen_bn-os8", "sync_bn", "multi_grid"])
def test_backbone_variants_deploy(kwargs, randomize):
    model = randomize_frozen(randomize(build_backbone("resnet18", **kwargs)))
    check_equivalent(model, torch.randn(2, 3, 64, 80))


@pytest.mark.parametrize("head", list_heads())
def test_every_head_deploys_fp32_and_bf16(head, randomize):
    # aux_head: the auxiliary head never runs in eval mode, so its norms are folded by the Sequential rule.
    model = randomize(build_segmentor(head=head, backbone="resnet18", num_classes=5, output_stride=16,
                                      aux_head=True))
    x = torch.randn(1, 3, 97, 131)
    check_equivalent(model, x)
    if BF16_OK:
        check_equivalent(model, x, dtype=torch.bfloat16)


@pytest.mark.parametrize("kwargs", [dict(channels_last=False), dict(pack_weights=False)],
                         ids=["nchw", "unpacked"])
def test_deploy_options(kwargs, randomize):
    fast = check_equivalent(randomize(build_backbone("resnet18")), torch.randn(1, 3, 64, 64), **kwargs)
    assert not any(isinstance(m, PackedConv2d) for m in fast.modules())
    if not kwargs.get("channels_last", True):
        assert fast.conv1.weight.is_contiguous()


def test_torchvision_and_timm_models_fold(randomize):
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 64, 64)
    for model in (torchvision.models.resnet18(), torchvision.models.mobilenet_v3_small(),
                  timm.create_model("resnet18d", features_only=True),
                  build_backbone("timm:efficientnet_b0"), build_backbone("torchvision:resnet18")):
        check_equivalent(randomize(model), x)
    # timm's fused BatchNormAct2d folds and keeps its activation.
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU))
    fast = check_equivalent(randomize(seq), x)
    assert isinstance(fast[1], nn.ReLU)


def test_deploy_twice_is_harmless(randomize):
    model = randomize(build_backbone("resnet18"))
    x = torch.randn(1, 3, 64, 64)
    once = deploy(model)
    with torch.no_grad():
        once(x)  # populate the packed-weight cache before copying
        twice = deploy(once)
        assert all(rel_err(a, b) < 1e-6 for a, b in zip(twice(x), once(x)))
    if BF16_OK:
        with torch.no_grad():
            ref = model.eval()(x)
            out = deploy(deploy(model, dtype=torch.bfloat16), dtype=torch.bfloat16)(x.bfloat16())
        assert all(rel_err(a, b) < 2e-2 for a, b in zip(out, ref))


def test_deployed_model_pickles_and_keeps_metadata(randomize):
    model = randomize(build_backbone("resnet18", out_strides=(4, 8)))
    fast = deploy(model)
    with torch.no_grad():
        fast(torch.randn(1, 3, 64, 64))
    clone = pickle.loads(pickle.dumps(fast))
    assert clone.feature_info == model.feature_info and type(clone) is type(model)
    assert set(fast.state_dict()) <= set(model.state_dict()) | {k.replace("weight", "bias")
                                                                 for k in model.state_dict()}


@pytest.mark.parametrize("dtype, error", [(torch.float16, "not supported on CPU"), (torch.int8, "dtype must be"),
                                          ("bf16", "dtype must be"), (torch.float64, "dtype must be")])
def test_bad_dtype_is_a_clear_error(dtype, error):
    with pytest.raises(ValueError, match=error):
        deploy(nn.Conv2d(3, 3, 1), dtype=dtype)


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        deploy(lambda x: x)
    with pytest.raises(ValueError, match="example_input"):
        deploy(build_backbone("resnet18"), example_input=torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_backbone("resnet18"))


# --- folding by data flow ------------------------------------------------------------------------------------

class ConvUsedTwice(nn.Module):
    """The conv output feeds the norm *and* the sum: folding would change the sum, so it must not happen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ConvOutputReturned(ConvUsedTwice):
    def forward(self, x):
        y = self.conv(x)
        return [self.bn(y), y]


class NormBeforeConv(nn.Module):
    """Registration order says conv -> bn, data flow says bn -> conv: nothing to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


class SharedConv(nn.Module):
    """One conv feeding two different norms: folding either would corrupt the other branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x * 2))


class StandardizedConv(nn.Conv2d):
    """A conv whose forward rescales the weight: folding a scale into it would be undone."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


@pytest.mark.parametrize("cls, kept", [(ConvUsedTwice, ["bn"]), (ConvOutputReturned, ["bn"]),
                                        (NormBeforeConv, ["bn"]), (SharedConv, ["bn1", "bn2"])])
def test_unsafe_pairs_are_not_folded(cls, kept, randomize):
    model = randomize(cls()).eval()
    x = torch.randn(2, 3, 16, 16)
    fast = deploy(model)
    assert batchnorms(fast) == kept
    with torch.no_grad():
        ref, out = model(x), fast(x)
    for o, r in zip(out if isinstance(out, list) else [out], ref if isinstance(ref, list) else [ref]):
        assert rel_err(o, r) < 1e-5


def test_conv_subclass_with_own_forward_is_not_folded(randomize):
    model = randomize(nn.Sequential(StandardizedConv(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                                    nn.BatchNorm2d(4))).eval()
    fast = deploy(model)
    assert batchnorms(fast) == ["1"]  # the second pair (a plain conv) is folded
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5


def test_fold_batchnorm_reports_folded_names(randomize):
    model = randomize(build_backbone("resnet18", out_strides=(4,))).eval()
    folded = fold_batchnorm(model)
    assert folded == sorted(["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"])
    assert isinstance(model.bn1, nn.Identity)


# --- packed convolutions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv", [nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=2,
                                  dilation=2, groups=4), nn.Conv2d(16, 8, 1, bias=False)],
                         ids=["strided", "dilated-grouped", "1x1-nobias"])
def test_packed_conv_matches_conv2d(conv):
    packed = deploy(conv)
    assert type(packed) is PackedConv2d
    for shape in [(1, 16, 33, 47), (3, 16, 20, 20), (1, 16, 33, 47)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out = packed(x)
            assert out.is_contiguous(memory_format=torch.channels_last)
            assert rel_err(out, conv(x)) < 1e-5
    if BF16_OK:
        packed16 = deploy(conv, dtype=torch.bfloat16)
        with torch.no_grad():
            assert rel_err(packed16(x.bfloat16()), conv(x)) < 2e-2


def test_packed_conv_follows_weight_changes_and_falls_back_for_autograd():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    packed = deploy(conv)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        packed(x)
        packed.weight.mul_(2)  # in place: the packed copy must be refreshed
        assert rel_err(packed(x), F.conv2d(x, packed.weight, packed.bias, padding=1)) < 1e-5
    # Input gradients (saliency maps) take the ordinary, differentiable path.
    x.requires_grad_(True)
    packed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed(x).dtype == torch.bfloat16  # autocast is honoured (ordinary path)


def test_deploy_and_run_under_inference_mode_and_outside_it(randomize):
    # Weights built under torch.inference_mode() are inference tensors: no version counter, no in-place writes
    # outside that mode. Deploying there, and switching modes between calls, must still work.
    model = randomize(build_backbone("resnet18", out_strides=(8, 16, 32)))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model.eval()(x)
    with torch.inference_mode():
        fast = deploy(model)
        inside = fast(x)
        built_inside = build_backbone("resnet18", out_strides=(8, 16, 32))
        built_inside.load_state_dict(model.state_dict())
        assert built_inside.conv1.weight.is_inference()
    with torch.no_grad():
        outside = fast(x)  # reuses what the first call cached and allocated under inference mode
        from_inference_weights = deploy(built_inside)(x)
    with torch.inference_mode():  # inference-tensor weights assigned into an already deployed model
        assigned = deploy(model)
        assigned.load_state_dict({k: v.clone() for k, v in assigned.state_dict().items()}, assign=True)
        assert assigned.conv1.weight.is_inference()
        into_deployed = assigned(x)
    for outs in (inside, outside, from_inference_weights, into_deployed):
        assert all(rel_err(o, r) < 1e-4 for o, r in zip(outs, ref))
    assert any(isinstance(m, PackedConv2d) and m.winograd for m in fast.modules())
