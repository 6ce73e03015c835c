"""ResNet (v1.5) feature extractors with dilation, frozen BN and frozen stages.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``...), so
torchvision and timm ImageNet checkpoints load with ``strict=True`` once the classifier is dropped.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.utils.checkpoint
from torch import nn

from .base import Backbone, FeatureInfo, FeatureSpec
from .norm import get_norm_layer
from .registry import UsageError, check_kwargs, register_backbone
from .weights import load_pretrained

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

# stride (in the undilated network) of each selectable output: the stem conv, then layer1..layer4.
STAGE_STRIDES = (2, 4, 8, 16, 32)
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding == dilation keeps the map size at ceil(H / stride) for any H.
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Dilation is supported (unlike torchvision): ``conv1`` uses ``first_dilation``, ``conv2`` uses ``dilation``,
    the timm layout that lets the first block of a dilated stage keep the previous stage's dilation.

    Shape: ``(N, inplanes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 first_dilation: Optional[int] = None, downsample: Optional[nn.Module] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The shortcut is computed last so its full-size output is not held while the main branch runs.
        identity = x if self.downsample is None else self.downsample(x)
        # In place: saves allocating (and, for large maps, page-faulting in) one more full-size tensor per block.
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck (ResNet-50/101/152), stride on the 3x3 conv as in ResNet v1.5.

    Only the 3x3 conv is dilated; it uses ``first_dilation`` (the previous stage's dilation in a stage's first
    block), matching torchvision and timm.

    Shape: ``(N, inplanes, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 first_dilation: Optional[int] = None, downsample: Optional[nn.Module] = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)  # last, see BasicBlock
        out += identity  # in place, see BasicBlock
        return self.relu(out)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm running statistics (and step counts) of ``module`` on exit."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class Stage(nn.Sequential):
    """A sequence of blocks (``layer1``...``layer4``) that can recompute its activations in backward.

    Subclassing ``nn.Sequential`` keeps torchvision's parameter names (``layer1.0.conv1.weight``).
    """

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    @torch.jit.unused
    def _checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        # The recomputation in backward re-runs every BatchNorm in training mode; without this context it would
        # update the running statistics a second time per step.
        return torch.utils.checkpoint.checkpoint(
            super().forward, x, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _running_stats_kept(self)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return self._checkpointed(x)
        for block in self:
            x = block(x)
        return x


class ResNet(Backbone):
    """ResNet feature extractor returning the maps selected by ``out_strides``, shallow to deep.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in layer1..layer4, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        out_strides: which maps to return, by their stride in the *undilated* network: 2 (stem conv),
            4 (layer1), 8 (layer2), 16 (layer3), 32 (layer4). Stages deeper than the deepest one requested are
            not built, so DDP sees no unused parameters.
        output_stride: 8, 16 or 32. Once the running stride reaches it, later strides become dilation; the
            first block of a dilated stage keeps the previous dilation (torchvision/timm layout).
        multi_grid: per-block multipliers of layer4's dilation (DeepLabV3's "multi-grid", e.g. ``(1, 2, 4)``);
            one entry per block of layer4. With it, every block of layer4 uses ``dilation * multi_grid[i]``.
        norm: ``"bn"``, ``"frozen_bn"``, ``"sync_bn"`` or ``"gn"`` (GroupNorm, 32 groups).
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and layer1..k: no gradients, norms in eval.
            Re-applied by every ``train()``/``eval()`` call, like ``norm_eval``, so a blanket
            ``requires_grad_(True)`` (smp's ``unfreeze_encoder()``) lasts only until then; lower
            ``frozen_stages`` (the attribute) and re-enable gradients to unfreeze for good.
        norm_eval: keep every BatchNorm in eval mode during training (statistics not updated).
        zero_init_residual: zero the last norm's weight in each block, so each block starts as identity.
        in_chans: number of input channels. Pretrained RGB weights are adapted to them when loaded, as timm
            adapts them (:func:`backbones.weights.adapt_input_conv`: summed for 1 channel, repeated and scaled by
            3/N for N), said in one log line.
        checkpoint_stages: recompute each stage's activations in the backward pass (activation
            checkpointing) to cut training memory; no effect in eval mode. BatchNorm running statistics are
            updated once per step, as without it (the recomputation restores them).

    Shape:
        input ``(N, in_chans, H, W)`` for any ``H, W >= 1``; output ``i`` is
        ``(N, feature_info[i].channels, ceil(H / s_i), ceil(W / s_i))`` with ``s_i = feature_info[i].stride``.
    """

    def __init__(self, block: Block, layers: Sequence[int], *, out_strides: Sequence[int] = (8, 16, 32),
                 output_stride: int = 32, multi_grid: Optional[Sequence[int]] = None, norm: str = "bn",
                 frozen_stages: int = -1, norm_eval: bool = False, zero_init_residual: bool = False,
                 in_chans: int = 3, checkpoint_stages: bool = False) -> None:
        super().__init__()
        out_strides = _check_out_strides(out_strides)
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        norm_layer = get_norm_layer(norm)
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        num_stages = STAGE_STRIDES.index(max(out_strides))  # 0 = stem only, 4 = up to layer4
        # bool is an int subclass: frozen_stages=True would silently mean 1.
        if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int)
                or not -1 <= frozen_stages <= num_stages):
            raise ValueError(
                f"frozen_stages must be an int from -1 (nothing) to {num_stages} (the deepest stage built for "
                f"out_strides={out_strides}), got {frozen_stages!r}"
            )
        if multi_grid is not None:
            multi_grid = tuple(multi_grid)
            if num_stages < 4:
                raise ValueError(f"multi_grid applies to layer4, which out_strides={out_strides} does not build")
            if len(multi_grid) != layers[3] or not all(isinstance(m, int) and m >= 1 for m in multi_grid):
                raise ValueError(
                    f"multi_grid must hold {layers[3]} positive ints (one per block of layer4), got {multi_grid!r}"
                )

        self.in_chans = in_chans
        self.norm = norm
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.checkpoint_stages = checkpoint_stages
        self.num_stages = num_stages
        self.inplanes = 64

        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        specs = [FeatureSpec("stem", 64, 2, 1)]

        # Stages not built stay as parameter-free placeholders so forward() has one scriptable shape.
        net_stride, dilation = 4, 1
        for idx in range(4):
            name = STAGE_NAMES[idx + 1]
            if idx >= num_stages:
                setattr(self, name, nn.Identity())
                continue
            stride = 1 if idx == 0 else 2
            prev_dilation = dilation
            if net_stride >= output_stride and stride > 1:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            grid = multi_grid if idx == 3 else None
            stage = self._make_stage(block, 64 * 2 ** idx, layers[idx], stride=stride, dilation=dilation,
                                     first_dilation=prev_dilation, multi_grid=grid, norm_layer=norm_layer)
            setattr(self, name, stage)
            specs.append(FeatureSpec(name, 64 * 2 ** idx * block.expansion, net_stride, dilation))

        self.out_indices: List[int] = [STAGE_STRIDES.index(s) for s in out_strides]
        self.feature_info = FeatureInfo([specs[i] for i in self.out_indices])
        self._init_weights(zero_init_residual)
        self._freeze_stages()
        self.set_grad_checkpointing(checkpoint_stages)

    def _make_stage(self, block: Block, planes: int, blocks: int, *, stride: int, dilation: int,
                    first_dilation: int, multi_grid: Optional[Tuple[int, ...]], norm_layer: NormLayer
                    ) -> Stage:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                norm_layer(planes * block.expansion),
            )
        blocks_: List[nn.Module] = []
        for i in range(blocks):
            if multi_grid is not None:
                # DeepLabV3 multi-grid: every block's rate is the stage rate times its multiplier.
                d = first_d = dilation * multi_grid[i]
            else:
                d, first_d = dilation, (first_dilation if i == 0 else dilation)
            blocks_.append(block(self.inplanes, planes, stride=stride if i == 0 else 1, dilation=d,
                                 first_dilation=first_d, downsample=downsample if i == 0 else None,
                                 norm_layer=norm_layer))
            self.inplanes = planes * block.expansion
        return Stage(*blocks_)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    with torch.no_grad():
                        m.last_norm().weight.zero_()

    def frozen_modules(self) -> List[nn.Module]:
        """Modules frozen by ``frozen_stages``: the stem (conv1, bn1) and layer1..k."""
        if self.frozen_stages < 0:
            return []
        mods: List[nn.Module] = [self.conv1, self.bn1]
        mods += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return mods

    def _freeze_stages(self) -> None:
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        """Set training mode, keeping frozen stages (and every BatchNorm if ``norm_eval``) in eval, and their
        parameters without gradients."""
        super().train(mode)
        self._freeze_stages()
        if mode:
            for m in self.frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of every stage on or off (see ``checkpoint_stages``)."""
        self.checkpoint_stages = enable
        for m in self.modules():
            if isinstance(m, Stage):
                m.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``(N, in_chans, H, W)`` -> list of maps, one per ``feature_info`` entry."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        outs: List[torch.Tensor] = []
        x = self.relu(self.bn1(self.conv1(x)))
        if 0 in self.out_indices:
            outs.append(x)
        if self.num_stages >= 1:
            x = self.maxpool(x)  # rebinding x frees the stride-2 map before layer1 runs
            x = self.layer1(x)
            if 1 in self.out_indices:
                outs.append(x)
        if self.num_stages >= 2:
            x = self.layer2(x)
            if 2 in self.out_indices:
                outs.append(x)
        if self.num_stages >= 3:
            x = self.layer3(x)
            if 3 in self.out_indices:
                outs.append(x)
        if self.num_stages >= 4:
            x = self.layer4(x)
            if 4 in self.out_indices:
                outs.append(x)
        return outs


