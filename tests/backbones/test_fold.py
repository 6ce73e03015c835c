"""fold_batchnorm(): folding follows the data flow, so only a norm that reads nothing but a plain convolution's
output is folded, and the folded names are reported."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones import build_backbone, deploy
from backbones.fold import fold_batchnorm, fuse_relu
from tests.backbones.helpers import batchnorms, rel_err


def test_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_backbone("resnet18"))


class ConvUsedTwice(nn.Module):
    """The conv output feeds the norm *and* the sum: folding would change the sum, so it must not happen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ConvOutputReturned(ConvUsedTwice):
    def forward(self, x):
        y = self.conv(x)
        return [self.bn(y), y]


class NormBeforeConv(nn.Module):
    """Registration order says conv -> bn, data flow says bn -> conv: nothing to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


class SharedConv(nn.Module):
    """One conv feeding two different norms: folding either would corrupt the other branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x * 2))


class StandardizedConv(nn.Conv2d):
    """A conv whose forward rescales the weight: folding a scale into it would be undone."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


@pytest.mark.parametrize("cls, kept", [(ConvUsedTwice, ["bn"]), (ConvOutputReturned, ["bn"]),
                                        (NormBeforeConv, ["bn"]), (SharedConv, ["bn1", "bn2"])])
def test_unsafe_pairs_are_not_folded(cls, kept, randomize):
    model = randomize(cls()).eval()
    x = torch.randn(2, 3, 16, 16)
    fast = deploy(model)
    assert batchnorms(fast) == kept
    with torch.no_grad():
        ref, out = model(x), fast(x)
    for o, r in zip(out if isinstance(out, list) else [out], ref if isinstance(ref, list) else [ref]):
        assert rel_err(o, r) < 1e-5


def test_conv_subclass_with_own_forward_is_not_folded(randomize):
    model = randomize(nn.Sequential(StandardizedConv(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                                    nn.BatchNorm2d(4))).eval()
    fast = deploy(model)
    assert batchnorms(fast) == ["1"]  # the second pair (a plain conv) is folded
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) < 1e-5


def test_fold_batchnorm_reports_folded_names(randomize):
    model = randomize(build_backbone("resnet18", out_strides=(4,))).eval()
    folded = fold_batchnorm(model)
    assert folded == sorted(["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"])
    assert isinstance(model.bn1, nn.Identity)


class ReluAfterAnotherRead(nn.Module):
    """Something reads the conv output before an in-place ReLU changes it: fusing would change that read."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        s = y.mean()
        return self.relu(y) * s


class PreReluOutputReturned(ReluAfterAnotherRead):
    """An out-of-place ReLU whose input is also returned."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return [self.relu(y), y]


class ReluSharedWithNonConv(ReluAfterAnotherRead):
    """One ReLU module applied to a conv output and to something else: it must stay a ReLU."""

    def forward(self, x):
        return self.relu(self.conv(x)) + self.relu(x.mean(1, keepdim=True))


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()  # out of place, reads only the head conv's output

    def forward(self, x):
        return self.act(self.head(self.body(x)))


@pytest.mark.parametrize("cls", [ReluAfterAnotherRead, PreReluOutputReturned, ReluSharedWithNonConv])
def test_unsafe_relus_are_not_fused(cls, randomize):
    model = randomize(cls())
    x = torch.randn(2, 3, 16, 16)
    fast = deploy(model)
    assert isinstance(fast.relu, nn.ReLU) and not fast.conv.fused_relu
    with torch.no_grad():
        ref, out = model.eval()(x), fast(x)
    for o, r in zip(out if isinstance(out, list) else [out], ref if isinstance(ref, list) else [ref]):
        assert rel_err(o, r) < 1e-5


def test_relus_reading_only_a_convolution_are_fused(randomize):
    model = randomize(ConvBnRelu())
    x = torch.randn(2, 3, 16, 16)
    fast = deploy(model)
    assert type(fast.body[2]) is nn.Identity and type(fast.act) is nn.Identity
    assert fast.body[0].fused_relu and fast.head.fused_relu
    with torch.no_grad():
        assert rel_err(fast(x), model.eval()(x)) < 1e-5
        # The ordinary (autograd, export) path applies the fused ReLU too.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
            scripted = torch.jit.script(fast)
        assert rel_err(scripted(x), model(x)) < 1e-5
    unfused = deploy(model, fuse=False)
    assert isinstance(unfused.body[2], nn.ReLU) and not unfused.body[0].fused_relu
    assert fuse_relu(deploy(model, fuse=False)) == ["act", "body.2"]


def two_blocks():
    from backbones.resnet import BasicBlock

    return BasicBlock(8, 8), BasicBlock(8, 8)


class BlocksInSequence(nn.Module):
    """The second block's input (the first one's output) is dead afterwards; the first one's is the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.b1, self.b2 = two_blocks()

    def forward(self, x):
        return self.b2(self.b1(x))


class MiddleReturned(BlocksInSequence):
    def forward(self, x):
        y = self.b1(x)
        return [y, self.b2(y)]


class MiddleReadAfter(BlocksInSequence):
    def forward(self, x):
        y = self.b1(x)
        return self.b2(y) * y.mean()


class ViewOfMiddleReadAfter(BlocksInSequence):
    def forward(self, x):
        y = self.b1(x)
        part = y[:, :4]
        return [self.b2(y), part * 2]


@pytest.mark.parametrize("cls, reused", [(BlocksInSequence, ["b2"]), (MiddleReturned, []), (MiddleReadAfter, []),
                                         (ViewOfMiddleReadAfter, [])])
def test_blocks_write_into_their_input_only_when_nothing_reads_it_later(cls, reused, randomize):
    model = randomize(cls())
    x = torch.randn(2, 8, 16, 16)
    kept = x.clone()
    fast = deploy(model)
    assert [n for n in ("b1", "b2") if getattr(fast, n).reuse_shortcut] == reused
    with torch.no_grad():
        ref, out = model.eval()(x), fast(x)
    assert torch.equal(x, kept), "the model's input must never be written"
    for o, r in zip(out if isinstance(out, list) else [out], ref if isinstance(ref, list) else [ref]):
        assert rel_err(o, r) < 1e-5
