from .contrastive import ContrastiveLoss, ContrastiveOutput, gather_features
from .focal_contrastive import FocalContrastiveLoss, focal_pair_losses
from .language_reconstruction import LanguageSpaceReconstructionLoss

__all__ = ['ContrastiveLoss', 'ContrastiveOutput', 'FocalContrastiveLoss',
           'LanguageSpaceReconstructionLoss', 'focal_pair_losses', 'gather_features']
