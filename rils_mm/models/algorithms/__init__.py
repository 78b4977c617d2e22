from .image_text_pretrainer import ImageTextPretrainer
from .lit import LiT
from .loss_maps import LossMap, LossMapInputError, loss_map, register_loss_map
from .mae_clip import MAECLIP
from .mammut import MaMMUT
from .open_clip_wrapper import OpenCLIPModel
from .pixel_target_milan import PixelTargetMILAN
from .rils import RILS
from .zero_shot import ZeroShotClassifier, ZeroShotRetriever

__all__ = ['ImageTextPretrainer', 'LiT', 'LossMap', 'LossMapInputError', 'MAECLIP', 'MaMMUT',
           'OpenCLIPModel', 'PixelTargetMILAN', 'RILS', 'ZeroShotClassifier', 'ZeroShotRetriever',
           'loss_map', 'register_loss_map']
