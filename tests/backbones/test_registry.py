"""The registry: names, strict keywords, duplicates, prefixes, and the third-party plug-in round trip."""

from __future__ import annotations

from typing import List, Sequence

import pytest
import torch
from torch import nn

from backbones import Backbone, FeatureInfo, FeatureSpec, build_backbone, list_backbones, register_backbone
from backbones.registry import Registry
from backbones.testing import BackboneConformanceError, check_backbone

SMALL = ((1, 3, 33, 47), (2, 3, 32, 32))


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_passes_the_conformance_check(name):
    check_backbone(build_backbone(name), sizes=SMALL)


def test_list_backbones_is_sorted_and_filters():
    names = list_backbones()
    assert names == sorted(names)
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(names)
    assert list_backbones("resnet1*") == ["resnet101", "resnet152", "resnet18"]
    assert list_backbones("nothing*") == []


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError) as excinfo:
        build_backbone("resnet19")
    msg = str(excinfo.value)
    assert "unknown backbone 'resnet19'" in msg and "Did you mean: resnet18" in msg
    assert "Registered: " + ", ".join(list_backbones()) in msg
    with pytest.raises(ValueError, match=r"unknown backbone prefix 'foo' in 'foo:bar'"):
        build_backbone("foo:bar")
    with pytest.raises(TypeError, match="must be a string, got int"):
        build_backbone(18)


def test_unknown_keyword_names_it_and_the_accepted_ones():
    with pytest.raises(TypeError) as excinfo:
        build_backbone("resnet50", out_stride=(8, 16), pretrained=None)
    msg = str(excinfo.value)
    assert "backbone 'resnet50'" in msg and "'out_stride' (did you mean 'out_strides'?)" in msg
    for accepted in ("out_strides", "output_stride", "norm", "frozen_stages", "pretrained"):
        assert accepted in msg.split("accepted:")[1]


def test_registering_a_name_twice_is_an_error(isolated_backbones):
    with pytest.raises(ValueError, match="'resnet18' is already registered.*backbones.resnet.resnet18"):
        register_backbone("resnet18")(lambda: None)

    @register_backbone("h1_twice")
    def first() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        @register_backbone("h1_twice")
        def second() -> None: ...

    assert isolated_backbones.get("h1_twice") is first


@pytest.mark.parametrize("bad", ["", "timm:x", 3])
def test_invalid_registration_names(bad, isolated_backbones):
    with pytest.raises(ValueError, match="non-empty string without ':'"):
        register_backbone(bad)(lambda: None)


def test_registry_is_generic_and_checks_keywords_of_plain_builders():
    heads = Registry("head")

    @heads.register()
    def fcn(*, channels: int = 8, dropout: float = 0.1) -> dict:
        return {"channels": channels, "dropout": dropout}

    assert heads.list() == ["fcn"] and "fcn" in heads
    assert heads.build("fcn", channels=4) == {"channels": 4, "dropout": 0.1}
    with pytest.raises(TypeError, match=r"head 'fcn' got unexpected keyword argument\(s\) 'chanels' "
                                        r"\(did you mean 'channels'\?\); accepted: channels, dropout"):
        heads.build("fcn", chanels=4)
    with pytest.raises(ValueError, match="unknown head 'fnc'. Did you mean: fcn"):
        heads.build("fnc")

    heads.register_prefix("ext", lambda rest, **kw: (rest, kw))
    assert heads.build("ext:thing", a=1) == ("thing", {"a": 1})
    with pytest.raises(ValueError, match="prefix 'ext' is already registered"):
        heads.register_prefix("ext", lambda rest: None)
    assert "resnet18" not in heads.list()  # separate from the backbone registry


class TinyBackbone(Backbone):
    """A two-stage plug-in: (N, C, H, W) -> [(N, width, H/4, W/4), (N, 2*width, H/8, W/8)].

    ``claimed_channels`` / ``claimed_strides`` let a test make its metadata lie.
    """

    def __init__(self, *, width: int = 8, in_chans: int = 3, claimed_channels: Sequence[int] = (),
                 claimed_strides: Sequence[int] = ()) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.stage1 = nn.Sequential(nn.Conv2d(in_chans, width, 3, stride=4, padding=1), nn.BatchNorm2d(width),
                                    nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        channels = list(claimed_channels) or [width, 2 * width]
        strides = list(claimed_strides) or [4, 8]
        self.feature_info = FeatureInfo([FeatureSpec("stage1", channels[0], strides[0]),
                                         FeatureSpec("stage2", channels[1], strides[1])])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        self.check_input(x)
        f4 = self.stage1(x)
        return [f4, self.stage2(f4)]


def test_plugin_round_trip(isolated_backbones):
    @register_backbone("h1_tiny_plugin")
    def tiny(*, width: int = 8, in_chans: int = 3) -> TinyBackbone:
        return TinyBackbone(width=width, in_chans=in_chans)

    assert "h1_tiny_plugin" in list_backbones("h1_*")
    model = build_backbone("h1_tiny_plugin", width=4)
    assert model.feature_info.channels == [4, 8] and model.size_divisibility == 8
    check_backbone(model)
    check_backbone(build_backbone("h1_tiny_plugin", in_chans=1), sizes=((1, 1, 17, 23), (2, 1, 16, 16)))
    with pytest.raises(TypeError, match="'depth'.*accepted: width, in_chans"):
        build_backbone("h1_tiny_plugin", depth=3)


@pytest.mark.parametrize("lie, needle", [
    (dict(claimed_channels=(8, 32)), "output 1 (stage2) has shape (1, 16, 5, 6), but feature_info "
                                     "(channels=32, stride=8) implies (1, 32, 5, 6)"),
    (dict(claimed_strides=(4, 16)), "output 1 (stage2) has shape (1, 16, 5, 6), but feature_info "
                                    "(channels=16, stride=16) implies (1, 16, 3, 3)"),
    (dict(claimed_strides=(2, 8)), "output 0 (stage1)"),
])
def test_conformance_check_catches_lying_metadata(lie, needle):
    with pytest.raises(BackboneConformanceError) as excinfo:
        check_backbone(TinyBackbone(**lie), sizes=((1, 3, 37, 45), (2, 3, 32, 32)))
    assert needle in str(excinfo.value)
    assert "input (1, 3, 37, 45)" in str(excinfo.value)
