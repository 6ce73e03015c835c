"""Hugging Face transformers interop: our backbones behind AutoBackbone, inside UperNet, Mask2Former and DETR."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (AutoBackbone, AutoConfig, DetrConfig, DetrForObjectDetection, Mask2FormerConfig,
                          Mask2FormerForUniversalSegmentation, TimmBackboneConfig, UperNetConfig,
                          UperNetForSemanticSegmentation)

from backbones import build_backbone, load_pretrained
from backbones.registry import MissingExtraError
from heads.hf import DenseBackbone, DenseBackboneConfig, register_hf_backbones

from tests.conftest import randomize_norms, save_state_dict

FEATURES = ["layer1", "layer2", "layer3", "layer4"]
# auxiliary_in_channels: layer3's (transformers 4 defaults to 384, 5 to the backbone's).
UPERNET = dict(hidden_size=32, auxiliary_channels=16, auxiliary_in_channels=256, num_labels=3, pool_scales=[1, 2])


def upernet(backbone: DenseBackboneConfig) -> UperNetForSemanticSegmentation:
    return UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, **UPERNET))


def mask2former(backbone: DenseBackboneConfig) -> Mask2FormerForUniversalSegmentation:
    return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=4,
        train_num_points=64, num_labels=3))


def detr(backbone: DenseBackboneConfig) -> DetrForObjectDetection:
    # transformers 4 defaults to timm's pretrained resnet50; 5 takes backbone_config alone
    return DetrForObjectDetection(DetrConfig(
        backbone_config=backbone, backbone=None, use_timm_backbone=False, use_pretrained_backbone=False, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=5, num_labels=3))


# name: (builder, out_features, training targets for a batch of 2 64x64 images, the output compared)
ARCHS = {
    "upernet": (upernet, FEATURES, lambda: {"labels": torch.randint(0, 3, (2, 64, 64))}, "logits"),
    "mask2former": (mask2former, FEATURES, lambda: {
        "mask_labels": [torch.randint(0, 2, (2, 64, 64)).float() for _ in range(2)],
        "class_labels": [torch.tensor([0, 2]), torch.tensor([1, 2])]}, "masks_queries_logits"),
    "detr": (detr, ["layer4"], lambda: {"labels": [
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])},
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
    ]}, "pred_boxes"),
}


def dense_backbone(model: torch.nn.Module) -> DenseBackbone:
    return next(m for m in model.modules() if isinstance(m, DenseBackbone))


def test_stages_and_out_features_follow_transformers_conventions():
    assert register_hf_backbones() == "dense_backbone"  # again: harmless
    cfg = DenseBackboneConfig("resnet50")
    assert cfg.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert cfg.stage_strides == [2, 4, 8, 16, 32] and cfg.stage_channels == [64, 256, 512, 1024, 2048]
    assert cfg.out_features == ["layer4"] and cfg.out_indices == [4]  # transformers' default: the last stage
    cfg = DenseBackboneConfig("resnet18", out_indices=[1, -1])
    assert cfg.out_features == ["layer1", "layer4"]
    cfg.out_features = ["layer2"]
    assert cfg.out_indices == [2]
    assert isinstance(AutoConfig.for_model("dense_backbone", backbone="resnet18"), DenseBackboneConfig)
    backbone = AutoBackbone.from_config(DenseBackboneConfig("resnet18", out_features=["layer2", "layer4"]))
    assert isinstance(backbone, DenseBackbone) and backbone.channels == [128, 512]
    # timm models: one stage per stride, the deepest map of it (a ViT's last block).
    vit = DenseBackboneConfig("timm:vit_tiny_patch16_224", backbone_kwargs={"depth": 2})
    assert vit.stage_names == ["blocks.1"] and vit.stage_strides == [16] and vit.out_features == ["blocks.1"]


def test_backbone_equals_ours_on_the_same_weights(tmp_path):
    ours = randomize_norms(build_backbone("resnet18", out_strides=(4, 8, 16, 32), output_stride=16)).eval()
    path = save_state_dict(ours.state_dict(), tmp_path / "r18.safetensors")
    config = DenseBackboneConfig("resnet18", out_features=["layer2", "layer4"], output_stride=16, norm="frozen_bn",
                                 pretrained=path)
    theirs = AutoBackbone.from_config(config).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = ours(x)
        out = theirs(x, output_hidden_states=True)
        as_tuple = theirs(x, return_dict=False)
    assert len(out.feature_maps) == 2 and out.attentions is None
    # frozen BN computes (x - mean) / std * w + b as one multiply-add: equal to BN in eval up to rounding
    torch.testing.assert_close(out.feature_maps[0], expected[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.feature_maps[1], expected[3], rtol=1e-4, atol=1e-4)
    assert [h.shape[1:] for h in out.hidden_states] == [(64, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6),
                                                        (512, 4, 6)]
    torch.testing.assert_close(as_tuple[0][1], out.feature_maps[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"has no attention maps"):
        theirs(x, output_attentions=True)


def test_upernet_equals_upernet_on_transformers_timm_backbone():
    # transformers' own wrapper of timm's resnet18 has our parameter names: same weights, same network.
    theirs = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=[1, 2, 3, 4],
                                           use_pretrained_backbone=False), **UPERNET))
    randomize_norms(theirs).eval()
    ours = upernet(DenseBackboneConfig("resnet18", out_features=FEATURES)).eval()
    state = {k.replace("backbone._backbone.", "backbone.model.", 1): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_model_trains_predicts_and_round_trips(arch, tmp_path, tv_checkpoint):
    build, features, targets, output = ARCHS[arch]
    tv, weights = tv_checkpoint("resnet18")
    model = build(DenseBackboneConfig("resnet18", out_features=features, frozen_stages=1,
                                      pretrained=str(weights))).train()
    bb = dense_backbone(model).model
    if arch == "mask2former" and int(transformers.__version__.split(".")[0]) < 5:
        # transformers 4's Mask2Former redraws every convolution of its pixel-level module, the backbone's too;
        # the README's workaround: load the weights after building.
        load_pretrained(bb, str(weights))
    # The pretrained weights survive transformers' initialisation of the model around them.
    assert torch.equal(bb.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    x = torch.randn(2, 3, 64, 64)
    out = model(pixel_values=x, **targets())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in [*bb.conv1.parameters(), *bb.layer1.parameters()])  # frozen_stages=1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in bb.layer4.parameters())
    model.eval()
    with torch.no_grad():
        predicted = getattr(model(pixel_values=x), output)
    model.save_pretrained(tmp_path / arch)
    weights.unlink()  # from_pretrained takes the weights from its checkpoint, not from pretrained= again
    loaded = type(model).from_pretrained(tmp_path / arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(getattr(loaded(pixel_values=x), output), predicted, rtol=0, atol=0)


def test_a_new_process_imports_heads_hf_before_from_pretrained(tmp_path):
    model = upernet(DenseBackboneConfig("resnet18", out_features=FEATURES)).eval()
    model.save_pretrained(tmp_path / "upernet")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x).logits}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        "from transformers import UperNetForSemanticSegmentation as M\n"
        f"path, io = {str(tmp_path / 'upernet')!r}, torch.load({str(tmp_path / 'io.pt')!r})\n"
        "try:\n"
        "    M.from_pretrained(path)\n"
        "    sys.exit('loaded without heads.hf')\n"
        "except Exception as e:\n"
        "    assert 'dense_backbone' in str(e), e\n"
        "import heads.hf\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(M.from_pretrained(path).eval()(io['x']).logits, io['logits'])\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("backbone, kwargs, match", [
    ("resnet18", dict(out_features=["layer5"]),
     r"out_features \['layer5'\] are not stages of 'resnet18'; give a list of stem, layer1, layer2, layer3, layer4"),
    ("resnet18", dict(out_features="layer4"), r"out_features 'layer4' are not stages.*give a list of"),
    ("resnet18", dict(out_indices=[7]), r"out_indices must be valid indices"),
    ("resnet18", dict(output_stride=4), r"output_stride must be 8, 16 or 32, got 4"),
    ("torchvision:resnet18", dict(output_stride=16), r"BasicBlock, which torchvision cannot dilate"),
    ("resnet18", dict(in_chans=0), r"in_chans must be a positive int, got 0"),
    ("resnet81", {}, r"unknown backbone 'resnet81'"),
])
def test_bad_configs_are_refused_in_one_line(backbone, kwargs, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        DenseBackboneConfig(backbone, **kwargs)
    assert "\n" not in str(excinfo.value)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "heads.hf")
    with pytest.raises(MissingExtraError, match=r'heads\.hf .*needs the transformers package.*'
                                                r'pip install "dense-backbones\[hf\]"') as excinfo:
        importlib.import_module("heads.hf")
    assert isinstance(excinfo.value, ImportError) and "\n" not in str(excinfo.value)


def test_timm_swin_round_trips_with_its_non_persistent_buffers(tmp_path):
    # from_pretrained builds on the meta device; Swin's attention index is a buffer no checkpoint holds.
    kwargs = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
    config = DenseBackboneConfig("timm:swin_tiny_patch4_window7_224", out_features=["layers.1", "layers.3"],
                                 backbone_kwargs=kwargs)
    assert config.stage_names == ["layers.0", "layers.1", "layers.2", "layers.3"]
    model = DenseBackbone(config).eval()
    model.save_pretrained(tmp_path / "swin")
    loaded = DenseBackbone.from_pretrained(tmp_path / "swin").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = model(x).feature_maps, loaded(x).feature_maps
    assert [tuple(m.shape) for m in got] == [(1, 48, 8, 12), (1, 192, 2, 3)]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
