"""Training-speed features: channels_last and bf16 autocast give the gradients of the plain fp32 model, and
activation checkpointing gives the same gradients with less tensor memory (counted, not timed)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from heads import build_segmentor
from tools.bench.profiling import TensorMemory, peak_tensor_memory

BF16_OK = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def gradients(model, x, target, *, channels_last=False, bf16=False):
    """Parameter gradients of one cross-entropy (or feature-energy) loss, as a name -> tensor dict."""
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)  # same dropout masks in every variant
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
        loss = (F.cross_entropy(out.float(), target) if isinstance(out, torch.Tensor)
                else sum(o.float().square().mean() for o in out))
    loss.backward()
    return {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


def relative(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def segmentor():
    torch.manual_seed(0)
    model = build_segmentor(head="fpn", backbone="resnet18", num_classes=4)
    return model, torch.randn(2, 3, 64, 96), torch.randint(0, 4, (2, 64, 96))


def test_channels_last_training_matches_contiguous(segmentor):
    model, x, target = segmentor
    ref = gradients(model, x, target)
    out = gradients(model, x, target, channels_last=True)
    assert ref.keys() == out.keys()
    # fp32 summation order differs between the layouts; BatchNorm's backward over a 2-image batch amplifies it
    # to ~1e-3 in the worst tensor (a layout bug would be of order 1).
    worst = max((relative(out[n], ref[n]), n) for n in ref)
    assert worst[0] < 5e-3, worst


def cosine(grads, ref):
    flat = lambda g: torch.cat([g[n].flatten() for n in ref])
    return float(F.cosine_similarity(flat(grads), flat(ref), dim=0))


@pytest.mark.skipif(not BF16_OK, reason="this CPU has no bf16 support in oneDNN")
def test_bf16_autocast_training_matches_fp32(segmentor):
    # A shallow network (stem + layer1) is well conditioned: bf16 gradients agree closely with fp32.
    torch.manual_seed(0)
    shallow = build_backbone("resnet18", out_strides=(4,))
    x4 = torch.randn(4, 3, 64, 64)
    ref = gradients(shallow, x4, None)
    assert cosine(gradients(shallow, x4, None, bf16=True), ref) > 0.99
    # The gradients of a whole randomly initialised segmentor are chaotic: rounding only the *input* to bf16
    # precision (relative noise 2**-8) already moves them to a cosine of ~0.94 in fp32. bf16 autocast may move
    # them by about as much, not more (a wrong cast or layout would decorrelate them entirely).
    model, x, target = segmentor
    ref = gradients(model, x, target)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    sensitivity = 1 - cosine(gradients(model, x * (1 + 2 ** -8 * noise), target), ref)
    for channels_last in (False, True):
        drift = 1 - cosine(gradients(model, x, target, bf16=True, channels_last=channels_last), ref)
        assert drift < 3 * sensitivity, (drift, sensitivity)


def test_checkpointing_same_gradients_less_memory():
    torch.manual_seed(0)
    plain = build_backbone("resnet18", output_stride=8, out_strides=(8, 32))
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 96, 128)
    ref = gradients(plain, x, None)
    out = gradients(ckpt, x, None)
    assert max(relative(out[n], ref[n]) for n in ref) < 1e-5

    def held_after_forward(model):
        with TensorMemory() as mem:
            outputs = model.train()(x)
        del outputs
        return mem.current_bytes

    def step(model):
        model.zero_grad(set_to_none=True)
        sum(o.square().mean() for o in model.train()(x)).backward()

    # What a forward keeps for the backward pass: every activation without checkpointing, only the stem's and
    # each stage's input with it. The whole step's peak (gradients included) must not grow either.
    assert held_after_forward(ckpt) < 0.5 * held_after_forward(plain)  # 0.37 here: the stem is not checkpointed
    assert peak_tensor_memory(lambda: step(ckpt)) <= peak_tensor_memory(lambda: step(plain))


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average, which counts the steps
def test_checkpointing_updates_running_statistics_once_per_step(momentum):
    # The recomputation in backward re-runs every BatchNorm in training mode; it must not update them again.
    torch.manual_seed(0)
    plain = build_backbone("resnet18", out_strides=(8, 32))
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, ckpt):
        sum(o.square().mean() for o in model.train()(x)).backward()
    expected, got = plain.state_dict(), ckpt.state_dict()
    assert [k for k in expected if "running" in k], "no statistics compared"
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert max(relative(a.grad, b.grad) for a, b in zip(ckpt.parameters(), plain.parameters())) < 1e-6


def test_tensor_memory_counts_allocations_not_views():
    with TensorMemory() as mem:
        a = torch.empty(1024, 1024)  # 4 MiB
        view = a[:512].t()
        b = a.add(1)  # a second 4 MiB
        del b
        c = torch.zeros(256, 1024)  # 1 MiB, allocated after b was freed
        a.mul_(2)  # in place: nothing new
    assert mem.peak_bytes == 8 * 2 ** 20
    assert mem.current_bytes == 5 * 2 ** 20
    del a, view, c


def test_combined_training_step_updates_every_parameter(segmentor):
    model, x, target = segmentor
    model = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    model.backbone.set_grad_checkpointing(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16_OK):
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
