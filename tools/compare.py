#!/usr/bin/env python
"""Train CLIP, MAE, MAE+CLIP, vision-space RILS, RILS and the two-stage chains on the demo data
with one budget and several seeds, evaluate every encoder the same way, and write a table and
a chart (``make compare``).

    python tools/compare.py [--work-dir work_dirs/compare] [--epochs 3] [--seeds 0 1]
        [--methods RILS CLIP ...] [--quick]

``--quick`` checks the whole path in about a minute per method on tiny data (a handful of
iterations; the figures mean nothing).
"""
import argparse
import os
import os.path as osp
import time

import torch

from rils_mm.tools.cli import run_cli


def main(argv):
    # Inside run_cli: a malformed method table (configs/methods.yml) is one line.
    from rils_mm.tools.compare import METHODS, run_comparison
    parser = argparse.ArgumentParser(prog='tools/compare.py', description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/compare')
    parser.add_argument('--epochs', type=int, default=3, help='epochs per method (default 3)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS),
                        metavar='METHOD', help=f'subset of {list(METHODS)}')
    parser.add_argument('--data-root', default='data/demo_shapes')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default 2)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny data and runs, one seed: checks the path, not the methods')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options, probe_train, shots = [], 2048, (1, 2, 10)
    if args.quick:
        args.epochs, args.seeds, probe_train, shots = 2, args.seeds[:1], 128, (1, 2)
        if args.data_root == 'data/demo_shapes':
            args.data_root = osp.join(args.work_dir, 'demo_shapes_tiny')
        options = ['train_dataloader.batch_size=16', 'train_dataloader.num_workers=0',
                   'train_dataloader.persistent_workers=False',
                   'train_dataloader.dataset.batch_size=16',
                   'train_dataloader.dataset.samples_per_epoch=32',
                   'train_dataloader.dataset.shuffle_buffer=32',
                   'train_dataloader.dataset.generate_cfg.num_train=128',
                   'train_dataloader.dataset.generate_cfg.num_val=64',
                   'train_dataloader.dataset.generate_cfg.num_heldout=32']
    options.append(f'train_dataloader.dataset.data_root={args.data_root}')
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    run_comparison(args.work_dir, args.methods, args.seeds, args.epochs, args.data_root,
                   probe_train, shots, options)
    with open(osp.join(args.work_dir, 'results.md')) as f:
        print(f.read())
    print(f'{len(args.methods)} methods x {len(args.seeds)} seeds, {args.epochs} epochs each, '
          f'in {time.time() - start:.0f} s ({torch.get_num_threads()} torch threads); '
          f'table {args.work_dir}/results.md, chart {args.work_dir}/results.png')


if __name__ == '__main__':
    run_cli(main, prog='tools/compare.py')
