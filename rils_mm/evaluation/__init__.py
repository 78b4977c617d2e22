"""Zero-shot evaluation: text resources, classifier building and metrics (issue 5).

Importing this package registers ``ZeroShotAccuracy`` and ``ImageTextRetrievalRecall`` in
mmpretrain's ``METRICS`` and ``FewShotDataset`` in its ``DATASETS``.
"""
from .few_shot import FewShotDataset, few_shot_indices
from .metrics import (ImageTextRetrievalRecall, ZeroShotAccuracy, retrieval_metrics,
                      retrieval_ranks)
from .resources import (DATA_DIR, load_class_subset, load_classnames, load_templates,
                        resolve_data_file)
from .zero_shot import build_text_classifier, group_logits

__all__ = [
    'ImageTextRetrievalRecall', 'ZeroShotAccuracy', 'retrieval_metrics', 'retrieval_ranks',
    'DATA_DIR', 'load_class_subset', 'load_classnames', 'load_templates', 'resolve_data_file',
    'build_text_classifier', 'group_logits', 'FewShotDataset', 'few_shot_indices'
]
