"""Checkpoint loading: formats, containers, all-or-nothing errors, URLs and the torch.hub cache."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from backbones import build_backbone, load_pretrained, resnet18
from backbones.weights import (WEIGHT_URLS, cached_path_for_url, load_state_dict_file, timm_weights_file,
                               torchvision_url)

UNREACHABLE = "http://127.0.0.1:9/resnet18-f37072fd.pth"


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), "a failed load changed the model"


def assert_loaded(model, tv):
    expected = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    got = model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("wrap", ["plain", "state_dict+module.", "model", "backbone."])
def test_training_containers_and_prefixes_load(wrap, tv_checkpoint, tmp_path):
    tv, _ = tv_checkpoint("resnet18")
    sd = tv.state_dict()
    obj = {
        "plain": sd,
        "state_dict+module.": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "backbone.": {f"backbone.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    assert_loaded(resnet18(out_strides=(2, 4, 8, 16, 32), pretrained=path), tv)


def refused_resnet18_load(path):
    """Load ``path`` into a fresh resnet18, expecting a ValueError that leaves the model untouched; its message."""
    model = resnet18()
    before = snapshot(model)
    with pytest.raises(ValueError) as excinfo:
        load_pretrained(model, path, arch="resnet18")
    assert_unchanged(model, before)
    return str(excinfo.value)


def test_missing_key_is_reported_and_nothing_loaded(tv_checkpoint, tmp_path):
    tv, _ = tv_checkpoint("resnet18")
    sd = tv.state_dict()
    del sd["layer2.1.conv2.weight"]
    sd["layer2.1.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "partial.pth")
    msg = refused_resnet18_load(tmp_path / "partial.pth")
    assert "1 missing keys: layer2.1.conv2.weight" in msg and "1 unexpected keys: layer2.1.extra.weight" in msg
    assert "partial.pth" in msg


def test_non_resnet_checkpoint(tmp_path):
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "mobilenet.pth")
    msg = refused_resnet18_load(tmp_path / "mobilenet.pth")
    assert "mobilenet.pth" in msg and "ResNet state dict" in msg
    assert "missing keys: bn1.bias" in msg and "unexpected keys: classifier.0.bias" in msg


def test_shape_mismatched_checkpoint_r50_into_r18(tv_checkpoint):
    _, path = tv_checkpoint("resnet50")
    model = resnet18()
    before = snapshot(model)
    with pytest.raises(ValueError) as excinfo:
        load_pretrained(model, path, arch="resnet18")
    msg = str(excinfo.value)
    assert "(resnet18)" in msg and "resnet50.pth" in msg
    assert "shape mismatches: layer1.0.conv1.weight: checkpoint (64, 64, 1, 1) vs model (64, 64, 3, 3)" in msg
    assert "unexpected keys: layer1.0.bn3.bias" in msg
    assert_unchanged(model, before)


def _corrupt_files(tmp_path, tv_checkpoint):
    _, good_pth = tv_checkpoint("resnet18", ".pth")
    _, good_st = tv_checkpoint("resnet18", ".safetensors")
    data_pth, data_st = good_pth.read_bytes(), good_st.read_bytes()
    files = {
        "random.pth": os.urandom(4096),
        "random.safetensors": os.urandom(4096),
        "truncated.pth": data_pth[: len(data_pth) // 2],
        "truncated.safetensors": data_st[: len(data_st) // 2],
        "empty.pth": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return list(files)


def test_corrupt_checkpoints_raise_value_error_and_leave_model_unchanged(tmp_path, tv_checkpoint):
    model = resnet18()
    before = snapshot(model)
    for name in _corrupt_files(tmp_path, tv_checkpoint):
        with pytest.raises(ValueError, match="cannot read checkpoint") as excinfo:
            load_pretrained(model, tmp_path / name, arch="resnet18")
        assert name in str(excinfo.value)
        assert "code" not in str(excinfo.value), "a corrupt file is not a code-carrying pickle"
    assert_unchanged(model, before)


EXECUTED = []


def _side_effect():
    EXECUTED.append(True)
    return {"conv1.weight": torch.zeros(1)}


class CodeCarrying:
    """Pickles as a call to ``_side_effect``: loading it with full unpickling would run that call."""

    def __reduce__(self):
        return (_side_effect, ())


def test_pickle_that_needs_code_is_refused_without_running_it(tmp_path):
    torch.save({"state_dict": CodeCarrying()}, tmp_path / "evil.pth")
    model = resnet18()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pth.*_side_effect.*weights_only") as e:
        resnet18(pretrained=tmp_path / "evil.pth")
    assert "state_dict()" in str(e.value)  # says how to re-save it
    with pytest.raises(ValueError, match="refusing"):
        load_pretrained(model, tmp_path / "evil.pth")
    assert EXECUTED == []
    assert_unchanged(model, before)


def test_missing_file_and_bad_source_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resnet18(pretrained=tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="pretrained must be.*got 3"):
        resnet18(pretrained=3)
    with pytest.raises(ValueError, match=r"holds no state dict \(got list\)"):
        torch.save([1, 2], tmp_path / "list.pth")
        load_state_dict_file(tmp_path / "list.pth")


def test_unreachable_url_names_url_and_cache_path(hub_dir):
    cached = cached_path_for_url(UNREACHABLE)
    assert str(cached).startswith(str(hub_dir))
    with pytest.raises(ConnectionError) as excinfo:
        resnet18(pretrained=UNREACHABLE)
    msg = str(excinfo.value)
    assert UNREACHABLE in msg and str(cached) in msg
    assert not cached.exists()


def test_file_at_cache_path_is_used_without_download(hub_dir, tv_checkpoint, monkeypatch):
    tv, path = tv_checkpoint("resnet18")

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cached = cached_path_for_url(WEIGHT_URLS["resnet18"])
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)
    assert_loaded(resnet18(out_strides=(2, 4, 8, 16, 32), pretrained=True), tv)
    assert_loaded(build_backbone("resnet18", out_strides=(2, 4, 8, 16, 32), pretrained="imagenet"), tv)
    # The unreachable URL from the error message works too once its file is placed where the message says.
    shutil.copy(path, cached_path_for_url(UNREACHABLE))
    assert_loaded(resnet18(out_strides=(2, 4, 8, 16, 32), pretrained=UNREACHABLE), tv)


def test_url_download_into_cache_checks_hash(hub_dir, tv_checkpoint, tmp_path):
    # A file:// URL exercises the real download path without a network.
    tv, path = tv_checkpoint("resnet18")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = tmp_path / f"r18-{digest[:8]}.pth"
    shutil.copy(path, good)
    assert_loaded(resnet18(out_strides=(2, 4, 8, 16, 32), pretrained=good.as_uri()), tv)
    assert cached_path_for_url(good.as_uri()).is_file()

    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    bad = tmp_path / f"r18-{wrong}.pth"
    shutil.copy(path, bad)
    with pytest.raises(ValueError, match="corrupt"):
        resnet18(pretrained=bad.as_uri())
    assert not cached_path_for_url(bad.as_uri()).exists()


def test_no_default_weights_for_unknown_arch():
    with pytest.raises(ValueError, match=r"no default weights for 'resnet9'.*resnet18"):
        load_pretrained(resnet18(), True, arch="resnet9")


def test_bn_weights_into_group_norm_load_the_affine_part_and_warn(tv_checkpoint):
    import warnings

    tv, path = tv_checkpoint("resnet18")
    with pytest.warns(UserWarning, match=r"BatchNorm running statistics for 20 layers \(bn1, layer1\.0\.bn1, "
                                         r"layer1\.0\.bn2 \.\.\. \(\+17 more\)\).*only their affine weight and bias"):
        model = resnet18(norm="gn", pretrained=path)
    tv_sd = tv.state_dict()
    for k, v in model.state_dict().items():  # every parameter of the GN model came from the checkpoint
        assert torch.equal(v, tv_sd[k]), k
    # BN and frozen BN keep the statistics: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resnet18(norm="bn", pretrained=path)
        resnet18(norm="frozen_bn", pretrained=path)


# --- named sources: torchvision V1/V2 (torch.hub cache) and timm tags (Hugging Face cache) -------------------


def no_download(*args, **kwargs):
    raise AssertionError("tried to download although the file is cached")


def test_named_torchvision_sources_are_torchvision_enum_urls():
    import torchvision

    for arch, url in WEIGHT_URLS.items():
        assert torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url == url
        assert torchvision_url(arch) == url
    assert torchvision_url("resnet50", "IMAGENET1K_V2") == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert torchvision_url("resnext50_32x4d", "IMAGENET1K_V2").endswith("resnext50_32x4d-1a0047aa.pth")


def test_tv2_loads_strictly_from_torch_hub_cache(hub_dir, tv_checkpoint, monkeypatch):
    tv, path = tv_checkpoint("resnet50")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cached = cached_path_for_url(torchvision_url("resnet50", "IMAGENET1K_V2"))
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)
    assert_loaded(build_backbone("resnet50", out_strides=(2, 4, 8, 16, 32), pretrained="tv2"), tv)
    # The torchvision wrapper takes the same names, through the same loader.
    wrapped = build_backbone("torchvision:resnet50", out_strides=(2, 4, 8, 16, 32), pretrained="tv2")
    assert_loaded(wrapped.body, tv)


def _timm_checkpoint(tmp_path, name="resnet18", filename="model.safetensors"):
    import timm

    from tests.conftest import randomize_norms, save_state_dict

    model = randomize_norms(timm.create_model(name)).eval()
    return model, save_state_dict(model.state_dict(), tmp_path / filename)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_timm_tag_loads_strictly_from_hugging_face_cache(filename, hf_cache, tmp_path):
    from tests.conftest import place_in_hf_cache

    timm_model, path = _timm_checkpoint(tmp_path, filename=filename)
    place_in_hf_cache(hf_cache, "timm/resnet18.a2_in1k", {filename: path})
    ours = build_backbone("resnet18", out_strides=(2, 4, 8, 16, 32), pretrained="timm:resnet18.a2_in1k")
    assert_loaded(ours, timm_model)
    assert timm_weights_file("resnet18.a2_in1k").name == filename


def test_missing_timm_weights_fail_at_once_naming_the_cache_path(hf_cache, tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for offline, endpoint, reason in ((True, constants.ENDPOINT, "HF_HUB_OFFLINE is set"),
                                      (False, "http://127.0.0.1:9", "127.0.0.1:9 cannot be reached")):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        start = time.monotonic()
        with pytest.raises(ConnectionError) as excinfo:
            build_backbone("resnet18", pretrained="timm:resnet18.a1_in1k")
        assert time.monotonic() - start < 5, "must not wait for huggingface_hub's retries"
        msg = str(excinfo.value)
        target = hf_cache / "models--timm--resnet18.a1_in1k" / "snapshots" / "main" / "model.safetensors"
        assert "\n" not in msg and reason in msg and str(target) in msg
        assert f"{endpoint}/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in msg
    # A file placed where the message says is used, by our ResNet and by the timm wrapper (timm's default tag).
    timm_model, path = _timm_checkpoint(tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copy(path, target)
    assert_loaded(build_backbone("resnet18", out_strides=(2, 4, 8, 16, 32), pretrained="timm:resnet18"), timm_model)
    wrapped = build_backbone("timm:resnet18", out_strides=(2, 4, 8, 16, 32), pretrained=True)
    assert all(torch.equal(v, timm_model.state_dict()[k]) for k, v in wrapped.model.state_dict().items())


@pytest.mark.parametrize("arch, source, match", [
    ("resnet18", "tv2", r"no IMAGENET1K_V2 weights for 'resnet18', only IMAGENET1K_V1 \(pretrained='imagenet'\)"),
    ("resnet18", "timm:resnet50.a1_in1k", r"weights of timm's 'resnet50', not of 'resnet18'.*resnet18\.a1_in1k"),
    ("resnet50", "timm:resnet50.b9_in1k", r"no pretrained weights 'resnet50.b9_in1k'.*resnet50\.a1_in1k"),
    ("resnet18", "imagenett", r"unknown pretrained source 'imagenett'; accepted: True, 'imagenet'.*'tv2'"),
])
def test_named_source_errors(arch, source, match, hf_cache):
    with pytest.raises(ValueError, match=match):
        build_backbone(arch, pretrained=source)


# --- input channels other than RGB ---------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_adapt_input_conv_equals_timm(in_chans):
    from timm.models import adapt_input_conv as timm_adapt

    from backbones.weights import adapt_input_conv

    weight = torch.randn(64, 3, 7, 7)
    ours = adapt_input_conv(weight, in_chans=in_chans)
    assert ours.shape == (64, in_chans, 7, 7)
    torch.testing.assert_close(ours, timm_adapt(in_chans, weight.clone()), rtol=0, atol=0)
    half = adapt_input_conv(weight.half(), in_chans=in_chans)
    assert half.dtype == torch.float16


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_rgb_weights_load_into_other_input_channels(in_chans, tv_checkpoint, caplog):
    from timm.models import adapt_input_conv as timm_adapt

    tv, path = tv_checkpoint("resnet18")
    with caplog.at_level("INFO", logger="backbones.weights"):
        model = build_backbone("resnet18", in_chans=in_chans, pretrained=str(path)).eval()
    torch.testing.assert_close(model.conv1.weight, timm_adapt(in_chans, tv.conv1.weight.detach().clone()))
    rest = {k: v for k, v in tv.state_dict().items() if not k.startswith(("fc.", "conv1."))}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in rest.items())
    lines = [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]
    assert len(lines) == 1 and f"conv1.weight from 3 to {in_chans} input channels" in lines[0], lines
    assert model(torch.randn(1, in_chans, 32, 32))[0].shape == (1, 128, 4, 4)


def test_adapt_input_conv_errors():
    from backbones.weights import adapt_input_conv

    with pytest.raises(ValueError, match=r"in_chans must be a positive int, got 0"):
        adapt_input_conv(torch.randn(8, 3, 3, 3), in_chans=0)
    with pytest.raises(ValueError, match=r"\(O, C, kh, kw\).*\(8, 3\)"):
        adapt_input_conv(torch.randn(8, 3), in_chans=1)
