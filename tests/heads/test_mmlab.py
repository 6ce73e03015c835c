"""OpenMMLab interop: DenseBackbone in mmengine's MODELS registry, built from configs as mmseg/mmdet build it."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, Registry

from backbones import build_backbone
from backbones.registry import MissingExtraError
from heads.mmlab import DenseBackbone

from tests.conftest import randomize_norms, save_state_dict


def test_a_config_with_custom_imports_registers_and_builds_it(tmp_path, monkeypatch):
    # As a fresh mmseg/mmdet process: the registry does not know DenseBackbone until the config imports it.
    monkeypatch.setattr(MODELS, "_module_dict", {k: v for k, v in MODELS._module_dict.items() if k != "DenseBackbone"})
    monkeypatch.delitem(sys.modules, "heads.mmlab")
    config = tmp_path / "config.py"
    config.write_text('custom_imports = dict(imports=["heads.mmlab"], allow_failed_imports=False)\n'
                      'model = dict(type="DenseBackbone", name="resnet18", out_strides=(8, 16, 32),\n'
                      '             output_stride=16)\n')
    cfg = Config.fromfile(str(config))
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "DenseBackbone" and model.out_channels == [128, 256, 512]
    # mmseg's and mmdet's MODELS are children of mmengine's and fall back to it.
    monkeypatch.setattr(MODELS, "_children", dict(MODELS._children))
    child = Registry("model", parent=MODELS, scope="dense_test_mmseg")
    assert child.get("DenseBackbone") is type(model)
    outs = model.eval()(torch.randn(2, 3, 64, 96))
    assert isinstance(outs, tuple) and [tuple(o.shape) for o in outs] == [(2, 128, 8, 12), (2, 256, 4, 6),
                                                                          (2, 512, 4, 6)]


@pytest.mark.parametrize("how", ["pretrained", "init_cfg"])
def test_built_from_a_config_equals_build_backbone_on_the_same_weights(how, tmp_path):
    reference = randomize_norms(build_backbone("resnet18", out_strides=(4, 8, 16, 32), output_stride=8)).eval()
    path = str(save_state_dict(reference.state_dict(), tmp_path / "r18.pth"))
    weights = dict(pretrained=path) if how == "pretrained" else dict(init_cfg=dict(type="Pretrained", checkpoint=path))
    model = MODELS.build(dict(type="DenseBackbone", name="resnet18", output_stride=8, **weights))
    assert not torch.equal(model.backbone.conv1.weight, reference.conv1.weight)  # loaded by init_weights
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), reference(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_frozen_stages_stay_frozen_through_init_weights_and_train(tmp_path):
    path = str(save_state_dict(build_backbone("resnet18").state_dict(), tmp_path / "r18.pth"))
    model = MODELS.build(dict(type="DenseBackbone", name="resnet18", frozen_stages=1, norm_eval=True,
                              pretrained=path, init_cfg=[dict(type="Kaiming", layer="Conv2d")]))
    model.init_weights()
    model.requires_grad_(True)  # e.g. a wrapper that unfreezes everything
    model.train()
    bb = model.backbone
    assert not any(p.requires_grad for p in [*bb.conv1.parameters(), *bb.bn1.parameters(),
                                             *bb.layer1.parameters()])
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert not bb.layer1.training and bb.layer2.training
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    assert bb.layer1[0].conv1.weight.grad is None and bb.layer2[0].conv1.weight.grad is not None


@pytest.mark.parametrize("cfg, error, match", [
    (dict(name="resnet18", output_stride=4), ValueError, r"output_stride must be 8, 16 or 32, got 4"),
    (dict(name="resnet18", in_chans=0), ValueError, r"in_chans must be a positive int, got 0"),
    (dict(name="resnet18", out_strides=(8, 64)), ValueError, r"out_strides values must be in"),
    (dict(name="resnet18", ouput_stride=8), TypeError, r"'ouput_stride' \(did you mean 'output_stride'\?\)"),
    (dict(name="resnet18", pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth")), TypeError,
     r"pass pretrained= or init_cfg=dict\(type='Pretrained', \.\.\.\), not both"),
    (dict(name="resnet18", init_cfg=dict(type="Pretrained", checkpoint="a.pth", prefix="backbone.")), TypeError,
     r"takes checkpoint= only here"),
])
def test_bad_configs_are_refused_naming_the_value(cfg, error, match):
    with pytest.raises(error, match=match):
        MODELS.build(dict(type="DenseBackbone", **cfg))


def test_torchvision_scheme_names_torchvisions_imagenet_file(hub_dir, tv_checkpoint):
    import shutil

    from backbones.weights import cached_path_for_url, torchvision_url

    tv, path = tv_checkpoint("resnet18")
    cached = cached_path_for_url(torchvision_url("resnet18"))
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)
    model = DenseBackbone(name="resnet18", init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet18"))
    model.init_weights()
    assert torch.equal(model.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_missing_mmengine_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmengine", None)
    monkeypatch.delitem(sys.modules, "heads.mmlab")
    with pytest.raises(MissingExtraError, match=r'needs the mmengine package.*pip install '
                                                r'"dense-backbones\[openmmlab\]"'):
        importlib.import_module("heads.mmlab")
