"""Zero-shot evaluation metrics.

Importing this package registers ``ZeroShotAccuracy`` and ``ImageTextRetrievalRecall`` in
mmpretrain's ``METRICS``. The evaluation datasets, few-shot subsets and text resources (class
names, prompt templates) are in :mod:`rils_mm.datasets`; the zero-shot classifier and its
prompt-ensembled weights are in :mod:`rils_mm.models`.
"""
from .metrics import (ImageTextRetrievalRecall, ZeroShotAccuracy, retrieval_metrics,
                      retrieval_ranks)

__all__ = ['ImageTextRetrievalRecall', 'ZeroShotAccuracy', 'retrieval_metrics', 'retrieval_ranks']
