"""Zero-shot and captioning evaluation metrics, and probes of frozen features.

Importing this package registers ``ZeroShotAccuracy``, ``ImageTextRetrievalRecall`` and
``CaptionMetric`` in mmpretrain's ``METRICS``. :mod:`.probes` holds the linear and few-shot
probes, zero-shot top-1 and caption-aware recall on features already computed (used by the
demo-scale comparison). The evaluation datasets, few-shot subsets and text resources (class
names, prompt templates) are in :mod:`rils_mm.datasets`; the zero-shot classifier and its
prompt-ensembled weights are in :mod:`rils_mm.models`.
"""
from .caption_metrics import CaptionMetric, caption_scores
from .metrics import (ImageTextRetrievalRecall, ZeroShotAccuracy, retrieval_metrics,
                      retrieval_ranks)
from .probes import caption_recall, few_shot_probe, linear_probe, zero_shot_accuracy

__all__ = ['CaptionMetric', 'ImageTextRetrievalRecall', 'ZeroShotAccuracy', 'caption_recall',
           'caption_scores', 'few_shot_probe', 'linear_probe', 'retrieval_metrics',
           'retrieval_ranks', 'zero_shot_accuracy']
