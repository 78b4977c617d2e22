"""Batch preparation for (image, caption tokens) pairs."""
from typing import Sequence

from mmengine.model import ImgDataPreprocessor
from mmpretrain.registry import MODELS

# OpenAI CLIP's normalisation, on the 0-255 scale.
CLIP_MEAN = (122.770938, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)


@MODELS.register_module()
class ImageTextDataPreprocessor(ImgDataPreprocessor):
    """Moves a batch to the device, normalises images with CLIP's statistics, keeps tokens.

    Accepts ``inputs`` either as an image batch (a B x 3 x H x W uint8 tensor or a list of
    3 x H x W tensors, as mmpretrain's ``PackInputs`` gives) or as
    ``dict(images=..., texts=B x 77 token ids)`` from ``PackImageText``. Returns the same form
    with float, normalised images. ``dict(image_features=B x C, texts=...)`` (cached features of
    a locked image tower, see ``LiT``) passes through as float, without normalisation.

    Args:
        mean (Sequence[float]): Per-channel mean on the 0-255 scale. Defaults to CLIP's.
        std (Sequence[float]): Per-channel std on the 0-255 scale. Defaults to CLIP's.
        to_rgb (bool): Flip BGR images (mmpretrain's ``LoadImageFromFile``) to RGB. Our
            image-text datasets decode to RGB, so False there.
        non_blocking (bool): Asynchronous host-to-device copies.
        images_only (bool): Return the image batch alone as ``inputs`` (and drop any
            tokens), for image-only algorithms such as mmpretrain's ``MAE`` trained on the
            images of image-text data. Defaults to False.
    """

    def __init__(self,
                 mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD,
                 to_rgb: bool = False,
                 non_blocking: bool = False,
                 pad_size_divisor: int = 1,
                 images_only: bool = False) -> None:
        super().__init__(mean=mean, std=std, bgr_to_rgb=to_rgb, non_blocking=non_blocking,
                         pad_size_divisor=pad_size_divisor)
        self.images_only = images_only

    def forward(self, data: dict, training: bool = False) -> dict:
        """Args: data (dict): ``inputs`` and optional ``data_samples`` from the collate function.

        Returns:
            dict: ``inputs`` (B x 3 x H x W float, or ``dict(images=..., texts=B x 77 long)``)
            and ``data_samples``.
        """
        inputs = data['inputs']
        if not isinstance(inputs, dict):
            return super().forward(data, training)
        if 'image_features' in inputs and 'images' not in inputs:
            # Cached image features (LiT with a locked image tower): moved, not normalised.
            out = dict(image_features=self.cast_data(inputs['image_features']).float())
            if inputs.get('texts') is not None:
                out['texts'] = self.cast_data(inputs['texts']).long()
            return dict(inputs=out, data_samples=data.get('data_samples'))
        if 'images' not in inputs:
            raise KeyError(f'ImageTextDataPreprocessor: inputs dict needs an "images" (or '
                           f'"image_features") entry, got keys {sorted(inputs)}')
        images = super().forward(dict(inputs=inputs['images']), training)['inputs']
        if self.images_only:
            return dict(inputs=images, data_samples=data.get('data_samples'))
        out = dict(images=images)
        if inputs.get('texts') is not None:
            out['texts'] = self.cast_data(inputs['texts']).long()
        return dict(inputs=out, data_samples=data.get('data_samples'))


# The name the rest of the project (and the evaluation configs) use for the RILS family.
MODELS.register_module(name='RILSDataPreprocessor', module=ImageTextDataPreprocessor)
