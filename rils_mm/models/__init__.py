from . import (algorithms, backbones, data_preprocessors, heads, losses,  # noqa: F401
               model_wrappers, necks, target_generators)
from . import toolbox_registration  # noqa: F401,I001  (registers in mmdet's and mmseg's too)
