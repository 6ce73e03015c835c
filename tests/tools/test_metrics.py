"""mIoU and accuracy on a hand-computed confusion matrix; the loss and the lr schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tools.tasks.segmentation.losses import SegLoss
from tools.tasks.segmentation.metrics import ConfusionMatrix, format_table
from tools.engine.schedule import poly_factor, poly_warmup_scheduler


def test_hand_computed_confusion_matrix():
    # 3 classes; class 2 never appears in the target but is predicted once; 255 is ignored.
    target = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.mat.tolist() == [[2, 1, 0],
                               [0, 3, 1],
                               [0, 0, 0]]
    # IoU = TP / (TP + FP + FN): class 0: 2 / (2 + 0 + 1); class 1: 3 / (3 + 1 + 1); class 2: 0 / (0 + 1 + 0)
    assert cm.iou().tolist() == pytest.approx([2 / 3, 3 / 5, 0.0])
    assert cm.miou() == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    assert cm.class_accuracy()[:2].tolist() == pytest.approx([2 / 3, 3 / 4])


def test_class_absent_everywhere_is_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    iou = cm.iou()
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 2) / 2)
    summary = cm.summary(["a", "b", "c", "d"])
    assert summary["iou"] == {"a": 0.5, "b": 0.5, "c": None, "d": None}


def test_matches_brute_force_and_accumulates_across_batches():
    rng = np.random.default_rng(0)
    k = 5
    preds = [rng.integers(0, k, (2, 9, 7)) for _ in range(3)]
    targets = [np.where(rng.random((2, 9, 7)) < 0.1, 255, rng.integers(0, k, (2, 9, 7))) for _ in range(3)]
    cm = ConfusionMatrix(k)
    for p, t in zip(preds, targets):
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    p, t = np.concatenate([x.ravel() for x in preds]), np.concatenate([x.ravel() for x in targets])
    valid = t != 255
    p, t = p[valid], t[valid]
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        assert cm.iou()[c].item() == pytest.approx(inter / union)
    assert cm.pixel_accuracy() == pytest.approx(np.mean(p == t))
    assert int(cm.mat.sum()) == valid.sum()


def test_update_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ConfusionMatrix(2).update(torch.zeros(2, 3), torch.zeros(3, 2))


def test_prediction_outside_the_classes_is_refused():
    # bincount of target * K + pred would count pred 3 of target 0 as class 1 of target 1
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"predictions hold class value\(s\) \[3, 7\] but the confusion matrix "
                                         r"has 3 classes \(0\.\.2\)"):
        cm.update(torch.tensor([0, 3, 7, 1]), torch.tensor([0, 0, 1, 255]))
    with pytest.raises(ValueError, match=r"\[-1\]"):
        cm.update(torch.tensor([-1, 1]), torch.tensor([0, 1]))
    assert cm.mat.sum() == 0  # nothing counted from a refused batch


def test_table_lists_every_class():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    table = format_table(cm, ["road", "car", "sky"])
    assert "road" in table and "car" in table and "sky" in table and "n/a" in table
    assert f"{100 * cm.miou():6.2f}" in table and "pixel accuracy" in table


# ------------------------------------------------------------------------------------------------ loss


def test_loss_is_mean_cross_entropy_over_labelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert SegLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    aux = torch.randn(2, 4, 5, 6)
    combined = SegLoss(aux_weight=0.4)({"out": logits, "aux": aux}, target)
    assert combined.item() == pytest.approx((expected + 0.4 * F.cross_entropy(aux, target, ignore_index=255)).item(),
                                            rel=1e-6)
    all_ignored = torch.full_like(target, 255)
    assert SegLoss()(logits, all_ignored).item() == 0.0


def test_ohem_keeps_the_hardest_pixels():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 8, 8) * 3
    target = torch.randint(0, 3, (1, 8, 8))
    losses = F.cross_entropy(logits, target, reduction="none").flatten()
    # min_kept above the pixel count and a threshold of 1 keep everything: plain cross-entropy
    assert SegLoss(ohem_thresh=1.0, ohem_min_kept=1000)(logits, target).item() == pytest.approx(losses.mean().item())
    # a tiny threshold keeps only the min_kept hardest pixels
    hardest = losses.topk(10).values.mean().item()
    assert SegLoss(ohem_thresh=1e-6, ohem_min_kept=10)(logits, target).item() == pytest.approx(hardest, rel=1e-5)
    # a threshold of 0.5 keeps the pixels whose true-class probability is below 0.5
    probs = logits.softmax(1).gather(1, target[:, None]).flatten()
    easy_cut = losses[probs < 0.5].mean().item()
    assert SegLoss(ohem_thresh=0.5, ohem_min_kept=1)(logits, target).item() == pytest.approx(easy_cut, rel=1e-5)
    with pytest.raises(ValueError, match="ohem_thresh"):
        SegLoss(ohem_thresh=1.5)


def test_dice_term_is_the_one_hot_dice_over_labelled_pixels_of_present_classes():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 6, 7, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 7))  # class 3 absent
    target[1, :3] = 255
    valid = (target != 255).unsqueeze(1)
    probs = logits.softmax(1) * valid
    one_hot = F.one_hot(target.masked_fill(target == 255, 0), 4).permute(0, 3, 1, 2) * valid
    per_class = 2 * (probs * one_hot).sum((0, 2, 3)) / (probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)))
    dice = 1 - per_class[:3].mean()
    ce = F.cross_entropy(logits, target, ignore_index=255)
    loss = SegLoss(dice_weight=0.5)(logits, target)
    assert loss.item() == pytest.approx((ce + 0.5 * dice).item(), rel=1e-6)
    grad, = torch.autograd.grad(loss, logits)
    expected, = torch.autograd.grad(ce + 0.5 * dice, logits)
    torch.testing.assert_close(grad, expected)
    # with an auxiliary output, each output gets its own Dice term, weighted like its cross-entropy
    aux = torch.randn(2, 4, 6, 7)
    both = SegLoss(aux_weight=0.4, dice_weight=1.0)({"out": logits, "aux": aux}, target)
    single = SegLoss(dice_weight=1.0)
    assert both.item() == pytest.approx(single(logits, target).item() + 0.4 * single(aux, target).item(), rel=1e-6)
    assert SegLoss(dice_weight=1.0)(logits, torch.full_like(target, 255)).item() == 0.0
    with pytest.raises(ValueError, match="dice_weight must be >= 0, got -1"):
        SegLoss(dice_weight=-1)


def test_loss_refuses_unknown_outputs():
    with pytest.raises(ValueError, match="'out'"):
        SegLoss()({"main": torch.zeros(1, 2, 3, 3)}, torch.zeros(1, 3, 3, dtype=torch.int64))


def test_loss_names_a_label_outside_the_classes():
    logits = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([[[0, 255], [3, 9]]])
    with pytest.raises(ValueError, match=r"target holds label value\(s\) \[3, 9\] but the model predicts 3 "
                                         r"classes: expected 0\.\.2, or 255 \(the ignore index\)"):
        SegLoss()(logits, target)
    with pytest.raises(ValueError, match=r"\[-1\].*or -100 \(the ignore index\)"):
        SegLoss(ignore_index=-100)(logits, torch.tensor([[[0, -100], [-1, 2]]]))
    assert SegLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, torch.tensor([[[0, 255], [2, 1]]])).isfinite()


# -------------------------------------------------------------------------------------------- schedule


def test_poly_schedule_with_warmup_keeps_group_multipliers():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}], lr=0.1)
    sched = poly_warmup_scheduler(opt, max_iters=100, power=0.9, warmup_iters=10, warmup_ratio=0.1)
    seen = []
    for it in range(100):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.1 * 0.1, 0.01 * 0.1])  # warm-up starts at warmup_ratio
    assert seen[10] == pytest.approx([0.1 * 0.9 ** 0.9, 0.01 * 0.9 ** 0.9])  # then pure poly decay
    assert all(a == pytest.approx(10 * b) for a, b in seen)  # the 10x multiplier holds throughout
    assert max(range(100), key=lambda i: seen[i][0]) in (9, 10)  # rises during warm-up, then decays
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    assert poly_factor(50, max_iters=100, power=1.0) == pytest.approx(0.5)


def test_schedule_refuses_bad_arguments():
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="warmup_iters"):
        poly_warmup_scheduler(opt, max_iters=5, warmup_iters=6)
    with pytest.raises(ValueError, match="max_iters"):
        poly_warmup_scheduler(opt, max_iters=0)
