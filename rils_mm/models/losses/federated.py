"""Federated sigmoid classification loss for LVIS (Zhou et al., 2021, "Probabilistic two-stage
detection", Sec. 5; the form detectron2's ``FastRCNNOutputLayers`` uses with
``use_sigmoid_ce=True, use_fed_loss=True``, as ViTDet's LVIS configs do).

LVIS annotates each image exhaustively only for some classes, so a per-class sigmoid loss
should not push down every class absent from an image. Per training batch the loss keeps the
classes of the batch's ground truth plus negatives drawn without replacement with probability
proportional to ``image_count ** freq_weight_power`` (image counts of the training set) until
``num_fed_loss_classes`` classes are kept, and sums the binary cross-entropy over those classes
only.

mmdet 3.3 has no such loss. This one plugs into mmdet's ``BBoxHead`` through the hooks its
Seesaw loss uses (``custom_cls_channels``/``custom_activation``/``custom_accuracy``): the head
predicts one logit per class (no background logit) and its test scores are the sigmoids.
"""
import json
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from torch import nn


def class_image_counts(ann_file: str) -> list:
    """``image_count`` of each category of an LVIS annotation file, by ascending category id
    (mmdet's ``LVISV1Dataset`` numbers its labels in that order).

    Raises:
        ValueError: If the file's categories lack ``image_count``.
    """
    with open(ann_file, encoding='utf-8') as file:
        categories = json.load(file)['categories']
    missing = [c.get('id') for c in categories if 'image_count' not in c]
    if missing:
        raise ValueError(f'{ann_file}: categories {missing[:5]} have no image_count (an LVIS '
                         f'v1 annotation file has one per category)')
    return [c['image_count'] for c in sorted(categories, key=lambda c: c['id'])]


def federated_classes(labels: torch.Tensor, num_classes: int, weights: torch.Tensor,
                      num_fed_loss_classes: int) -> torch.Tensor:
    """The classes kept for one batch: its ground-truth classes and sampled negatives.

    As detectron2 (``get_fed_loss_classes``), the background label ``num_classes`` counts
    among the unique labels, so a batch with background proposals samples one negative less.

    Args:
        labels (torch.Tensor): N labels in ``[0, num_classes]`` (``num_classes``: background).
        num_classes (int): Number of foreground classes C.
        weights (torch.Tensor): C sampling weights of the negatives.
        num_fed_loss_classes (int): Classes to keep (with background) when the batch has fewer;
            at most every class with a non-zero weight.

    Returns:
        torch.Tensor: Kept class indices (may include ``num_classes``).
    """
    unique = torch.unique(labels)
    if len(unique) >= num_fed_loss_classes:
        return unique
    prob = weights.new_zeros(num_classes + 1).float()
    prob[:num_classes] = weights.float()
    prob[unique] = 0
    # Fewer candidates than places (a small label set): all of them (detectron2 would fail).
    wanted = min(num_fed_loss_classes - len(unique), int((prob > 0).sum()))
    if wanted == 0:
        return unique
    negatives = torch.multinomial(prob, wanted, replacement=False)
    return torch.cat([unique, negatives])


