"""Third-party backbones behind the registry: ``"timm:<model>"`` and ``"torchvision:<resnet>"``.

Both wrappers return a list of maps described by a :class:`FeatureInfo` with the *actual* strides, so every
head works with them. ``out_strides`` counts, as for our ResNets, in strides of the undilated network; each
spec's ``dilation`` is the factor between that nominal stride and the actual one. Where a timm model has several
maps of one stride (a ViT's blocks), the deepest is returned, and a request the model cannot meet exactly (a
stride it lacks, an output stride it cannot dilate to) is refused rather than answered with another map.

timm and torchvision are imported when a wrapper is built, not when ``backbones`` is imported.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, FeatureInfo, FeatureSpec
from .norm import freeze_batchnorm, get_norm_layer
from .registry import BACKBONES, UsageError, check_kwargs
from .weights import load_checked, load_pretrained, pretrained_file, timm_weights_file

Pretrained = Union[bool, str, os.PathLike, None]

__all__ = ["SIZE_KWARGS", "TimmBackbone", "TorchvisionResNet", "timm_backbone", "timm_nominal_strides",
           "torchvision_backbone"]


def _check_strides(out_strides: Sequence[int], available: Sequence[int], what: str) -> Tuple[int, ...]:
    if isinstance(out_strides, int) or not isinstance(out_strides, Sequence) or not out_strides:
        raise UsageError(
            f"out_strides must be a non-empty sequence of ints from {tuple(available)}, got {out_strides!r}")
    strides = tuple(out_strides)
    bad = [s for s in strides if s not in available]
    if bad:
        raise ValueError(f"{what} provides maps at strides {tuple(available)}; out_strides {bad} of {strides} are not")
    if list(strides) != sorted(set(strides)):
        raise ValueError(f"out_strides must be increasing without repeats (shallow to deep), got {strides}")
    return strides


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")


def _check_in_chans(in_chans: int) -> None:
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")


# --- timm ---------------------------------------------------------------------------------------------------


class TimmBackbone(Backbone):
    """A timm ``features_only`` model as a :class:`Backbone`.

    Models whose maps are ``floor(H / s)`` rather than ``ceil(H / s)`` high (e.g. ConvNeXt's patchify stem), or
    that need inputs of a multiple of their patch size (Swin), get their input zero-padded to a multiple of
    ``size_divisibility`` and their maps cropped to ``ceil(H / s)``, so the contract holds for every input size;
    this is detected once, at construction. Channels-last maps (timm's ``output_fmt="NHWC"``, e.g. Swin) are
    returned as ``(N, C, H, W)``.

    Args:
        name: the timm model's name, for messages.

    Shape: ``(N, in_chans, H, W)`` -> list of ``(N, C_i, ceil(H / s_i), ceil(W / s_i))``.
    """

    def __init__(self, model: nn.Module, feature_info: FeatureInfo, *, in_chans: int = 3,
                 name: Optional[str] = None) -> None:
        super().__init__()
        self.model = model
        self.feature_info = feature_info
        self.in_chans = in_chans
        self.strides: List[int] = feature_info.strides
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.pad_multiple = 1
        if self._probe() is not None:
            self.pad_multiple = max(self.strides)
            failure = self._probe()
            if failure is not None:
                raise ValueError(
                    f"timm model {name or type(model).__name__!r} cannot be wrapped: {failure} (input padded to "
                    f"a multiple of {self.pad_multiple} or not); a model with a fixed input size needs "
                    f"dynamic_img_size=True (ViT, Swin and others that have the option; the wrapper sets it unless "
                    f"one of {', '.join(SIZE_KWARGS)} is given)"
                )

    @torch.no_grad()
    def _probe(self) -> Optional[str]:
        """``None`` if the maps of a small odd-sized input have the contract's sizes, else what went wrong."""
        was_training = self.training
        self.eval()
        s = max(self.strides)
        h, w = s + 1, s + 3  # not a multiple of any stride, so ceil and floor differ at every level
        try:
            ref = next(iter(self.model.parameters()))
            outs = self.forward(torch.zeros(1, self.in_chans, h, w, device=ref.device, dtype=ref.dtype))
        except (RuntimeError, AssertionError, ValueError) as e:  # e.g. ViT's "Input height (33) doesn't match"
            return f"running a {h}x{w} input fails with {_first_line(e)!r}"
        finally:
            self.train(was_training)
        got = [tuple(o.shape[-2:]) for o in outs]
        want = [(-(-h // st), -(-w // st)) for st in self.strides]
        return None if got == want else f"a {h}x{w} input gives maps of sizes {got}, not {want}"

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``(N, in_chans, H, W)`` -> list of maps, one per ``feature_info`` entry."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        if self.pad_multiple == 1 and not self.nhwc:
            return list(self.model(x))
        h, w = x.shape[-2], x.shape[-1]
        m = self.pad_multiple
        if m > 1:
            x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
        outs: List[torch.Tensor] = []
        for f, s in zip(self.model(x), self.strides):
            if self.nhwc:
                f = f.permute(0, 3, 1, 2)
            outs.append(f[:, :, : (h + s - 1) // s, : (w + s - 1) // s])
        return outs


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# timm's keyword arguments that set a model's input size. Without any of them, a model that has the
# dynamic_img_size option (ViT, Swin, EVA...) is built with it: a backbone takes inputs of any size.
SIZE_KWARGS = ("img_size", "dynamic_img_size", "dynamic_img_pad", "strict_img_size")


def _timm_levels(timm: Any, name: str, kwargs: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every feature level of timm's ``features_only`` model (``reduction`` at output stride 32, ``num_chs``,
    ``module``), shallow to deep, from a model built on the meta device (no memory, no weights)."""
    meta_kwargs = {k: v for k, v in kwargs.items()
                   if k not in ("pretrained", "output_stride", "out_indices", "pretrained_cfg_overlay")}
    # timm's default out_indices of a ViT are its last three blocks, which a shallower one lacks: then the last.
    for out_indices in ({}, {"out_indices": (-1,)}):
        try:
            with torch.device("meta"):
                probe = timm.create_model(name, features_only=True, pretrained=False, **out_indices, **meta_kwargs)
            break
        except (RuntimeError, AssertionError, NotImplementedError) as e:
            error = e
    else:
        raise ValueError(f"timm model {name!r} does not support features_only: {_first_line(error)}") from error
    # feature_info.info lists every level; reduction()/channels() only those of timm's default out_indices
    # (for a ViT, its last three blocks).
    return [dict(level) for level in probe.feature_info.info]


def _timm_levels_any_size(timm: Any, name: str, timm_kwargs: Dict[str, Any]) -> List[Dict[str, Any]]:
    """:func:`_timm_levels`, setting ``timm_kwargs["dynamic_img_size"] = True`` (in place) for models that have
    the option when no size keyword was given."""
    if not any(k in timm_kwargs for k in SIZE_KWARGS):
        try:
            levels = _timm_levels(timm, name, {**timm_kwargs, "dynamic_img_size": True})
        except TypeError as e:
            if "dynamic_img_size" not in str(e):
                raise
        else:
            timm_kwargs["dynamic_img_size"] = True
            return levels
    return _timm_levels(timm, name, timm_kwargs)


def timm_nominal_strides(name: str, **timm_kwargs: Any) -> List[int]:
    """The strides ``out_strides`` may request of timm model ``name``: its distinct feature reductions at output
    stride 32, shallow to deep (``[16]`` for a ViT), read from a copy built on the meta device."""
    import timm

    return sorted({int(level["reduction"]) for level in _timm_levels_any_size(timm, name, dict(timm_kwargs))})


def timm_backbone(name: str, *, out_strides: Sequence[int] = (8, 16, 32), output_stride: int = 32,
                  pretrained: Pretrained = None, norm: str = "bn", frozen_stages: int = -1, in_chans: int = 3,
                  **timm_kwargs: Any) -> TimmBackbone:
    """Wrap timm model ``name`` (any model supporting ``features_only``) as a backbone.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"resnet18"``, ``"efficientnet_b0"``,
            ``"vit_small_patch16_224"``, ``"swin_tiny_patch4_window7_224"``.
        out_strides: which maps to return, by nominal stride (the model's feature reductions at output stride
            32). Where several levels share a stride (a ViT's blocks are all at 16), the deepest one is returned.
        output_stride: 8, 16 or 32, passed to timm (which dilates later stages) when below the deepest stride
            requested; a model that cannot dilate is refused.
        pretrained: ``True``/``"imagenet"`` for timm's default weights of ``name`` (or of the tag in it,
            ``"resnet50.a1_in1k"``), ``"timm:<name>.<tag>"`` for another tag, torchvision's ``"tv2"``, or a
            local path / URL; loaded by timm (``strict``) from the Hugging Face / torch.hub cache, failing at
            once without network (see :func:`backbones.weights.pretrained_file`).
        norm: ``"bn"`` (the model's own) or ``"frozen_bn"`` (every BatchNorm converted to FrozenBatchNorm2d).
        frozen_stages: only -1 (nothing frozen): timm models name their stages differently per family;
            accepted so that callers can pass every backbone the same options.
        in_chans: number of input channels; with pretrained weights timm adapts the RGB input convolution
            (sum for 1 channel, repeat and scale by 3/N otherwise) and logs it.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``). Models with a fixed input
            size (ViT, Swin) are built with ``dynamic_img_size=True`` unless one of :data:`SIZE_KWARGS` is given.

    Example::

        bb = build_backbone("timm:efficientnet_b0", out_strides=(8, 16, 32))
        f8, f16, f32 = bb(images)  # channels 40, 112, 320
        vit = build_backbone("timm:vit_small_patch16_224", out_strides=(16,))
        f16, = vit(images)  # (N, 384, ceil(H / 16), ceil(W / 16)): the last block's map
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r}.{hint} See timm.list_models().")
    _check_output_stride(output_stride)
    _check_in_chans(in_chans)
    if norm not in ("bn", "frozen_bn"):
        raise ValueError(f"timm backbones accept norm 'bn' or 'frozen_bn', got {norm!r}")
    if frozen_stages != -1:
        raise ValueError(f"timm backbones accept only frozen_stages=-1 (nothing frozen), got {frozen_stages!r}; "
                         f"freeze parameters with requires_grad_(False) instead")
    for reserved in ("features_only", "out_indices"):
        if reserved in timm_kwargs:
            raise UsageError(f"{reserved!r} is set by the wrapper from out_strides; do not pass it")
    timm_kwargs["in_chans"] = in_chans
    levels = _timm_levels_any_size(timm, name, timm_kwargs)
    nominal = [int(level["reduction"]) for level in levels]
    strides = _check_strides(out_strides, sorted(set(nominal)), f"timm model {name!r}")
    # The deepest level of each stride, as timm's out_indices=-1 users expect of a ViT (12 blocks at stride 16).
    indices = [max(i for i, r in enumerate(nominal) if r == s) for s in strides]
    if output_stride < max(strides):
        timm_kwargs["output_stride"] = output_stride
    if pretrained:
        # timm loads the file (its filters fit each family's checkpoints to features_only); we only find it, so
        # a missing file fails at once instead of in huggingface_hub's retries.
        arch = timm.models.split_model_name_tag(name)[0]
        path = (timm_weights_file(name) if pretrained is True or pretrained == "imagenet"
                else pretrained_file(pretrained, arch=arch))
        timm_kwargs["pretrained_cfg_overlay"] = {**timm_kwargs.get("pretrained_cfg_overlay", {}), "file": str(path)}
    try:
        model = timm.create_model(name, features_only=True, out_indices=indices, pretrained=bool(pretrained),
                                  **timm_kwargs)
    except TypeError as e:
        if "output_stride" in str(e):
            raise ValueError(f"timm model {name!r} cannot give output_stride={output_stride} for out_strides="
                             f"{strides} (it has no output_stride option); use output_stride={max(strides)}") from e
        raise
    info = model.feature_info
    got = [(str(n), int(r)) for n, r in zip(info.module_name(), info.reduction())]
    want = [(str(levels[i]["module"]), min(s, output_stride)) for i, s in zip(indices, strides)]
    if got != want:  # e.g. a model that takes output_stride but ignores it
        raise ValueError(f"timm model {name!r} gives the maps (module, stride) {got} for out_strides={strides} at "
                         f"output_stride={output_stride}, not the requested {want}")
    specs = [FeatureSpec(n, int(c), r, s // r) for (n, r), c, s in zip(got, info.channels(), strides)]
    if norm == "frozen_bn":
        model = freeze_batchnorm(model)
    return TimmBackbone(model, FeatureInfo(specs), in_chans=in_chans, name=name)


# --- torchvision --------------------------------------------------------------------------------------------

TV_STAGES = (("relu", "stem", 2), ("layer1", "layer1", 4), ("layer2", "layer2", 8), ("layer3", "layer3", 16),
             ("layer4", "layer4", 32))


class TorchvisionResNet(Backbone):
    """A torchvision ResNet (or ResNeXt / Wide ResNet) as a :class:`Backbone`, through ``IntermediateLayerGetter``.

    ``body`` holds torchvision's own modules (``body.conv1``, ``body.layer1``...), deeper stages than requested
    dropped. ``frozen_stages`` follows our ResNet: 0 freezes the stem, k the stem and layer1..k (no gradients,
    norms kept in eval).

    Shape: ``(N, in_chans, H, W)`` -> list of ``(N, C_i, ceil(H / s_i), ceil(W / s_i))``.
    """

    def __init__(self, body: nn.Module, feature_info: FeatureInfo, *, frozen_stages: int = -1,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.body = body
        self.in_chans = in_chans
        self.feature_info = feature_info
        self.return_names: List[str] = feature_info.names
        self.frozen_stages = frozen_stages
        for m in self.frozen_modules():
            m.requires_grad_(False)

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        names = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, self.frozen_stages + 1)]
        return [getattr(self.body, n) for n in names]

    def train(self, mode: bool = True) -> "TorchvisionResNet":
        """Set training mode, keeping frozen stages in eval and without gradients (re-applied, see ResNet)."""
        super().train(mode)
        for m in self.frozen_modules():
            m.requires_grad_(False)
            if mode:
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``(N, in_chans, H, W)`` -> list of maps, one per ``feature_info`` entry."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        out = self.body(x)
        return [out[n] for n in self.return_names]


def _torchvision_resnets() -> List[str]:
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models) if "resne" in n]


def torchvision_backbone(name: str, *, out_strides: Sequence[int] = (8, 16, 32), output_stride: int = 32,
                         norm: str = "bn", frozen_stages: int = -1, in_chans: int = 3,
                         pretrained: Pretrained = None, weights: Optional[Any] = None) -> TorchvisionResNet:
    """Wrap torchvision's ResNet ``name`` (``resnet18``...``resnet152``, ``resnext*``, ``wide_resnet*``).

    Args:
        out_strides: maps to return by nominal stride: 2 (stem), 4, 8, 16, 32 (layer1..layer4).
        output_stride: 8, 16 or 32 via torchvision's ``replace_stride_with_dilation``; Bottleneck models only,
            since torchvision's BasicBlock refuses dilation (use our ``"resnet18"``/``"resnet34"`` instead).
        norm: ``"bn"``, ``"frozen_bn"``, ``"sync_bn"`` or ``"gn"``, passed as torchvision's ``norm_layer``.
        frozen_stages: -1 nothing, 0 the stem, k the stem and layer1..k.
        in_chans: number of input channels; the stem convolution is rebuilt for them, and pretrained RGB weights
            (either argument below) are adapted to them as timm adapts them
            (:func:`backbones.weights.adapt_input_conv`), said in one log line.
        pretrained: as for our ResNets: ``True``/``"imagenet"`` (torchvision's IMAGENET1K_V1 for ``name``),
            ``"tv2"`` (IMAGENET1K_V2), ``"timm:<name>.<tag>"`` or a local path / URL, loaded through
            :func:`backbones.load_pretrained` (torch.hub / Hugging Face cache, every key and shape checked).
        weights: alternatively, torchvision's own weights argument (a ``WeightsEnum`` or its name, e.g.
            ``"IMAGENET1K_V1"``), downloaded by torchvision.

    Example::

        bb = build_backbone("torchvision:resnet50", out_strides=(4, 32), output_stride=16)
        f4, f16 = bb(images)  # (N, 256, H/4, W/4), (N, 2048, H/16, W/16)
    """
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    names = _torchvision_resnets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown torchvision ResNet {name!r}.{hint} Accepted: {', '.join(names)}.")
    _check_output_stride(output_stride)
    _check_in_chans(in_chans)
    strides = _check_strides(out_strides, [s for _, _, s in TV_STAGES], f"torchvision:{name}")
    deepest = [s for _, _, s in TV_STAGES].index(max(strides))
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= deepest:
        raise ValueError(f"frozen_stages must be an int from -1 to {deepest} for out_strides={strides}, "
                         f"got {frozen_stages!r}")
    if pretrained and weights is not None:
        raise UsageError(f"pass pretrained= or weights=, not both (got pretrained={pretrained!r}, weights={weights!r})")
    # replace_stride_with_dilation for layer2, layer3, layer4: strides beyond output_stride become dilation.
    dilate = [False, output_stride <= 8, output_stride <= 16]
    try:
        model = torchvision.models.get_model(name, weights=weights, norm_layer=get_norm_layer(norm),
                                             replace_stride_with_dilation=dilate)
    except NotImplementedError as e:
        raise ValueError(
            f"torchvision:{name} uses BasicBlock, which torchvision cannot dilate (output_stride={output_stride}); "
            f"use our own {name!r} backbone (build_backbone({name!r}, output_stride={output_stride}))"
        ) from e
    specs, net_stride, dilation = [], 2, 1
    for (module, spec_name, nominal), dilated in zip(TV_STAGES, [False, False] + dilate):
        if module == "layer1":
            net_stride *= 2  # the max pool
        elif module != "relu":
            if dilated:
                dilation *= 2
            else:
                net_stride *= 2
        channels = model.conv1.out_channels if module == "relu" else _stage_channels(getattr(model, module))
        if nominal in strides:
            specs.append(FeatureSpec(spec_name, channels, net_stride, dilation))
    rgb_weights = model.state_dict() if weights is not None and in_chans != 3 else None
    if in_chans != 3:
        stem = model.conv1
        model.conv1 = nn.Conv2d(in_chans, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    return_layers = {module: spec_name for module, spec_name, nominal in TV_STAGES if nominal in strides}
    body = IntermediateLayerGetter(model, return_layers=return_layers)
    if rgb_weights is not None:
        load_checked(body, rgb_weights, where=f"torchvision's {name} weights {weights}", arch=name)
    if pretrained:
        load_pretrained(body, pretrained, arch=name)
    return TorchvisionResNet(body, FeatureInfo(specs), frozen_stages=frozen_stages, in_chans=in_chans)


def _stage_channels(stage: nn.Module) -> int:
    last = stage[-1]
    return int(last.conv3.out_channels if hasattr(last, "conv3") else last.conv2.out_channels)


BACKBONES.register_prefix("timm", timm_backbone)
def _torchvision_handler(name: str, **kwargs: Any) -> TorchvisionResNet:
    check_kwargs(torchvision_backbone, kwargs, what=f"backbone 'torchvision:{name}'", keyword_only=True)
    return torchvision_backbone(name, **kwargs)


BACKBONES.register_prefix("torchvision", _torchvision_handler)
