from .image_embedding import ImageEmbeddingHead
from .language_reconstruction import (CaptionPrototypes, LanguageReconstructionHead,
                                      RandomPrototypes)
from .patch_loss_maps import PatchLosses, cosine_patch_losses, pixel_patch_losses

__all__ = ['CaptionPrototypes', 'ImageEmbeddingHead', 'LanguageReconstructionHead',
           'PatchLosses', 'RandomPrototypes', 'cosine_patch_losses', 'pixel_patch_losses']
