"""BatchNorm folding and ReLU fusion for :func:`backbones.deploy`: a norm (or a ReLU) is paired with the
convolution it reads by tracing the data flow, not by attribute names, so any module tree (ours, torchvision's,
timm's) folds.
"""

from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode

from .norm import FrozenBatchNorm2d
from .packed import PackedConv2d
from .tensors import device_of, iter_tensors

__all__ = ["fold_batchnorm", "fuse_relu", "mark_dead_inputs"]

# Input size used to trace which convolution feeds which norm when the caller gives no example input.
PROBE_SIZE = 64


def fold_batchnorm(model: nn.Module, *, example_input: Any = None) -> List[str]:
    """Fold, in place, every batch norm that directly follows a plain ``nn.Conv2d`` into that convolution.

    Which convolution feeds which norm is read from the data flow, not from attribute names: ``model`` is run
    once on ``example_input`` while every torch function call is recorded, and a pair is folded only if the
    convolution's output is used by nothing but that norm (one call each, each module registered once). Norms
    inside an ``nn.Sequential`` right after a convolution are folded even if the run does not reach them (an
    auxiliary head that only runs in training). The folded norm becomes ``nn.Identity`` (timm's
    ``BatchNormAct2d`` becomes its activation). Norms that follow something else stay as they are, in eval mode.

    ``model`` must be in eval mode; the outputs are checked against the unfolded ones on ``example_input``.

    Returns:
        the qualified names of the folded norms.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (folding uses the running statistics); "
                         "call model.eval() first, or use deploy(), which works on an eval copy")
    if example_input is None:
        example_input = _probe_input(model)
    with torch.no_grad():
        pairs, called, reference = _traced_pairs(model, example_input)
        pairs.update({bn: conv for bn, conv in _sequential_pairs(model).items()
                      if bn not in called and conv not in called})
        names = {m: n for n, m in model.named_modules()}
        parents = {child: (parent, name) for parent in model.modules() for name, child in parent.named_children()}
        for bn, conv in pairs.items():
            parent, name = parents[bn]  # registered once: checked when the pair was found
            setattr(parent, name, _fold_pair(conv, bn))
        check = model(example_input)
    _check_same(reference, check, model, "folding BatchNorm")
    return sorted(names[bn] for bn in pairs)


def _probe_input(model: nn.Module) -> torch.Tensor:
    channels = getattr(model, "in_chans", None)
    if not isinstance(channels, int):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"cannot guess the input of {type(model).__name__} (no in_chans, no Conv2d); "
                             f"pass example_input=")
        channels = convs[0].in_channels
    ref = next(iter(model.parameters()), None)
    x = torch.randn(1, channels, PROBE_SIZE, PROBE_SIZE, device=device_of(model),
                    dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    return x.contiguous(memory_format=torch.channels_last)


# Tensor methods that read metadata only: calling them on a convolution's output does not use its values.
_METADATA_CALLS = frozenset({"dim", "size", "numel", "stride", "is_contiguous", "is_floating_point", "element_size",
                             "get_device", "data_ptr", "__len__", "ndimension", "nelement"})


class _DataFlow(TorchFunctionMode):
    """Records, for every tensor in call order, the watched module (a norm, a ReLU; ``None`` for "elsewhere") of
    each call that reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.current: Optional[nn.Module] = None
        self.muted = 0  # > 0 while a convolution runs: its own inner operations are not reads of its output
        self.calls = 0  # recorded calls so far: the clock of ``read_at``
        self.read_at: Dict[int, List[int]] = {}  # storage (views share it) -> when it was read
        self.readers: Dict[int, List[Optional[nn.Module]]] = {}
        self.keep: List[torch.Tensor] = []  # keeps recorded tensors alive so their ids stay unique
        self.results: Dict[nn.Module, List[Tuple[Any, Any]]] = {}  # module -> (first input, output) per call
        self._handles: List[Any] = []

    def record(self, module: nn.Module) -> None:
        """Keep each call's first input and output of ``module`` in :attr:`results`."""
        self._handles.append(module.register_forward_hook(self._record))

    def watch(self, module: nn.Module) -> None:
        """Record ``module`` and attribute the reads made inside its calls to it."""
        self._handles += [module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._record),
                          module.register_forward_hook(self._leave)]

    def mute(self, module: nn.Module) -> None:
        """Ignore the operations inside ``module``'s calls (its own reads of its intermediate results)."""
        self._handles += [module.register_forward_pre_hook(self._mute), module.register_forward_hook(self._unmute)]

    def hook(self, module: nn.Module, pre: Callable, post: Callable) -> None:
        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def run(self, model: nn.Module, example_input: Any) -> Any:
        """``model(example_input)`` without gradients, recorded; the hooks are removed afterwards."""
        try:
            with torch.no_grad(), self:
                return model(example_input)
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()

    def _record(self, module, inputs, output):
        self.results.setdefault(module, []).append((inputs[0] if inputs else None, output))
        self.keep.append(output)

    def _enter(self, module, inputs):
        self.current = module

    def _leave(self, module, inputs, output):
        self.current = None

    def _mute(self, module, inputs):
        self.muted += 1

    def _unmute(self, module, inputs, output):
        self.muted -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.muted or name in _METADATA_CALLS or (name == "__get__" and not isinstance(out, torch.Tensor)):
            return out
        self.calls += 1
        for t in iter_tensors((args, kwargs)):
            self.readers.setdefault(id(t), []).append(self.current)
            self.read_at.setdefault(_storage(t), []).append(self.calls)
            self.keep.append(t)
        return out


