"""iter_tensors walks nests in order; device_of finds a module's device."""

import torch
from torch import nn

from backbones.tensors import device_of, iter_tensors


def test_iter_tensors_walks_nests_in_order():
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    nest = ([a, {"x": (b, "not a tensor"), "y": None}], c, {"z": [d]}, 5)
    assert [float(t) for t in iter_tensors(nest)] == [0.0, 1.0, 2.0, 3.0]
    assert list(iter_tensors("text")) == []


def test_device_of():
    assert device_of(nn.Conv2d(1, 1, 1)) == torch.device("cpu")
    assert device_of(nn.ReLU()) == torch.device("cpu")  # no parameters nor buffers
    bn = nn.BatchNorm2d(2, affine=False).to("meta")  # buffers only
    assert device_of(bn) == torch.device("meta")
