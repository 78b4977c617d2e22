"""Evaluations of frozen encoder features: a linear probe, ``k``-shot probes, zero-shot top-1
from a text classifier, and image<->text recall where identical captions count as hits.

Pure computations on tensors the caller has already encoded (the demo-scale comparison,
:mod:`rils_mm.tools.compare`, encodes its splits and calls these).
"""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.few_shot import few_shot_indices

__all__ = ['caption_recall', 'few_shot_probe', 'linear_probe', 'zero_shot_accuracy']


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
                 steps: int = 100) -> float:
    """Top-1 (%) of a multinomial logistic regression on standardised frozen features,
    fitted with full-batch L-BFGS (deterministic).

    Args:
        train_x (torch.Tensor): N x C training features.
        train_y (torch.Tensor): N class indices (int64) of ``train_x``.
        test_x (torch.Tensor): M x C test features.
        test_y (torch.Tensor): M class indices of ``test_x``.
        num_classes (int): Number of classes of the classifier.
        weight_decay (float): L2 penalty on the weights (not the bias).
        steps (int): L-BFGS iterations.

    Returns:
        float: Top-1 accuracy (%) on the test features.
    """
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    linear = torch.nn.Linear(train_x.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=steps,
                                  history_size=20, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y) + \
            weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float((linear(test_x).argmax(1) == test_y).float().mean() * 100)


def few_shot_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor, num_classes: int, k: int,
                   seed: int) -> Optional[float]:
    """:func:`linear_probe` trained on ``k`` images per class, drawn with
    :func:`rils_mm.datasets.few_shot.few_shot_indices` from the classes that have at least
    ``k`` (all of them when every class has).

    Args:
        train_x (torch.Tensor): N x C features to draw the ``k``-shot subset from.
        train_y (torch.Tensor): N class indices (int64) of ``train_x``.
        test_x (torch.Tensor): M x C test features.
        test_y (torch.Tensor): M class indices of ``test_x``.
        num_classes (int): Number of classes of the classifier.
        k (int): Images per class.
        seed (int): Seed of the draw.

    Returns:
        float | None: Top-1 accuracy (%); None when no class has ``k`` images.
    """
    labels = train_y.numpy()
    subset = np.flatnonzero(np.isin(labels, np.flatnonzero(np.bincount(labels) >= k)))
    if len(subset) == 0:
        return None
    chosen = subset[few_shot_indices(labels[subset], k, seed)]
    return linear_probe(train_x[chosen], train_y[chosen], test_x, test_y, num_classes)


def zero_shot_accuracy(embeddings: torch.Tensor, classifier: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """Top-1 (%) of the nearest class embedding.

    Args:
        embeddings (torch.Tensor): N x D normalised image embeddings.
        classifier (torch.Tensor): D x K class embeddings (the columns), as
            :func:`rils_mm.models.utils.zero_shot_weights.build_text_classifier` returns.
        labels (torch.Tensor): N class indices.

    Returns:
        float: Top-1 accuracy (%).
    """
    predictions = (embeddings @ classifier).argmax(1)
    return float((predictions == labels).float().mean() * 100)


def caption_recall(images: torch.Tensor, texts: torch.Tensor, captions: Sequence[str],
                   topk: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Image<->text R@K (%) where any item with the word-for-word same caption is a hit.

    Args:
        images (torch.Tensor): N x D normalised image embeddings; image i's caption is
            ``captions[i]``.
        texts (torch.Tensor): N x D normalised embeddings of ``captions``.
        captions (Sequence[str]): The N captions.
        topk (Sequence[int]): The K of R@K.

    Returns:
        dict[str, float]: ``i2t_r{K}`` and ``t2i_r{K}``.
    """
    ids = {caption: i for i, caption in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[c] for c in captions])
    same = caption_ids[:, None] == caption_ids[None, :]  # image i x text j
    similarity = images.float() @ texts.float().t()
    out = {}
    for k in topk:
        i2t = similarity.topk(k, dim=1).indices  # N x k texts per image
        t2i = similarity.t().topk(k, dim=1).indices  # N x k images per text
        out[f'i2t_r{k}'] = float(same.gather(1, i2t).any(1).float().mean() * 100)
        out[f't2i_r{k}'] = float(same.t().gather(1, t2i).any(1).float().mean() * 100)
    return out
