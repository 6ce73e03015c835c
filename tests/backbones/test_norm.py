"""FrozenBatchNorm2d, the freeze/unfreeze converters on any module tree, and the norm factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from backbones import FrozenBatchNorm2d, freeze_batchnorm, resnet18, unfreeze_batchnorm
from backbones.norm import NORMS, get_norm_layer


def test_frozen_bn_equals_batchnorm_in_eval_and_torchvision_frozen_bn(randomize):
    import torchvision

    bn = randomize(nn.Sequential(nn.BatchNorm2d(16)))[0].eval()
    frozen = freeze_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen is not bn
    assert list(frozen.parameters()) == []
    tv = torchvision.ops.FrozenBatchNorm2d(16)
    tv.load_state_dict(bn.state_dict())  # torchvision's also drops num_batches_tracked
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        assert_close(frozen(x), bn(x))
        assert_close(frozen(x), tv(x))
    assert frozen.train()(x).shape == x.shape  # train mode changes nothing
    with torch.no_grad():
        assert_close(frozen(x), bn(x))


def test_frozen_bn_loads_batchnorm_state_with_num_batches_tracked(randomize):
    bn = randomize(nn.Sequential(nn.BatchNorm2d(8)))
    assert "0.num_batches_tracked" in bn.state_dict()
    frozen = nn.Sequential(FrozenBatchNorm2d(8))
    frozen.load_state_dict(bn.state_dict(), strict=True)
    assert torch.equal(frozen[0].running_var, bn[0].running_var)
    assert set(frozen.state_dict()) == {"0.weight", "0.bias", "0.running_mean", "0.running_var"}


def test_freeze_and_unfreeze_torchvision_model_keep_eval_output(randomize):
    import torchvision

    model = randomize(torchvision.models.resnet18()).eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        ref = model(x)
    n_params = sum(p.numel() for p in model.parameters())
    frozen = freeze_batchnorm(model)
    assert frozen is model
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 20
    assert sum(p.numel() for p in model.parameters()) == n_params - 2 * 4800  # BN affine became buffers
    with torch.no_grad():
        assert_close(model(x), ref)
        assert_close(model.train()(x), ref)  # frozen BN ignores train mode

    unfreeze_batchnorm(model).eval()
    bns = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    assert len(bns) == 20 and all(m.weight.requires_grad for m in bns)
    assert sum(p.numel() for p in model.parameters()) == n_params
    with torch.no_grad():
        assert_close(model(x), ref)


def test_unfreeze_torchvision_frozen_bn_and_to_sync_bn():
    import torchvision

    model = torchvision.models.resnet18(norm_layer=torchvision.ops.FrozenBatchNorm2d)
    unfreeze_batchnorm(model, sync=True)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == 20
    assert not any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in model.modules())


def test_timm_batchnorm_act_keeps_its_activation(randomize):
    from timm.layers import BatchNormAct2d

    block = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.ReLU))).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = block(x)
    assert (ref == 0).any()  # the activation clips, so dropping it would change the output
    freeze_batchnorm(block)
    assert "Frozen" in type(block[1]).__name__ and not list(block[1].parameters())
    with torch.no_grad():
        assert_close(block(x), ref)
    unfreeze_batchnorm(block).eval()
    assert isinstance(block[1], BatchNormAct2d)
    with torch.no_grad():
        assert_close(block(x), ref)


def test_unconvertible_batchnorm_raises_before_converting_anything():
    class Scaled(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.BatchNorm2d(4), Scaled(4))
    with pytest.raises(TypeError, match="Scaled.*own forward"):
        freeze_batchnorm(model)
    assert type(model[0]) is nn.BatchNorm2d  # nothing half-converted
    with pytest.raises(TypeError, match="track_running_stats=False"):
        freeze_batchnorm(nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False)))


def test_freeze_keeps_dtype_and_ignores_other_norms():
    model = nn.Sequential(nn.BatchNorm2d(4).double(), nn.BatchNorm1d(4), nn.GroupNorm(2, 4))
    freeze_batchnorm(model)
    assert isinstance(model[0], FrozenBatchNorm2d) and model[0].running_var.dtype == torch.float64
    assert type(model[1]) is nn.BatchNorm1d and type(model[2]) is nn.GroupNorm


def test_norm_factory():
    assert NORMS == ("bn", "frozen_bn", "sync_bn", "gn")
    assert isinstance(get_norm_layer("frozen_bn")(8), FrozenBatchNorm2d)
    assert get_norm_layer("gn")(64).num_groups == 32
    assert get_norm_layer("gn")(48).num_groups == 16  # falls back to a divisor for odd widths
    with pytest.raises(ValueError, match="'bn', 'frozen_bn', 'sync_bn', 'gn', got 'layernorm'"):
        get_norm_layer("layernorm")


def test_freezing_our_backbone_keeps_eval_output(randomize):
    model = randomize(resnet18(out_strides=(8, 32))).eval()
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        ref = model(x)
    freeze_batchnorm(model)
    with torch.no_grad():
        for g, e in zip(model(x), ref, strict=True):
            # frozen BN folds the statistics into one multiply-add: float32 rounding relative to the magnitude
            assert_close(g, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())