def _traced_pairs(model: nn.Module, example_input: Any
                  ) -> Tuple[Dict[nn.Module, nn.Module], Set[nn.Module], Any]:
    """``{norm: conv}`` for the foldable pairs seen while running ``model(example_input)``, the convs and norms
    that ran, and the output."""
    flow = _DataFlow()
    for m in model.modules():
        if _is_plain_conv(m):
            flow.record(m)
        elif _norm_kind(m) is not None:
            flow.watch(m)
    try:
        output = flow.run(model, example_input)
    except Exception as err:
        raise ValueError(f"deploy could not run {type(model).__name__} on its example input "
                         f"({_describe(example_input)}): {err}; pass example_input= that the model accepts") from err
    calls = flow.results

    counts = _registrations(model)
    produced_by = {id(out): conv for conv, c in calls.items() if _is_plain_conv(conv) and len(c) == 1
                   for _, out in c}
    returned = {id(t) for t in iter_tensors(output)}
    pairs: Dict[nn.Module, nn.Module] = {}
    for bn, c in calls.items():
        if _is_plain_conv(bn) or len(c) != 1:
            continue
        source = c[0][0]
        conv = produced_by.get(id(source))
        if conv is None or counts[bn] != 1 or counts[conv] != 1 or id(source) in returned:
            continue
        if all(reader is bn for reader in flow.readers.get(id(source), [])):
            pairs[bn] = conv
    return pairs, set(calls), output


def fuse_relu(model: nn.Module, *, example_input: Any = None) -> List[str]:
    """Fuse, in place, every ``nn.ReLU`` that only ever reads the fresh output of a :class:`PackedConv2d` into it.

    As for folding, the pairs come from the data flow of one run on ``example_input``: a ReLU module qualifies if
    each of its calls reads the output of a packed convolution that runs once, before anything else reads that
    output (and, for an out-of-place ReLU, nothing else ever does). Its convolutions then apply the ReLU
    themselves (``fused_relu``, a oneDNN post-op) and the ReLU module becomes ``nn.Identity``. A ReLU shared with
    other uses (a residual block's, applied after the addition) stays. Outputs are checked on ``example_input``.

    Returns:
        the qualified names of the fused ReLUs.
    """
    if example_input is None:
        example_input = _probe_input(model)
    flow = _DataFlow()
    for m in model.modules():
        if type(m) is PackedConv2d:
            flow.mute(m)
            if not m.fused_relu:
                flow.record(m)
        elif type(m) is nn.ReLU:
            flow.watch(m)
    reference = flow.run(model, example_input)
    calls = flow.results
    produced_by = {id(out): conv for conv, c in calls.items() if type(conv) is PackedConv2d and len(c) == 1
                   for _, out in c}
    returned = {id(t) for t in iter_tensors(reference)}
    fused: Dict[nn.Module, List[nn.Module]] = {}
    for relu, c in calls.items():
        if type(relu) is not nn.ReLU:
            continue
        convs = [produced_by.get(id(inp)) for inp, _ in c]
        readers = [flow.readers.get(id(inp), []) for inp, _ in c]
        if any(conv is None for conv in convs) or any(not r or r[0] is not relu for r in readers):
            continue
        if not relu.inplace and any(set(r) != {relu} or id(inp) in returned for r, (inp, _) in zip(readers, c)):
            continue
        fused[relu] = convs
    for relu, convs in fused.items():
        for conv in convs:
            conv.fused_relu = True
    names = {m: n for n, m in model.named_modules()}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in fused:
                setattr(parent, name, nn.Identity())
    with torch.no_grad():
        _check_same(reference, model(example_input), model, "fusing ReLUs")
    return sorted(names[r] for r in fused)


