"""MILAN with MAE's pixel target: the 'no CLIP target' rows of MILAN's ablation."""
from typing import Dict, List, Optional, Sequence

import torch
from mmpretrain.models.selfsup import MILAN
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from ..heads.patch_loss_maps import pixel_patch_losses
from .loss_maps import LossMap, importance_masked_pass, register_loss_map


@MODELS.register_module()
class PixelTargetMILAN(MILAN):
    """MILAN's masking and decoder, reconstructing normalised pixels as MAE does.

    Rows 3 to 5 of MILAN's Table 4 (Hou et al., 2022, arXiv:2208.06049) keep the prompting
    decoder and/or the semantic-aware masking but predict pixels. The target and loss are
    MAE's (He et al., CVPR 2022): each masked patch's pixels, normalised per patch, scored by
    MSE over the masked patches only (mmpretrain's ``MAEPretrainHead``); the prediction of the
    class token is dropped.

    With a ``target_generator`` (a ``CLIPTeacher``) the patches are kept by its class-token
    attention (or uniformly, with its ``masking='uniform'``); without one the masking is
    uniform and no teacher runs.
    """

    def loss(self, inputs: torch.Tensor, data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """One step.

        Args:
            inputs (torch.Tensor): B x 3 x H x W normalised images.
            data_samples (list): Unused.

        Returns:
            dict: ``loss``, the pixel MSE over the masked patches.
        """
        num_patches = self.backbone.patch_resolution[0] * self.backbone.patch_resolution[1]
        if self.with_target_generator:
            importance = self.target_generator(inputs)[1][:, 0, 1:]
        else:
            importance = inputs.new_ones(inputs.shape[0], num_patches)
        latent, ids_restore, ids_keep, ids_dump = self.backbone(inputs, importance)
        predictions = self.neck(latent, ids_restore, ids_keep, ids_dump)[:, 1:]
        mask = torch.ones_like(importance).scatter_(1, ids_keep, 0.0)  # 1: masked
        return dict(loss=self.head.loss(predictions, inputs, mask))


@register_loss_map('PixelTargetMILAN')
def pixel_target_milan_loss_map(model: PixelTargetMILAN, images: torch.Tensor,
                                captions: Optional[Sequence[str]] = None) -> LossMap:
    """MILAN's masking with MAE's pixel loss on every masked patch."""
    predictions, _, hidden, importance = importance_masked_pass(model, images)
    losses = pixel_patch_losses(model.head, predictions[:, 1:], images, hidden)
    return LossMap(hidden, losses.per_patch.masked_fill(hidden == 0, float('nan')),
                   losses.name, losses.total, importance)
