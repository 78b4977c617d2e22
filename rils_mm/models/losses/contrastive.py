"""Symmetric image-text InfoNCE with explicit distributed semantics."""
from typing import Dict, NamedTuple, Tuple

import torch
import torch.distributed as torch_dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from mmengine.dist import get_rank, get_world_size
from mmpretrain.registry import MODELS
from torch import nn

from ..utils.precision import at_least_float32


def gather_features(features: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate every process's rows, in rank order.

    Args:
        features (torch.Tensor): This process's rows, B x D.
        with_grad (bool): True: the gather carries gradient back to the process that owns
            each row (so the loss on the global batch back-propagates in full). False: the
            RILS authors' form, where every gathered row, this process's own included, is a
            constant.

    Returns:
        torch.Tensor: (world_size * B) x D. With one process, ``features`` itself.
    """
    world_size = get_world_size()
    if world_size == 1:
        return features
    if with_grad:
        return torch.cat(dist_nn.all_gather(features), dim=0)
    gathered = [torch.empty_like(features) for _ in range(world_size)]
    torch_dist.all_gather(gathered, features.detach().contiguous())
    return torch.cat(gathered, dim=0)


class ContrastiveOutput(NamedTuple):
    """What the contrastive loss computed, for the losses and metrics that build on it."""
    loss: torch.Tensor  #: scalar
    logits_per_image: torch.Tensor  #: B x (world_size * B), this process's images vs all texts
    labels: torch.Tensor  #: B, the column of each local image's own caption
    text_features_all: torch.Tensor  #: (world_size * B) x D, normalised, as gathered


@MODELS.register_module()
class ContrastiveLoss(nn.Module):
    """CLIP's symmetric InfoNCE as a local loss over the gathered global batch.

    Each process scores its own B images against all texts and its own B texts against all
    images, and averages cross-entropy both ways. With ``gather_with_grad=True`` (the
    default) the gather carries gradient, so under DDP's gradient averaging N processes train
    exactly as one process on the whole batch (open_clip's ``local_loss=True,
    gather_with_grad=True``). ``gather_with_grad=False`` is the RILS authors' form.

    Args:
        gather_with_grad (bool): See :func:`gather_features`. Defaults to True.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
    """

    def __init__(self, gather_with_grad: bool = True, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.loss_weight = loss_weight
        self._labels: Dict[Tuple[torch.device, int, int], torch.Tensor] = {}

    def get_ground_truth(self, device: torch.device, batch_size: int) -> torch.Tensor:
        """Column index of each local sample's pair in the global batch (cached per device)."""
        rank = get_rank()
        key = (device, batch_size, rank)
        if key not in self._labels:
            self._labels[key] = torch.arange(batch_size, device=device) + batch_size * rank
        return self._labels[key]

    def get_logits(self, image_features: torch.Tensor, text_features: torch.Tensor,
                   logit_scale: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled similarities of the local rows against the gathered global batch.

        Args:
            image_features (torch.Tensor): B x D, normalised.
            text_features (torch.Tensor): B x D, normalised.
            logit_scale (torch.Tensor): Scalar.

        Returns:
            tuple: ``logits_per_image`` B x (world_size * B), ``logits_per_text``
            B x (world_size * B) and the gathered texts (world_size * B) x D.
        """
        image_features_all = gather_features(image_features, self.gather_with_grad)
        text_features_all = gather_features(text_features, self.gather_with_grad)
        logits_per_image = logit_scale * image_features @ text_features_all.t()
        logits_per_text = logit_scale * text_features @ image_features_all.t()
        return logits_per_image, logits_per_text, text_features_all

    def loss_from_logits(self, logits_per_image: torch.Tensor, logits_per_text: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
        """Mean of the two cross-entropies (before ``loss_weight``); a sigmoid or focal
        variant overrides this."""
        return (F.cross_entropy(logits_per_image, labels) +
                F.cross_entropy(logits_per_text, labels)) / 2

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> ContrastiveOutput:
        """Compute the loss.

        Args:
            image_features (torch.Tensor): L2-normalised image embeddings, B x D.
            text_features (torch.Tensor): L2-normalised text embeddings of the paired
                captions, B x D.
            logit_scale (torch.Tensor): Scalar multiplier of the cosine similarities (the
                exponentiated, clamped learnable temperature).

        Returns:
            ContrastiveOutput: the loss and what it was computed from.
        """
        image_features = at_least_float32(image_features)
        text_features = at_least_float32(text_features)
        logits_per_image, logits_per_text, text_features_all = self.get_logits(
            image_features, text_features, logit_scale)
        labels = self.get_ground_truth(image_features.device, image_features.shape[0])
        loss = self.loss_from_logits(logits_per_image, logits_per_text, labels)
        return ContrastiveOutput(self.loss_weight * loss, logits_per_image, labels,
                                 text_features_all)
