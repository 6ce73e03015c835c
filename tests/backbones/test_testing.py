"""check_backbone itself: it must catch each way a backbone can break the contract, and change nothing."""

from __future__ import annotations

from typing import Callable, List

import pytest
import torch
from torch import nn

from backbones import Backbone, FeatureInfo, FeatureSpec, resnet18
from backbones.testing import BackboneConformanceError, check_backbone

SIZES = ((1, 3, 19, 23), (2, 3, 16, 16))


class Toy(Backbone):
    """(N, 3, H, W) -> [(N, 4, ceil(H/2), ceil(W/2))], with hooks to break it in one place."""

    def __init__(self, post: Callable[[List[torch.Tensor]], object] = lambda outs: outs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.feature_info = FeatureInfo([FeatureSpec("conv", 4, 2)])
        self.post = post

    def forward(self, x: torch.Tensor):
        return self.post([self.bn(self.conv(x))])


def failure(model: nn.Module, **kwargs) -> str:
    with pytest.raises(BackboneConformanceError) as excinfo:
        check_backbone(model, sizes=SIZES, **kwargs)
    return str(excinfo.value)


def test_a_conforming_backbone_passes_and_is_left_unchanged():
    model = Toy()
    model.conv.bias.requires_grad_(False)  # frozen parameters need no gradient
    model.bn.eval()
    model.conv.weight.grad = marker = torch.ones_like(model.conv.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check_backbone(model, sizes=SIZES)
    assert model.training and not model.bn.training  # per-module modes restored
    assert model.conv.weight.grad is marker and model.conv.bias.grad is None
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics restored


def test_conformance_error_is_an_assertion_error():
    assert issubclass(BackboneConformanceError, AssertionError)


@pytest.mark.parametrize("post, needle", [
    (lambda outs: tuple(outs), "must return a list of tensors, got tuple"),
    (lambda outs: outs + outs, "returned 2 maps but feature_info describes 1"),
    (lambda outs: [outs[0].mean()], "output 0 (conv) has shape ()"),
    (lambda outs: [outs[0][:, :, :-1]], "has shape (1, 4, 9, 12), but feature_info (channels=4, stride=2) "
                                        "implies (1, 4, 10, 12)"),
    (lambda outs: [outs[0] / 0], "contains NaN or inf"),
    (lambda outs: [outs[0].round().long()], "dtype torch.int64, expected floating point"),
    (lambda outs: [outs[0].tolist()], "is a list, not a tensor"),
])
def test_output_violations_are_reported(post, needle):
    assert needle in failure(Toy(post))


def test_every_violation_is_listed_with_the_input_size():
    msg = failure(Toy(lambda outs: [outs[0][:, :2]]))
    assert "input (1, 3, 19, 23)" in msg and "input (2, 3, 16, 16)" in msg


def test_unused_parameter_is_reported_unless_gradients_are_skipped():
    model = Toy()
    model.unused = nn.Linear(2, 2)
    assert "2 trainable parameter(s) got no gradient" in failure(model)
    assert "unused.weight, unused.bias" in failure(model)
    check_backbone(model, sizes=SIZES, check_grads=False)


def test_nan_gradients_are_reported():
    class NanGrad(Toy):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return [self.bn(self.conv(x)) + self.scale.sqrt()]  # d sqrt(s)/ds at 0 is inf

    assert "got NaN/inf gradients: scale" in failure(NanGrad())


def test_forward_errors_name_the_input():
    def boom(outs):
        raise RuntimeError("kaput")

    msg = failure(Toy(boom))
    assert "forward failed on an input of shape (1, 3, 19, 23): RuntimeError: kaput" in msg


def test_metadata_violations():
    model = Toy()
    model.feature_info = [FeatureSpec("conv", 4, 2)]
    assert "feature_info must be a backbones.FeatureInfo" in failure(model)

    class BadDivisibility(Toy):
        size_divisibility = 3

    assert "size_divisibility must be a positive int divisible by every stride [2], got 3" in failure(
        BadDivisibility())

    class BadChannels(Toy):
        out_channels = [8]

    assert "out_channels [8] disagrees with feature_info [4]" in failure(BadChannels())


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module, got str"):
        check_backbone("resnet18")
    with pytest.raises(ValueError, match="non-empty sequence"):
        check_backbone(Toy(), sizes=())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with positive ints, got \(1, 3, 0, 8\)"):
        check_backbone(Toy(), sizes=((1, 3, 0, 8),))
    with pytest.raises(ValueError, match=r"4 channels but the backbone expects in_chans=3"):
        check_backbone(Toy(), sizes=((1, 4, 8, 8),))


def test_resnet_state_survives_the_check():
    model = resnet18(frozen_stages=1, out_strides=(4, 8)).train()
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check_backbone(model, sizes=SIZES)
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_feature_info_validates_itself():
    info = FeatureInfo([FeatureSpec("a", 8, 4), FeatureSpec("b", 16, 8, 1), FeatureSpec("c", 32, 8, 2)])
    assert info.channels == [8, 16, 32] and info.strides == [4, 8, 8] and info.names == ["a", "b", "c"]
    assert info.by_stride(8) == 2  # the deepest map of that stride
    with pytest.raises(KeyError, match=r"stride 16.*\[4, 8, 8\]"):
        info.by_stride(16)
    with pytest.raises(AttributeError):
        info[0].channels = 4  # records are immutable
    with pytest.raises(ValueError, match="at least one"):
        FeatureInfo([])
    with pytest.raises(ValueError, match=r"unique, got \['a', 'a'\]"):
        FeatureInfo([FeatureSpec("a", 8, 4), FeatureSpec("a", 8, 8)])
    with pytest.raises(ValueError, match=r"must not decrease.*\[8, 4\]"):
        FeatureInfo([FeatureSpec("a", 8, 8), FeatureSpec("b", 8, 4)])
    with pytest.raises(TypeError, match="FeatureSpec records, got tuple"):
        FeatureInfo([("a", 8, 4)])
    for bad in (dict(channels=0), dict(stride=True), dict(dilation=0), dict(name="")):
        with pytest.raises(ValueError, match="FeatureSpec"):
            FeatureSpec(**{**dict(name="a", channels=8, stride=4), **bad})


def test_output_shapes_without_running():
    model = resnet18(out_strides=(4, 32), output_stride=16)
    assert model.output_shapes(97, 131) == [(64, 25, 33), (512, 7, 9)]
