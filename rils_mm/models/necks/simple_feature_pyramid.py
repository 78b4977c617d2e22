"""ViTDet's simple feature pyramid: multi-scale maps from a plain ViT's last feature map.

mmdet 3.3.0 ships ViTDet only in its ``projects/`` folder, which the wheel does not install, and
mmseg's ``Feature2Pyramid`` rescales several ViT outputs without ViTDet's output convolutions.
This neck follows ViTDet (Li et al., 2022, "Exploring Plain Vision Transformer Backbones for
Object Detection"): from the stride-16 map, strides 4/8/16/32 by deconvolution, identity and
max pooling, then a 1x1 and a 3x3 convolution, each with a channel LayerNorm, per scale, plus an
optional stride-64 level for the RPN (``LastLevelMaxPool``).
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """Feature pyramid from one plain-ViT feature map (ViTDet).

    Args:
        in_channels (int): Channels C of the backbone map (the ViT width).
        out_channels (int): Channels of every output level (256 in Mask R-CNN).
        scale_factors (Sequence[float]): Rescaling of the input map per level, from
            {4, 2, 1, 0.5}. Defaults to (4.0, 2.0, 1.0, 0.5): strides 4/8/16/32 from a
            stride-16 map.
        num_outs (int): Output levels; one more than ``len(scale_factors)`` adds a max-pooled
            (kernel 1, stride 2) copy of the last level, as ViTDet's ``LastLevelMaxPool``.
            Defaults to 5.
        norm_cfg (dict): Norm of the convolutions; ``LN2d`` is LayerNorm over channels.
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 num_outs: int = 5,
                 norm_cfg: dict = dict(type='LN2d', eps=1e-6),
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_outs not in (len(scale_factors), len(scale_factors) + 1):
            raise ValueError(f'SimpleFeaturePyramid: num_outs={num_outs} must be '
                             f'len(scale_factors) or one more, got {len(scale_factors)} scales')
        self.scale_factors = tuple(scale_factors)
        self.num_outs = num_outs
        self.rescales = nn.ModuleList()
        self.convs = nn.ModuleList()
        for scale in self.scale_factors:
            rescale, channels = self._build_rescale(scale, in_channels, norm_cfg)
            self.rescales.append(rescale)
            self.convs.append(nn.Sequential(
                ConvModule(channels, out_channels, 1, bias=False, norm_cfg=norm_cfg,
                           act_cfg=None),
                ConvModule(out_channels, out_channels, 3, padding=1, bias=False,
                           norm_cfg=norm_cfg, act_cfg=None)))

    @staticmethod
    def _build_rescale(scale: float, channels: int, norm_cfg: dict) -> Tuple[nn.Module, int]:
        """The resampling stage of one level and its output channels (as ViTDet)."""
        if scale == 4.0:
            return nn.Sequential(
                nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2),
                build_norm_layer(norm_cfg, channels // 2)[1],
                nn.GELU(),
                nn.ConvTranspose2d(channels // 2, channels // 4, kernel_size=2, stride=2),
            ), channels // 4
        if scale == 2.0:
            return nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2), \
                channels // 2
        if scale == 1.0:
            return nn.Identity(), channels
        if scale == 0.5:
            return nn.MaxPool2d(kernel_size=2, stride=2), channels
        raise ValueError(f'SimpleFeaturePyramid: scale factor {scale} is not one of 4, 2, 1, 0.5')

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Build the pyramid from the last backbone output.

        Args:
            inputs (Sequence[torch.Tensor]): Backbone outputs; the last, B x C x H x W, is used.

        Returns:
            tuple[torch.Tensor]: ``num_outs`` maps, B x out_channels x (H * s) x (W * s) for
            each scale factor s, then (if requested) the last one max-pooled by 2.
        """
        x = inputs[-1]
        outs = [conv(rescale(x)) for rescale, conv in zip(self.rescales, self.convs)]
        if self.num_outs > len(outs):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
