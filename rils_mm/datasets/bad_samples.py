"""Bad-sample vocabulary shared by the datasets, transforms and :class:`BadSampleHook`.

A transform or dataset that meets a sample it cannot use raises :class:`BadSampleError` with
one of the reasons below. The dataset catches it, skips the sample and adds the reason to the
``skipped_before`` counts that travel with the *next* good sample (in its data sample's
metainfo). Counts therefore ride inside the batches, which works with any number of dataloader
workers, persistent workers and DDP ranks, and they count exactly the samples the trainer has
consumed (not what workers prefetched), so they stay right across a resume.
"""
from collections import Counter
from typing import Dict, Optional

# Reasons a sample is skipped.
MISSING_IMAGE = 'missing_image'
MISSING_CAPTION = 'missing_caption'
EMPTY_CAPTION = 'empty_caption'
CAPTION_NOT_UTF8 = 'caption_not_utf8'
UNDECODABLE_IMAGE = 'undecodable_image'
TRUNCATED_IMAGE = 'truncated_image'
IMAGE_TOO_LARGE = 'image_too_large'
IMAGE_TOO_SMALL = 'image_too_small'
EXTREME_ASPECT_RATIO = 'extreme_aspect_ratio'
UNREADABLE_SAMPLE = 'unreadable_sample'
UNDECODABLE_FEATURES = 'undecodable_features'  # a cached-feature .npy member
FILTERED = 'filtered_by_pipeline'
# An unreadable shard (or tail) is counted twice: once per shard (UNREADABLE_SHARD, apart
# from the samples) and by its estimated number of lost samples (UNREADABLE_SHARD_SAMPLES,
# a bad-sample reason like the others, so it counts toward BadSampleHook's limit).
UNREADABLE_SHARD = 'unreadable_shard'
UNREADABLE_SHARD_SAMPLES = 'unreadable_shard_samples'

SAMPLE_REASONS = (MISSING_IMAGE, MISSING_CAPTION, EMPTY_CAPTION, CAPTION_NOT_UTF8,
                  UNDECODABLE_IMAGE, TRUNCATED_IMAGE, IMAGE_TOO_LARGE, IMAGE_TOO_SMALL,
                  EXTREME_ASPECT_RATIO, UNREADABLE_SAMPLE, FILTERED,
                  UNDECODABLE_FEATURES)
SHARD_REASONS = (UNREADABLE_SHARD, )

# Metainfo keys written by the datasets and read by the hooks.
SKIPPED_KEY = 'skipped_before'
BAD_SHARDS_KEY = 'bad_shards'  # paths of the unreadable shards skipped before the sample
IMG_MODE_KEY = 'img_mode'


class BadSampleError(Exception):
    """A sample that must be skipped, with a machine-readable reason.

    Args:
        reason (str): One of :data:`SAMPLE_REASONS`.
        detail (str): What was wrong, for logs (file/key and the value seen).
    """

    def __init__(self, reason: str, detail: str = '') -> None:
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_caption(raw: Optional[bytes], where: str = '') -> str:
    """Turn raw caption bytes (or a str) into a stripped, non-empty caption.

    Args:
        raw (bytes | str | None): The caption as stored; None when it is missing.
        where (str): Sample identifier used in the error detail.

    Returns:
        str: The caption with surrounding whitespace removed.

    Raises:
        BadSampleError: ``missing_caption``, ``caption_not_utf8`` or ``empty_caption``.
    """
    if raw is None:
        raise BadSampleError(MISSING_CAPTION, where)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode('utf-8')
        except UnicodeDecodeError as error:
            raise BadSampleError(CAPTION_NOT_UTF8, f'{where}: {error}') from None
    if not isinstance(raw, str):
        raise BadSampleError(MISSING_CAPTION, f'{where}: caption is {type(raw).__name__}')
    caption = raw.strip()
    if not caption:
        raise BadSampleError(EMPTY_CAPTION, where)
    return caption


def counts_from_batch(data_batch: dict) -> Dict[str, int]:
    """Read what one collated batch says about skipped and converted samples.

    Args:
        data_batch (dict): ``dict(inputs=..., data_samples=[DataSample, ...])`` as given by
            ``default_collate`` over :class:`PackImageText` outputs.

    Returns:
        dict: ``good`` (samples in the batch), each skip reason with its count, and
        ``converted/<PIL mode>`` for images converted to RGB.
    """
    data_samples = data_batch.get('data_samples') or []
    counts: Counter = Counter(good=len(data_samples))
    for data_sample in data_samples:
        meta = data_sample.metainfo if hasattr(data_sample, 'metainfo') else data_sample
        counts.update(meta.get(SKIPPED_KEY) or {})
        mode = meta.get(IMG_MODE_KEY)
        if mode and mode != 'RGB':
            counts[f'converted/{mode}'] += 1
    return dict(counts)
