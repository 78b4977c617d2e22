"""Image-text transforms, registered in mmpretrain's TRANSFORMS on import."""
from .formatting import PackImageText
from .loading import LoadImageFeatures, LoadImageRGB, decode_image_rgb, pil_to_rgb_array
from .tokenize import CLIPTokenize, get_clip_tokenizer

__all__ = [
    'PackImageText', 'LoadImageRGB', 'LoadImageFeatures', 'decode_image_rgb', 'pil_to_rgb_array',
    'CLIPTokenize', 'get_clip_tokenizer'
]
