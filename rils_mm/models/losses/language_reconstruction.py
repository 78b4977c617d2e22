"""Masked reconstruction scored in language space: the RILS reconstruction loss."""
from typing import Optional, Tuple

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from mmengine.dist import get_world_size
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class LanguageSpaceReconstructionLoss(nn.Module):
    """KL(teacher || student) between patch-to-prototype distributions, on masked patches.

    Both the intact-pass patch features (teacher) and the decoder's predictions (student),
    already projected into the joint space, are L2-normalised and scored against every
    prototype (RILS: the normalised caption embeddings of the global batch); softmax over the
    prototypes with the teacher and student temperatures gives p and q. The teacher's logits
    carry no gradient. The loss is the mean of KL(p || q) over masked patches of the samples
    kept by the filter.

    Args:
        student_temperature (float): Temperature of q. Defaults to 0.1.
        teacher_temperature (float): Temperature of p. Defaults to 0.04.
        loss_weight (float): Multiplier of the loss (RILS: 0.5). Defaults to 0.5.
        filter_correct (bool): Keep only samples whose image->text top-1 retrieval in the
            batch is correct (the authors' code does this). Defaults to True.
        global_average (bool): Average over the masked patches of the global batch, scaled so
            that N processes under DDP's gradient averaging equal one process on the whole
            batch. False: average over each process's own patches (the authors' code).
            Defaults to True.
    """

    def __init__(self,
                 student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04,
                 loss_weight: float = 0.5,
                 filter_correct: bool = True,
                 global_average: bool = True) -> None:
        super().__init__()
        for key, value in (('student_temperature', student_temperature),
                           ('teacher_temperature', teacher_temperature)):
            if not value > 0:
                raise ValueError(f'LanguageSpaceReconstructionLoss: {key} must be > 0, '
                                 f'got {value}')
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.loss_weight = loss_weight
        self.filter_correct = filter_correct
        self.global_average = global_average

    def forward(self,
                pred_features: torch.Tensor,
                target_features: torch.Tensor,
                prototypes: torch.Tensor,
                mask: torch.Tensor,
                correct: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Compute the loss.

        Args:
            pred_features (torch.Tensor): Decoder predictions in the joint space, B x L x D.
            target_features (torch.Tensor): Intact-pass patch features in the joint space,
                B x L x D.
            prototypes (torch.Tensor): L2-normalised prototypes, P x D (RILS: the caption
                embeddings of the global batch).
            mask (torch.Tensor): B x L, 1 where the patch was masked.
            correct (torch.Tensor, optional): B booleans, image->text top-1 retrieval correct.
                Required when ``filter_correct``.

        Returns:
            tuple: the scalar loss (0 when nothing is kept) and the B x L weights used
            (1 on the masked patches of kept samples).
        """
        prototypes = prototypes.float()
        student_logits = F.normalize(pred_features.float(), dim=-1) @ prototypes.t()
        student_logits = student_logits / self.student_temperature
        with torch.no_grad():
            teacher_logits = F.normalize(target_features.float(), dim=-1) @ prototypes.t()
            teacher_logits = teacher_logits / self.teacher_temperature
        # KL(p || q) per patch: sum_j p_j (log p_j - log q_j).
        kl = F.kl_div(F.log_softmax(student_logits, dim=-1), F.log_softmax(teacher_logits, -1),
                      reduction='none', log_target=True).sum(-1)

        weights = mask.float()
        if self.filter_correct:
            if correct is None:
                raise ValueError('LanguageSpaceReconstructionLoss: filter_correct=True needs '
                                 'the per-sample retrieval result `correct`')
            weights = weights * correct.float().unsqueeze(-1)
        total = (kl * weights).sum()
        count = weights.sum().detach()
        world_size = get_world_size()
        if self.global_average and world_size > 1:
            torch_dist.all_reduce(count)
            loss = total * world_size / count.clamp(min=1)
        else:
            loss = total / count.clamp(min=1)
        return self.loss_weight * loss, weights