def mark_dead_inputs(model: nn.Module, blocks: List[nn.Module], *, example_input: Any = None) -> List[str]:
    """Set ``reuse_shortcut`` on each of ``blocks`` (fused residual blocks with an identity shortcut) whose input
    nothing reads after the block's call: then the block may write its sum into its input.

    From the data flow of one run on ``example_input``: a block qualifies if it runs once, its input's memory
    (shared by any view of it) is neither the model's input nor part of its output, and nothing reads that memory
    once the block has returned. Outputs are checked on ``example_input``.

    Returns:
        the qualified names of the blocks marked.
    """
    if example_input is None:
        example_input = _probe_input(model)
    flow = _DataFlow()
    windows: Dict[nn.Module, List[List[Any]]] = {}

    def start(module, inputs):
        windows.setdefault(module, []).append([flow.calls + 1, None, inputs[0] if inputs else None])
        flow.keep.append(inputs[0] if inputs else None)

    def end(module, inputs, output):
        windows[module][-1][1] = flow.calls

    for b in blocks:
        flow.hook(b, start, end)
    reference = flow.run(model, example_input)
    outside = {_storage(t) for t in iter_tensors((example_input, reference))}
    marked = []
    for block, calls in windows.items():
        if len(calls) != 1:
            continue
        _, last, x = calls[0]
        if not isinstance(x, torch.Tensor) or _storage(x) in outside or last is None:
            continue
        if all(t <= last for t in flow.read_at.get(_storage(x), [])):
            marked.append(block)
    for block in marked:
        block.reuse_shortcut = True
    with torch.no_grad():
        _check_same(reference, model(example_input), model, "writing residual sums in place")
    names = {m: n for n, m in model.named_modules()}
    return sorted(names[b] for b in marked)


def _storage(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage()._cdata
    except (NotImplementedError, RuntimeError):  # opaque layouts (oneDNN packed weights) have no storage
        return None


def _check_same(reference: Any, check: Any, model: nn.Module, what: str) -> None:
    for ref, out in zip(iter_tensors(reference), iter_tensors(check)):
        scale = ref.float().abs().max().clamp_min(1e-12)
        err = float((out.float() - ref.float()).abs().max() / scale)
        if err > 1e-3:
            raise RuntimeError(f"{what} changed {type(model).__name__}'s output (relative error {err:.2e}); a "
                               f"convolution output is probably used outside the module tree's data flow")


def _sequential_pairs(model: nn.Module) -> Dict[nn.Module, nn.Module]:
    """``{norm: conv}`` for a plain conv directly followed by a norm inside an ``nn.Sequential``."""
    counts = _registrations(model)
    pairs = {}
    for m in model.modules():
        if type(m).forward is not nn.Sequential.forward:
            continue
        children = list(m.children())
        for conv, bn in zip(children, children[1:]):
            if _is_plain_conv(conv) and _norm_kind(bn) is not None and counts[conv] == 1 and counts[bn] == 1:
                pairs[bn] = conv
    return pairs


def _registrations(model: nn.Module) -> Dict[nn.Module, int]:
    counts: Dict[nn.Module, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[m] = counts.get(m, 0) + 1
    return counts


def _is_plain_conv(m: nn.Module) -> bool:
    # Subclasses with their own forward (weight standardization, dynamic padding) may not commute with folding.
    return isinstance(m, nn.Conv2d) and type(m).forward in (nn.Conv2d.forward, PackedConv2d.forward)


def _norm_kind(m: nn.Module) -> Optional[str]:
    """``"bn"`` for a norm computing ``x * scale + shift`` in eval mode, ``"bn_act"`` for one followed by its
    own dropout and activation (timm), ``None`` otherwise."""
    cls = type(m)
    if cls in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return "bn" if m.running_mean is not None else None  # without statistics it always uses batch ones
    if cls is FrozenBatchNorm2d:
        return "bn"
    module = cls.__module__
    if module.startswith("torchvision."):
        from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

        return "bn" if cls is TorchvisionFrozenBN else None
    if module.startswith("timm."):
        from timm.layers import norm_act

        if cls in (norm_act.BatchNormAct2d, norm_act.SyncBatchNormAct):
            return "bn_act" if m.running_mean is not None else None
        if cls is norm_act.FrozenBatchNormAct2d:
            return "bn_act"
    return None


def _fold_pair(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold ``bn`` into ``conv`` in place; return the module that replaces ``bn``."""
    new_w, new_b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    conv.weight = nn.Parameter(new_w.detach(), requires_grad=False)
    conv.bias = nn.Parameter(new_b.detach(), requires_grad=False)
    if _norm_kind(bn) == "bn_act":
        return bn.act if isinstance(bn.drop, nn.Identity) else nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor {tuple(obj.shape)} {obj.dtype}"
    return type(obj).__name__
