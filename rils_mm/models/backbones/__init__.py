from .clip_text import CLIPTextEncoder
from .rils_vit import RILSViT

__all__ = ['CLIPTextEncoder', 'RILSViT']
