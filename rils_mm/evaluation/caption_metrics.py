"""Captioning metrics: BLEU-4 and CIDEr-D as the COCO caption evaluation computes them, and
exact match.

The COCO evaluation (Chen et al., 2015, arXiv:1504.00325; tylin/coco-caption) needs Java for
its PTB tokenizer; here captions are lower-cased, punctuation is dropped and words are split on
white space, which is what the PTB tokenizer does to plain captions such as the demo's.

- BLEU-4 (Papineni et al., ACL 2002) at corpus level: clipped n-gram precisions summed over
  the corpus for n = 1..4, their geometric mean, times the brevity penalty against the
  reference length closest to each hypothesis (coco-caption's ``closest`` option, with its
  1e-15 / 1e-9 smoothing of empty counts).
- CIDEr-D (Vedantam et al., CVPR 2015): per n = 1..4, tf-idf vectors of n-gram counts with
  document frequencies over the images' reference sets; the hypothesis-reference similarity
  clips the hypothesis's weights at the reference's, divides by both norms and multiplies by a
  Gaussian penalty (sigma 6) of the length difference; averaged over n and references, times
  10; the corpus score is the mean over images.
"""
import math
import re
from collections import Counter
from typing import Dict, List, Sequence

from mmengine.evaluator import BaseMetric
from mmpretrain.registry import METRICS

NGRAM_ORDERS = 4
CIDER_SIGMA = 6.0


def caption_words(caption: str) -> List[str]:
    """Lower-cased words without punctuation."""
    return re.sub(r"[^\w\s']", ' ', caption.lower()).split()


def ngram_counts(words: Sequence[str], n: int) -> Counter:
    """Counts of the n-grams (tuples of n words) of ``words``."""
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
         max_order: int = NGRAM_ORDERS) -> float:
    """Corpus BLEU-``max_order`` (0..1) of one hypothesis per image against its references."""
    correct, guessed = [0] * max_order, [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        words = caption_words(hypothesis)
        ref_words = [caption_words(r) for r in refs]
        hypothesis_length += len(words)
        # The closest reference length (the shorter one on a tie).
        reference_length += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(1, max_order + 1):
            counts = ngram_counts(words, n)
            most = Counter()
            for r in ref_words:
                most |= ngram_counts(r, n)  # the largest count of each n-gram in any reference
            correct[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            guessed[n - 1] += max(len(words) - n + 1, 0)
    tiny, small = 1e-15, 1e-9
    log_precision = sum(math.log((c + tiny) / (g + small))
                        for c, g in zip(correct, guessed)) / max_order
    ratio = (hypothesis_length + tiny) / (reference_length + small)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return brevity * math.exp(log_precision)


def _tfidf(words: Sequence[str], document_frequency: Counter, log_images: float):
    """Per order n: the n-gram -> weight dict, its norm, and the sentence length (coco-caption
    counts the bigrams)."""
    vectors, norms = [], []
    for n in range(1, NGRAM_ORDERS + 1):
        vector = {g: c * (log_images - math.log(max(1.0, document_frequency[g])))
                  for g, c in ngram_counts(words, n).items()}
        vectors.append(vector)
        norms.append(math.sqrt(sum(v * v for v in vector.values())))
    return vectors, norms, max(len(words) - 1, 0)


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (0..10 for identical captions with distinctive n-grams)."""
    ref_words = [[caption_words(r) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in ref_words:
        document_frequency.update({g for r in refs for n in range(1, NGRAM_ORDERS + 1)
                                   for g in ngram_counts(r, n)})
    log_images = math.log(float(len(references)))
    scores = []
    for hypothesis, refs in zip(hypotheses, ref_words):
        hyp_vectors, hyp_norms, hyp_length = _tfidf(caption_words(hypothesis),
                                                    document_frequency, log_images)
        total = 0.0
        for ref in refs:
            ref_vectors, ref_norms, ref_length = _tfidf(ref, document_frequency, log_images)
            penalty = math.exp(-((hyp_length - ref_length)**2) / (2 * CIDER_SIGMA**2))
            similarity = 0.0
            for n in range(NGRAM_ORDERS):
                value = sum(min(w, ref_vectors[n].get(g, 0.0)) * ref_vectors[n].get(g, 0.0)
                            for g, w in hyp_vectors[n].items())
                if hyp_norms[n] and ref_norms[n]:
                    similarity += penalty * value / (hyp_norms[n] * ref_norms[n])
            total += similarity / NGRAM_ORDERS
        scores.append(10.0 * total / len(refs))
    return sum(scores) / len(scores)


def exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of hypotheses whose words equal those of one of their references."""
    hits = [any(caption_words(h) == caption_words(r) for r in refs)
            for h, refs in zip(hypotheses, references)]
    return sum(hits) / len(hits)


def caption_scores(hypotheses: Sequence[str],
                   references: Sequence[Sequence[str]]) -> Dict[str, float]:
    """``bleu4`` (%), ``cider`` (x100, as papers report it) and ``exact_match`` (%)."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f'caption_scores: {len(hypotheses)} hypotheses for '
                         f'{len(references)} reference sets')
    return dict(bleu4=100 * bleu(hypotheses, references),
                cider=100 * cider_d(hypotheses, references),
                exact_match=100 * exact_match(hypotheses, references))


@METRICS.register_module()
class CaptionMetric(BaseMetric):
    """BLEU-4, CIDEr-D and exact match of generated captions (``pred_caption`` of each data
    sample) against the sample's reference captions (``captions`` in its metainfo, or its
    single ``caption``).

    Args:
        collect_device (str): Device for gathering results across ranks.
        prefix (str, optional): Prefix of the metric names.
    """

    default_prefix = 'caption'

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            get = sample.get if isinstance(sample, dict) else sample.metainfo.get
            references = get('captions') or [get('caption')]
            if get('pred_caption') is None or not references[0]:
                raise KeyError('CaptionMetric: each sample needs pred_caption and caption(s)')
            self.results.append((get('pred_caption'), list(references)))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        hypotheses, references = zip(*results)
        return caption_scores(hypotheses, references)