@MODELS.register_module()
class FederatedLoss(nn.Module):
    """Sigmoid cross-entropy over the federated classes of each batch, for mmdet's box heads.

    Args:
        num_classes (int): Number of foreground classes C (the head's ``num_classes``).
        ann_file (str, optional): LVIS annotation file whose categories' ``image_count`` give
            the sampling weights (read once when the loss is built; the LVIS v1 training file
            is large, so this takes seconds). Either this or ``image_counts``.
        image_counts (Sequence[int], optional): C image counts, by label.
        freq_weight_power (float): Exponent of the image counts. Defaults to 0.5 (ViTDet's
            LVIS configs).
        num_fed_loss_classes (int): Classes kept per batch. Defaults to 50 (detectron2).
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
    """

    def __init__(self, num_classes: int, ann_file: Optional[str] = None,
                 image_counts: Optional[Sequence[int]] = None, freq_weight_power: float = 0.5,
                 num_fed_loss_classes: int = 50, loss_weight: float = 1.0) -> None:
        super().__init__()
        if (ann_file is None) == (image_counts is None):
            raise ValueError('FederatedLoss needs exactly one of ann_file (an LVIS annotation '
                             'file) and image_counts (one count per class)')
        counts = class_image_counts(ann_file) if ann_file is not None else list(image_counts)
        if len(counts) != num_classes:
            raise ValueError(f'FederatedLoss: {len(counts)} class image counts '
                             f'{"in " + ann_file if ann_file else "given"}, num_classes is '
                             f'{num_classes}')
        self.num_classes = num_classes
        self.num_fed_loss_classes = num_fed_loss_classes
        self.loss_weight = loss_weight
        self.register_buffer('class_weights',
                             torch.tensor(counts, dtype=torch.float) ** freq_weight_power,
                             persistent=False)
        # mmdet BBoxHead hooks (read with getattr there).
        self.custom_cls_channels = True
        self.custom_activation = True
        self.custom_accuracy = True

    def get_cls_channels(self, num_classes: int) -> int:
        """One logit per foreground class."""
        return num_classes

    def get_activation(self, cls_score: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities and a zero background column, the (N, C + 1) layout of
        mmdet's box heads (which drop the last column).

        Args:
            cls_score (torch.Tensor): N x C logits.

        Returns:
            torch.Tensor: N x (C + 1) scores.
        """
        return torch.cat([cls_score.sigmoid(), cls_score.new_zeros(len(cls_score), 1)], dim=1)

    def get_accuracy(self, cls_score: torch.Tensor, labels: torch.Tensor
                     ) -> Dict[str, torch.Tensor]:
        """Top-1 accuracy (percent) where 'background' is predicted when no class reaches
        probability 0.5 (logit 0).

        Args:
            cls_score (torch.Tensor): N x C logits.
            labels (torch.Tensor): N labels in ``[0, C]``.
        """
        with_background = torch.cat([cls_score, cls_score.new_zeros(len(cls_score), 1)], dim=1)
        correct = (with_background.argmax(dim=1) == labels).float()
        return dict(acc=correct.mean() * 100 if len(correct) else cls_score.new_zeros(()))

    def forward(self, cls_score: torch.Tensor, labels: torch.Tensor,
                label_weights: Optional[torch.Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        """Federated loss of one batch of proposals.

        Args:
            cls_score (torch.Tensor): N x C logits.
            labels (torch.Tensor): N labels in ``[0, C]`` (C: background).
            label_weights (torch.Tensor, optional): N proposal weights (mmdet's sampler gives
                ones). Defaults to ones.
            avg_factor (float, optional): Divisor; defaults to N, as detectron2.
            reduction_override (str, optional): Unused (the loss is always summed and
                divided), accepted for mmdet's call.

        Returns:
            torch.Tensor: ``loss_weight * sum_{n, c in kept} BCE(x_nc, y_nc) * w_n / avg``.
        """
        num_proposals, num_classes = cls_score.shape
        if num_classes != self.num_classes:
            raise ValueError(f'FederatedLoss: {num_classes} logits per proposal, num_classes is '
                             f'{self.num_classes}')
        targets = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(cls_score.dtype)
        bce = F.binary_cross_entropy_with_logits(cls_score, targets, reduction='none')
        kept = federated_classes(labels, num_classes, self.class_weights,
                                 self.num_fed_loss_classes)
        class_mask = cls_score.new_zeros(num_classes + 1)
        class_mask[kept] = 1
        weight = class_mask[:num_classes].expand(num_proposals, num_classes)
        if label_weights is not None:
            weight = weight * label_weights.to(cls_score.dtype)[:, None]
        divisor = avg_factor if avg_factor is not None else max(num_proposals, 1)
        return self.loss_weight * (bce * weight).sum() / divisor
