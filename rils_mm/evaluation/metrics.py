"""Metrics of zero-shot evaluation, registered in mmpretrain's ``METRICS``.

- ``ZeroShotAccuracy``: mmpretrain's ``Accuracy`` (top-1/top-5) plus a check that the classifier
  has as many classes as the dataset, naming the class-name file when it does not.
- ``ImageTextRetrievalRecall``: image->text and text->image R@K, mean and median rank, computed
  as open_clip's ``get_clip_metrics`` (rank of the ground truth among all candidates), extended
  to several captions per image the usual way (an image counts as retrieved at K when any of
  its captions is in the top K).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmpretrain.evaluation import Accuracy
from mmpretrain.registry import METRICS

__all__ = ['ZeroShotAccuracy', 'ImageTextRetrievalRecall', 'retrieval_ranks', 'retrieval_metrics']


@METRICS.register_module()
class ZeroShotAccuracy(Accuracy):
    """mmpretrain ``Accuracy`` that refuses a classifier/dataset class-count mismatch.

    The zero-shot model scores the classes of its class-name file; a dataset with a different
    number of classes would otherwise be scored silently against the wrong label space. The
    check uses ``dataset_meta['classes']``, which mmengine's loops set from the dataset.
    Arguments are those of :class:`mmpretrain.evaluation.Accuracy`.
    """

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        classes = (self.dataset_meta or {}).get('classes')
        if classes is not None:
            for sample in data_samples:
                num_scores = sample['pred_score'].numel()
                if num_scores != len(classes):
                    raise ValueError(
                        f'The zero-shot classifier scores {num_scores} classes (class names from '
                        f'{sample.get("classnames_file", "its class-name file")}, class subset '
                        f'{sample.get("class_subset_file", None)}) but the dataset has '
                        f'{len(classes)} classes.')
        super().process(data_batch, data_samples)


def retrieval_ranks(image_feats: torch.Tensor,
                    text_feats: torch.Tensor,
                    text_to_image: torch.Tensor,
                    chunk_size: int = 1024) -> Dict[str, torch.Tensor]:
    """0-based rank of the ground truth in each query's ranking of all candidates.

    The rank is the number of candidates scored strictly higher than the best ground truth,
    which is the ground truth's position in open_clip's ``argsort`` when scores have no ties
    (ties count in the query's favour here, where argsort's order is arbitrary).

    Args:
        image_feats (Tensor): ``N x D`` L2-normalised image embeddings.
        text_feats (Tensor): ``M x D`` L2-normalised text embeddings.
        text_to_image (Tensor): ``M`` long, the image index of each text.
        chunk_size (int): Images per block of the ``N x M`` similarity, to bound memory.

    Returns:
        dict: ``image_to_text``: ``N`` ranks of each image's best caption among all ``M``
        texts; ``text_to_image``: ``M`` ranks of each text's image among all ``N`` images.
    """
    num_images, num_texts = image_feats.size(0), text_feats.size(0)
    text_to_image = text_to_image.long()
    if torch.bincount(text_to_image, minlength=num_images).min() == 0:
        raise ValueError('Every image needs at least one caption for image->text retrieval.')
    i2t_rank = torch.empty(num_images, dtype=torch.long)
    t2i_rank = torch.zeros(num_texts, dtype=torch.long)
    true_t2i = torch.empty(num_texts, dtype=image_feats.dtype)
    # Two passes over blocks of the similarity: the ground-truth scores are read from the same
    # matmul they are compared with, so rounding cannot move a ground truth past itself.
    for pass_id in range(2):
        for start in range(0, num_images, chunk_size):
            sim = image_feats[start:start + chunk_size] @ text_feats.t()  # n x M
            rows = torch.arange(start, start + sim.size(0))
            if pass_id == 0:
                positive = text_to_image[None, :] == rows[:, None]  # n x M
                best_pos = sim.masked_fill(~positive, float('-inf')).max(dim=1).values
                i2t_rank[rows] = (sim > best_pos[:, None]).sum(dim=1)
                cols = positive.any(dim=0).nonzero().squeeze(1)
                true_t2i[cols] = sim[text_to_image[cols] - start, cols]
            else:
                t2i_rank += (sim > true_t2i[None, :]).sum(dim=0)
    return dict(image_to_text=i2t_rank, text_to_image=t2i_rank)


def retrieval_metrics(image_feats: torch.Tensor,
                      text_feats: torch.Tensor,
                      text_to_image: torch.Tensor,
                      topk: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@K (in %), mean and median rank (1-based) in both directions.

    Key names follow open_clip's ``get_clip_metrics`` (``image_to_text_R@1``, ...); with one
    caption per image the values equal its values (R@K there is a fraction, here a percent).

    Args:
        image_feats (Tensor): ``N x D`` L2-normalised image embeddings.
        text_feats (Tensor): ``M x D`` L2-normalised text embeddings.
        text_to_image (Tensor): ``M`` long, the image index of each text.
        topk (Sequence[int]): The K of R@K.

    Returns:
        dict[str, float]: The metrics.
    """
    ranks = retrieval_ranks(image_feats.float(), text_feats.float(), text_to_image)
    metrics = {}
    for name, rank in ranks.items():
        rank = rank.numpy()
        for k in topk:
            metrics[f'{name}_R@{k}'] = float(np.mean(rank < k) * 100)
        metrics[f'{name}_mean_rank'] = float(rank.mean() + 1)
        metrics[f'{name}_median_rank'] = float(np.floor(np.median(rank)) + 1)
    return metrics


