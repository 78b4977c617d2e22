"""Masked reconstruction scored in language space: the RILS reconstruction loss."""
from typing import Optional

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from mmengine.dist import get_world_size
from mmpretrain.registry import MODELS
from torch import nn

from ..utils.precision import at_least_float32


def _tiles(total: int, size: int):
    """Slices of ``range(total)`` of at most ``size`` elements."""
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


class _TiledLanguageKL(torch.autograd.Function):
    """Per-row KL(softmax(t) || softmax(s)), with s = x P^T / T_s and t = y P^T / T_t, computed
    tile by tile so that no N x P logit matrix is ever held.

    Forward: an online log-sum-exp over prototype tiles (as FlashAttention accumulates its
    softmax, Dao et al. 2022), using KL = sum_j p_j (t_j - s_j) - lse(t) + lse(s). Backward
    recomputes each tile's logits from the saved inputs and row log-sum-exps:
    dKL/ds_j = q_j - p_j. Peak memory beyond the inputs and their gradients is a few
    ``row_tile x prototype_tile`` blocks, whatever N and P are.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, prototypes: torch.Tensor,
                student_temperature: float, teacher_temperature: float,
                tile: int) -> torch.Tensor:
        num_rows, num_prototypes = student.shape[0], prototypes.shape[0]
        lse_student = student.new_empty(num_rows)
        lse_teacher = student.new_empty(num_rows)
        kl = student.new_empty(num_rows)
        for rows in _tiles(num_rows, tile):
            count = rows.stop - rows.start
            running_max = student.new_full((count, ), float('-inf'))
            teacher_sum = student.new_zeros(count)  # sum_j exp(t_j - running_max)
            weighted_gap = student.new_zeros(count)  # sum_j exp(t_j - running_max)(t_j - s_j)
            student_lse = student.new_full((count, ), float('-inf'))
            for columns in _tiles(num_prototypes, tile):
                block = prototypes[columns].t()
                s = student[rows] @ block / student_temperature
                t = teacher[rows] @ block / teacher_temperature
                new_max = torch.maximum(running_max, t.max(dim=1).values)
                rescale = torch.exp(running_max - new_max)
                exp_t = torch.exp(t - new_max[:, None])
                teacher_sum = teacher_sum * rescale + exp_t.sum(dim=1)
                weighted_gap = weighted_gap * rescale + (exp_t * (t - s)).sum(dim=1)
                running_max = new_max
                student_lse = torch.logaddexp(student_lse, torch.logsumexp(s, dim=1))
            teacher_lse = running_max + teacher_sum.log()
            kl[rows] = weighted_gap / teacher_sum - teacher_lse + student_lse
            lse_student[rows], lse_teacher[rows] = student_lse, teacher_lse
        ctx.save_for_backward(student, teacher, prototypes, lse_student, lse_teacher)
        ctx.settings = (student_temperature, teacher_temperature, tile)
        return kl

    @staticmethod
    def backward(ctx, grad_kl: torch.Tensor):
        student, teacher, prototypes, lse_student, lse_teacher = ctx.saved_tensors
        student_temperature, teacher_temperature, tile = ctx.settings
        need_student, _, need_prototypes = ctx.needs_input_grad[:3]
        grad_student = torch.zeros_like(student) if need_student else None
        grad_prototypes = torch.zeros_like(prototypes) if need_prototypes else None
        for rows in _tiles(student.shape[0], tile):
            scale = grad_kl[rows, None] / student_temperature
            for columns in _tiles(prototypes.shape[0], tile):
                block = prototypes[columns].t()
                q = torch.exp(student[rows] @ block / student_temperature
                              - lse_student[rows, None])
                p = torch.exp(teacher[rows] @ block / teacher_temperature
                              - lse_teacher[rows, None])
                grad_logits = (q - p) * scale  # d loss / d (x P^T), this tile
                if need_student:
                    grad_student[rows] += grad_logits @ prototypes[columns]
                if need_prototypes:
                    grad_prototypes[columns] += grad_logits.t() @ student[rows]
        return grad_student, None, grad_prototypes, None, None, None


def tiled_language_kl(student: torch.Tensor, teacher: torch.Tensor, prototypes: torch.Tensor,
                      student_temperature: float, teacher_temperature: float,
                      tile: int = 2048) -> torch.Tensor:
    """KL(teacher || student) per row between softmaxes over prototypes, in bounded memory.

    Computed in float32 (float64 inputs stay float64) with autocast off (the teacher
    temperature of 0.04 puts logits at up to 25, where half precision loses the small
    probabilities the KL weighs).

    Args:
        student (torch.Tensor): L2-normalised student features, N x D (gradient flows).
        teacher (torch.Tensor): L2-normalised teacher features, N x D (no gradient).
        prototypes (torch.Tensor): L2-normalised prototypes, P x D (gradient flows).
        student_temperature (float): Temperature of the student softmax.
        teacher_temperature (float): Temperature of the teacher softmax.
        tile (int): Rows and prototypes per tile; the loss holds a few ``tile x tile`` float32
            blocks at a time.

    Returns:
        torch.Tensor: N per-row KL divergences.
    """
    with torch.autocast(student.device.type, enabled=False):
        return _TiledLanguageKL.apply(at_least_float32(student),
                                      at_least_float32(teacher.detach()),
                                      at_least_float32(prototypes), student_temperature,
                                      teacher_temperature, tile)


@MODELS.register_module()
class LanguageSpaceReconstructionLoss(nn.Module):
    """KL(teacher || student) between patch-to-prototype distributions, on masked patches.

    Both the intact-pass patch features (teacher) and the decoder's predictions (student),
    already projected into the joint space, are L2-normalised and scored against every
    prototype (RILS: the normalised caption embeddings of the global batch); softmax over the
    prototypes with the teacher and student temperatures gives p and q. The teacher's logits
    carry no gradient. The loss is the mean of KL(p || q) over masked patches of the samples
    kept by the filter.

    Cost. By default only the patches that contribute (masked, of kept samples) are scored,
    in ``chunk_size x chunk_size`` tiles (:func:`tiled_language_kl`): memory no longer grows
    with B x L x (global batch), and early in training, when the filter keeps few samples,
    almost nothing is computed. ``chunk_size=None`` scores every patch at once, as the RILS
    authors' code does; both give the same loss and gradients.

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
        chunk_size (int, optional): Tile size of the contributing-patches-only computation
            (float32 tiles of ``chunk_size^2`` logits: 16 MiB at 2048). None: the dense
            computation over all patches. Defaults to 2048.
    """

    def __init__(self,
                 student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04,
                 loss_weight: float = 0.5,
                 filter_correct: bool = True,
                 global_average: bool = True,
                 chunk_size: Optional[int] = 2048) -> None:
        super().__init__()
        for key, value in (('student_temperature', student_temperature),
                           ('teacher_temperature', teacher_temperature)):
            if not value > 0:
                raise ValueError(f'LanguageSpaceReconstructionLoss: {key} must be > 0, '
                                 f'got {value}')
        if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f'LanguageSpaceReconstructionLoss: chunk_size must be a positive '
                             f'int or None, got {chunk_size!r}')
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.loss_weight = loss_weight
        self.filter_correct = filter_correct
        self.global_average = global_average
        self.chunk_size = chunk_size

    def patch_weights(self, mask: torch.Tensor,
                      correct: Optional[torch.Tensor] = None) -> torch.Tensor:
        """B x L weights: 1 on the masked patches of the samples the filter keeps."""
        weights = mask.float()
        if self.filter_correct:
            if correct is None:
                raise ValueError('LanguageSpaceReconstructionLoss: filter_correct=True needs '
                                 'the per-sample retrieval result `correct`')
            weights = weights * correct.float().unsqueeze(-1)
        return weights

    def dense_kl(self, pred_features: torch.Tensor, target_features: torch.Tensor,
                 prototypes: torch.Tensor) -> torch.Tensor:
        """KL(p || q) of every patch at once: B x L x D features, P x D -> B x L."""
        prototypes = at_least_float32(prototypes)
        student_logits = F.normalize(at_least_float32(pred_features), dim=-1) @ prototypes.t()
        student_logits = student_logits / self.student_temperature
        with torch.no_grad():
            teacher_logits = F.normalize(at_least_float32(target_features),
                                         dim=-1) @ prototypes.t()
            teacher_logits = teacher_logits / self.teacher_temperature
        return F.kl_div(F.log_softmax(student_logits, dim=-1),
                        F.log_softmax(teacher_logits, -1),
                        reduction='none', log_target=True).sum(-1)

    def forward(self,
                pred_features: torch.Tensor,
                target_features: torch.Tensor,
                prototypes: torch.Tensor,
                mask: torch.Tensor,
                correct: Optional[torch.Tensor] = None,
                reduction: str = 'mean'):
        """Compute the loss.

        Args:
            pred_features (torch.Tensor): Decoder predictions in the joint space, B x L x D.
            target_features (torch.Tensor): Intact-pass patch features in the joint space,
                B x L x D.
            prototypes (torch.Tensor): L2-normalised prototypes, P x D (RILS: the caption
                embeddings of the global batch).
            mask (torch.Tensor): B x L, 1 where the patch was masked (and has a target).
            correct (torch.Tensor, optional): B booleans, image->text top-1 retrieval correct.
                Required when ``filter_correct`` (unless ``reduction='none'``).
            reduction (str): 'mean' (training) or 'none': the per-patch map.

        Returns:
            tuple | torch.Tensor: the scalar loss (0 when nothing is kept) and the B x L
            weights used (1 on the masked patches of kept samples); with
            ``reduction='none'`` the B x L KL(teacher || student) of every patch, before the
            weight, the filter and the mask.
        """
        if reduction == 'none':
            return self.dense_kl(pred_features, target_features, prototypes)
        if reduction != 'mean':
            raise ValueError(f"LanguageSpaceReconstructionLoss: reduction must be 'mean' or "
                             f"'none', got {reduction!r}")
        weights = self.patch_weights(mask, correct)
        if self.chunk_size is None:
            total = (self.dense_kl(pred_features, target_features, prototypes) * weights).sum()
        else:
            # Score only what contributes: the weights are 0 or 1.
            rows = weights.flatten().nonzero().squeeze(1)
            dims = pred_features.shape[-1]
            student = F.normalize(at_least_float32(pred_features.reshape(-1, dims)[rows]),
                                  dim=-1)
            with torch.no_grad():
                teacher = F.normalize(
                    at_least_float32(target_features.reshape(-1, dims)[rows]), dim=-1)
            total = tiled_language_kl(student, teacher, prototypes,
                                      self.student_temperature, self.teacher_temperature,
                                      self.chunk_size).sum()
        count = weights.sum().detach()
        world_size = get_world_size()
        if self.global_average and world_size > 1:
            torch_dist.all_reduce(count)
            loss = total * world_size / count.clamp(min=1)
        else:
            loss = total / count.clamp(min=1)
        return self.loss_weight * loss, weights
