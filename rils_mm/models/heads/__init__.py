from .image_embedding import ImageEmbeddingHead
from .language_reconstruction import (CaptionPrototypes, LanguageReconstructionHead,
                                      RandomPrototypes)

__all__ = ['CaptionPrototypes', 'ImageEmbeddingHead', 'LanguageReconstructionHead',
           'RandomPrototypes']
