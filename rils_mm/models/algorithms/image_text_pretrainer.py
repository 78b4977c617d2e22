"""Contrastive image-text pretraining (CLIP) on mmpretrain's self-supervised base class.

RILS and the other image-text methods of this package subclass it; alone, with a config that
gives no neck, it is the paper's CLIP baseline.
"""
import math
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn


@MODELS.register_module()
class ImageTextPretrainer(BaseSelfSupervisor):
    """Vision encoder + text encoder + shared image projection + learnable logit scale.

    The image embedding is the global average of the vision encoder's patch tokens (class
    token dropped) times the image projection; the text embedding is the text tower's output.
    Both are L2-normalised and trained with ``loss_contrastive``.

    Args:
        backbone (dict): Vision encoder config (e.g. ``RILSViT`` with ``out_type='raw'``).
        text_encoder (dict): Text tower config (e.g. ``CLIPTextEncoder``).
        embed_dims (int): Joint embedding width D; must equal the text tower's output width.
        loss_contrastive (dict): Contrastive loss config.
        logit_scale_init (float): Initial log logit scale. Defaults to ln(1 / 0.07).
        logit_scale_max (float): The log logit scale is clamped to at most this.
            Defaults to ln(100).
        neck (dict, optional): Decoder, for subclasses that reconstruct.
        data_preprocessor (dict, optional): Defaults to ``ImageTextDataPreprocessor``.
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 text_encoder: dict,
                 embed_dims: int = 512,
                 loss_contrastive: dict = dict(type='ContrastiveLoss'),
                 logit_scale_init: float = math.log(1 / 0.07),
                 logit_scale_max: float = math.log(100),
                 neck: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        data_preprocessor = dict(data_preprocessor or {})
        data_preprocessor.setdefault('type', 'ImageTextDataPreprocessor')
        super().__init__(backbone=backbone, neck=neck, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        if getattr(self.backbone, 'out_type', 'raw') != 'raw':
            raise ValueError(f'{type(self).__name__}: backbone.out_type must be "raw" (the '
                             f'class and patch tokens), got "{self.backbone.out_type}"')
        self.text_encoder = MODELS.build(text_encoder)
        text_dims = getattr(self.text_encoder, 'output_dim', embed_dims)
        if text_dims != embed_dims:
            raise ValueError(f'{type(self).__name__}: embed_dims={embed_dims} does not match '
                             f'text_encoder.output_dim={text_dims}')
        self.embed_dims = embed_dims
        self.image_projection = nn.Linear(self.backbone.embed_dims, embed_dims, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.loss_contrastive = MODELS.build(loss_contrastive)

    def init_weights(self) -> None:
        super().init_weights()
        # CLIP's initialisation of the projection (the authors' too).
        nn.init.normal_(self.image_projection.weight, std=self.backbone.embed_dims**-0.5)

    def get_logit_scale(self) -> torch.Tensor:
        """exp of the learnable log scale, clamped to at most ``exp(logit_scale_max)``."""
        return self.logit_scale.clamp(max=self.logit_scale_max).exp()

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Intact pass. images: B x 3 x H x W -> B x (1 + L) x C, class token first."""
        return self.backbone(images)[-1]

    def embed_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Global average of patch tokens, projected and normalised: B x (1+L) x C -> B x D."""
        return F.normalize(self.image_projection(tokens[:, 1:].mean(dim=1)), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised joint image embeddings. images: B x 3 x H x W (normalised) -> B x D."""
        return self.embed_image_tokens(self.image_tokens(images))

    def encode_text(self, texts: torch.Tensor) -> torch.Tensor:
        """Normalised joint text embeddings. texts: B x 77 token ids -> B x D."""
        return F.normalize(self.text_encoder(texts), dim=-1)

    def extract_feat(self, inputs: Union[torch.Tensor, dict]):
        """Vision encoder outputs (mmpretrain's convention), from images or an input dict."""
        images = inputs['images'] if isinstance(inputs, dict) else inputs
        return self.backbone(images)

    def contrastive_step(self, tokens: torch.Tensor, texts: torch.Tensor):
        """Contrastive loss and its logged values from intact-pass tokens and caption ids.

        Returns:
            tuple: the ``ContrastiveOutput``, the local image->text top-1 hits (B bools) and
            the dict of losses and metrics to log.
        """
        logit_scale = self.get_logit_scale()
        out = self.loss_contrastive(self.embed_image_tokens(tokens), self.encode_text(texts),
                                    logit_scale)
        correct = out.logits_per_image.argmax(dim=-1) == out.labels
        log = dict(loss_contrastive=out.loss,
                   i2t_acc=correct.float().mean().detach(),
                   logit_scale=logit_scale.detach())
        return out, correct, log

    def loss(self, inputs: dict, data_samples: Optional[List[DataSample]] = None
             ) -> Dict[str, torch.Tensor]:
        """Contrastive loss on a batch. inputs: dict(images=B x 3 x H x W, texts=B x 77)."""
        _, _, log = self.contrastive_step(self.image_tokens(inputs['images']), inputs['texts'])
        return log
