from .checkpoint_loading import CheckedPretrainedInit, LoadReport, load_checked
from .qv_bias_layer import QVBiasMultiheadAttention, QVBiasTransformerLayer

__all__ = ['CheckedPretrainedInit', 'LoadReport', 'load_checked', 'QVBiasMultiheadAttention',
           'QVBiasTransformerLayer']
