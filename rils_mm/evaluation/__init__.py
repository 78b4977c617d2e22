"""Zero-shot and captioning evaluation metrics.

Importing this package registers ``ZeroShotAccuracy``, ``ImageTextRetrievalRecall`` and
``CaptionMetric`` in mmpretrain's ``METRICS``. The evaluation datasets, few-shot subsets and
text resources (class names, prompt templates) are in :mod:`rils_mm.datasets`; the zero-shot
classifier and its prompt-ensembled weights are in :mod:`rils_mm.models`.
"""
from .caption_metrics import CaptionMetric, caption_scores
from .metrics import (ImageTextRetrievalRecall, ZeroShotAccuracy, retrieval_metrics,
                      retrieval_ranks)

__all__ = ['CaptionMetric', 'ImageTextRetrievalRecall', 'ZeroShotAccuracy', 'caption_scores',
           'retrieval_metrics', 'retrieval_ranks']
