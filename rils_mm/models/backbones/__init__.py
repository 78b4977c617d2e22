from .clip_text import CLIPTextEncoder
from .rils_vit import RILSPretrainViT, RILSViT

__all__ = ['CLIPTextEncoder', 'RILSPretrainViT', 'RILSViT']
