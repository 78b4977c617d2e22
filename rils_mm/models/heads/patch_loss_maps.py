"""Per-patch losses (``reduction='none'``) of mmpretrain's reconstruction heads.

mmpretrain's ``MAEPretrainHead`` and ``MIMHead`` reduce their loss to a scalar; these give the
loss of every patch before that reduction, from the head's own target, criterion and factors,
for the algorithms' :func:`~rils_mm.models.algorithms.loss_maps.loss_map` (this package's own
``LanguageReconstructionHead`` takes ``reduction='none'`` itself).
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class PatchLosses(NamedTuple):
    """A head's loss per patch.

    Attributes:
        per_patch (torch.Tensor): B x N, the loss of every patch (or token).
        total (torch.Tensor): B, each image's loss as the head reduces it.
        name (str): What the loss is, for a figure's title.
    """
    per_patch: torch.Tensor
    total: torch.Tensor
    name: str


def pixel_patch_losses(head: nn.Module, predictions: torch.Tensor, images: torch.Tensor,
                       mask: torch.Tensor) -> PatchLosses:
    """``MAEPretrainHead.loss`` with ``reduction='none'`` (MAE: He et al., CVPR 2022).

    Args:
        head (nn.Module): mmpretrain's ``MAEPretrainHead`` (``PixelReconstructionLoss``).
        predictions (torch.Tensor): B x L x (p * p * 3) decoder output.
        images (torch.Tensor): B x 3 x H x W, normalised.
        mask (torch.Tensor): B x L, 1 on the patches the loss counts (hidden ones).

    Returns:
        PatchLosses: the criterion averaged over each patch's pixels (B x L), and the head's
        loss of each image: the mean over its masked patches, divided by the loss's
        ``channel`` as ``PixelReconstructionLoss`` does.
    """
    loss_module = head.loss_module
    per_patch = loss_module.penalty(predictions, head.construct_target(images)).mean(dim=-1)
    channel = getattr(loss_module, 'channel', 1)
    total = (per_patch * mask).sum(1) / mask.sum(1) / channel
    criterion = 'L1' if isinstance(loss_module.penalty, nn.L1Loss) else 'MSE'
    name = f'pixel {criterion}' + (' (normalised patches)' if head.norm_pix else '')
    return PatchLosses(per_patch, total, name)


def cosine_patch_losses(head: nn.Module, predictions: torch.Tensor,
                        targets: torch.Tensor) -> PatchLosses:
    """``MIMHead.loss`` with ``CosineSimilarityLoss`` and ``reduction='none'`` (MILAN's loss:
    Hou et al., 2022, counted on every token).

    Args:
        head (nn.Module): mmpretrain's ``MIMHead`` with a ``CosineSimilarityLoss``.
        predictions (torch.Tensor): B x N x D decoder output (class token first).
        targets (torch.Tensor): B x N x D teacher features.

    Returns:
        PatchLosses: ``shift - scale * cos`` of every token (B x N) and its mean per image.
    """
    criterion = head.loss_module
    cos = (F.normalize(predictions.float(), dim=-1) * F.normalize(targets.float(), dim=-1))
    per_token = criterion.shift_factor - criterion.scale_factor * cos.sum(dim=-1)
    name = f'{criterion.shift_factor:g} - {criterion.scale_factor:g} cos (all tokens)'
    return PatchLosses(per_token, per_token.mean(dim=1), name)
