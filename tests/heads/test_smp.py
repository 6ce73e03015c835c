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
    with pytest.raises(TypeError, match=r"\['out_strides'\] are set by smp"):
        register_smp_encoders(prefix="x-", names=["resnet18"], out_strides=(8,))
    with pytest.raises(ValueError, match=r"prefix must be a non-empty string"):
        register_smp_encoders(prefix="", names=["resnet18"])  # would shadow smp's own "resnet18"
    monkeypatch.setitem(smp_encoders, "mine-resnet18", dict(smp_encoders["resnet18"]))
    with pytest.raises(ValueError, match=r"'mine-resnet18' already exists and is not ours"):
        register_smp_encoders(prefix="mine-", names=["resnet18"])


def _smp_imagenet_files(tmp_path, tv_checkpoint):
    """smp's hub files for resnet18's ImageNet weights: torchvision's keys without the classifier."""
    import json

    from tests.conftest import save_state_dict

    tv, _ = tv_checkpoint("resnet18")
    sd = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    return tv, {"model.safetensors": save_state_dict(sd, tmp_path / "model.safetensors"), "config.json": config}


def test_default_imagenet_weights_load_from_the_cache_checked(hf_cache, tmp_path, tv_checkpoint):
    from tests.conftest import place_in_hf_cache

    settings = smp_encoders["dense-resnet18"]["pretrained_settings"].get("imagenet")  # [] would fetch the files
    assert settings["repo_id"] == smp_encoders["resnet18"]["pretrained_settings"]["imagenet"]["repo_id"]
    tv, files = _smp_imagenet_files(tmp_path, tv_checkpoint)
    place_in_hf_cache(hf_cache, settings["repo_id"], files, revision=settings["revision"])
    model = smp.Unet("dense-resnet18", classes=2)  # smp's default encoder_weights="imagenet"
    got = model.encoder.backbone.state_dict()
    assert got.keys() and all(torch.equal(v, tv.state_dict()[k]) for k, v in got.items())
    # What smp's hub copy holds is checked like any checkpoint: a wrong one is refused naming the keys.
    with pytest.raises(ValueError, match=r"smp's pretrained weights.*missing keys: layer4\.1\.bn2\.bias"):
        model.encoder.load_state_dict({k: v for k, v in got.items() if k != "layer4.1.bn2.bias"})


def test_default_imagenet_weights_offline_fail_at_once_naming_the_folder(hf_cache, tmp_path, tv_checkpoint):
    import shutil
    import time

    settings = smp_encoders["dense-resnet18"]["pretrained_settings"].get("imagenet")
    start = time.monotonic()
    with pytest.raises(ConnectionError) as excinfo:
        smp.Unet("dense-resnet18", classes=2)
    assert time.monotonic() - start < 5
    msg = str(excinfo.value)
    folder = (hf_cache / "models--smp-hub--resnet18.imagenet" / "snapshots" /
              settings["revision"])
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and f"place them in {folder} " in msg
    assert "model.safetensors" in msg and "config.json" in msg
    # Placing the files there by hand is enough.
    tv, files = _smp_imagenet_files(tmp_path, tv_checkpoint)
    folder.mkdir(parents=True)
    for name, path in files.items():
        shutil.copy(path, folder / name)
    model = smp.Unet("dense-resnet18", classes=2)
    assert torch.equal(model.encoder.backbone.conv1.weight, tv.conv1.weight)


def test_unfreeze_encoder_lasts_until_train_for_frozen_stages():
    names = register_smp_encoders(prefix="dense-frozen1-", names=["resnet18"], frozen_stages=1)
    try:
        model = smp.Unet("dense-frozen1-resnet18", encoder_weights=None, classes=2)
        bb = model.encoder.backbone
        frozen = list(bb.conv1.parameters()) + list(bb.layer1.parameters())
        assert frozen and not any(p.requires_grad for p in frozen)
        model.unfreeze_encoder()  # requires_grad=True and BatchNorm in training mode for the whole encoder
        assert all(p.requires_grad for p in frozen)
        model.train()
        assert not any(p.requires_grad for p in frozen) and not bb.layer1.training and bb.layer2.training
        assert all(p.requires_grad for p in bb.layer2.parameters())
    finally:
        for name in names:
            smp_encoders.pop(name, None)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channels_with_imagenet_weights_adapt_like_timm(in_channels, hf_cache, tmp_path, tv_checkpoint, caplog):
    from timm.models import adapt_input_conv

    from tests.conftest import place_in_hf_cache

    settings = smp_encoders["dense-resnet18"]["pretrained_settings"].get("imagenet")
    tv, files = _smp_imagenet_files(tmp_path, tv_checkpoint)
    place_in_hf_cache(hf_cache, settings["repo_id"], files, revision=settings["revision"])
    with caplog.at_level("INFO", logger="heads.smp"):
        model = smp.Unet("dense-resnet18", classes=2, in_channels=in_channels).eval()
    bb = model.encoder.backbone
    torch.testing.assert_close(bb.conv1.weight, adapt_input_conv(in_channels, tv.conv1.weight.detach().clone()))
    assert torch.equal(bb.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)
    assert sum(f"from 3 to {in_channels} input channels" in r.getMessage() for r in caplog.records) == 1
    with torch.no_grad():
        assert model(torch.randn(1, in_channels, 64, 64)).shape == (1, 2, 64, 64)


def test_in_channels_adapt_the_backbones_own_pretrained_weights(tv_checkpoint):
    from timm.models import adapt_input_conv

    tv, path = tv_checkpoint("resnet18")
    names = register_smp_encoders(prefix="dense-tv-", names=["resnet18"], pretrained=str(path))
    try:  # smp's own weights are off (encoder_weights=None); the backbone's pretrained= ones are adapted
        model = smp.FPN("dense-tv-resnet18", encoder_weights=None, classes=2, in_channels=2)
        expected = adapt_input_conv(2, tv.conv1.weight.detach().clone())
        torch.testing.assert_close(model.encoder.backbone.conv1.weight, expected)
        fresh = smp.FPN("dense-resnet18", encoder_weights=None, classes=2, in_channels=2)
        assert fresh.encoder.backbone.conv1.weight.shape == (64, 2, 7, 7)
        assert not torch.allclose(fresh.encoder.backbone.conv1.weight, expected)
    finally:
        for name in names:
            smp_encoders.pop(name, None)
    with pytest.raises(ValueError, match=r"in_channels must be a positive int, got 0"):
        DenseEncoder(backbone="resnet18").set_in_channels(0)
