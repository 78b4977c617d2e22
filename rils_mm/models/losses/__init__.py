from .contrastive import ContrastiveLoss, ContrastiveOutput, gather_features
from .language_reconstruction import LanguageSpaceReconstructionLoss

__all__ = ['ContrastiveLoss', 'ContrastiveOutput', 'LanguageSpaceReconstructionLoss',
           'gather_features']
