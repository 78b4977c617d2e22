"""Map-style image-text datasets: CSV/TSV, JSONL and COCO captions.

They subclass mmengine's ``BaseDataset`` (lazy init, ``serialize_data``), so mmengine's
samplers split, shuffle and resume them. Rows with unusable captions are dropped when the
table is read (and counted in :attr:`BaseImageTextDataset.dropped`), which keeps "every good
sample once per epoch" exact. An image that turns out bad only when decoded is replaced by a
deterministically chosen other sample, so the batch keeps its size; the reason travels in the
replacement's metainfo (``skipped_before``) to :class:`BadSampleHook`. (Exactly-once with
skipping is the streaming :class:`ImageTextShardDataset`'s job; here a replacement is a
duplicate.)
"""
import os.path as osp
import random
import warnings
from collections import Counter
from typing import List, Optional, Sequence

import torch
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmpretrain.registry import DATASETS
from torch.utils.data import get_worker_info

from .bad_samples import FILTERED, MISSING_IMAGE, SKIPPED_KEY, BadSampleError
from .caption_files import read_coco_captions, read_csv_captions, read_jsonl_captions
from .image_text_shards import attach_metainfo, build_pipeline, mix_seed, seeded_global_rngs

AUGMENT_SALT = 0x5EED  # keeps the augmentation seed apart from the caption-sampling one


