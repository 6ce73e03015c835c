"""timm: and torchvision: backbones: conformance, actual strides, equivalence with our ResNet, errors."""

from __future__ import annotations

import pytest
import torch

from backbones import FrozenBatchNorm2d, build_backbone
from backbones.testing import check_backbone
from backbones.wrappers import TimmBackbone

from tests.conftest import randomize_norms, save_state_dict

# Small inputs keep the conformance checks fast; one odd size exercises ceil rounding.
SIZES = ((1, 3, 37, 45), (2, 3, 32, 32))


@pytest.mark.parametrize("name, kwargs, strides, dilations", [
    ("timm:resnet18", {}, [8, 16, 32], [1, 1, 1]),
    ("timm:resnet18", {"output_stride": 8}, [8, 8, 8], [1, 2, 4]),
    ("timm:efficientnet_b0", {"output_stride": 16}, [8, 16, 16], [1, 1, 2]),
    ("torchvision:resnet18", {"out_strides": (2, 4, 8, 16, 32)}, [2, 4, 8, 16, 32], [1, 1, 1, 1, 1]),
    ("torchvision:resnet50", {"out_strides": (4, 16, 32), "output_stride": 8}, [4, 8, 8], [1, 2, 4]),
])
def test_wrapper_conforms_with_actual_strides(name, kwargs, strides, dilations):
    bb = build_backbone(name, **kwargs)
    assert bb.feature_info.strides == strides
    assert [s.dilation for s in bb.feature_info] == dilations
    check_backbone(bb, sizes=SIZES)


def test_timm_floor_size_model_is_padded_to_honour_ceil_sizes():
    # ConvNeXt's 4x4/stride-4 stem floors odd sizes; the wrapper pads and crops so the contract still holds.
    bb = build_backbone("timm:convnext_atto", out_strides=(4, 8, 16, 32))
    assert isinstance(bb, TimmBackbone) and bb.pad_multiple == 32
    check_backbone(bb, sizes=SIZES, check_grads=False)
    x = torch.randn(1, 3, 64, 96)  # a multiple of 32: padding is a no-op, outputs equal timm's own
    with torch.no_grad():
        ours, theirs = bb.eval()(x), bb.model(x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_timm_resnet_equals_our_resnet_on_same_weights(tmp_path):
    bb = randomize_norms(build_backbone("timm:resnet18", output_stride=8)).eval()
    path = save_state_dict(bb.model.state_dict(), tmp_path / "timm_r18.pth")
    ours = build_backbone("resnet18", output_stride=8, pretrained=str(path)).eval()
    assert ours.feature_info.strides == bb.feature_info.strides
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        for a, b in zip(ours(x), bb(x)):
            torch.testing.assert_close(a, b)


def test_torchvision_resnet50_equals_our_resnet50_on_same_weights(tmp_path):
    bb = randomize_norms(build_backbone("torchvision:resnet50", out_strides=(4, 16, 32), output_stride=16)).eval()
    path = save_state_dict(bb.body.state_dict(), tmp_path / "tv_r50.pth")
    ours = build_backbone("resnet50", out_strides=(4, 16, 32), output_stride=16, pretrained=str(path)).eval()
    assert ours.feature_info == bb.feature_info
    x = torch.randn(1, 3, 65, 47)
    with torch.no_grad():
        for a, b in zip(ours(x), bb(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torchvision_frozen_bn_and_frozen_stages():
    bb = build_backbone("torchvision:resnet18", norm="frozen_bn", frozen_stages=1).train()
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert not any(p.requires_grad for p in bb.body.layer1.parameters())
    assert all(p.requires_grad for p in bb.body.layer2.parameters())
    assert not bb.body.layer1.training and bb.body.layer2.training
    check_backbone(bb, sizes=SIZES)


def test_torchvision_frozen_stages_survive_requires_grad_and_train():
    bb = build_backbone("torchvision:resnet18", frozen_stages=1)
    bb.requires_grad_(True)  # e.g. smp's unfreeze_encoder()
    bb.train()
    assert not any(p.requires_grad for p in bb.body.layer1.parameters()) and not bb.body.conv1.weight.requires_grad
    assert all(p.requires_grad for p in bb.body.layer2.parameters())


def test_torchvision_pretrained_imagenet_from_torch_hub_cache(hub_dir, tv_checkpoint, monkeypatch):
    import shutil

    from backbones.weights import cached_path_for_url, torchvision_url

    tv, path = tv_checkpoint("resnet18")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    cached = cached_path_for_url(torchvision_url("resnet18"))
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)
    bb = build_backbone("torchvision:resnet18", out_strides=(8, 16), pretrained="imagenet").eval()
    expected = tv.state_dict()
    loaded = bb.body.state_dict()
    assert loaded and all(torch.equal(v, expected[k]) for k, v in loaded.items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb(x)[1], tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))


def test_timm_frozen_bn_converts_every_batchnorm():
    bb = build_backbone("timm:resnet18", norm="frozen_bn")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("timm:resnet81", {}, ValueError, r"unknown timm model 'resnet81'.*resnet18"),
    ("timm:resnet18", {"out_strides": (8, 64)}, ValueError, r"\(2, 4, 8, 16, 32\).*\[64\]"),
    ("timm:resnet18", {"output_stride": 4}, ValueError, r"output_stride must be 8, 16 or 32, got 4"),
    ("timm:resnet18", {"norm": "gn"}, ValueError, r"'bn' or 'frozen_bn', got 'gn'"),
    ("torchvision:resnet5", {}, ValueError, r"unknown torchvision ResNet 'resnet5'.*resnet50"),
    ("torchvision:resnet18", {"output_stride": 16}, ValueError, r"BasicBlock.*build_backbone\('resnet18'"),
    ("torchvision:resnet50", {"out_strides": (32, 8)}, ValueError, r"increasing"),
    ("torchvision:resnet18", {"outstrides": (8,)}, TypeError, r"did you mean 'out_strides'"),
    ("torchvision:resnet18", {"frozen_stages": 5}, ValueError, r"frozen_stages must be an int from -1 to 4"),
    ("torchvision:resnet18", {"frozen_stages": True}, ValueError, r"frozen_stages must be an int.*got True"),
    ("timm:resnet18", {"frozen_stages": True}, ValueError, r"only frozen_stages=-1.*got True"),
    ("torchvision:resnet18", {"pretrained": "imagenet", "weights": "IMAGENET1K_V1"}, TypeError,
     r"pretrained= or weights=, not both"),
    ("torchvision:resnet18", {"pretrained": "tv2"}, ValueError, r"no IMAGENET1K_V2 weights for 'resnet18'"),
    ("timm:resnet18", {"pretrained": "timm:resnet50.a1_in1k"}, ValueError, r"timm's 'resnet50', not of 'resnet18'"),
    ("nosuch:resnet18", {}, ValueError, r"unknown backbone prefix 'nosuch'.*timm, torchvision"),
])
def test_wrapper_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(name, **kwargs)


