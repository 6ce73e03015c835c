"""ResNet feature extractors: shapes against metadata, equivalence with torchvision/timm, norms and freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from backbones import FrozenBatchNorm2d, build_backbone, list_backbones, resnet18, resnet50
from backbones.resnet import ARCHS
from backbones.testing import check_backbone

ODD = (1, 3, 97, 131)
ALL_STRIDES = (2, 4, 8, 16, 32)
# Deep variants cost seconds per configuration at full size; their layout equals resnet50's except depth.
CHEAP = ("resnet18", "resnet34", "resnet50")


def expected_channels(arch: str) -> dict:
    block, _ = ARCHS[arch]
    return {2: 64, **{4 * 2 ** i: 64 * 2 ** i * block.expansion for i in range(4)}}


def assert_float32_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    # Same weights, same operations: only float32 rounding may differ, relative to the map's magnitude.
    scale = expected.abs().max().item()
    assert_close(got, expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def test_every_resnet_is_registered():
    assert set(ARCHS) <= set(list_backbones("resnet*"))


def _shape_cases():
    cases = []
    for arch in sorted(ARCHS):
        if arch in CHEAP:
            for os_ in (8, 16, 32):
                cases.append((arch, ALL_STRIDES, os_, ODD))
            if arch == "resnet18":
                for strides, os_ in (((8, 16, 32), 32), ((4, 16), 16), ((32,), 8), ((2,), 32), ((2, 32), 16)):
                    cases.append((arch, strides, os_, ODD))
        else:
            cases.append((arch, (8, 16, 32), 16, (1, 3, 33, 47)))
    return cases


@pytest.mark.parametrize("arch, out_strides, output_stride, size", _shape_cases())
def test_shapes_match_feature_info(arch, out_strides, output_stride, size):
    model = build_backbone(arch, out_strides=out_strides, output_stride=output_stride).eval()
    info = model.feature_info
    # Metadata states the actual stride: strides beyond output_stride became dilation.
    assert info.strides == [min(s, output_stride) for s in out_strides]
    assert [s.dilation for s in info] == [s // min(s, output_stride) for s in out_strides]
    assert info.channels == [expected_channels(arch)[s] for s in out_strides]
    assert model.out_channels == info.channels and model.size_divisibility == max(info.strides)
    with torch.no_grad():
        outs = model(torch.randn(size))
    n, _, h, w = size
    assert [tuple(o.shape) for o in outs] == [(n, *s) for s in model.output_shapes(h, w)]
    assert [tuple(o.shape) for o in outs] == [
        (n, c, -(-h // s), -(-w // s)) for c, s in zip(info.channels, info.strides)]


@pytest.mark.parametrize("arch, count", [("resnet18", 11_176_512), ("resnet34", 21_284_672),
                                         ("resnet50", 23_508_032)])
def test_parameter_count_without_classifier(arch, count):
    import torchvision

    model = build_backbone(arch, out_strides=ALL_STRIDES)
    assert sum(p.numel() for p in model.parameters()) == count
    tv = getattr(torchvision.models, arch)()
    assert count == sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))


def _torchvision_maps(tv: nn.Module, x: torch.Tensor) -> list:
    from torchvision.models._utils import IntermediateLayerGetter

    getter = IntermediateLayerGetter(tv, {"relu": "2", "layer1": "4", "layer2": "8", "layer3": "16",
                                          "layer4": "32"})
    with torch.no_grad():
        return list(getter(x).values())


@pytest.mark.parametrize("arch, suffix", [("resnet18", ".pth"), ("resnet18", ".safetensors"),
                                          ("resnet34", ".pth"), ("resnet50", ".safetensors")])
def test_matches_torchvision_on_same_weights(arch, suffix, tv_checkpoint):
    tv, path = tv_checkpoint(arch, suffix)
    ours = build_backbone(arch, out_strides=ALL_STRIDES, pretrained=str(path)).eval()
    # strict: every tensor of ours comes from the checkpoint, which held nothing else but the classifier.
    theirs = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert ours.state_dict().keys() == theirs.keys()
    x = torch.randn(ODD)
    with torch.no_grad():
        got = ours(x)
    expected = _torchvision_maps(tv, x)
    for g, e in zip(got, expected, strict=True):
        assert_float32_close(g, e)


def test_resnet50_output_stride_8_matches_torchvision_dilation(tv_checkpoint):
    tv, path = tv_checkpoint("resnet50", replace_stride_with_dilation=[False, True, True])
    ours = resnet50(out_strides=(4, 8, 16, 32), output_stride=8, pretrained=path).eval()
    assert ours.feature_info.strides == [4, 8, 8, 8]
    x = torch.randn(ODD)
    with torch.no_grad():
        got = ours(x)
    for g, e in zip(got, _torchvision_maps(tv, x)[1:], strict=True):
        assert_float32_close(g, e)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_basicblock_dilation_matches_timm(arch, output_stride, tmp_path, randomize):
    import timm
    from safetensors.torch import save_file

    full = randomize(timm.create_model(arch, pretrained=False))
    sd = full.state_dict()  # with fc.*, as timm publishes it
    path = tmp_path / f"{arch}.safetensors"
    save_file(sd, str(path))
    ref = timm.create_model(arch, pretrained=False, features_only=True, output_stride=output_stride)
    ref.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, strict=True)
    ref.eval()
    ours = build_backbone(arch, out_strides=ALL_STRIDES, output_stride=output_stride, pretrained=path).eval()
    assert ours.feature_info.strides == ref.feature_info.reduction()
    assert ours.feature_info.channels == ref.feature_info.channels()
    x = torch.randn(ODD)
    with torch.no_grad():
        got, expected = ours(x), ref(x)
    for g, e in zip(got, expected, strict=True):
        assert_float32_close(g, e)


def test_dilation_layout_first_block_keeps_previous_dilation():
    r18 = resnet18(output_stride=8)
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in r18.layer3] == [(1, 2), (2, 2)]
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in r18.layer4] == [(2, 4), (4, 4)]
    assert all(b.conv1.stride == (1, 1) for b in list(r18.layer3) + list(r18.layer4))
    r50 = resnet50(output_stride=16)
    assert [b.conv2.dilation[0] for b in r50.layer3] == [1] * 6
    assert [b.conv2.dilation[0] for b in r50.layer4] == [1, 2, 2]
    assert r50.layer4[0].conv2.stride == (1, 1) and r50.layer4[0].downsample[0].stride == (1, 1)


def test_multi_grid_scales_last_stage_dilation():
    r50 = resnet50(output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in r50.layer4] == [2, 4, 8]
    r18 = resnet18(out_strides=(8, 32), output_stride=8, multi_grid=(1, 2))
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in r18.layer4] == [(4, 4), (8, 8)]
    assert r18.feature_info.strides == [8, 8]
    with torch.no_grad():
        outs = r18.eval()(torch.randn(1, 3, 41, 53))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 6, 7), (1, 512, 6, 7)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(multi_grid=(1, 2)), r"3 positive ints.*\(1, 2\)"),
    (dict(multi_grid=(1, 0, 2)), r"\(1, 0, 2\)"),
    (dict(out_strides=(8, 16), multi_grid=(1, 2, 4)), r"layer4.*\(8, 16\)"),
])
def test_multi_grid_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet50(**kwargs)


def test_deeper_stages_than_requested_are_not_built(tv_checkpoint):
    model = resnet18(out_strides=(8, 16))
    assert {k.split(".")[0] for k in model.state_dict()} == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert not list(model.layer4.parameters())
    stem = resnet18(out_strides=(2,))
    assert {k.split(".")[0] for k in stem.state_dict()} == {"conv1", "bn1"}
    # A full checkpoint still loads (layer4 and fc are dropped), and the kept maps are torchvision's.
    tv, path = tv_checkpoint("resnet18")
    model = resnet18(out_strides=(8, 16), pretrained=path).eval()
    x = torch.randn(ODD)
    with torch.no_grad():
        got = model(x)
    expected = _torchvision_maps(tv, x)
    assert_float32_close(got[0], expected[2])
    assert_float32_close(got[1], expected[3])
    check_backbone(model, sizes=((1, 3, 33, 47), (2, 3, 32, 32)))  # every built parameter is used


def test_frozen_bn_keeps_statistics_and_gets_no_gradients(tv_checkpoint):
    tv, path = tv_checkpoint("resnet18")  # carries num_batches_tracked, which frozen BN has no slot for
    model = resnet18(out_strides=ALL_STRIDES, norm="frozen_bn", pretrained=path)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 20 and all(not list(m.parameters()) for m in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = torch.randn(ODD)
    outs = model(x)
    sum(o.mean() for o in outs).backward()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in model.parameters())  # the convolutions still train
    # In train mode, frozen BN computes exactly what torchvision's BN computes in eval mode.
    for g, e in zip(outs, _torchvision_maps(tv, x), strict=True):
        assert_float32_close(g.detach(), e)


@pytest.mark.parametrize("frozen_stages", [0, 1, 3])
def test_frozen_stages_get_no_gradients_and_keep_bn_in_eval(frozen_stages):
    model = resnet18(out_strides=(4, 8, 16, 32), frozen_stages=frozen_stages)
    frozen_prefixes = ("conv1", "bn1") + tuple(f"layer{i}" for i in range(1, frozen_stages + 1))

    def is_frozen(name):
        return name.split(".")[0] in frozen_prefixes

    model.requires_grad_(True)  # e.g. smp's unfreeze_encoder(): undone by the next train()/eval() call
    model.eval()
    model.train()  # frozen stages must survive a later train() call
    assert model.training
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert all(m.training != is_frozen(n) for n, m in bns.items())
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    sum(o.mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    for name, p in model.named_parameters():
        assert p.requires_grad != is_frozen(name), name
        assert (p.grad is None) == is_frozen(name), name
    for n, m in bns.items():
        assert torch.equal(m.running_mean, before[n]) == is_frozen(n), n


def test_norm_eval_keeps_every_bn_in_eval_but_trains_affine():
    model = resnet18(norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert model.training and model.layer2.training and not any(m.training for m in bns)
    before = [m.running_var.clone() for m in bns]
    sum(o.mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    assert all(torch.equal(m.running_var, b) for m, b in zip(bns, before))
    assert all(m.weight.grad is not None for m in bns)


def test_sync_bn_builds_runs_and_converts():
    model = resnet18(norm="sync_bn")
    syncs = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(syncs) == 20 and not any(type(m) is nn.BatchNorm2d for m in model.modules())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        outs = model.eval()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 128, 8, 10), (2, 256, 4, 5), (2, 512, 2, 3)]
    # For CPU/single-process use, SyncBN converts to BN or frozen BN with identical eval output.
    from backbones import freeze_batchnorm

    frozen = freeze_batchnorm(model)
    with torch.no_grad():
        for g, e in zip(frozen(x), outs, strict=True):
            assert_float32_close(g, e)


def test_group_norm_backbone():
    model = resnet18(norm="gn")
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 20 and all(m.num_groups == 32 for m in gns)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    check_backbone(model, sizes=((1, 3, 33, 47), (1, 3, 32, 32)))  # batch 1 trains: GN needs no batch


def test_zero_init_residual_makes_blocks_identity():
    model = resnet50(zero_init_residual=True).eval()
    assert all(torch.all(b.bn3.weight == 0) for stage in (model.layer1, model.layer4) for b in stage)
    block = model.layer1[1]  # no downsample: out = relu(0 + x)
    x = torch.rand(1, 256, 9, 11)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    assert torch.all(resnet50().layer1[1].bn3.weight == 1)
    r18 = resnet18(zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) for b in r18.layer2)


def test_in_chans():
    model = resnet18(in_chans=4)
    assert model.conv1.weight.shape[1] == 4 and model.in_chans == 4
    check_backbone(model, sizes=((1, 4, 33, 47), (2, 4, 32, 32)))


def test_wrong_input_rank_channels_dtype():
    model = resnet18().eval()
    with pytest.raises(ValueError, match=r"4-D.*\(3, 97, 131\)"):
        model(torch.randn(3, 97, 131))
    with pytest.raises(ValueError, match=r"3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating-point.*torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"torch.float64 input but its weights are torch.float32.*x\.float\(\)"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    for h, w in ((0, 0), (0, 64), (64, 0)):
        with pytest.raises(ValueError, match=rf"at least 1x1 pixels, got {h}x{w} \(input shape \(1, 3, {h}, {w}\)\)"):
            model(torch.zeros(1, 3, h, w))
    # A float64 model takes float64 input; a 1x1 image is the smallest accepted.
    outs = resnet18().double().eval()(torch.zeros(1, 3, 1, 1, dtype=torch.float64))
    assert [o.dtype for o in outs] == [torch.float64] * 3 and outs[-1].shape == (1, 512, 1, 1)


def _fx_cases():
    # Every registered ResNet at its deepest output stride, plus dilation and the torchvision wrapper.
    cases = [(arch, {"out_strides": ALL_STRIDES}) for arch in sorted(ARCHS)]
    return cases + [("resnet50", {"output_stride": 8}), ("torchvision:resnet18", {"out_strides": (4, 8, 16, 32)})]


@pytest.mark.parametrize("name, kwargs", _fx_cases())
def test_fx_symbolic_trace_equals_eager(name, kwargs):
    model = build_backbone(name, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        for got, expected in zip(traced(x), model(x), strict=True):
            assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 33, 47))  # tracing skipped the checks; real calls still run them


def test_torchvision_feature_extraction():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    # With activation checkpointing on, as get_graph_node_names also traces the training-mode graph.
    model = resnet18(out_strides=ALL_STRIDES, checkpoint_stages=True).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes and "layer3.1.relu_1" in eval_nodes
    extractor = create_feature_extractor(model, {"layer2.0.relu": "mid", "layer4": "deep"})
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = extractor(x)
        assert_close(feats["deep"], model(x)[-1], rtol=0, atol=0)
    assert feats["mid"].shape == (2, 128, 8, 10)


@pytest.mark.parametrize("kwargs, error, needles", [
    (dict(out_strides=(3,)), ValueError, ("got [3]", "(2, 4, 8, 16, 32)")),
    (dict(out_strides=(8, 64)), ValueError, ("got [64]", "(2, 4, 8, 16, 32)")),
    (dict(out_strides=()), ValueError, ("empty", "(2, 4, 8, 16, 32)")),
    (dict(out_strides=(8, 8)), ValueError, ("repeat", "(8, 8)")),
    (dict(out_strides=(16, 8)), ValueError, ("increasing", "(16, 8)")),
    (dict(out_strides=8), TypeError, ("got 8", "(2, 4, 8, 16, 32)")),
    (dict(output_stride=4), ValueError, ("8, 16 or 32, got 4",)),
    (dict(output_stride=64), ValueError, ("8, 16 or 32, got 64",)),
    (dict(frozen_stages=5), ValueError, ("frozen_stages", "-1", "to 4", "got 5")),
    (dict(frozen_stages=-2), ValueError, ("frozen_stages", "got -2")),
    (dict(frozen_stages=True), ValueError, ("frozen_stages must be an int", "got True")),
    (dict(frozen_stages=False), ValueError, ("frozen_stages must be an int", "got False")),
    (dict(out_strides=(8, 16), frozen_stages=4), ValueError, ("to 3", "(8, 16)", "got 4")),
    (dict(norm="batchnorm"), ValueError, ("'bn', 'frozen_bn', 'sync_bn', 'gn'", "got 'batchnorm'")),
    (dict(in_chans=0), ValueError, ("in_chans", "got 0")),
    (dict(ouput_stride=8), TypeError, ("'ouput_stride' (did you mean 'output_stride'?)", "accepted: ",
                                       "out_strides")),
])
def test_bad_configuration_raises_naming_the_value(kwargs, error, needles):
    with pytest.raises(error) as excinfo:
        build_backbone("resnet18", **kwargs)
    assert all(n in str(excinfo.value) for n in needles), str(excinfo.value)
