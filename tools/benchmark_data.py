"""Data-loading throughput: rils_mm's shard stream beside open_clip's webdataset pipeline.

Generates JPEG shards (img2dataset layout) in a temporary folder, then, for each worker count,
times decoded samples per second of

- ``rils_mm``: ImageTextShardDataset + LoadImageRGB + RandomResizedCrop(224, (0.5, 1.0),
  bicubic, pillow) + CLIPTokenize + PackImageText, batched by a DataLoader with
  ``default_collate``;
- ``open_clip``: ``open_clip_train.data.get_wds_dataset`` (webdataset, ``pilrgb`` decoding)
  with a torchvision RandomResizedCrop(224, (0.5, 1.0), bicubic) + PILToTensor and open_clip's
  tokenizer, i.e. the same work.

A benchmark, not a test: numbers depend on the machine (and on other load)::

    python tools/benchmark_data.py --num-samples 2048 --workers 1 2 4
"""
import argparse
import io
import os
import os.path as osp
import sys
import tempfile
import time
import types
from argparse import Namespace
from functools import partial

import numpy as np
import torch
from mmengine.dataset import default_collate
from PIL import Image
from torch.utils.data import DataLoader

from rils_mm.compat import install_tool_conveniences
from rils_mm.datasets import ImageTextShardDataset, ShardWriter


def write_benchmark_shards(out_dir: str, num_samples: int, per_shard: int, size=(320, 240)):
    """JPEG shards of smooth random images (realistic JPEG sizes) with short captions."""
    rng = np.random.default_rng(0)
    with ShardWriter(out_dir, per_shard) as writer:
        for index in range(num_samples):
            coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
            noisy = np.asarray(image, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, 'JPEG',
                                                                          quality=90)
            writer.write(f'{index:09d}', dict(jpg=buffer.getvalue(),
                                              txt=f'a photo of thing number {index}'))
    return writer.paths


def rils_loader(shards: str, batch_size: int, workers: int):
    pipeline = [
        dict(type='LoadImageRGB'),
        dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.5, 1.0),
             interpolation='bicubic', backend='pillow'),
        dict(type='CLIPTokenize'),
        dict(type='PackImageText'),
    ]
    dataset = ImageTextShardDataset(shards, pipeline, shuffle_buffer=256)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                      collate_fn=default_collate, persistent_workers=workers > 0)


def open_clip_loader(shards: str, num_samples: int, batch_size: int, workers: int):
    try:
        import pandas  # noqa: F401
    except ImportError:
        # open_clip_train.data imports pandas for its CSV dataset only, which is not used here.
        print('(pandas is not installed: stubbing it for open_clip_train.data, which uses it '
              'only for CSV datasets)')
        sys.modules['pandas'] = types.ModuleType('pandas')
    import open_clip_train.data as open_clip_data
    from open_clip import tokenize
    from torchvision import transforms
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3.0 targets webdataset <= 0.2.x: webdataset 1.0's tar_file_expander
    # ends each shard with an empty {} marker, on which open_clip's group_by_keys_nothrow
    # fails (KeyError: 'fname'). Turning the marker off restores the old behaviour.
    open_clip_data.tar_file_expander = partial(tar_file_expander, eof_value=None)

    preprocess = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.5, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.PILToTensor(),
    ])
    args = Namespace(train_data=shards, val_data=None, dataset_resampled=False,
                     train_num_samples=num_samples, train_data_upsampling_factors=None,
                     seed=0, batch_size=batch_size, workers=workers, world_size=1)
    data_info = open_clip_data.get_wds_dataset(args, preprocess, is_train=True,
                                               tokenizer=tokenize)
    return data_info.dataloader


def samples_per_second(loader, batch_size: int, measured_batches: int) -> float:
    """Throughput after one warm-up batch (worker start-up and first shard scan excluded)."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(measured_batches):
        next(iterator)
    rate = measured_batches * batch_size / (time.perf_counter() - start)
    del iterator
    return rate


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-samples', type=int, default=2048, help='generated pairs')
    parser.add_argument('--per-shard', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--batches', type=int, default=12, help='timed batches per run')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--shards', help='existing shard pattern (default: generate)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            start = time.perf_counter()
            paths = write_benchmark_shards(tmp, args.num_samples, args.per_shard)
            shards = osp.join(tmp, f'{{00000..{len(paths) - 1:05d}}}.tar')
            print(f'generated {args.num_samples} JPEG pairs (320x240) in {len(paths)} shards '
                  f'in {time.perf_counter() - start:.1f} s')
        print(f'decoded samples/s, batch {args.batch_size}, {args.batches} timed batches, '
              f'{len(os.sched_getaffinity(0))} CPU(s)')
        print(f'{"workers":>8} {"rils_mm":>10} {"open_clip":>10}')
        for workers in args.workers:
            ours = samples_per_second(rils_loader(shards, args.batch_size, workers),
                                      args.batch_size, args.batches)
            theirs = samples_per_second(
                open_clip_loader(shards, args.num_samples, args.batch_size, workers),
                args.batch_size, args.batches)
            print(f'{workers:>8} {ours:>10.1f} {theirs:>10.1f}', flush=True)


if __name__ == '__main__':
    install_tool_conveniences()
    main()