class BaseImageTextDataset(BaseDataset):
    """Common part of the map-style image-text datasets.

    ``load_data_list`` returns dicts with ``img_path`` (relative to ``data_prefix['img_path']``
    unless absolute), ``key`` and either ``text`` or ``captions`` (a list, one of which is
    sampled per visit from ``Random(seed, epoch, index)``), plus optional ``gt_label``.

    Args:
        ann_file (str): The caption table.
        pipeline (Sequence[dict]): Transforms, from mmpretrain's registry.
        data_root (str): Prefix of ``ann_file`` and ``data_prefix``.
        data_prefix (dict): ``dict(img_path=folder)`` images are relative to.
        seed (int): Seed for caption sampling, augmentation (per visit: seed, epoch, index)
            and choosing replacements of bad images.
        max_refetch (int): Replacements tried before giving up on an index.
        test_mode (bool): Bad images raise instead of being replaced.
        lazy_init (bool): Defer reading the table until first use.
        serialize_data (bool): Keep the rows in one numpy buffer (cheap to share with
            workers).
        indices (int | Sequence[int], optional): Keep only these rows (or the first N).
    """

    def __init__(self,
                 ann_file: str,
                 pipeline: Sequence[dict] = (),
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 seed: int = 0,
                 max_refetch: int = 10,
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 indices=None) -> None:
        self.seed = int(seed)
        self.dropped: Counter = Counter()
        # Shared memory, so persistent dataloader workers see set_epoch from the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=dict(img_path='') if data_prefix is None else data_prefix,
            pipeline=list(build_pipeline(pipeline).transforms),
            test_mode=test_mode,
            lazy_init=lazy_init,
            serialize_data=serialize_data,
            max_refetch=max_refetch,
            indices=indices)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for per-visit caption sampling (called by :class:`DataResumeHook`)."""
        self._epoch.fill_(int(epoch))

    def read_rows(self, ann_file: str):
        """Return ``(rows, dropped_counts)`` from the table; implemented by subclasses."""
        raise NotImplementedError

    def load_data_list(self) -> List[dict]:
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'{type(self).__name__}: annotation file {self.ann_file} '
                                    f'does not exist')
        rows, dropped = self.read_rows(self.ann_file)
        self.dropped.update(dropped)
        if dropped:
            print_log(f'{type(self).__name__}: dropped {sum(dropped.values())} row(s) of '
                      f'{self.ann_file}: {dict(dropped)}', logger='current', level=30)
        prefix = self.data_prefix.get('img_path', '')
        for row in rows:
            row['img_path'] = osp.join(prefix, row['img_path'])
        return rows

    def prepare_data(self, idx: int):
        data_info = self.get_data_info(idx)
        epoch = int(self._epoch)
        captions = data_info.pop('captions', None)
        if captions is not None:
            rng = random.Random(mix_seed(self.seed, epoch, idx))
            data_info['text'] = captions[rng.randrange(len(captions))]
            if self.test_mode:  # evaluation scores against all of them (captioning metrics)
                data_info['captions'] = list(captions)
        # Augmentation draws from a per-visit seed, not from the worker's running generator:
        # the same sample in the same epoch gets the same crop whichever worker loads it and
        # whether or not the run was resumed in between (the order comes from the sampler).
        with seeded_global_rngs(mix_seed(self.seed, epoch, idx, AUGMENT_SALT),
                                restore=get_worker_info() is None):
            return self.pipeline(data_info)

    def _replacement(self, idx: int, current: int, attempt: int) -> int:
        """A seeded choice among the other samples (so a resumed run picks the same)."""
        if len(self) < 2:
            return current
        other = random.Random(mix_seed(self.seed, idx, attempt)).randrange(len(self) - 1)
        return other + (other >= current)

    def __getitem__(self, idx: int) -> dict:
        if not self._fully_initialized:
            self.full_init()
        skipped: Counter = Counter()
        current = idx
        for attempt in range(self.max_refetch + 1):
            try:
                output = self.prepare_data(current)
                if output is None:
                    raise BadSampleError(FILTERED, str(self.get_data_info(current)['img_path']))
            except BadSampleError as error:
                if self.test_mode:
                    raise ValueError(f'{type(self).__name__}[{current}] is unusable: {error}; '
                                     f'{self._image_folder_hint(error.reason)}')
                last_error = error
                skipped[error.reason] += 1
                if sum(skipped.values()) == 1:
                    warnings.warn(f'Replacing bad sample {current} ({error})')
                current = self._replacement(idx, current, attempt)
                continue
            return attach_metainfo(output, {SKIPPED_KEY: dict(skipped)})
        raise RuntimeError(f'{type(self).__name__}: sample {idx} and {self.max_refetch} '
                           f'replacements were all unusable ({dict(skipped)}), the last one '
                           f'{last_error}; {self._image_folder_hint(last_error.reason)}')

    def _image_folder_hint(self, reason: str) -> str:
        folder = self.data_prefix.get('img_path', '')
        hint = (f'the images of {self.ann_file} are read from data_prefix img_path={folder!r} '
                f'({osp.abspath(folder)})')
        # Images that are all missing usually mean data_root/data_prefix name the wrong folder.
        return hint + ('; check data_root and data_prefix' if reason == MISSING_IMAGE else '')


@DATASETS.register_module()
class CsvImageTextDataset(BaseImageTextDataset):
    """Image paths and captions from a CSV/TSV, in open_clip's layout.

    Args:
        img_key (str): Image column (open_clip's ``--csv-img-key``).
        caption_key (str): Caption column (``--csv-caption-key``).
        sep (str): Separator (``--csv-separator``), tab by default.
        label_key (str, optional): Integer class column, kept as ``gt_label``.
        quoting (str): ``'minimal'`` (quotes may enclose a field) or ``'none'`` (quotes are
            plain text: for captions holding literal quote characters); see
            :func:`read_csv_captions`.
        **kwargs: See :class:`BaseImageTextDataset`.
    """

    def __init__(self,
                 ann_file: str,
                 img_key: str = 'filepath',
                 caption_key: str = 'title',
                 sep: str = '\t',
                 label_key: Optional[str] = None,
                 quoting: str = 'minimal',
                 **kwargs) -> None:
        self.img_key, self.caption_key, self.sep = img_key, caption_key, sep
        self.quoting = quoting
        self.label_key = label_key
        super().__init__(ann_file, **kwargs)

    def read_rows(self, ann_file: str):
        extra = (self.label_key, ) if self.label_key else ()
        rows, dropped = read_csv_captions(ann_file, self.img_key, self.caption_key, self.sep,
                                          extra, self.quoting)
        return _labels_to_int(rows, self.label_key, ann_file), dropped


@DATASETS.register_module()
class JsonlImageTextDataset(BaseImageTextDataset):
    """Image paths and captions from a JSON-lines file.

    Args:
        img_key (str): Key of the image path in each object.
        caption_key (str): Key of the caption.
        label_key (str, optional): Integer class key, kept as ``gt_label``.
        **kwargs: See :class:`BaseImageTextDataset`.
    """

    def __init__(self,
                 ann_file: str,
                 img_key: str = 'filepath',
                 caption_key: str = 'caption',
                 label_key: Optional[str] = None,
                 **kwargs) -> None:
        self.img_key, self.caption_key, self.label_key = img_key, caption_key, label_key
        super().__init__(ann_file, **kwargs)

    def read_rows(self, ann_file: str):
        extra = (self.label_key, ) if self.label_key else ()
        rows, dropped = read_jsonl_captions(ann_file, self.img_key, self.caption_key, extra)
        return _labels_to_int(rows, self.label_key, ann_file), dropped


@DATASETS.register_module()
class CocoCaptionDataset(BaseImageTextDataset):
    """COCO captions: one item per image, one of its captions sampled per visit.

    ``data_prefix=dict(img_path='train2017')`` points at the image folder.
    """

    def read_rows(self, ann_file: str):
        return read_coco_captions(ann_file)


def _labels_to_int(rows: List[dict], label_key: Optional[str], ann_file: str) -> List[dict]:
    if not label_key:
        return rows
    for row in rows:
        if label_key not in row:
            raise KeyError(f'{ann_file}: row {row["key"]} has no {label_key!r} label')
        value = row.pop(label_key)
        try:
            row['gt_label'] = int(value)
        except (TypeError, ValueError):
            raise ValueError(f'{ann_file}: row {row["key"]} label {value!r} is not an '
                             f'integer') from None
    return rows
