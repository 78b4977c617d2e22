"""Pack an (image or cached image features, caption tokens) pair in the form the RILS data
preprocessor expects."""
import copy
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS
from mmpretrain.structures import DataSample

from ..bad_samples import IMG_MODE_KEY, SKIPPED_KEY

_ATOMS = (str, bytes, int, float, bool, type(None))


def _is_immutable(value) -> bool:
    return isinstance(value, _ATOMS) or (isinstance(value, tuple) and
                                         all(_is_immutable(item) for item in value))


def set_metainfo_fields(data_sample, metainfo: dict) -> None:
    """``data_sample.set_metainfo(metainfo)`` without deep-copying the values that cannot
    change (strings, numbers, tuples of them): mmengine copies every value, which cost a
    quarter of a sample's packing and bookkeeping time. Containers are still copied."""
    for name, value in metainfo.items():
        data_sample.set_field(value if _is_immutable(value) else copy.deepcopy(value), name,
                              dtype=None, field_type='metainfo')


@TRANSFORMS.register_module()
class PackImageText(BaseTransform):
    """Pack ``img`` and ``text_tokens`` into ``inputs`` and the rest into a DataSample.

    Output::

        dict(inputs=dict(images=uint8 tensor 3 x H x W, texts=long tensor [77]),
             data_samples=DataSample(metainfo=dict(key=..., caption=..., ...)))

    ``default_collate`` stacks this into ``images`` B x 3 x H x W and ``texts`` B x 77, and keeps
    the data samples as a list. ``texts`` is left out when there are no tokens (image-only
    evaluation). ``gt_label``, when present, becomes the data sample's ground-truth label.

    Cached image features (:class:`LoadImageFeatures`: ``image_features`` and no ``img``) are
    packed as ``inputs['image_features']``, a float32 tensor of C values, in place of
    ``images`` (collated to B x C).

    Args:
        meta_keys (Sequence[str]): Result keys copied into the metainfo when present;
            ``text`` is stored under the name ``caption``.
    """

    DEFAULT_META_KEYS = ('key', 'text', 'img_path', 'ori_shape', 'img_shape', IMG_MODE_KEY,
                         SKIPPED_KEY, 'shard')

    def __init__(self, meta_keys: Sequence[str] = DEFAULT_META_KEYS) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        if 'img' not in results and 'image_features' in results:
            inputs = dict(image_features=self._pack_features(results))
        else:
            inputs = dict(images=self._pack_image(results))
        if results.get('text_tokens') is not None:
            inputs['texts'] = torch.as_tensor(results['text_tokens'], dtype=torch.long)
        data_sample = DataSample()
        set_metainfo_fields(data_sample, {('caption' if key == 'text' else key): results[key]
                                          for key in self.meta_keys if key in results})
        if results.get('gt_label') is not None:
            data_sample.set_gt_label(results['gt_label'])
        return dict(inputs=inputs, data_samples=data_sample)

    @staticmethod
    def _pack_image(results: dict) -> torch.Tensor:
        """The H x W x 3 uint8 image as a 3 x H x W tensor."""
        img = results['img']
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise TypeError(f'PackImageText expects an H x W x 3 uint8 RGB image in '
                            f'results["img"], got {img.dtype} {img.shape} for '
                            f'{results.get("key", results.get("img_path"))}')
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    @staticmethod
    def _pack_features(results: dict) -> torch.Tensor:
        """The cached C features as a float32 tensor."""
        features = np.asarray(results['image_features'])
        if features.ndim != 1 or not np.issubdtype(features.dtype, np.floating):
            raise TypeError(f'PackImageText expects a 1-D float array in '
                            f'results["image_features"], got {features.dtype} {features.shape} '
                            f'for {results.get("key")}')
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'
