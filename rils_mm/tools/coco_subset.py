"""A seeded, deterministic subset of a COCO-format annotation file
(``tools/dataset_converters/coco_subset.py``), for the label-efficient COCO configs (2, 10 and
20 % of train2017).

The images are drawn uniformly without replacement from all images of the file (sorted by id
first, so the order of the file does not matter), with numpy's ``default_rng(seed)``; the count
is ``round(fraction * number of images)``. The subset keeps those images, their annotations and
every category, and its ``info`` records the source, fraction, seed and count. The chosen image
ids are also written one per line next to it (``<out>.ids.txt``). Only json and numpy: no torch.
"""
import json
import os
import os.path as osp
from typing import List, Tuple

import numpy as np


class SubsetError(Exception):
    """An annotation file or fraction that cannot make a subset; the message is one line."""


def read_annotations(path: str) -> dict:
    if not osp.isfile(path):
        raise SubsetError(f'{path}: annotation file not found')
    try:
        with open(path, encoding='utf-8') as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SubsetError(f'{path}: not a json file ({err})') from None
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) or not data[
            'images']:
        raise SubsetError(f'{path}: expected a COCO annotation file with a non-empty "images" '
                          f'list')
    return data


def choose_images(image_ids: List[int], fraction: float, seed: int) -> List[int]:
    """``round(fraction * len(image_ids))`` ids, drawn with ``default_rng(seed)``, sorted."""
    if not 0 < fraction <= 1:
        raise SubsetError(f'--fraction must be in (0, 1], got {fraction}')
    count = round(fraction * len(image_ids))
    if count == 0:
        raise SubsetError(f'--fraction {fraction} of {len(image_ids)} images is no image')
    chosen = np.random.default_rng(seed).choice(sorted(image_ids), size=count, replace=False)
    return sorted(int(i) for i in chosen)


def make_subset(path: str, fraction: float, seed: int = 0) -> Tuple[dict, List[int]]:
    """The subset of the annotation file ``path`` and its image ids.

    Args:
        path (str): A COCO-format annotation file.
        fraction (float): Share of the images to keep, in (0, 1].
        seed (int): Seed of numpy's generator. Defaults to 0.

    Returns:
        tuple[dict, list[int]]: The subset's annotation dict and its sorted image ids.
    """
    data = read_annotations(path)
    ids = choose_images([image['id'] for image in data['images']], fraction, seed)
    keep = set(ids)
    subset = dict(data)
    subset['images'] = [image for image in data['images'] if image['id'] in keep]
    subset['annotations'] = [ann for ann in data.get('annotations', [])
                             if ann['image_id'] in keep]
    subset['info'] = dict(data.get('info') or {}, subset_of=osp.basename(path),
                          fraction=fraction, seed=seed, num_images=len(ids))
    return subset, ids


def write_subset(path: str, out: str, fraction: float, seed: int = 0) -> Tuple[str, int, int]:
    """Write the subset to ``out`` and its image ids to ``<out>.ids.txt``.

    Returns:
        tuple: The ids file, the number of images and of annotations kept.
    """
    subset, ids = make_subset(path, fraction, seed)
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    with open(out, 'w', encoding='utf-8') as file:
        json.dump(subset, file)
    ids_file = out + '.ids.txt'
    with open(ids_file, 'w', encoding='utf-8') as file:
        file.write(''.join(f'{i}\n' for i in ids))
    return ids_file, len(ids), len(subset['annotations'])
