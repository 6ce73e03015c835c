"""dense-backbones heads: segmentation heads built from a backbone's ``feature_info``, and interop.

Example::

    from heads import build_segmentor
    model = build_segmentor(head="deeplabv3plus", backbone="resnet50", num_classes=21, output_stride=16)
    logits = model.eval()(images)  # (N, 21, H, W) at the input's exact size
"""

from .aspp import DeepLabV3Head, DeepLabV3PlusHead
from .base import HEADS, Head, build_head, head_out_strides, list_heads, register_head
from .bisenet import BiSeNetHead
from .fcn import FCNHead
from .fpn import SemanticFPNHead
from .model import SegmentationModel, build_segmentor

__all__ = [
    "HEADS", "Head", "build_head", "head_out_strides", "list_heads", "register_head",
    "FCNHead", "DeepLabV3Head", "DeepLabV3PlusHead", "SemanticFPNHead", "BiSeNetHead",
    "SegmentationModel", "build_segmentor",
]
