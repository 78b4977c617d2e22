"""A focal, sigmoid image-text contrastive loss (MaMMUT's contrastive objective)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from torch import nn

from .contrastive import ContrastiveLoss


def focal_pair_losses(logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                      gamma: float) -> torch.Tensor:
    """Focal sigmoid cross-entropy of every image-text pair.

    Args:
        logits (torch.Tensor): B x N pair logits (scaled cosine, plus the bias).
        targets (torch.Tensor): B x N, 1 for a matching pair, 0 otherwise.
        alpha (float): Weight of the matching pairs; the others get 1 - alpha.
        gamma (float): Focusing exponent of (1 - p_t).

    Returns:
        torch.Tensor: B x N losses, ``alpha_t * (1 - p_t) ** gamma * BCE``, where p_t is the
        predicted probability of the pair's true label (RetinaNet's focal loss, Lin et al.,
        ICCV 2017, as RO-ViT, Kim et al., CVPR 2023, applies it to image-text pairs).
    """
    probabilities = torch.sigmoid(logits)
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    return alpha_t * (1 - p_t).pow(gamma) * cross_entropy


@MODELS.register_module()
class FocalContrastiveLoss(ContrastiveLoss):
    """Every image-text pair of the global batch as a binary decision, with focal weighting.

    The logit of a pair is ``logit_scale * cos + logit_bias``. Each process scores its B images
    against all gathered texts (each pair of the global batch once, over the processes) and
    sums the pair losses of each image; the loss is the mean of those sums over its images.
    Under DDP's gradient averaging N processes then train exactly as one process on the whole
    batch (gathers carry gradient by default).

    The bias: with B - 1 non-matching pairs per matching one, a zero bias starts every logit
    near 0 (p = 0.5), and the negatives' loss dominates the first steps. A learnable bias
    starting at -10 with the scale starting at 10 (SigLIP's initialisation, Zhai et al., ICCV
    2023) starts the negatives near their target. We keep it learnable by default;
    ``learnable_bias=False`` removes it.

    Args:
        alpha (float): Weight of the matching pairs (the others: 1 - alpha). Defaults to 0.5
            (RO-ViT's released code).
        gamma (float): Focusing exponent. Defaults to 1.0 (RO-ViT's released code).
        learnable_bias (bool): Add a learnable logit bias. Defaults to True.
        bias_init (float): Its initial value. Defaults to -10.
        gather_with_grad (bool): See ``gather_features``. Defaults to True.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
    """

    def __init__(self, alpha: float = 0.5, gamma: float = 1.0, learnable_bias: bool = True,
                 bias_init: float = -10.0, gather_with_grad: bool = True,
                 loss_weight: float = 1.0) -> None:
        super().__init__(gather_with_grad=gather_with_grad, loss_weight=loss_weight)
        if not 0 <= alpha <= 1 or gamma < 0:
            raise ValueError(f'FocalContrastiveLoss: alpha must be in [0, 1] and gamma >= 0, '
                             f'got alpha={alpha}, gamma={gamma}')
        self.alpha = alpha
        self.gamma = gamma
        self.logit_bias: Optional[nn.Parameter] = (
            nn.Parameter(torch.tensor(float(bias_init))) if learnable_bias else None)

    def get_logits(self, image_features: torch.Tensor, text_features: torch.Tensor,
                   logit_scale: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The parent's scaled similarities plus the bias (see ``ContrastiveLoss``)."""
        logits_per_image, logits_per_text, texts = super().get_logits(
            image_features, text_features, logit_scale)
        if self.logit_bias is not None:
            logits_per_image = logits_per_image + self.logit_bias
            logits_per_text = logits_per_text + self.logit_bias
        return logits_per_image, logits_per_text, texts

    def loss_from_logits(self, logits_per_image: torch.Tensor, logits_per_text: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
        """Mean over the local images of the summed focal losses of their pairs (the rows of
        ``logits_per_image`` cover every pair once; ``logits_per_text`` is not used)."""
        targets = torch.zeros_like(logits_per_image)
        targets[torch.arange(len(labels), device=labels.device), labels] = 1
        return focal_pair_losses(logits_per_image, targets, self.alpha,
                                 self.gamma).sum(dim=1).mean()
