"""LiT: contrastive tuning of a text tower against a locked, pretrained image tower (Zhai et
al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", CVPR 2022)."""
from typing import Dict

import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

from ..utils.grad_cache import Embedded
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

    With ``accumulation`` and a locked image tower, the second pass over a micro-batch reads
    the pooled features of the first instead of running the tower again.

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

    def embed(self, inputs: dict) -> Embedded:
        """The towers' passes over a batch.

        Args:
            inputs (dict): ``texts`` B x 77 ids and either ``images`` B x 3 x H x W
                (normalised) or ``image_features`` B x C (from the cache; needs a locked image
                tower).

        Returns:
            Embedded: ``image_embeddings`` and ``text_embeddings`` (B x D, normalised) and,
            when the image tower is locked (or its features cached), the pooled
            ``image_features`` (B x C) they came from.
        """
        if 'image_features' in inputs:
            if not self.image_tower_locked:
                raise ValueError('LiT: the batch carries cached image_features, but the image '
                                 'tower is not locked (set lock_cfg.backbone=True), so its '
                                 'features would change during training')
            self._check_cacheable_pooling()
            features = inputs['image_features']
        elif self.image_tower_locked and self.image_head.pooling != 'attention':
            with torch.no_grad():  # nothing to train before the pooling
                features = self.image_features(inputs['images'])
        else:
            return super().embed(inputs)
        image_embeddings = F.normalize(self.image_head.project(features), dim=-1)
        return Embedded(dict(image_embeddings=image_embeddings,
                             text_embeddings=self.encode_text(inputs['texts']),
                             image_features=features), {})

    def recompute_inputs(self, inputs: dict, representations: Dict[str, torch.Tensor]
                         ) -> dict:
        """The first pass's pooled features instead of the images, when the tower that
        made them is locked (the cached-features path gives the same loss and gradients)."""
        if 'images' in inputs and 'image_features' in representations:
            return dict(image_features=representations['image_features'],
                        texts=inputs['texts'])
        return inputs
