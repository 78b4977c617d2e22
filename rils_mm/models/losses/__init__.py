from .contrastive import ContrastiveLoss, ContrastiveOutput, gather_features
from .federated import FederatedLoss, class_image_counts, federated_classes
from .focal_contrastive import FocalContrastiveLoss, focal_pair_losses
from .language_reconstruction import LanguageSpaceReconstructionLoss

__all__ = ['ContrastiveLoss', 'ContrastiveOutput', 'FederatedLoss', 'FocalContrastiveLoss',
           'class_image_counts', 'federated_classes',
           'LanguageSpaceReconstructionLoss', 'focal_pair_losses', 'gather_features']
