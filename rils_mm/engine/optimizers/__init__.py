from .layer_decay import RILSLayerDecayOptimWrapperConstructor, backbone_layer_depth

__all__ = ['RILSLayerDecayOptimWrapperConstructor', 'backbone_layer_depth']
