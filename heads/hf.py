"""Hugging Face transformers interop: the project's backbones behind ``AutoConfig``/``AutoBackbone``.

transformers builds every backbone-based model (UperNet, Mask2Former, DETR, ...) with
``load_backbone(config)``, that is ``AutoBackbone.from_config(config.backbone_config)``, and reads the nested
``backbone_config`` of a saved model back through ``CONFIG_MAPPING[model_type]``. Importing this module registers
``model_type="dense_backbone"`` there (:func:`register_hf_backbones`)::

    import heads.hf   # a new process imports this before from_pretrained: it registers the model type
    from heads.hf import DenseBackboneConfig
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    config = UperNetConfig(backbone_config=DenseBackboneConfig(
        "resnet50", out_features=["layer1", "layer2", "layer3", "layer4"], output_stride=16, norm="frozen_bn"))
    model = UperNetForSemanticSegmentation(config)
    model.save_pretrained("upernet-r50")   # config.json + model.safetensors
    UperNetForSemanticSegmentation.from_pretrained("upernet-r50")   # the same outputs

One import is the least a new process can get away with: transformers has no plug-in discovery for model types,
and its remote-code path (``auto_map`` with ``trust_remote_code``) is read for the top-level config only, never
for a nested ``backbone_config``.

Stage names follow transformers' convention, one per stride the backbone can give, shallow to deep: for our
ResNets and ``torchvision:`` ResNets ``stem, layer1, layer2, layer3, layer4`` (strides 2 to 32); for ``timm:``
models the name of the deepest map of each stride (a ViT: its last block).

transformers is an optional extra (``pip install "dense-backbones[hf]"``), imported by this module only.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from backbones.registry import UsageError, build_backbone, require_extra
from backbones.resnet import STAGE_STRIDES

transformers = require_extra("transformers", extra="hf", purpose="heads.hf (the Hugging Face adapter)")

from transformers import AutoBackbone, AutoConfig, PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import BackboneOutput  # noqa: E402

try:  # transformers >= 5
    from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
except ImportError:  # transformers 4
    from transformers.utils.backbone_utils import BackboneConfigMixin, BackboneMixin

__all__ = ["MODEL_TYPE", "DenseBackboneConfig", "DenseBackbone", "register_hf_backbones"]

MODEL_TYPE = "dense_backbone"  # without "resnet" in it: DETR freezes "resnet" backbones by transformers' names
_TIMM = "timm:"
# Keys of the saved config that are derived from the backbone, recomputed on load rather than trusted.
_DERIVED = ("stage_names", "stage_strides", "stage_channels")


def _stages(backbone: str, build_kwargs: Dict[str, Any]) -> List[Tuple[str, int, int]]:
    """``(name, nominal stride, channels)`` of every map ``backbone`` can give, shallow to deep, from a copy built
    on the meta device (no memory, no weights)."""
    kwargs = {k: v for k, v in build_kwargs.items() if k != "pretrained"}
    if backbone.startswith(_TIMM):
        from backbones.wrappers import timm_nominal_strides

        timm_kwargs = {k: v for k, v in kwargs.items() if k not in ("output_stride", "norm", "frozen_stages")}
        strides: Sequence[int] = timm_nominal_strides(backbone[len(_TIMM):], **timm_kwargs)
    else:
        strides = STAGE_STRIDES
    with torch.device("meta"):
        probe = build_backbone(backbone, out_strides=tuple(strides), **kwargs)
    return [(spec.name, stride, spec.channels) for spec, stride in zip(probe.feature_info, strides)]


class DenseBackboneConfig(BackboneConfigMixin, PretrainedConfig):
    """Configuration of a :class:`DenseBackbone`: a backbone of the project's registry, by name and options.

    Args:
        backbone: a registered backbone name (``"resnet50"``, ``"timm:convnext_tiny"``, ``"torchvision:resnet50"``).
        out_features: stage names to return (see :attr:`stage_names`); with ``out_indices``, transformers'
            convention: either one, or neither for the last stage only.
        out_indices: indices into :attr:`stage_names` instead.
        output_stride, norm, frozen_stages, in_chans: the backbone's own options (see :class:`backbones.ResNet`).
        pretrained: weights loaded when the model is built from this config (``"imagenet"``, ``"tv2"``,
            ``"timm:<model>.<tag>"``, a path or URL); ``from_pretrained`` skips them, its checkpoint has the
            weights.
        backbone_kwargs: further keyword arguments of the backbone's builder (``multi_grid``, ``drop_path_rate``).

    Attributes:
        stage_names: every map the backbone can give, e.g. ``["stem", "layer1", "layer2", "layer3", "layer4"]``.
        stage_strides: their nominal strides (the ``out_strides`` of :func:`backbones.build_backbone`).
        stage_channels: their channels.

    Raises:
        ValueError: an ``out_features`` name that is not a stage, or options the backbone refuses (an
            ``output_stride`` it cannot give, ``in_chans < 1``), when the config is made.
    """

    model_type = MODEL_TYPE

    def __init__(self, backbone: str = "resnet50", *, out_features: Optional[List[str]] = None,
                 out_indices: Optional[List[int]] = None, output_stride: int = 32, norm: str = "bn",
                 frozen_stages: int = -1, in_chans: int = 3, pretrained: Union[bool, str, None] = None,
                 backbone_kwargs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if not isinstance(backbone, str):
            raise UsageError(f"backbone must be a registered backbone name, got {backbone!r}")
        if isinstance(pretrained, os.PathLike):
            pretrained = os.fspath(pretrained)  # saved as JSON
        self.backbone = backbone
        self.output_stride = output_stride
        self.norm = norm
        self.frozen_stages = frozen_stages
        self.in_chans = in_chans
        self.pretrained = pretrained
        self.backbone_kwargs = dict(backbone_kwargs or {})
        stages = _stages(backbone, self.build_kwargs())
        self.stage_names = [name for name, _, _ in stages]
        self.stage_strides = [stride for _, stride, _ in stages]
        self.stage_channels = [channels for _, _, channels in stages]
        for key in _DERIVED:
            kwargs.pop(key, None)
        super().__init__(**kwargs)
        bad = out_features if isinstance(out_features, str) else [
            f for f in out_features or () if f not in self.stage_names]
        if bad:
            raise ValueError(f"out_features {bad!r} are not stages of {backbone!r}; give a list of "
                             f"{', '.join(self.stage_names)}")
        out_features = list(out_features) if out_features else None
        out_indices = list(out_indices) if out_indices else None
        if hasattr(self, "set_output_features_output_indices"):  # transformers 5
            self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        else:  # transformers 4
            from transformers.utils.backbone_utils import get_aligned_output_features_output_indices

            self._out_features, self._out_indices = get_aligned_output_features_output_indices(
                out_features=out_features, out_indices=out_indices, stage_names=self.stage_names)

    def build_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`backbones.build_backbone` this config stands for (``out_strides`` aside)."""
        return {"output_stride": self.output_stride, "norm": self.norm, "frozen_stages": self.frozen_stages,
                "in_chans": self.in_chans, "pretrained": self.pretrained, **self.backbone_kwargs}


