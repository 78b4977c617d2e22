"""Zero-shot image<->text retrieval test sets in Karpathy's split format (COCO 5k, Flickr30K 1k).

Both sets are distributed with Karpathy's split files ``dataset_coco.json`` and
``dataset_flickr30k.json``: ``{"images": [{"filename", "filepath" (COCO only), "split",
"sentences": [{"raw", ...}, ...]}, ...]}``. mmpretrain's ``Flickr30kRetrieval`` reads that
format but ignores ``filepath`` (COCO images live in ``val2014/``) and its ``COCORetrieval``
needs a re-packed COCO-caption file, so :class:`KarpathyRetrieval` extends the former. Its test
items (one per image, with all its captions) are what mmpretrain's retrieval pipelines
(``PackInputs(algorithm_keys=['text', 'gt_text_id', 'gt_image_id'], meta_keys=['image_id'])``)
and our ``ZeroShotRetriever`` expect.
"""
import os.path as osp
from typing import List

import mmengine
from mmengine.fileio import LocalBackend, get_file_backend
# Imported from its module: mmpretrain only re-exports it when transformers is installed.
from mmpretrain.datasets.flickr30k_retrieval import Flickr30kRetrieval
from mmpretrain.registry import DATASETS

__all__ = ['KarpathyRetrieval']


@DATASETS.register_module()
class KarpathyRetrieval(Flickr30kRetrieval):
    """COCO or Flickr30K retrieval split from a Karpathy split file.

    Test mode (``test_mode=True``) gives one item per image: ``img_path``, ``image_id`` (its
    index in the split), ``text`` (its captions), ``gt_text_id`` (their global indices, in file
    order) and ``gt_image_id``. Train mode gives one item per caption, as mmpretrain's
    retrieval datasets do.

    Args:
        data_root (str): Dataset root, e.g. ``data/coco``.
        data_prefix (str): Image folder relative to ``data_root``; an image is found at
            ``<data_prefix>/<filepath>/<filename>``.
        ann_file (str): The Karpathy split file, e.g. ``annotations/dataset_coco.json``
            (JSON; a YAML copy is read with the safe loader, a pickle is refused: see
            :mod:`rils_mm.compat.data_files`).
        split (str): ``'train'``, ``'val'`` or ``'test'``; COCO's ``'restval'`` images count as
            ``'train'`` when ``restval_as_train``. Defaults to ``'test'``.
        restval_as_train (bool): Defaults to True.
        check_images (bool): Verify every image file exists (local files only) and fail with
            the list of missing ones. Defaults to True.
        **kwargs: Other arguments of mmpretrain's ``BaseDataset``.
    """

    def __init__(self,
                 data_root: str,
                 data_prefix: str,
                 ann_file: str,
                 split: str = 'test',
                 restval_as_train: bool = True,
                 check_images: bool = True,
                 **kwargs):
        self.restval_as_train = restval_as_train
        self.check_images = check_images
        super().__init__(
            data_root=data_root, data_prefix=data_prefix, ann_file=ann_file, split=split,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        img_prefix = self.data_prefix['img_path']
        backend = get_file_backend(img_prefix)
        annotations = mmengine.load(self.ann_file)
        images, captions = [], []
        for img in annotations['images']:
            split = img['split']
            if split == 'restval' and self.restval_as_train:
                split = 'train'
            if split != self.split:
                continue
            image_id = len(images)
            path = backend.join_path(img_prefix, img.get('filepath', ''), img['filename'])
            item = dict(
                ori_id=img.get('imgid', image_id),
                image_id=image_id,
                img_path=path,
                text=[],
                gt_text_id=[],
                gt_image_id=[])
            for sentence in img['sentences']:
                text_id = len(captions)
                caption = dict(
                    text=sentence['raw'],
                    ori_id=sentence.get('sentid', text_id),
                    text_id=text_id,
                    image_ori_id=item['ori_id'],
                    image_id=image_id,
                    img_path=item['img_path'],
                    is_matched=True)
                captions.append(caption)
                item['text'].append(caption['text'])
                item['gt_text_id'].append(text_id)
                item['gt_image_id'].append(image_id)
            if not item['text']:
                raise ValueError(f'{self.ann_file}: image {img["filename"]} has no captions.')
            images.append(item)
        if not images:
            raise ValueError(f'{self.ann_file} has no images in split "{self.split}".')

        if self.check_images and isinstance(backend, LocalBackend):
            missing = [i['img_path'] for i in images if not osp.isfile(i['img_path'])]
            if missing:
                raise FileNotFoundError(
                    f'{len(missing)} images referenced by the captions in {self.ann_file} '
                    f'(split "{self.split}") do not exist, e.g. {missing[:5]}')

        self.img_size = len(images)
        self.text_size = len(captions)
        return images if self.test_mode else captions
