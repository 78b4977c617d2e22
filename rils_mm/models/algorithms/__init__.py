from .image_text_pretrainer import ImageTextPretrainer
from .lit import LiT
from .mae_clip import MAECLIP
from .mammut import MaMMUT
from .open_clip_wrapper import OpenCLIPModel
from .pixel_target_milan import PixelTargetMILAN
from .rils import RILS
from .zero_shot import ZeroShotClassifier, ZeroShotRetriever

__all__ = ['ImageTextPretrainer', 'LiT', 'MAECLIP', 'MaMMUT', 'OpenCLIPModel',
           'PixelTargetMILAN', 'RILS', 'ZeroShotClassifier', 'ZeroShotRetriever']
