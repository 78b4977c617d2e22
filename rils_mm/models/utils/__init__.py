from .checkpoint_loading import (CheckedPretrainedInit, LoadReport, checked_init_cfg,
                                 load_checked, loads_pretrained)
from .inference_loading import EVAL_WRAPPERS, build_and_load, model_type
from .locking import block_groups, lock_groups, lock_module, set_locked_eval
from .precision import at_least_float32
from .qv_bias_layer import (QVBiasDecoderLayer, QVBiasMultiheadAttention,
                            QVBiasTransformerLayer)

__all__ = ['CheckedPretrainedInit', 'LoadReport', 'checked_init_cfg', 'load_checked',
           'loads_pretrained', 'EVAL_WRAPPERS', 'build_and_load', 'model_type',
           'block_groups', 'lock_groups', 'lock_module', 'set_locked_eval', 'at_least_float32',
           'QVBiasDecoderLayer', 'QVBiasMultiheadAttention', 'QVBiasTransformerLayer']