def test_timm_vit_returns_the_last_block_of_its_stride():
    # Every block of a ViT is at stride 16; the map of stride 16 is the last block's, as out_indices=-1 gives.
    import timm

    bb = build_backbone("timm:vit_tiny_patch16_224", out_strides=(16,), depth=3).eval()
    assert bb.feature_info.names == ["blocks.2"] and bb.feature_info.strides == [16]
    reference = timm.create_model("vit_tiny_patch16_224", depth=3, dynamic_img_size=True).eval()
    missing, unexpected = reference.load_state_dict(bb.model.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing), missing
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        last, first = reference.forward_intermediates(x, indices=[2, 0], intermediates_only=True)[::-1]
        ours = bb(x)[0]
    assert ours.shape == (1, 192, 3, 5)
    torch.testing.assert_close(ours, last)
    assert not torch.allclose(ours, first)
    check_backbone(bb, sizes=SIZES)  # odd sizes too: padded to a multiple of 16


def test_timm_swin_gives_nchw_maps_for_any_size():
    import timm

    kwargs = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    bb = build_backbone("timm:swin_tiny_patch4_window7_224", out_strides=(4, 8, 16, 32), **kwargs).eval()
    assert bb.feature_info.channels == [24, 48, 96, 192] and bb.feature_info.strides == [4, 8, 16, 32]
    check_backbone(bb, sizes=SIZES)
    reference = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, dynamic_img_size=True,
                                  **kwargs).eval()
    reference.load_state_dict(bb.model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(bb(x), reference(x)):  # timm's maps are (N, H, W, C)
            torch.testing.assert_close(a, b.permute(0, 3, 1, 2))


@pytest.mark.parametrize("kwargs, match", [
    ({"dynamic_img_size": False}, r"cannot be wrapped: running a 17x19 input fails.*needs dynamic_img_size=True"),
    ({"output_stride": 8}, r"cannot give output_stride=8 for out_strides=\(16,\).*use output_stride=16"),
    ({"out_strides": (8, 16)}, r"provides maps at strides \(16,\); out_strides \[8\]"),
])
def test_timm_vit_requests_it_cannot_satisfy_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone("timm:vit_tiny_patch16_224", **{"out_strides": (16,), "depth": 1, **kwargs})


def test_timm_in_chans_with_pretrained_weights_is_adapted_by_timm(tmp_path):
    import timm

    source = randomize_norms(timm.create_model("resnet18"))
    path = save_state_dict(source.state_dict(), tmp_path / "r18.safetensors")
    bb = build_backbone("timm:resnet18", in_chans=1, pretrained=str(path)).eval()
    expected = timm.models.adapt_input_conv(1, source.conv1.weight.detach().clone())
    torch.testing.assert_close(bb.model.conv1.weight, expected)
    assert bb.in_chans == 1 and bb(torch.randn(1, 1, 32, 32))[0].shape == (1, 128, 4, 4)


def test_torchvision_in_chans_with_pretrained_weights_is_adapted(tv_checkpoint, caplog):
    import timm

    tv, path = tv_checkpoint("resnet18")
    with caplog.at_level("INFO", logger="backbones.weights"):
        bb = build_backbone("torchvision:resnet18", in_chans=5, pretrained=str(path)).eval()
    torch.testing.assert_close(bb.body.conv1.weight, timm.models.adapt_input_conv(5, tv.conv1.weight.detach().clone()))
    assert sum("from 3 to 5 input channels" in r.getMessage() for r in caplog.records) == 1
    check_backbone(bb, sizes=((1, 5, 37, 45),), check_grads=False)
    assert build_backbone("torchvision:resnet18", in_chans=5).body.conv1.weight.shape[1] == 5  # no weights


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_wrappers_refuse_in_chans_below_one(name):
    with pytest.raises(ValueError, match=r"in_chans must be a positive int, got 0"):
        build_backbone(name, in_chans=0)
