"""Few-shot training sets: ``k`` images per class, drawn with a seed."""
import copy
from typing import List, Union

import numpy as np
from mmengine.dataset import BaseDataset
from mmpretrain.registry import DATASETS

__all__ = ['FewShotDataset', 'few_shot_indices']


def few_shot_indices(labels: Union[List[int], np.ndarray], shots: int, seed: int) -> List[int]:
    """``shots`` indices per class, sampled without replacement, returned in ascending order.

    The draw depends only on ``labels``, ``shots`` and ``seed`` (not on the process or rank),
    so every rank and every run with the same seed trains on the same images.

    Args:
        labels (Sequence[int]): Label of every sample of the full dataset.
        shots (int): Images per class.
        seed (int): Seed of the draw.

    Returns:
        list[int]: The selected dataset indices.

    Raises:
        ValueError: If a class has fewer than ``shots`` images.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise ValueError(f'Class {label} has {len(members)} images, fewer than {shots} shots.')
        chosen.extend(rng.choice(members, size=shots, replace=False).tolist())
    return sorted(chosen)


@DATASETS.register_module()
class FewShotDataset:
    """A ``k``-shot subset of a labelled dataset (e.g. 1/2/10-shot ImageNet).

    Args:
        dataset (dict | BaseDataset): The full training set (config or object).
        shots (int): Images per class.
        seed (int): Seed of the draw. Defaults to 0.
        lazy_init (bool): Defer building the index. Defaults to False.
    """

    def __init__(self,
                 dataset: Union[dict, BaseDataset],
                 shots: int,
                 seed: int = 0,
                 lazy_init: bool = False) -> None:
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if shots < 1:
            raise ValueError(f'shots must be >= 1, got {shots}')
        self.shots = shots
        self.seed = seed
        self._metainfo = self.dataset.metainfo
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self._metainfo)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        self.dataset.full_init()
        labels = [self.dataset.get_cat_ids(i)[0] for i in range(len(self.dataset))]
        self.indices = few_shot_indices(labels, self.shots, self.seed)
        self._fully_initialized = True

    def get_data_info(self, idx: int) -> dict:
        return self.dataset.get_data_info(self.indices[idx])

    def get_cat_ids(self, idx: int) -> List[int]:
        return self.dataset.get_cat_ids(self.indices[idx])

    def __getitem__(self, idx: int) -> dict:
        return self.dataset[self.indices[idx]]

    def __len__(self) -> int:
        return len(self.indices)
