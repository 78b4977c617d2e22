from .image_text import CLIP_MEAN, CLIP_STD, ImageTextDataPreprocessor

__all__ = ['CLIP_MEAN', 'CLIP_STD', 'ImageTextDataPreprocessor']
