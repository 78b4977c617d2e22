"""RILS: masked visual Reconstruction In Language semantic Space (Yang et al., 2023,
arXiv:2301.06958); the method is described in docs/methods/rils.md."""
from typing import Dict, List, Optional

import torch
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from .image_text_pretrainer import ImageTextPretrainer


@MODELS.register_module()
class RILS(ImageTextPretrainer):
    """CLIP's contrastive loss plus masked reconstruction scored against prototypes.

    One step: the intact pass gives patch features f and the image embedding; the masked pass
    and the decoder give predictions g for every patch; the contrastive loss aligns images and
    captions; f and g, projected by the image head's projection, are scored against the
    prototypes (the batch's captions; fixed random vectors in the vision-space ablation) and g
    is trained to match f on the masked patches (``LanguageReconstructionHead``).

    Args:
        neck (dict): The decoder (``RILSDecoder``); its ``embed_dim`` must equal the encoder
            width.
        head (dict): ``LanguageReconstructionHead`` config; its ``embed_dims`` is filled in.
        **kwargs: ``ImageTextPretrainer`` arguments (backbone, text_encoder, image_head,
            embed_dims, loss_contrastive, lock_cfg, ...).
    """

    def __init__(self,
                 neck: dict,
                 head: dict = dict(type='LanguageReconstructionHead'),
                 embed_dims: int = 512,
                 **kwargs) -> None:
        super().__init__(neck=neck, head=dict(dict(embed_dims=embed_dims), **head),
                         embed_dims=embed_dims, **kwargs)
        decoder_out = getattr(self.neck, 'embed_dim', self.backbone.embed_dims)
        if decoder_out != self.backbone.embed_dims:
            raise ValueError(f'RILS: neck.embed_dim={decoder_out} must equal the encoder '
                             f'width {self.backbone.embed_dims}')

    def loss(self, inputs: dict, data_samples: Optional[List[DataSample]] = None
             ) -> Dict[str, torch.Tensor]:
        """One RILS step.

        Args:
            inputs (dict): ``images`` B x 3 x H x W (normalised), ``texts`` B x 77 ids.
            data_samples (list, optional): Unused.

        Returns:
            dict: ``loss_contrastive``, ``loss_reconstruction`` and logged metrics
            (``i2t_acc``, ``recon_kept``: fraction of samples the filter kept,
            ``logit_scale``).
        """
        images = inputs['images']
        if self.head.filter_correct and images.shape[0] < 2:
            raise ValueError('RILS: the correct-retrieval filter needs at least 2 pairs per '
                             'device (train_dataloader.batch_size); got 1')
        patch_features = self.image_tokens(images)  # B x (1 + L) x C, intact pass
        latent, mask, ids_restore = self.backbone(images, mask=True)
        predictions = self.neck(latent, ids_restore)  # B x L x C

        contrast, correct, log = self.contrastive_step(patch_features, inputs['texts'])
        loss_rec, weights = self.head.loss(
            self.image_head.project(predictions),
            self.image_head.project(patch_features[:, 1:]),
            contrast.text_features_all, mask, correct)
        log['loss_reconstruction'] = loss_rec
        log['recon_kept'] = (weights.sum(dim=1) > 0).float().mean()
        return log
