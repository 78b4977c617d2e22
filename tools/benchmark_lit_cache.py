#!/usr/bin/env python
"""LiT training throughput from images against from cached image features, side by side.

    python tools/benchmark_lit_cache.py [--config configs/lit/demo_cpu_L-U.py] [--rounds 7]
        [--steps 8] [--threads 2] [--cache-dir DIR] [--cfg-options k=v ...]

One process, one model (the config's, with random weights: the towers' files are not needed
to time them), two ways of feeding it:

- images: the config's ``train_dataloader`` dataset and pipeline (JPEG decoding, random crop,
  tokenising), the locked image tower run on every batch;
- cached: the features ``tools/cache_image_features.py`` writes for the same data (made first,
  in ``--cache-dir``), read with ``LoadImageFeatures``; no image decoded, no image tower run.

Each round times ``--steps`` whole training iterations (next batch from an in-process loader,
``train_step``: preprocessing, forward, backward, AdamW) of one mode and then of the other,
alternating which goes first, after one untimed warm-up round. It prints samples/s per mode
(median over rounds) and the cached / images ratio (median, with its range over rounds).
"""
import argparse
import glob
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import default_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import rils_mm  # noqa: E402,F401 (registers the modules)
from rils_mm.compat import install_tool_conveniences  # noqa: E402
from rils_mm.datasets import ImageTextShardDataset  # noqa: E402
from rils_mm.tools.feature_cache import cache_from_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=osp.join(REPO, 'configs/lit/demo_cpu_L-U.py'))
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds per mode')
    parser.add_argument('--steps', type=int, default=8, help='iterations per round and mode')
    parser.add_argument('--threads', type=int, default=2, help='torch threads')
    parser.add_argument('--cache-dir', help='where the features go (kept; default: a '
                        'temporary folder)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args(argv)


def endless(loader):
    while True:
        yield from loader


def time_steps(model, optim_wrapper, batches, steps: int) -> float:
    """Seconds for ``steps`` training iterations, fetching each batch inside the timing."""
    start = time.perf_counter()
    for _ in range(steps):
        model.train_step(next(batches), optim_wrapper)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {'model.backbone.init_cfg': None, 'model.text_encoder.init_cfg': None,
               **args.cfg_options}
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(options)
    init_default_scope('mmpretrain')
    from mmpretrain.registry import DATASETS, MODELS
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if not model.image_tower_locked:
        sys.exit(f'{args.config}: the image tower is not locked; nothing can be cached')
    optim_cfg = dict(cfg.optim_wrapper)
    optim_cfg['type'] = 'OptimWrapper'  # fp32 on the CPU; AMP settings do not apply
    optim_cfg.pop('dtype', None)
    optim_cfg.pop('loss_scale', None)
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    batch_size = cfg.train_dataloader.batch_size

    with tempfile.TemporaryDirectory() as temporary:
        cache_dir = args.cache_dir or temporary
        cache_from_config(args.config, cache_dir, batch_size=batch_size,
                          samples_per_shard=1024, cfg_options=options, device='cpu',
                          log=lambda line: None)
        dataset_cfg = dict(cfg.train_dataloader.dataset, samples_per_epoch=None,
                           batch_size=None)
        image_data = DATASETS.build(dataset_cfg)
        feature_data = ImageTextShardDataset(
            shards=sorted(glob.glob(osp.join(cache_dir, '*.tar'))),
            image_exts=('npy', ),
            pipeline=[dict(type='LoadImageFeatures', dims=model.backbone.embed_dims),
                      dict(type='CLIPTokenize', context_length=77),
                      dict(type='PackImageText')],
            seed=0, shuffle_buffer=dataset_cfg.get('shuffle_buffer', 1000))
        streams = {name: endless(DataLoader(data, batch_size=batch_size, num_workers=0,
                                            collate_fn=default_collate))
                   for name, data in (('images', image_data), ('cached', feature_data))}
        seconds = {name: [] for name in streams}
        order = list(streams)
        for round_index in range(args.rounds + 1):
            for name in (order if round_index % 2 == 0 else order[::-1]):
                elapsed = time_steps(model, optim_wrapper, streams[name], args.steps)
                if round_index > 0:  # round 0 warms up (allocator, first decodes)
                    seconds[name].append(elapsed)
    samples = args.steps * batch_size
    rates = {name: [samples / s for s in values] for name, values in seconds.items()}
    ratios = [c / i for c, i in zip(rates['cached'], rates['images'])]
    print(f'{osp.relpath(args.config, REPO)}: batch {batch_size}, {args.steps} iterations per '
          f'round, {args.rounds} rounds per mode (alternating), {args.threads} threads')
    for name in streams:
        print(f'{name:>7}: {statistics.median(rates[name]):.1f} samples/s (median; rounds '
              f'{min(rates[name]):.1f}-{max(rates[name]):.1f})')
    print(f'cached / images: {statistics.median(ratios):.2f}x (median; rounds '
          f'{min(ratios):.2f}-{max(ratios):.2f})')
    return dict(rates=rates, ratios=ratios)


if __name__ == '__main__':
    install_tool_conveniences()
    main()
