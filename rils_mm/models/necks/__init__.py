from .rils_decoder import RILSDecoder
from .simple_feature_pyramid import SimpleFeaturePyramid

__all__ = ['RILSDecoder', 'SimpleFeaturePyramid']
