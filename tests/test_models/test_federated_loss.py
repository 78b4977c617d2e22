"""The LVIS federated loss against a hand computation of its formula (Zhou et al., 2021;
detectron2's ``sigmoid_cross_entropy_loss`` with ``use_fed_loss``), and its place in mmdet's box
head."""
import json
import math

import pytest
import torch

import rils_mm  # noqa: F401  (registers FederatedLoss in mmdet's registry)
from rils_mm.models.losses import FederatedLoss

LOGITS = [[1.0, -2.0, 0.5, 0.0, 3.0],
          [-1.0, 2.0, -0.5, 1.5, -3.0],
          [0.2, 0.1, -0.3, 2.5, 0.7]]


def bce(logit, target):
    """Binary cross-entropy of one logit, from the sigmoid by hand."""
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def hand_loss(labels, kept, num_classes=5):
    """sum over proposals n and kept classes c of BCE(x_nc, [label_n == c]), divided by N."""
    total = sum(bce(LOGITS[n][c], float(labels[n] == c))
                for n in range(len(labels)) for c in kept)
    return total / len(labels)


def test_no_sampling_when_the_batch_has_enough_classes():
    # Labels 0, 2 and background (5): three unique labels >= 3 kept classes, so only the
    # batch's classes 0 and 2 enter the loss; 1, 3, 4 are left out whatever their logits.
    loss = FederatedLoss(num_classes=5, image_counts=[1, 1, 1, 1, 1], num_fed_loss_classes=3)
    labels = torch.tensor([0, 2, 5])
    value = loss(torch.tensor(LOGITS), labels)
    assert value.item() == pytest.approx(hand_loss([0, 2, 5], kept=[0, 2]), rel=1e-6)
    # The plain sigmoid loss over all 5 classes is another number.
    assert value.item() != pytest.approx(hand_loss([0, 2, 5], kept=range(5)), rel=1e-3)


def test_negatives_are_sampled_by_image_count_power():
    # Unique labels {1, 5 (background)}: 2 of 4 kept classes, so 2 negatives are drawn from the
    # classes with non-zero weight other than 1: only 0 and 4 (counts 0 ** 0.5 = 0 for 2, 3).
    counts = [4, 9, 0, 0, 25]
    loss = FederatedLoss(num_classes=5, image_counts=counts, num_fed_loss_classes=4,
                         freq_weight_power=0.5, loss_weight=2.0)
    torch.testing.assert_close(loss.class_weights, torch.tensor([2.0, 3.0, 0.0, 0.0, 5.0]))
    labels = [1, 5, 5]
    value = loss(torch.tensor(LOGITS), torch.tensor(labels))
    assert value.item() == pytest.approx(2.0 * hand_loss(labels, kept=[0, 1, 4]), rel=1e-6)
    # More places than classes to draw (50 of 5): every class with a weight, no error.
    loss.num_fed_loss_classes = 50
    value = loss(torch.tensor(LOGITS), torch.tensor(labels))
    assert value.item() == pytest.approx(2.0 * hand_loss(labels, kept=[0, 1, 4]), rel=1e-6)


def test_counts_from_an_lvis_file_by_category_id(tmp_path):
    path = tmp_path / 'lvis.json'
    path.write_text(json.dumps(dict(categories=[dict(id=2, image_count=16),
                                                dict(id=1, image_count=4)])))
    loss = FederatedLoss(num_classes=2, ann_file=str(path))
    torch.testing.assert_close(loss.class_weights, torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match='2 class image counts .* num_classes is 3'):
        FederatedLoss(num_classes=3, ann_file=str(path))


def test_mmdet_box_head_predicts_one_sigmoid_per_class():
    import mmdet.models  # noqa: F401  (registers the box heads)
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        head = MODELS.build(dict(
            type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=8, roi_feat_size=2,
            num_classes=5, loss_cls=dict(type='FederatedLoss', num_classes=5,
                                         image_counts=[1, 2, 3, 4, 5])))
    assert head.fc_cls.out_features == 5  # no background logit
    scores = head.loss_cls.get_activation(torch.tensor(LOGITS))
    assert scores.shape == (3, 6) and (scores[:, 5] == 0).all()
    torch.testing.assert_close(scores[:, :5], torch.tensor(LOGITS).sigmoid())
    accuracy = head.loss_cls.get_accuracy(torch.tensor(LOGITS), torch.tensor([4, 1, 5]))
    # Argmax over [logits, 0]: 4 (right), 1 (right), 3 with logit 2.5 > 0 (wrong: background).
    assert accuracy['acc'].item() == pytest.approx(200 / 3)
