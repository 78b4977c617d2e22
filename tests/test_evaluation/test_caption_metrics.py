"""BLEU-4, CIDEr-D and exact match against values worked out by hand."""
import math

import pytest

from rils_mm.evaluation import CaptionMetric, caption_scores
from rils_mm.evaluation.caption_metrics import bleu, caption_words, cider_d

TINY, SMALL = 1e-15, 1e-9  # coco-caption's smoothing of empty counts


def test_words_ignore_case_and_punctuation():
    assert caption_words('A red circle, on the LEFT.') == ['a', 'red', 'circle', 'on', 'the',
                                                          'left']


def test_bleu_by_hand():
    hypotheses = ['a big red circle on the left', 'a blue square']
    references = [['a big red circle on the right', 'one red circle'], ['a blue square']]
    # Image 1: 7 words; clipped matches 1-grams 6 (all but "left"), 2-grams 5 of 6,
    # 3-grams 4 of 5, 4-grams 3 of 4; closest reference length 7.
    # Image 2: 3 words, all 1-3-grams match, no 4-gram; reference length 3.
    precisions = [(6 + 3) / (7 + 3), (5 + 2) / (6 + 2), (4 + 1) / (5 + 1), (3 + TINY) / (4 + SMALL)]
    expected = math.exp(sum(math.log(p) for p in precisions) / 4)
    assert bleu(hypotheses, references) == pytest.approx(expected, rel=1e-9)
    # Too short: 2 words against the closest reference length, 3: brevity penalty
    # exp(1 - 3 / 2) on precisions 1, 1 (up to the smoothing constants).
    short = bleu(['red circle'], [['a red circle', 'a red circle now']], max_order=2)
    assert short == pytest.approx(math.exp(1 - 3 / 2), rel=1e-8)


def test_cider_d_by_hand():
    # Two images, one reference each: idf is log 2 for n-grams of one image's reference, 0 for
    # those of both ("a"), log 2 for n-grams of no reference.
    references = [['a red circle'], ['a blue square']]
    # Image 1, identical: cosine 1 for n = 1, 2, 3 (distinctive n-grams), no 4-gram: 3 / 4.
    # Image 2, "a blue circle": n = 1: the clipped product counts "blue" only,
    # log2^2 / (sqrt(2) log2)^2 = 1/2; n = 2: "a blue" only, 1/2; n = 3: 0. Mean 1/4.
    # Equal lengths: no penalty. CIDEr-D = 10 x (3/4 + 1/4) / 2.
    assert cider_d(['a red circle', 'a blue circle'], references) == pytest.approx(5.0)
    # A length difference of 3 bigrams multiplies by exp(-9 / 72).
    longer = cider_d(['a red circle x y z', 'a blue square'], references)
    # n = 1: hypothesis weights red, circle, x, y, z log 2 ("a" 0); reference red, circle.
    hyp_norm_1 = math.sqrt(5) * math.log(2)
    ref_norm_1 = math.sqrt(2) * math.log(2)
    value_1 = 2 * math.log(2)**2 / (hyp_norm_1 * ref_norm_1)
    # n = 2: 5 hypothesis bigrams, 2 reference ones, 2 shared; n = 3: 4, 1, 1 shared.
    value_2 = 2 * math.log(2)**2 / (math.sqrt(5) * math.log(2) * math.sqrt(2) * math.log(2))
    value_3 = math.log(2)**2 / (math.sqrt(4) * math.log(2) * math.log(2))
    first = 10 * math.exp(-9 / 72) * (value_1 + value_2 + value_3) / 4
    assert longer == pytest.approx((first + 10 * 3 / 4) / 2)


def test_scores_and_the_metric_class():
    scores = caption_scores(['a red circle', 'A blue square!'],
                            [['a red circle'], ['a green square', 'a blue square']])
    assert scores['exact_match'] == 100.0 and 0 < scores['bleu4'] <= 100
    metric = CaptionMetric()
    metric.process(None, [dict(pred_caption='a red circle', caption='a red circle'),
                          dict(pred_caption='a circle', captions=['a blue square'])])
    result = metric.compute_metrics(metric.results)
    assert result['exact_match'] == 50.0
    with pytest.raises(ValueError):
        caption_scores([], [])
