"""segmentation_models_pytorch interop: our backbones as smp encoders."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import encoders as smp_encoders

from tests.conftest import randomize_norms
from heads.smp import DenseEncoder, register_smp_encoders


@pytest.fixture(scope="module", autouse=True)
def _registered():
    names = register_smp_encoders()
    yield names
    for name in names:  # leave smp's table as we found it
        smp_encoders.pop(name, None)


def test_registration_is_idempotent_and_covers_the_registry(_registered):
    assert "dense-resnet18" in _registered and "dense-resnet50" in _registered
    assert register_smp_encoders() == _registered
    assert smp_encoders["dense-resnet18"]["encoder"] is DenseEncoder


@pytest.mark.parametrize("arch, kwargs, strides", [
    (smp.Unet, {}, [2, 4, 8, 16, 32]),
    (smp.FPN, {}, [2, 4, 8, 16, 32]),
    (smp.DeepLabV3Plus, {"encoder_output_stride": 16}, [2, 4, 8, 16, 16]),
    (smp.DeepLabV3Plus, {"encoder_output_stride": 8}, [2, 4, 8, 8, 8]),
    (smp.PSPNet, {}, [2, 4, 8]),  # smp's PSPNet uses encoder_depth=3
    (smp.Unet, {"in_channels": 1}, [2, 4, 8, 16, 32]),
])
def test_smp_models_with_our_encoder(arch, kwargs, strides):
    model = arch("dense-resnet18", encoder_weights=None, classes=3, **kwargs).eval()
    assert model.encoder.backbone.feature_info.strides == strides
    x = torch.randn(2, kwargs.get("in_channels", 3), 64, 96)
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 96)


def test_unet_equals_smp_resnet_encoder_on_same_weights():
    # At output stride 32 our ResNet and smp's torchvision-based encoder are the same network.
    theirs = randomize_norms(smp.Unet("resnet18", encoder_weights=None, classes=2)).eval()
    ours = smp.Unet("dense-resnet18", encoder_weights=None, classes=2).eval()
    state = {k.replace("encoder.", "encoder.backbone.", 1) if k.startswith("encoder.") else k: v
             for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_encoder_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"depth must be an int in \[1, 5\], got 6"):
        DenseEncoder(backbone="resnet18", depth=6)
    enc = DenseEncoder(backbone="resnet18", output_stride=16)
    with pytest.raises(ValueError, match=r"built with output_stride=16, smp asks for 8"):
        enc.make_dilated(8)
    with pytest.raises(ValueError, match=r"unknown backbone\(s\) \['resnet81'\]"):
        register_smp_encoders(names=["resnet81"])
    with pytest.raises(ValueError, match=r"prefix must be a non-empty string"):
        register_smp_encoders(prefix="", names=["resnet18"])  # would shadow smp's own "resnet18"
    monkeypatch.setitem(smp_encoders, "mine-resnet18", dict(smp_encoders["resnet18"]))
    with pytest.raises(ValueError, match=r"'mine-resnet18' already exists and is not ours"):
        register_smp_encoders(prefix="mine-", names=["resnet18"])
