"""RILS: masked visual Reconstruction In Language semantic Space."""
from typing import Dict, List, Optional

import torch
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from .image_text_pretrainer import ImageTextPretrainer


@MODELS.register_module()
class RILS(ImageTextPretrainer):
    """CLIP's contrastive loss plus masked reconstruction scored against the captions.

    One step (METHOD.md, section 1): the intact pass gives patch features f and the image
    embedding; the masked pass and the decoder give predictions g for every patch; the
    contrastive loss aligns images and captions; f and g, projected with the shared image
    projection, are turned into distributions over the batch's captions and g is trained to
    match f on the masked patches.

    Args:
        neck (dict): The decoder (``RILSDecoder``); its ``embed_dim`` must equal the encoder
            width.
        loss_reconstruction (dict): ``LanguageSpaceReconstructionLoss`` config.
        **kwargs: ``ImageTextPretrainer`` arguments (backbone, text_encoder, embed_dims,
            loss_contrastive, ...).
    """

    def __init__(self,
                 neck: dict,
                 loss_reconstruction: dict = dict(type='LanguageSpaceReconstructionLoss'),
                 **kwargs) -> None:
        super().__init__(neck=neck, **kwargs)
        decoder_out = getattr(self.neck, 'embed_dim', self.backbone.embed_dims)
        if decoder_out != self.backbone.embed_dims:
            raise ValueError(f'RILS: neck.embed_dim={decoder_out} must equal the encoder '
                             f'width {self.backbone.embed_dims}')
        self.loss_reconstruction = MODELS.build(loss_reconstruction)

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
        if self.loss_reconstruction.filter_correct and images.shape[0] < 2:
            raise ValueError('RILS: the correct-retrieval filter needs at least 2 pairs per '
                             'device (train_dataloader.batch_size); got 1')
        patch_features = self.image_tokens(images)  # B x (1 + L) x C, intact pass
        latent, mask, ids_restore = self.backbone(images, mask=True)
        predictions = self.neck(latent, ids_restore)  # B x L x C

        contrast, correct, log = self.contrastive_step(patch_features, inputs['texts'])
        loss_rec, weights = self.loss_reconstruction(
            self.image_projection(predictions),
            self.image_projection(patch_features[:, 1:]),
            contrast.text_features_all, mask, correct)
        log['loss_reconstruction'] = loss_rec
        log['recon_kept'] = (weights.sum(dim=1) > 0).float().mean()
        return log
