"""ImageNet and its distribution-shift test sets, as folder datasets with ImageNet-1k labels.

Labels must line up with the zero-shot classifier's classes (class-name file, optionally a
class subset), so the folder -> label map is fixed by ImageNet's wnid order, never by whatever
folders happen to be present:

- ``ImageNetFolder``: sub-folders named by wnid. The ImageNet val set (``val/n01440764/...``),
  ImageNet-Sketch (1000 classes) and, with ``class_subset``, ImageNet-A and ImageNet-R (200
  classes each, label ``k`` = the ``k``-th index of the subset file).
- ``ImageNetV2``: sub-folders named by the ImageNet label index (``0`` ... ``999``), as the
  ImageNetV2 release lays them out; sorting names as strings would scramble the labels.
- ``ObjectNet``: the 113 ObjectNet classes that map to ImageNet classes, labels in the order of
  :func:`objectnet_class_groups`; images of the other classes are left out, as in the usual
  protocol (CLIP, WiSE-FT). Its images carry a 1-pixel red border: add ``CropBorder`` to the
  pipeline before resizing.
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.datasets import CustomDataset
from mmpretrain.datasets.custom import find_folders, get_samples
from mmpretrain.registry import DATASETS, TRANSFORMS

from .resources import load_class_subset, read_lines, resolve_data_file

__all__ = ['ImageNetFolder', 'ImageNetV2', 'ObjectNet', 'objectnet_class_groups', 'CropBorder']


class _FixedLabelFolder(CustomDataset):
    """``CustomDataset`` whose folder -> label map is given rather than sorted folder names.

    Subclasses implement :meth:`_folder_to_label` returning ``(classes, folder_to_idx)``.
    """

    def _folder_to_label(self, folders: List[str]) -> Tuple[Sequence[str], Dict[str, int]]:
        raise NotImplementedError

    def _find_samples(self) -> List[Tuple[str, int]]:
        folders, _ = find_folders(self.img_prefix)
        classes, folder_to_idx = self._folder_to_label(folders)
        samples, empty = get_samples(self.img_prefix, folder_to_idx, self.is_valid_file)
        if not samples:
            raise RuntimeError(f'{type(self).__name__}: no images found under {self.img_prefix}')
        if empty:
            raise RuntimeError(f'{type(self).__name__}: class folders without images under '
                               f'{self.img_prefix}: {sorted(empty)[:10]}')
        self.folder_to_idx = folder_to_idx
        self._metainfo['classes'] = tuple(classes)
        return samples


@DATASETS.register_module()
class ImageNetFolder(_FixedLabelFolder):
    """ImageNet-style folder of wnid sub-folders, labels in ImageNet-1k (or subset) order.

    With ``ann_file`` (mmpretrain's ``meta/val.txt``: ``<path> <label>`` lines, labels in
    ImageNet-1k order or in subset order) the file gives the labels instead of the folders.

    Args:
        data_root (str): The dataset root.
        data_prefix (str | dict): Image folder relative to ``data_root`` (e.g. ``'val'``).
        class_subset (str | Sequence[int], optional): ImageNet-1k indices of the classes
            present, e.g. ``'imagenet_r_indices.txt'`` (shipped); label ``k`` is the ``k``-th
            index. None means all 1000 classes.
        wnids_file (str): The 1000 wnids in label order. Defaults to the shipped
            ``'imagenet_wnids.txt'``.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.CustomDataset`.
    """

    def __init__(self,
                 data_root: str = '',
                 data_prefix: Union[str, dict] = '',
                 class_subset: Union[str, Sequence[int], None] = None,
                 wnids_file: str = 'imagenet_wnids.txt',
                 **kwargs):
        self.wnids = read_lines(wnids_file)
        self.wnids_file = resolve_data_file(wnids_file)
        self.class_subset = load_class_subset(class_subset, len(self.wnids))
        self.class_subset_source = class_subset if isinstance(class_subset, str) else None
        super().__init__(data_root=data_root, data_prefix=data_prefix, **kwargs)

    @property
    def _classes(self) -> List[str]:
        return [self.wnids[i] for i in (self.class_subset or range(len(self.wnids)))]

    def load_data_list(self) -> List[dict]:
        data_list = super().load_data_list()
        if self.ann_file:  # labels come from the file: check their range, record the classes
            classes = self._classes
            bad = [d['gt_label'] for d in data_list if not 0 <= d['gt_label'] < len(classes)]
            if bad:
                raise ValueError(f'{self.ann_file}: labels {sorted(set(bad))[:5]} outside '
                                 f'[0, {len(classes)})')
            self._metainfo['classes'] = tuple(classes)
        return data_list

    def _folder_to_label(self, folders):
        classes = self._classes
        missing = sorted(set(classes) - set(folders))
        extra = sorted(set(folders) - set(classes))
        if missing or extra:
            subset = self.class_subset_source or (
                'the given class_subset' if self.class_subset else 'all of ImageNet-1k')
            raise ValueError(
                f'The folders of {self.img_prefix} do not match the classes of {subset} '
                f'(wnids from {self.wnids_file}): {len(missing)} missing {missing[:5]}, '
                f'{len(extra)} unexpected {extra[:5]}.')
        return classes, {wnid: label for label, wnid in enumerate(classes)}


@DATASETS.register_module()
class ImageNetV2(_FixedLabelFolder):
    """ImageNetV2 (any of its three variants): folders ``0`` ... ``999`` named by label.

    Args:
        data_root (str): The dataset root, e.g. ``data/imagenetv2-matched-frequency-format-val``.
        num_classes (int): Defaults to 1000.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.CustomDataset`.
    """

    def __init__(self, data_root: str = '', num_classes: int = 1000, **kwargs):
        self.num_classes = num_classes
        super().__init__(data_root=data_root, **kwargs)

    def _folder_to_label(self, folders):
        bad = [f for f in folders if not (f.isdigit() and int(f) < self.num_classes)]
        if bad:
            raise ValueError(f'ImageNetV2 folders must be label indices 0..'
                             f'{self.num_classes - 1}; found {bad[:5]} in {self.img_prefix}')
        return [str(i) for i in range(self.num_classes)], {f: int(f) for f in folders}


def objectnet_class_groups(mappings_dir: str) -> Tuple[List[str], List[str], List[List[int]]]:
    """ObjectNet classes that overlap ImageNet-1k, from the mapping files ObjectNet ships.

    Reads ``folder_to_objectnet_label.json``, ``objectnet_to_imagenet_1k.json``,
    ``pytorch_to_imagenet_2012_id.json`` and ``imagenet_to_label_2012_v2`` from
    ``objectnet-1.0/mappings``.

    Args:
        mappings_dir (str): That folder.

    Returns:
        tuple: ``folders`` (image sub-folder of each class), ``names`` (ObjectNet class names)
        and ``groups`` (the ImageNet-1k label indices of each class), all in label order
        (sorted by folder name).
    """

    def path(name):
        p = osp.join(mappings_dir, name)
        if not osp.isfile(p):
            raise FileNotFoundError(f'ObjectNet mapping file {p} not found; it ships in '
                                    'objectnet-1.0/mappings of the ObjectNet release.')
        return p

    with open(path('folder_to_objectnet_label.json')) as f:
        folder_to_name = json.load(f)
    with open(path('objectnet_to_imagenet_1k.json')) as f:
        name_to_in_names = {k: v.split('; ') for k, v in json.load(f).items()}
    with open(path('pytorch_to_imagenet_2012_id.json')) as f:
        line_to_label = {int(line): int(label) for label, line in json.load(f).items()}
    with open(path('imagenet_to_label_2012_v2')) as f:
        in_name_to_label = {name.strip(): line_to_label[i] for i, name in enumerate(f)}

    folders, names, groups = [], [], []
    for folder in sorted(folder_to_name):
        name = folder_to_name[folder]
        if name not in name_to_in_names:
            continue
        unknown = [n for n in name_to_in_names[name] if n not in in_name_to_label]
        if unknown:
            raise ValueError(f'{path("objectnet_to_imagenet_1k.json")}: ImageNet names of '
                             f'"{name}" not in imagenet_to_label_2012_v2: {unknown}')
        folders.append(folder)
        names.append(name)
        groups.append([in_name_to_label[n] for n in name_to_in_names[name]])
    return folders, names, groups


@DATASETS.register_module()
class ObjectNet(_FixedLabelFolder):
    """ObjectNet test set restricted to the classes that overlap ImageNet-1k.

    Args:
        data_root (str): ``objectnet-1.0``, holding ``images/`` and ``mappings/``.
        data_prefix (str | dict): Defaults to ``'images'``.
        mappings_dir (str, optional): Defaults to ``<data_root>/mappings``.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.CustomDataset`.
    """

    def __init__(self,
                 data_root: str = '',
                 data_prefix: Union[str, dict] = 'images',
                 mappings_dir: Optional[str] = None,
                 **kwargs):
        self.mappings_dir = mappings_dir or osp.join(data_root, 'mappings')
        self.folders, self.names, self.class_groups = objectnet_class_groups(self.mappings_dir)
        super().__init__(data_root=data_root, data_prefix=data_prefix, **kwargs)

    def _folder_to_label(self, folders):
        missing = sorted(set(self.folders) - set(folders))
        if missing:
            raise ValueError(f'ObjectNet class folders missing under {self.img_prefix}: '
                             f'{missing[:5]} ({len(missing)} in all)')
        return self.names, {f: label for label, f in enumerate(self.folders)}


@TRANSFORMS.register_module()
class CropBorder(BaseTransform):
    """Cut ``pixels`` from every side of ``results['img']`` (ObjectNet's red frame).

    Required keys: ``img``. Modified keys: ``img``, ``img_shape``.

    Args:
        pixels (int): Border width to remove. Defaults to 2 (what WiSE-FT's ObjectNet
            loader removes; the frame itself is 1 pixel wide).
    """

    def __init__(self, pixels: int = 2):
        self.pixels = pixels

    def transform(self, results: dict) -> dict:
        p = self.pixels
        img: np.ndarray = results['img']
        results['img'] = img[p:img.shape[0] - p, p:img.shape[1] - p]
        results['img_shape'] = results['img'].shape[:2]
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(pixels={self.pixels})'
