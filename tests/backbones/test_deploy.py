"""deploy(): equivalence with the eval-mode original (fp32 and bf16) across backbones, heads and third-party models,
its options, and the bad inputs the issue lists. Folding and packed convolutions have their own test modules."""

import pickle

import pytest
import torch
from torch import nn

from backbones import FrozenBatchNorm2d, build_backbone, deploy, list_backbones
from backbones.packed import FusedBasicBlock, FusedBottleneck, PackedConv2d
from heads import build_segmentor, list_heads
from tests.backbones.cpus import pretend_cpu  # noqa: F401
from tests.backbones.helpers import BF16_OK, batchnorms, rel_err


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
    # timm's fused BatchNormAct2d folds and keeps its activation, which then fuses into the convolution.
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU))
    assert isinstance(check_equivalent(randomize(seq), x, fuse=False)[1], nn.ReLU)
    fast = check_equivalent(randomize(seq), x)
    assert isinstance(fast[1], nn.Identity) and fast[0].fused_relu


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


@pytest.mark.parametrize("cpu, lacking", [
    ("zen3", "this CPU (AMD EPYC 7B13, class avx2) has no native bf16 (no AVX-512 BF16, no AMX)"),
    ("skylake_x", "class avx512) has no native bf16 (AVX-512 without its BF16 extension, no AMX)"),
    ("avx_only", "class baseline) has no native bf16 (no AVX-512 BF16, no AMX)"),
])
def test_bf16_on_a_cpu_without_it_is_one_line_naming_what_it_lacks(pretend_cpu, cpu, lacking):
    pretend_cpu(cpu)
    with pytest.raises(ValueError) as info:
        deploy(nn.Conv2d(3, 3, 1), dtype=torch.bfloat16)
    message = str(info.value)
    assert "\n" not in message and message.startswith("deploy dtype=torch.bfloat16: ") and lacking in message
    assert message.endswith("use dtype=None (fp32) on this CPU")
    with pytest.raises(ValueError, match=r"float16 is not supported on CPU .*use dtype=None \(fp32\) on this CPU"):
        deploy(nn.Conv2d(3, 3, 1), dtype=torch.float16)  # not "use bfloat16" where that is refused too


def test_bf16_without_onednn_says_so(pretend_cpu, monkeypatch):
    pretend_cpu("zen4")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(ValueError, match="this PyTorch build has no oneDNN.*use dtype=None"):
        deploy(nn.Conv2d(3, 3, 1), dtype=torch.bfloat16)


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        deploy(lambda x: x)
    with pytest.raises(ValueError, match="example_input"):
        deploy(build_backbone("resnet18"), example_input=torch.randn(1, 4, 32, 32))


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


@pytest.mark.parametrize("name, block", [("resnet18", FusedBasicBlock), ("resnet50", FusedBottleneck)])
def test_relus_and_residual_additions_fuse_into_the_convolutions(name, block, randomize):
    model = randomize(build_segmentor(head="deeplabv3plus", backbone=name, num_classes=5, output_stride=16))
    x = torch.randn(1, 3, 64, 96)
    fast = check_equivalent(model, x)
    blocks = [m for m in fast.backbone.modules() if hasattr(m, "downsample")]
    assert blocks and all(type(m) is block for m in blocks)
    # Every ReLU the forward still calls reads something other than a fresh convolution output: here, none.
    called = []
    for m in fast.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, i, o: called.append(mod))
    with torch.no_grad():
        fast(x)
    assert called == [] and fast.backbone.conv1.fused_relu
    # Every block adds into its shortcut: a fresh downsampled map, or an input nothing reads afterwards.
    assert all(m.reuse_shortcut for m in blocks)
    with torch.no_grad():  # the maps the backbone returns are not overwritten by the blocks after them
        assert all(rel_err(a, b) < 1e-4 for a, b in zip(fast.backbone(x), model.backbone.eval()(x)))
    unfused = check_equivalent(model, x, fuse=False)
    assert not any(type(m) is block for m in unfused.modules())
    assert not any(getattr(m, "fused_relu", False) for m in unfused.modules())
    with torch.no_grad():
        assert all(rel_err(a, b) < 1e-5 for a, b in zip(unfused(x), fast(x)))