@METRICS.register_module()
class ImageTextRetrievalRecall(BaseMetric):
    """Zero-shot image<->text retrieval R@K over a whole test set.

    Expects each prediction (from ``ZeroShotRetriever``) to carry ``image_id`` (the image's
    index in the test set), ``image_feat`` (``D``), ``gt_text_id`` (the global indices of its
    ``n`` captions) and ``text_feats`` (``n x D``). mmengine gathers these from all ranks and
    drops the sampler's padding before :meth:`compute_metrics`, which then ranks every caption
    against every image.

    Args:
        topk (Sequence[int]): The K of R@K. Defaults to (1, 5, 10).
        collect_device (str): ``'cpu'`` or ``'gpu'``, see ``BaseMetric``.
        prefix (str, optional): Metric name prefix. Defaults to ``'retrieval'``.
    """
    default_prefix: Optional[str] = 'retrieval'

    def __init__(self,
                 topk: Sequence[int] = (1, 5, 10),
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                dict(
                    image_id=int(sample['image_id']),
                    image_feat=sample['image_feat'].float().cpu(),
                    text_ids=[int(t) for t in sample['gt_text_id']],
                    text_feats=sample['text_feats'].float().cpu()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        by_image = {r['image_id']: r for r in results}  # also drops any duplicate
        image_ids = sorted(by_image)
        image_feats = torch.stack([by_image[i]['image_feat'] for i in image_ids])
        text_feats, text_ids, text_to_image = [], [], []
        for row, image_id in enumerate(image_ids):
            r = by_image[image_id]
            if len(r['text_ids']) != r['text_feats'].size(0):
                raise ValueError(f'Image {image_id}: {len(r["text_ids"])} caption ids but '
                                 f'{r["text_feats"].size(0)} caption embeddings.')
            text_feats.append(r['text_feats'])
            text_ids.extend(r['text_ids'])
            text_to_image.extend([row] * len(r['text_ids']))
        if len(set(text_ids)) != len(text_ids):
            raise ValueError('A caption id belongs to more than one image.')
        # Order texts by their global id so that results do not depend on the sampler.
        order = torch.as_tensor(np.argsort(text_ids, kind='stable'))
        text_feats = torch.cat(text_feats)[order]
        text_to_image = torch.as_tensor(text_to_image)[order]
        return retrieval_metrics(image_feats, text_feats, text_to_image, self.topk)
