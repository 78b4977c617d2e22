from .checkpointed_decoders import (CheckpointedMAEPretrainDecoder,
                                    CheckpointedMILANPretrainDecoder)
from .mae_feature_decoder import MAEFeatureDecoder
from .rils_decoder import RILSDecoder
from .simple_feature_pyramid import SimpleFeaturePyramid

__all__ = [
    'CheckpointedMAEPretrainDecoder', 'CheckpointedMILANPretrainDecoder', 'MAEFeatureDecoder',
    'RILSDecoder', 'SimpleFeaturePyramid'
]
