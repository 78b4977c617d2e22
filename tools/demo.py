#!/usr/bin/env python
"""The README's demo: pretrain a small RILS on generated captioned shapes, then evaluate it.

    python tools/demo.py [--work-dir work_dirs/demo_cpu] [--epochs N]

Generates data/demo_shapes on first use, trains configs/rils/demo_cpu_val.py (the demo RILS,
validating zero-shot top-1/top-5 on the held-out colour-shape combinations after every epoch)
with mmengine's Runner, and reports zero-shot classification (held-out combinations and seen
ones) and image<->text retrieval on the held-out split, beside chance level.
"""
import argparse
import glob
import os.path as osp
import time

import torch

from rils_mm.datasets.demo_shapes import class_names
from rils_mm.tools.cli import run_cli, test_main, train_main

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'rils')


def main(argv):
    parser = argparse.ArgumentParser(prog='tools/demo.py', description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_cpu')
    parser.add_argument('--epochs', type=int, default=None, help='override max_epochs')
    parser.add_argument('--seed', type=int, default=0, help='randomness.seed (default 0)')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch CPU threads (default 2, as for the README figures: the '
                        'order of floating-point sums, hence the figures, depends on it)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    # A rerun of the demo replaces the previous demo run (tools/train.py refuses to do that
    # to a work dir without --overwrite).
    train_args = [osp.join(CONFIGS, 'demo_cpu_val.py'), '--work-dir', args.work_dir,
                  '--overwrite']
    train_args += ['--cfg-options', f'randomness.seed={args.seed}']
    if args.epochs:
        train_args += [f'train_cfg.max_epochs={args.epochs}']
    runner = train_main(train_args)
    checkpoint = osp.join(args.work_dir, f'epoch_{runner.epoch}.pth')
    train_time = time.time() - start
    # The validation after each epoch (RuntimeInfoHook keeps the history of val metrics).
    validated = runner.message_hub.get_scalar('val/accuracy/top1').data[0]
    best = glob.glob(osp.join(args.work_dir, 'best_accuracy_top1_epoch_*.pth'))

    eval_dir = osp.join(args.work_dir, 'eval')
    heldout = test_main([osp.join(CONFIGS, 'demo_cpu_zeroshot.py'), checkpoint,
                         '--work-dir', eval_dir])
    seen = test_main([
        osp.join(CONFIGS, 'demo_cpu_zeroshot.py'), checkpoint, '--work-dir', eval_dir,
        '--cfg-options', 'test_dataloader.dataset.ann_file=data/demo_shapes/val.jsonl',
        'test_dataloader.dataset.data_prefix.img_path=data/demo_shapes/val'
    ])
    retrieval = test_main([osp.join(CONFIGS, 'demo_cpu_retrieval.py'), checkpoint,
                           '--work-dir', eval_dir])
    chance = 100 / len(class_names())

    def metric(metrics, suffix):
        return next(v for k, v in metrics.items() if k.endswith(suffix))

    lines = [
        '', f'RILS demo: {runner.epoch} epochs, {runner.iter} iterations in {train_time:.0f} s; '
        f'total {time.time() - start:.0f} s; checkpoint {checkpoint}',
        f'  (seed {args.seed}, {torch.get_num_threads()} torch threads, CPU kernels '
        f'{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__})',
        '  validation while training, held-out top-1 by epoch: '
        + ' '.join(f'{value:.1f}' for value in validated)
        + f' %; best kept: {", ".join(best)}',
        f'  zero-shot top-1, held-out (unseen) combinations: {metric(heldout, "top1"):5.1f} %'
        f'   (chance {chance:.1f} %, {len(class_names())} classes)',
        f'  zero-shot top-1, seen combinations, new images:  {metric(seen, "top1"):5.1f} %',
        '  held-out retrieval  image->text R@1 {:5.1f} %  R@5 {:5.1f} %   text->image R@1 {:5.1f} %'
        '  R@5 {:5.1f} %   (chance R@1 0.2 %)'.format(
            metric(retrieval, 'image_to_text_R@1'), metric(retrieval, 'image_to_text_R@5'),
            metric(retrieval, 'text_to_image_R@1'), metric(retrieval, 'text_to_image_R@5')),
    ]
    print('\n'.join(lines))


if __name__ == '__main__':
    run_cli(main, prog='tools/demo.py')
