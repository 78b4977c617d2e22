from .clip_text import CLIPTextEncoder
from .mammut_text_decoder import MaMMUTTextDecoder
from .rils_vit import (RILSMaskedViT, RILSMILANViT, RILSMultiPassViT, RILSPretrainViT,
                       RILSViT, intact_outputs)

__all__ = ['CLIPTextEncoder', 'MaMMUTTextDecoder', 'RILSMaskedViT', 'RILSMILANViT',
           'RILSMultiPassViT', 'RILSPretrainViT', 'RILSViT', 'intact_outputs']
