"""A run's optimizer: the fused step where PyTorch has one, with the plain step's update."""

import pytest
import torch

from heads import build_segmentor
from tools.engine.optim import build_optimizer


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizer_takes_the_fused_step_and_updates_as_the_plain_one(name):
    model = build_segmentor(backbone="resnet18", head="fcn", num_classes=3)
    cfg = {"optimizer": name, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "norm_weight_decay": 0.0,
           "bias_weight_decay": 0.0, "backbone_lr_mult": 1.0, "poly_power": 0.9, "warmup_iters": 0,
           "warmup_ratio": 0.1}
    optimizer, _ = build_optimizer(cfg, model, max_iters=10)
    assert optimizer.defaults["fused"] is True
    plain_model = build_segmentor(backbone="resnet18", head="fcn", num_classes=3)
    plain_model.load_state_dict(model.state_dict())
    groups = [{**g, "params": [dict(plain_model.named_parameters())[n] for n in names]}
              for g, names in zip(optimizer.param_groups, _group_names(model, optimizer))]
    plain = (torch.optim.AdamW if name == "adamw" else torch.optim.SGD)(
        [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in groups], foreach=False)
    # The same gradients into both (Adam's normalized step would amplify any difference between two backward
    # passes), two steps so that the moments matter.
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 64, 64)).square().mean().backward()
        for a, b in zip(model.parameters(), plain_model.parameters()):
            b.grad = a.grad.clone()
        optimizer.step()
        plain.step()
    for (n, a), b in zip(model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)


def _group_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
