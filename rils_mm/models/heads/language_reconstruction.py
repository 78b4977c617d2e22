"""Masked reconstruction scored against prototypes of the joint space (RILS's objective)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class CaptionPrototypes(nn.Module):
    """RILS's prototypes: the caption embeddings of the global batch, as gathered for the
    contrastive loss (so every process scores against the same captions).

    Args:
        embed_dims (int, optional): The joint width (given to every prototype source; unused).
    """

    def __init__(self, embed_dims: Optional[int] = None) -> None:
        super().__init__()

    def forward(self, text_features_all: torch.Tensor) -> torch.Tensor:
        """(world_size * B) x D normalised captions -> the same tensor."""
        return text_features_all


@MODELS.register_module()
class RandomPrototypes(nn.Module):
    """K fixed random unit vectors: the RILS paper's "high-level vision space" ablation.

    Reconstruction is scored against prototypes that carry no language: the distributions are
    over K directions drawn once from a normal distribution with ``seed`` (independent of the
    run's seed and of the process) and never trained. They are a persistent buffer, so a
    checkpoint carries them.

    Args:
        num_prototypes (int): K. Defaults to 4096 (the paper's global batch of captions).
        embed_dims (int): Joint width D; the algorithm fills it in.
        seed (int): Seed of the draw. Defaults to 0.
    """

    def __init__(self, num_prototypes: int = 4096, embed_dims: Optional[int] = None,
                 seed: int = 0) -> None:
        super().__init__()
        if not num_prototypes > 1 or embed_dims is None:
            raise ValueError(f'RandomPrototypes: need num_prototypes > 1 and embed_dims, got '
                             f'num_prototypes={num_prototypes}, embed_dims={embed_dims}')
        generator = torch.Generator().manual_seed(seed)
        prototypes = torch.randn(num_prototypes, embed_dims, generator=generator)
        self.register_buffer('prototypes', F.normalize(prototypes, dim=-1))

    def forward(self, text_features_all: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The K x D prototypes (the captions are not used)."""
        return self.prototypes


@MODELS.register_module()
class LanguageReconstructionHead(BaseModule):
    """Scores the decoder's predictions and the intact pass's patches against prototypes.

    The teacher distribution of a patch is the softmax over prototypes of its intact-pass
    feature, the student's that of the decoder's prediction from the masked pass; the loss
    (``LanguageSpaceReconstructionLoss``) is KL(teacher || student) on the masked patches of
    the samples the correct-retrieval filter keeps.

    Args:
        loss (dict): The loss config (temperatures, weight, filter, averaging).
        prototypes (dict): The prototype source: ``CaptionPrototypes`` (RILS) or
            ``RandomPrototypes`` (the vision-space ablation).
        embed_dims (int, optional): Joint width, given to the prototype source.
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 loss: dict = dict(type='LanguageSpaceReconstructionLoss'),
                 prototypes: dict = dict(type='CaptionPrototypes'),
                 embed_dims: Optional[int] = None,
                 init_cfg: Optional[Union[dict, list]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.prototypes = MODELS.build(dict(dict(embed_dims=embed_dims), **prototypes))
        self.loss_module = MODELS.build(loss)

    @property
    def filter_correct(self) -> bool:
        """Whether the loss keeps only correctly retrieved samples."""
        return getattr(self.loss_module, 'filter_correct', False)

    def loss(self,
             pred_features: torch.Tensor,
             target_features: torch.Tensor,
             text_features_all: torch.Tensor,
             mask: torch.Tensor,
             correct: Optional[torch.Tensor] = None,
             reduction: str = 'mean') -> Union[Tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Compute the reconstruction loss.

        Args:
            pred_features (torch.Tensor): Decoder predictions, projected, B x L x D.
            target_features (torch.Tensor): Intact-pass patch features, projected, B x L x D.
            text_features_all (torch.Tensor): Normalised captions of the global batch, T x D.
            mask (torch.Tensor): B x L, 1 where the patch was masked.
            correct (torch.Tensor, optional): B booleans, image->text top-1 correct.
            reduction (str): 'mean' (training) or 'none' (the per-patch map).

        Returns:
            tuple | torch.Tensor: the scalar loss and the B x L weights it used; with
            ``reduction='none'`` the B x L per-patch KL(teacher || student) (weight, filter
            and mask left out).
        """
        return self.loss_module(pred_features, target_features,
                                self.prototypes(text_features_all), mask, correct,
                                reduction=reduction)
