"""param_groups: every trainable parameter once, decay by kind, lr multipliers by prefix, SGD-ready."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import param_groups, resnet18


class Segmenter(nn.Module):
    """A backbone and a small head, with a norm named unlike a norm and a weight tied across modules."""

    def __init__(self, frozen_stages: int = -1) -> None:
        super().__init__()
        self.backbone = resnet18(out_strides=(8, 16), frozen_stages=frozen_stages)
        self.head = nn.Sequential(nn.Conv2d(256, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
                                  nn.Conv2d(32, 5, 1))
        self.proj = nn.Linear(5, 5)
        self.ln_pre = nn.LayerNorm(5)
        self.inorm = nn.InstanceNorm2d(5, affine=True)
        self.aux = nn.Linear(5, 5, bias=False)
        self.aux.weight = self.proj.weight  # shared


def ids(params):
    return [id(p) for p in params]


def test_every_trainable_parameter_in_exactly_one_group():
    model = Segmenter(frozen_stages=1)
    groups = param_groups(model, 1e-4)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) == len(trainable)  # shared weight counted once
    assert set(grouped) == trainable
    assert all(id(p) not in set(grouped) for p in model.backbone.layer1.parameters())  # frozen: left out
    assert all(g["params"] for g in groups)
    assert len({g["name"] for g in groups}) == len(groups)
    assert all(set(g) == {"params", "weight_decay", "lr_mult", "name"} for g in groups)


def test_decay_by_kind():
    model = Segmenter()
    groups = {g["name"]: g for g in param_groups(model, 1e-4, norm_weight_decay=1e-5, bias_weight_decay=2e-5)}
    assert {n: g["weight_decay"] for n, g in groups.items()} == {"decay": 1e-4, "norm": 1e-5, "bias": 2e-5}
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm,
                                                                     nn.InstanceNorm2d))
                   for p in m.parameters()}
    assert set(ids(groups["norm"]["params"])) == norm_params  # found by type: ln_pre, inorm, head.1, bn*
    assert set(ids(groups["bias"]["params"])) == {id(model.head[0].bias), id(model.head[3].bias),
                                                  id(model.proj.bias)}
    assert all(p.dim() > 1 for p in groups["decay"]["params"])
    assert all(g["lr_mult"] == 1.0 for g in groups.values())


def test_lr_mult_longest_prefix_wins_on_whole_name_components():
    model = Segmenter()
    groups = param_groups(model, 1e-4, lr_mult={"backbone": 0.1, "backbone.layer3": 0.5, "head.3": 2})
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.5 if name.startswith("backbone.layer3.") else 0.1 if name.startswith("backbone.") \
            else 2.0 if name.startswith("head.3.") else 1.0
        assert by_param[id(p)]["lr_mult"] == expected, name
    names = {g["name"] for g in groups}
    assert names == {"backbone.decay", "backbone.norm", "backbone.layer3.decay", "backbone.layer3.norm",
                     "head.3.decay", "head.3.bias", "decay", "norm", "bias"}
    assert all(isinstance(g["lr_mult"], float) for g in groups)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.backbone2 = nn.Linear(2, 2)

    two = param_groups(Two(), 0.0, lr_mult={"backbone": 0.1})
    assert {g["name"]: len(g["params"]) for g in two} == {"backbone.decay": 1, "backbone.bias": 1,
                                                           "decay": 1, "bias": 1}


def test_groups_drive_sgd_with_weight_decay_and_lr_mult():
    model = Segmenter()
    groups = param_groups(model, 0.1, lr_mult={"backbone": 0.5}, lr=1.0)
    assert {g["name"]: g["lr"] for g in groups}["backbone.decay"] == 0.5
    opt = torch.optim.SGD(groups, lr=1.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves parameters, p <- p * (1 - lr * wd)
    params = dict(model.named_parameters())
    assert torch.allclose(params["backbone.conv1.weight"], before["backbone.conv1.weight"] * 0.95)
    assert torch.allclose(params["head.0.weight"], before["head.0.weight"] * 0.9)
    for name in ("backbone.bn1.weight", "head.0.bias", "ln_pre.weight"):
        assert torch.equal(params[name], before[name]), name


def test_without_lr_groups_leave_the_lr_to_the_optimizer():
    groups = param_groups(Segmenter(), 0.1, lr_mult={"backbone": 0.5})
    assert all("lr" not in g for g in groups)
    assert {g["name"]: g["lr_mult"] for g in groups}["backbone.decay"] == 0.5


def test_no_trainable_parameters_gives_no_groups():
    model = nn.Linear(3, 3).requires_grad_(False)
    assert param_groups(model, 1e-4) == []


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(weight_decay=-1e-4), ValueError, "weight_decay must be a finite number >= 0, got -0.0001"),
    (dict(weight_decay=float("nan")), ValueError, "got nan"),
    (dict(weight_decay=1e-4, norm_weight_decay=-1), ValueError, "norm_weight_decay"),
    (dict(weight_decay=1e-4, bias_weight_decay=-1), ValueError, "bias_weight_decay"),
    (dict(weight_decay="1e-4"), TypeError, "weight_decay must be a number, got str"),
    (dict(weight_decay=1e-4, lr_mult={"backbone": -0.1}), ValueError, "lr_mult['backbone']"),
    (dict(weight_decay=1e-4, lr_mult={"backbon": 0.1}), ValueError, "'backbon' matches no parameter"),
    (dict(weight_decay=1e-4, lr_mult={"backbone.layer4": 0.1}), ValueError, "'backbone.layer4'"),
    (dict(weight_decay=1e-4, lr_mult={"": 0.1}), ValueError, "non-empty"),
    (dict(weight_decay=1e-4, lr_mult=[("backbone", 0.1)]), TypeError, "lr_mult must map"),
    (dict(weight_decay=1e-4, lr=-0.01), ValueError, "lr must be a finite number >= 0, got -0.01"),
])
def test_bad_arguments(kwargs, error, needle):
    with pytest.raises(error) as excinfo:
        param_groups(Segmenter(), **kwargs)
    assert needle in str(excinfo.value)


def test_unknown_prefix_suggests_close_names():
    with pytest.raises(ValueError, match=r"did you mean 'backbone'.*Top-level modules: backbone, head"):
        param_groups(Segmenter(), 1e-4, lr_mult={"backbon": 0.1})


def test_not_a_module():
    with pytest.raises(TypeError, match="nn.Module, got list"):
        param_groups([nn.Linear(2, 2)], 1e-4)
