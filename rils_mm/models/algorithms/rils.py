"""RILS: masked visual Reconstruction In Language semantic Space (Yang et al., 2023,
arXiv:2301.06958); the method is described in docs/methods/rils.md."""
from typing import Dict, Optional, Sequence

import torch
from mmpretrain.registry import MODELS

from ..heads.language_reconstruction import CaptionPrototypes
from ..utils.grad_cache import Embedded
from .image_text_pretrainer import ImageTextPretrainer
from .loss_maps import LossMap, LossMapInputError, encode_captions, register_loss_map


@MODELS.register_module()
class RILS(ImageTextPretrainer):
    """CLIP's contrastive loss plus masked reconstruction scored against prototypes.

    One step: the intact pass gives patch features f and the image embedding; the masked pass
    and the decoder give predictions g for the patches the masked pass hid; the contrastive
    loss aligns images and captions; f and g, projected by the image head's projection, are
    scored against the prototypes (the batch's captions; fixed random vectors in the
    vision-space ablation) and g is trained to match f on the masked patches
    (``LanguageReconstructionHead``).

    With ``accumulation`` the prototypes are the captions of the whole accumulated batch (all
    micro-batches, all devices) and the correct-retrieval filter decides over them, as on one
    step of that batch.

    Args:
        neck (dict): The decoder (``RILSDecoder``); its ``embed_dim`` must equal the encoder
            width.
        head (dict): ``LanguageReconstructionHead`` config; its ``embed_dims`` is filled in.
        intact_keep_ratio (float): Fraction of the patches the intact pass sees, in (0, 1].
            1 is RILS. Below 1 it is a cheaper RILS after FLIP (Li et al., CVPR 2023): the
            intact pass encodes a random subset of the patches (FLIP: 0.5) and gives the
            contrastive embedding from them; the masked pass sees a subset of that subset
            (the encoder's ``mask_ratio`` of it), drawn from the same per-sample scores; the
            targets are the intact-pass features of the patches it saw and the masked pass
            did not. Evaluation always uses the intact pass on every patch.
        **kwargs: ``ImageTextPretrainer`` arguments (backbone, text_encoder, image_head,
            embed_dims, loss_contrastive, lock_cfg, ...).
    """

    def __init__(self,
                 neck: dict,
                 head: dict = dict(type='LanguageReconstructionHead'),
                 embed_dims: int = 512,
                 intact_keep_ratio: float = 1.0,
                 **kwargs) -> None:
        if not 0 < intact_keep_ratio <= 1:
            raise ValueError(f'RILS: intact_keep_ratio must be in (0, 1], got '
                             f'{intact_keep_ratio}')
        super().__init__(neck=neck, head=dict(dict(embed_dims=embed_dims), **head),
                         embed_dims=embed_dims, **kwargs)
        self.intact_keep_ratio = intact_keep_ratio
        decoder_out = getattr(self.neck, 'embed_dim', self.backbone.embed_dims)
        if decoder_out != self.backbone.embed_dims:
            raise ValueError(f'RILS: neck.embed_dim={decoder_out} must equal the encoder '
                             f'width {self.backbone.embed_dims}')

    def embed(self, inputs: dict) -> Embedded:
        """The passes of a RILS step over the samples: intact and masked encoder passes, the
        decoder on the scored patches, the text tower, the projections.

        Args:
            inputs (dict): ``images`` B x 3 x H x W (normalised), ``texts`` B x 77 ids.

        Returns:
            Embedded: ``image_embeddings`` and ``text_embeddings`` (B x D, normalised),
            ``predictions`` and ``targets`` (B x M x D, projected into the joint space, M
            scored patches per sample) and ``scored_mask`` (B x M, 1 where the patch is
            scored: seen by the intact pass, hidden from the masked pass).
        """
        intact_tokens, targets, latent, has_target, ids_restore = self.encoder_passes(
            inputs['images'])
        # Only the scored patches are decoded and projected: the intact pass saw them and
        # the masked pass did not, as many per sample as the two passes' token counts differ.
        num_scored = intact_tokens.shape[1] - latent.shape[1]
        scored = has_target.argsort(dim=1, descending=True, stable=True)[:, :num_scored]
        predictions = self.neck(latent, ids_restore, scored)  # B x M x C
        targets = torch.gather(targets, 1, scored.unsqueeze(-1).expand(-1, -1,
                                                                        targets.shape[-1]))
        return Embedded(
            dict(image_embeddings=self.embed_image_tokens(intact_tokens),
                 text_embeddings=self.encode_text(inputs['texts']),
                 predictions=self.image_head.project(predictions),
                 targets=self.image_head.project(targets),
                 scored_mask=torch.gather(has_target, 1, scored)), {})

    def batch_losses(self, representations: Dict[str, torch.Tensor]
                     ) -> Dict[str, torch.Tensor]:
        """The contrastive loss and the reconstruction scored against the batch's captions.

        Args:
            representations (dict): :meth:`embed`'s, for the whole (per-device) batch.

        Returns:
            dict: ``loss_contrastive``, ``loss_reconstruction`` and logged metrics
            (``i2t_acc``, ``recon_kept``: fraction of samples the filter kept,
            ``logit_scale``).
        """
        image_embeddings = representations['image_embeddings']
        if self.head.filter_correct and image_embeddings.shape[0] < 2:
            raise ValueError('RILS: the correct-retrieval filter needs at least 2 pairs per '
                             'device (train_dataloader.batch_size); got 1')
        contrast, correct, log = self.contrastive_losses(image_embeddings,
                                                         representations['text_embeddings'])
        loss_rec, weights = self.head.loss(
            representations['predictions'], representations['targets'],
            contrast.text_features_all, representations['scored_mask'], correct)
        log['loss_reconstruction'] = loss_rec
        log['recon_kept'] = (weights.sum(dim=1) > 0).float().mean()
        return log

    def encoder_passes(self, images: torch.Tensor):
        """The intact and the masked encoder pass of one step.

        With ``intact_keep_ratio < 1`` the nested passes of :meth:`patch_dropped_passes`;
        otherwise the intact pass on every patch and the masked pass on the backbone's
        ``1 - mask_ratio`` of them.

        Args:
            images (torch.Tensor): B x 3 x H x W, normalised.

        Returns:
            tuple: ``intact_tokens`` B x (1 + L_intact) x C (class token first), ``targets``
            B x L x C (intact-pass patch features), the masked pass's ``latent`` and
            ``ids_restore`` (the decoder's inputs), and ``has_target`` B x L: 1 on the patches
            the reconstruction loss scores.
        """
        if self.intact_keep_ratio < 1:
            return self.patch_dropped_passes(images)
        # One patch embedding for both passes.
        intact_tokens, (latent, has_target, ids_restore) = self.backbone(
            images, passes=(None, self.backbone.mask_ratio))  # intact: B x (1 + L) x C
        return intact_tokens, intact_tokens[:, 1:], latent, has_target, ids_restore

    def patch_dropped_passes(self, images: torch.Tensor):
        """The two encoder passes of the cheaper RILS, on nested random patch subsets.

        One B x L score per patch orders the patches of each sample; the intact pass keeps the
        lowest ``round(L * intact_keep_ratio)`` and the masked pass the lowest
        ``round(L * intact_keep_ratio * (1 - mask_ratio))``, a subset of them.

        Args:
            images (torch.Tensor): B x 3 x H x W, normalised.

        Returns:
            tuple: ``intact_tokens`` B x (1 + L_intact) x C (class token first), ``targets``
            B x L x C (intact-pass features at their patch positions, zeros where the intact
            pass did not look), the masked pass's ``latent`` B x (1 + L_masked) x C, the
            B x L ``has_target`` (1: seen by the intact pass, hidden from the masked pass)
            and the masked pass's ``ids_restore`` B x L.
        """
        backbone = self.backbone
        batch_size, num_patches = images.shape[0], backbone.num_patches
        noise = torch.rand(batch_size, num_patches, device=images.device)
        visible = self.intact_keep_ratio * (1 - backbone.mask_ratio)
        (intact_tokens, intact_dropped, intact_restore), (latent, masked, ids_restore) = \
            backbone(images, noise=noise, passes=(1 - self.intact_keep_ratio, 1 - visible))
        # Back to patch order: the kept tokens, then zeros for the dropped ones, unshuffled.
        kept = intact_tokens[:, 1:]
        channels = kept.shape[-1]
        padded = torch.cat([kept, kept.new_zeros(batch_size, num_patches - kept.shape[1],
                                                 channels)], dim=1)
        targets = torch.gather(padded, 1,
                               intact_restore.unsqueeze(-1).expand(-1, -1, channels))
        return intact_tokens, targets, latent, masked * (1 - intact_dropped), ids_restore


@register_loss_map('RILS')
def rils_loss_map(model: RILS, images: torch.Tensor,
                  captions: Optional[Sequence[str]] = None) -> LossMap:
    """RILS's passes as its training step runs them (:meth:`RILS.encoder_passes`) and the
    per-patch KL(teacher || student) of its reconstruction loss on the scored patches, against
    the prototypes its head scores with: the given captions (CaptionPrototypes) or the fixed
    random prototypes of the vision-space variant."""
    text = None
    if isinstance(model.head.prototypes, CaptionPrototypes):
        if not captions:
            raise LossMapInputError('RILS scores its reconstruction against captions: give '
                                    'captions (--captions or --class-names)')
        text = encode_captions(model, captions)
    _, targets, latent, hidden, ids_restore = model.encoder_passes(images)
    predictions = model.neck(latent, ids_restore)
    project = model.image_head.project
    kl = model.head.loss(project(predictions), project(targets), text, hidden,
                         reduction='none')
    total = (kl * hidden).sum(1) / hidden.sum(1).clamp(min=1)
    name = 'KL(teacher || student) over ' + ('captions' if text is not None else 'prototypes')
    return LossMap(hidden, kl.masked_fill(hidden == 0, float('nan')), name, total)
