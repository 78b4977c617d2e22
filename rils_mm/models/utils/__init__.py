from .qv_bias_layer import QVBiasMultiheadAttention, QVBiasTransformerLayer

__all__ = ['QVBiasMultiheadAttention', 'QVBiasTransformerLayer']
