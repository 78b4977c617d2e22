from .clip_text import CLIPTextEncoder
from .mammut_text_decoder import MaMMUTTextDecoder
from .rils_vit import RILSPretrainViT, RILSViT

__all__ = ['CLIPTextEncoder', 'MaMMUTTextDecoder', 'RILSPretrainViT', 'RILSViT']
