"""LiT: contrastive tuning of a text tower against a locked, pretrained image tower (Zhai et
al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", CVPR 2022)."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from .image_text_pretrainer import ImageTextPretrainer


@MODELS.register_module()
class LiT(ImageTextPretrainer):
    """CLIP's contrastive training with pretrained, lockable towers, from images or from cached
    image features.

    The paper names each setting by two letters, image tower then text tower: ``L`` pretrained
    and locked, ``U`` pretrained and trained, ``u`` trained from scratch (LU is LiT). Towers load
    their weights through their ``init_cfg`` (checked: every tower key must be in the file) and
    lock through ``lock_cfg``; ``configs/lit/`` holds the six settings.

    With a locked image tower its output never changes, so the tokens pooled by the image head
    (:meth:`image_features`, B x C) can be computed once (``tools/cache_image_features.py``)
    and training can read them instead of images: a batch whose ``inputs`` carry
    ``image_features`` skips the image tower, and gives the same loss and gradients as the
    images would. The pooling must then have no parameters (``'mean'`` or ``'cls_token'``); the
    head's norm and projection after it still train unless the head is locked too.

    Args:
        **kwargs: ``ImageTextPretrainer`` arguments.
    """

    @property
    def image_tower_locked(self) -> bool:
        """True when every parameter of the image tower is frozen."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature cache stores: the pooled tokens of the image tower.

        Args:
            images (torch.Tensor): B x 3 x H x W, normalised.

        Returns:
            torch.Tensor: B x C (C: the image tower's width), before the head's norm and
            projection.
        """
        self._check_cacheable_pooling()
        return self.image_head.pool(self.image_tokens(images))

    def _check_cacheable_pooling(self) -> None:
        if self.image_head.pooling == 'attention':
            raise ValueError('LiT: cached image features need a pooling without parameters '
                             "(image_head.pooling='mean' or 'cls_token'); attention pooling "
                             'trains on the tokens themselves')

    def loss(self, inputs: dict, data_samples: Optional[List[DataSample]] = None
             ) -> Dict[str, torch.Tensor]:
        """Contrastive loss on a batch.

        Args:
            inputs (dict): ``texts`` B x 77 ids and either ``images`` B x 3 x H x W
                (normalised) or ``image_features`` B x C (from the cache; needs a locked image
                tower).
            data_samples (list, optional): Unused.

        Returns:
            dict: ``loss_contrastive`` and the logged ``i2t_acc`` and ``logit_scale``.
        """
        if 'image_features' in inputs:
            if not self.image_tower_locked:
                raise ValueError('LiT: the batch carries cached image_features, but the image '
                                 'tower is not locked (set lock_cfg.backbone=True), so its '
                                 'features would change during training')
            self._check_cacheable_pooling()
            features = inputs['image_features']
        else:
            images = inputs['images']
            if self.image_tower_locked and self.image_head.pooling != 'attention':
                with torch.no_grad():  # nothing to train before the pooling
                    features = self.image_features(images)
            else:
                return super().loss(inputs, data_samples)
        image_embeddings = F.normalize(self.image_head.project(features), dim=-1)
        return self.contrastive_step_from_embeddings(image_embeddings, inputs['texts'])[2]
