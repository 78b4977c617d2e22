from .image_text_pretrainer import ImageTextPretrainer
from .rils import RILS

__all__ = ['ImageTextPretrainer', 'RILS']
