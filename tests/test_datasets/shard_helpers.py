"""Helpers for the dataset tests: tiny generated shards and pipelines."""
import io

import numpy as np
from PIL import Image

from rils_mm.datasets import ShardWriter

CROP = 16


def encode(array: np.ndarray, fmt: str = 'JPEG', mode: str = None) -> bytes:
    """Encode an array (optionally as a given PIL mode) to image bytes."""
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def good_jpeg(index: int, size=(20, 24)) -> bytes:
    """A small JPEG whose pixels encode ``index`` (so decoded images differ per sample)."""
    rng = np.random.default_rng(index)
    return encode(rng.integers(0, 256, size=size + (3, ), dtype=np.uint8))


def write_good_shards(out_dir, num_samples: int, per_shard: int):
    """Shards of ``num_samples`` good samples with keys ``000000``, ``000001``, ..."""
    with ShardWriter(str(out_dir), per_shard) as writer:
        for index in range(num_samples):
            writer.write(f'{index:06d}', dict(jpg=good_jpeg(index), txt=f'caption {index}'))
    return writer.paths


def tiny_pipeline(tokenize: bool = False):
    """Decode, the paper's crop (small), optional tokenization, pack."""
    pipeline = [
        dict(type='LoadImageRGB', min_size=4),
        dict(type='RandomResizedCrop', scale=CROP, crop_ratio_range=(0.5, 1.0),
             interpolation='bicubic', backend='pillow'),
    ]
    if tokenize:
        pipeline.append(dict(type='CLIPTokenize'))
    return pipeline + [dict(type='PackImageText')]


def keys_of(items):
    """Sample keys of packed samples or collated batches."""
    keys = []
    for item in items:
        samples = item['data_samples']
        samples = samples if isinstance(samples, list) else [samples]
        keys.extend(sample.key for sample in samples)
    return keys


def state_after(batches):
    """(state, checkpoint): the stream state a resumed run gets after ``batches`` were trained
    on (DataResumeHook records them and saves into the checkpoint dict; a new hook loads it)."""
    from rils_mm.engine.hooks.data_resume_hook import DataResumeHook
    hook = DataResumeHook()
    for batch in batches:
        hook.after_train_iter(None, 0, batch)
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)
    resumed_hook = DataResumeHook()
    resumed_hook.after_load_checkpoint(None, checkpoint)
    (state, ) = resumed_hook._loaded
    return state, checkpoint
