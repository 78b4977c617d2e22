"""MAE+CLIP: the RILS paper's baseline that adds pixel reconstruction to CLIP (Yang et al.,
2023, arXiv:2301.06958, section 4; MAE: He et al., CVPR 2022)."""
from mmpretrain.registry import MODELS

from ..utils.grad_cache import Embedded
from .image_text_pretrainer import ImageTextPretrainer
from .loss_maps import register_loss_map, uniform_pixel_loss_map


@MODELS.register_module()
class MAECLIP(ImageTextPretrainer):
    """The contrastive loss on the intact pass plus MAE's pixel loss on the masked pass.

    Total loss = ``loss_contrastive`` + ``pixel_loss_weight`` x ``loss_pixel``; the neck and head
    are mmpretrain's ``MAEPretrainDecoder`` and ``MAEPretrainHead`` (normalised-pixel targets
    of the masked patches), unchanged.

    Args:
        neck (dict): The pixel decoder (``MAEPretrainDecoder``).
        head (dict): ``MAEPretrainHead`` config.
        pixel_loss_weight (float): Weight of the pixel loss. Defaults to 1 (the two objectives
            weighted 1 : 1).
        **kwargs: ``ImageTextPretrainer`` arguments.
    """

    def __init__(self, neck: dict, head: dict, pixel_loss_weight: float = 1.0,
                 **kwargs) -> None:
        super().__init__(neck=neck, head=head, **kwargs)
        self.pixel_loss_weight = pixel_loss_weight

    def embed(self, inputs: dict) -> Embedded:
        """The intact pass, the masked pass with the pixel decoder, the text tower.

        Args:
            inputs (dict): ``images`` B x 3 x H x W (normalised), ``texts`` B x 77 ids.

        Returns:
            Embedded: the contrastive embeddings (B x D) and the local ``loss_pixel`` (times
            ``pixel_loss_weight``): the mean over the masked patches, with their count.
        """
        images = inputs['images']
        tokens = self.image_tokens(images)  # B x (1 + L) x C, intact pass
        latent, mask, ids_restore = self.backbone(images, mask=True)
        predictions = self.neck(latent, ids_restore)  # B x L x (p * p * 3)
        representations = dict(image_embeddings=self.embed_image_tokens(tokens),
                               text_embeddings=self.encode_text(inputs['texts']))
        loss_pixel = self.pixel_loss_weight * self.head.loss(predictions, images, mask)
        return Embedded(representations, dict(loss_pixel=(loss_pixel, mask.sum())))


# MAE's masking and pixel loss: MAE's loss map.
register_loss_map('MAECLIP')(uniform_pixel_loss_map)