def _loading_saved_weights() -> bool:
    """True while transformers' ``from_pretrained`` builds a model, whose weights its checkpoint then sets."""
    if torch.empty(0).device.type == "meta":  # transformers 5 builds on the meta device
        return True
    from transformers import modeling_utils

    return getattr(modeling_utils, "_init_weights", True) is False  # transformers 4's no_init_weights()


class DenseBackbone(BackboneMixin, PreTrainedModel):
    """A backbone of the project's registry as a transformers backbone (``AutoBackbone``).

    ``model`` is the backbone itself, built with every stage up to the deepest one in ``out_features``;
    ``forward`` returns the ``out_features`` maps. Its weights initialise themselves (or load ``pretrained``)
    when built; transformers' generic initialisation does not touch them.

    Shape: ``pixel_values (N, in_chans, H, W)`` -> ``BackboneOutput(feature_maps=...)``, one
    ``(N, C_i, ceil(H / s_i), ceil(W / s_i))`` map per ``out_features`` entry (``s_i`` the actual stride, after
    ``output_stride``); ``hidden_states`` (with ``output_hidden_states``): every stage up to the deepest one.
    """

    config_class = DenseBackboneConfig
    main_input_name = "pixel_values"
    has_attentions = False
    supports_gradient_checkpointing = False

    def __init__(self, config: DenseBackboneConfig) -> None:
        super().__init__(config)
        if getattr(self, "stage_names", None) is None:  # transformers 4: the mixin is initialised by hand
            self._init_backbone(config)
        self.num_features = list(config.stage_channels)
        deepest = max(config.stage_names.index(name) for name in config.out_features)
        self.out_positions = [config.stage_names.index(name) for name in config.out_features]
        kwargs = config.build_kwargs()
        if _loading_saved_weights():
            kwargs.pop("pretrained")
        self.model = build_backbone(config.backbone, out_strides=tuple(config.stage_strides[:deepest + 1]), **kwargs)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # transformers' generic init (normal(0, 0.02) convolutions, BatchNorm reset) would overwrite the backbone's
        # own initialisation and its pretrained weights. Only timm's non-persistent buffers (Swin's attention
        # index), left empty when from_pretrained builds on the meta device, need filling.
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: Optional[bool] = None,
                output_attentions: Optional[bool] = None, return_dict: Optional[bool] = None,
                **kwargs: Any) -> Union[BackboneOutput, Tuple[Tuple[torch.Tensor, ...], ...]]:
        """``(N, in_chans, H, W)`` -> ``BackboneOutput`` (or its tuple with ``return_dict=False``)."""
        if output_attentions:
            raise ValueError(f"{type(self).__name__} ({self.config.backbone}) has no attention maps to return")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        maps = tuple(self.model(pixel_values))
        out = BackboneOutput(feature_maps=tuple(maps[i] for i in self.out_positions),
                             hidden_states=maps if output_hidden_states else None, attentions=None)
        return out if return_dict else out.to_tuple()


def register_hf_backbones() -> str:
    """Register :class:`DenseBackboneConfig` and :class:`DenseBackbone` with ``AutoConfig``/``AutoBackbone``.

    Importing :mod:`heads.hf` calls it; calling it again is harmless.

    Returns:
        the model type, ``"dense_backbone"``.

    Example::

        register_hf_backbones()
        backbone = AutoBackbone.from_config(DenseBackboneConfig("resnet18", out_features=["layer2", "layer4"]))
    """
    AutoConfig.register(MODEL_TYPE, DenseBackboneConfig, exist_ok=True)
    AutoBackbone.register(DenseBackboneConfig, DenseBackbone, exist_ok=True)
    return MODEL_TYPE


register_hf_backbones()