def _check_out_strides(out_strides: Sequence[int]) -> Tuple[int, ...]:
    if isinstance(out_strides, int) or not isinstance(out_strides, Sequence):
        raise UsageError(f"out_strides must be a sequence of ints from {STAGE_STRIDES}, got {out_strides!r}")
    strides = tuple(out_strides)
    if not strides:
        raise ValueError(f"out_strides must not be empty; pick from {STAGE_STRIDES}")
    bad = [s for s in strides if s not in STAGE_STRIDES]
    if bad:
        raise ValueError(f"out_strides values must be in {STAGE_STRIDES}, got {bad} in {strides}")
    if len(set(strides)) != len(strides):
        raise ValueError(f"out_strides must not repeat a stride, got {strides}")
    if list(strides) != sorted(strides):
        raise ValueError(f"out_strides must be increasing (shallow to deep), got {strides}")
    return strides


# --- builders -----------------------------------------------------------------------------------------------

# (block, layers) per depth; "imagenet" weights are torchvision's IMAGENET1K_V1 (where V2 exists too, the
# weights most dense-prediction papers start from); "tv2" and timm's tags are named in backbones.weights.
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


def build_resnet(arch: str, *, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> ResNet:
    """Build ResNet ``arch`` and optionally load weights.

    Args:
        arch: a key of :data:`ARCHS`.
        pretrained: ``None``/``False`` for random init; ``True`` or ``"imagenet"`` for torchvision's ImageNet
            weights (IMAGENET1K_V1), ``"tv2"`` for torchvision's IMAGENET1K_V2 (resnet50/101/152; torch.hub
            cache), ``"timm:<arch>.<tag>"`` for timm's (e.g. ``"timm:resnet50.a1_in1k"``; Hugging Face cache);
            or a local path / URL of a torchvision- or timm-format checkpoint (``.pth``, ``.pt``,
            ``.safetensors``). Offline, a file not yet cached fails at once naming the path to place it at.
        **kwargs: keyword arguments of :class:`ResNet` (``out_strides``, ``output_stride``, ``norm``, ...).
    """
    check_kwargs(ResNet.__init__, kwargs, what=f"backbone {arch!r}", keyword_only=True, extra=("pretrained",))
    block, layers = ARCHS[arch]
    model = ResNet(block, layers, **kwargs)
    if pretrained:
        load_pretrained(model, pretrained, arch=arch)
    return model


def _doc(arch: str) -> str:
    return (f"{arch} feature extractor (see :class:`ResNet` for the keyword arguments and output shapes).\n\n"
            f"    Example::\n\n        bb = build_backbone({arch!r}, out_strides=(8, 16, 32), output_stride=16)\n"
            f"        f8, f16, f32 = bb(torch.randn(1, 3, 512, 512))  # strides 8, 16, 16 after dilation\n")


@register_backbone("resnet18")
def resnet18(*, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> ResNet:
    return build_resnet("resnet18", pretrained=pretrained, **kwargs)


@register_backbone("resnet34")
def resnet34(*, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> ResNet:
    return build_resnet("resnet34", pretrained=pretrained, **kwargs)


@register_backbone("resnet50")
def resnet50(*, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> ResNet:
    return build_resnet("resnet50", pretrained=pretrained, **kwargs)


@register_backbone("resnet101")
def resnet101(*, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> ResNet:
    return build_resnet("resnet101", pretrained=pretrained, **kwargs)


@register_backbone("resnet152")
def resnet152(*, pretrained: Union[bool, str, None] = None, **kwargs: Any) -> ResNet:
    return build_resnet("resnet152", pretrained=pretrained, **kwargs)


for _fn in (resnet18, resnet34, resnet50, resnet101, resnet152):
    _fn.__doc__ = _doc(_fn.__name__)
