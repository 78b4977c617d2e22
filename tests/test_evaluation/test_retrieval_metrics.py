"""Retrieval ranks and recalls: a hand-worked case, open_clip's own metric, our metric."""
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmpretrain.registry import METRICS

from rils_mm.evaluation.metrics import retrieval_metrics, retrieval_ranks

# 3 images x 6 captions; caption j belongs to image j // 2. Rows: images, columns: captions.
SIM = torch.tensor([
    [0.90, 0.10, 0.80, 0.20, 0.30, 0.00],
    [0.50, 0.60, 0.70, 0.10, 0.20, 0.30],
    [0.40, 0.30, 0.20, 0.10, 0.05, 0.15],
])
TEXT_TO_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])


def _features_with_similarity(sim):
    """Image features = identity, text features = columns: image @ text.T == sim exactly."""
    return torch.eye(sim.size(0)), sim.t().contiguous()


def test_ranks_and_recalls_by_hand():
    img, txt = _features_with_similarity(SIM)
    ranks = retrieval_ranks(img, txt, TEXT_TO_IMAGE, chunk_size=2)  # 2 blocks of images
    # Image 0: own captions score 0.9/0.1 and nothing beats 0.9 -> 0. Image 1: own best 0.7 is
    # the row max -> 0. Image 2: own best 0.15; 0.4, 0.3, 0.2 beat it -> 3.
    assert ranks['image_to_text'].tolist() == [0, 0, 3]
    # Caption columns: [.9 .5 .4] -> 0; [.1 .6 .3] -> 2; [.8 .7 .2] -> 1 (image 0 beats 1);
    # [.2 .1 .1] -> 1; [.3 .2 .05] -> 2; [0 .3 .15] -> 1.
    assert ranks['text_to_image'].tolist() == [0, 2, 1, 1, 2, 1]

    m = retrieval_metrics(img, txt, TEXT_TO_IMAGE, topk=(1, 3, 5))
    assert m['image_to_text_R@1'] == pytest.approx(200 / 3)
    assert m['image_to_text_R@3'] == pytest.approx(200 / 3)  # rank 3 is outside the top 3
    assert m['image_to_text_R@5'] == pytest.approx(100)
    assert m['text_to_image_R@1'] == pytest.approx(100 / 6)
    assert m['text_to_image_R@3'] == pytest.approx(100)
    assert m['image_to_text_mean_rank'] == pytest.approx(2.0)  # (0 + 0 + 3) / 3 + 1
    assert m['image_to_text_median_rank'] == 1.0
    assert m['text_to_image_mean_rank'] == pytest.approx(7 / 6 + 1)
    assert m['text_to_image_median_rank'] == 2.0


def test_one_caption_per_image_equals_open_clip_get_clip_metrics():
    from open_clip_train.train import get_clip_metrics
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(40, 8), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.9 * torch.randn(40, 8), dim=-1)
    ref = get_clip_metrics(img, txt, logit_scale=torch.tensor(100.))
    ours = retrieval_metrics(img, txt, torch.arange(40), topk=(1, 5, 10))
    assert set(ref) == set(ours)
    for key, value in ref.items():
        scale = 100 if '_R@' in key else 1  # open_clip reports R@K as a fraction
        assert ours[key] == pytest.approx(scale * float(value)), key
    # Not a degenerate case: recalls strictly between 0 and 100 somewhere.
    assert 0 < ours['image_to_text_R@1'] < 100


def test_registered_metric_gathers_order_independently():
    """The metric sees images in any order (as ranks interleave them) and gets the same result."""
    torch.manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(10, 6), dim=-1)
    text_to_image = torch.arange(10) // 2
    expected = retrieval_metrics(img, txt, text_to_image)

    evaluator = Evaluator(METRICS.build(dict(type='ImageTextRetrievalRecall', topk=(1, 5, 10))))
    for i in [3, 0, 4, 1, 2]:
        evaluator.process([dict(image_id=i, image_feat=img[i], gt_text_id=[2 * i, 2 * i + 1],
                                text_feats=txt[2 * i:2 * i + 2])])
    got = evaluator.evaluate(5)
    assert got == {f'retrieval/{k}': v for k, v in expected.items()}


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match='at least one caption'):
        retrieval_ranks(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))


def test_zero_shot_accuracy_refuses_class_count_mismatch():
    evaluator = Evaluator(METRICS.build(dict(type='ZeroShotAccuracy', topk=(1, ))))
    evaluator.dataset_meta = dict(classes=('a', 'b', 'c'))
    sample = dict(pred_score=torch.tensor([0.2, 0.3, 0.1, 0.4]), gt_label=torch.tensor([1]),
                  classnames_file='/x/my_classes.txt')
    with pytest.raises(ValueError, match='my_classes.txt'):
        evaluator.process([sample])
    # Matching counts: plain mmpretrain Accuracy numbers.
    evaluator = Evaluator(METRICS.build(dict(type='ZeroShotAccuracy', topk=(1, 2))))
    evaluator.dataset_meta = dict(classes=('a', 'b', 'c'))
    evaluator.process([
        dict(pred_score=torch.tensor([0.2, 0.5, 0.3]), gt_label=torch.tensor([1])),
        dict(pred_score=torch.tensor([0.2, 0.5, 0.3]), gt_label=torch.tensor([2])),
    ])
    result = evaluator.evaluate(2)
    assert result['accuracy/top1'] == pytest.approx(50.0)
    assert result['accuracy/top2'] == pytest.approx(100.0)


def _retrieval_on_rank(rank, world_size, out_dir):
    """Each rank gets the DefaultSampler's interleaved share of 5 images (padded to 6)."""
    torch.manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(15, 6), dim=-1)
    evaluator = Evaluator(METRICS.build(dict(type='ImageTextRetrievalRecall')))
    padded = list(range(5)) + [0]  # the sampler pads by repeating image 0
    for i in padded[rank::world_size]:
        evaluator.process([dict(image_id=i, image_feat=img[i], gt_text_id=[3 * i + j for j in
                                range(3)], text_feats=txt[3 * i:3 * i + 3])])
    metrics = evaluator.evaluate(5)
    if rank == 0:
        expected = retrieval_metrics(img, txt, torch.arange(15) // 3)
        torch.save(dict(got=metrics, expected=expected), f'{out_dir}/result.pt')


def test_registered_metric_across_two_processes(run_distributed, tmp_path):
    run_distributed(_retrieval_on_rank, 2, str(tmp_path))
    result = torch.load(tmp_path / 'result.pt')
    assert result['got'] == {f'retrieval/{k}': v for k, v in result['expected'].items()}
