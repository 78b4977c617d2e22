from . import (algorithms, backbones, data_preprocessors, heads, losses, necks,  # noqa: F401
               target_generators)
from . import toolbox_registration  # noqa: F401,I001  (registers in mmdet's and mmseg's too)
