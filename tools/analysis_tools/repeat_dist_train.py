#!/usr/bin/env python
"""Run ``tools/dist_train.sh`` with 2 CPU (gloo) processes many times and count how runs end.

A check for process exit in distributed runs, not part of the test suite (the suite runs the
command once, ``tests/test_tools/test_cli.py``). Each run trains the demo RILS shrunk to a
one-block model of width 32 on 64 generated pairs, in its own work dir, in one of three forms:

- ``epoch``: one epoch of 2 iterations, an epoch-based checkpoint; expected exit 0.
- ``iter``: an iteration-based loop of 3 iterations with an iteration checkpoint; exit 0.
- ``nonfinite``: lr 1e30, so the non-finite check stops the run; expected exit 1 with the
  check's one-line message.

A run is *aborted* when a rank died of a signal (torchrun reports a negative exit code, e.g.
SIGABRT from ``terminate called without an active exception``). Usage::

    python tools/analysis_tools/repeat_dist_train.py --runs 50 --forms epoch iter nonfinite

Prints one line per run and a table: runs, expected endings, aborts.
"""
import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs', 'rils', 'demo_cpu.py')
TINY = [
    'model.backbone.arch.embed_dims=32', 'model.backbone.arch.num_layers=1',
    'model.backbone.arch.num_heads=2', 'model.backbone.arch.feedforward_channels=64',
    'model.backbone.img_size=32', 'model.neck.num_patches=16', 'model.neck.embed_dim=32',
    'model.neck.decoder_embed_dim=32', 'model.neck.decoder_num_heads=2',
    'model.text_encoder.width=32', 'model.text_encoder.layers=1', 'model.text_encoder.heads=2',
    'model.text_encoder.output_dim=16', 'model.embed_dims=16', 'train_dataloader.batch_size=16',
    'train_dataloader.dataset.batch_size=16', 'train_dataloader.dataset.samples_per_epoch=64',
    'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
    'train_dataloader.dataset.generate_cfg.num_train=64',
    'train_dataloader.dataset.generate_cfg.num_val=8',
    'train_dataloader.dataset.generate_cfg.num_heldout=8',
    'train_dataloader.dataset.generate_cfg.image_size=32',
    'train_dataloader.dataset.pipeline.1.scale=32'
]
FORMS = {
    'epoch': (['train_cfg.max_epochs=1'], 0, 'epoch_1.pth'),
    'iter': (['train_cfg._delete_=True', 'train_cfg.type=IterBasedTrainLoop',
              'train_cfg.max_iters=3', 'train_cfg.val_interval=1000', 'param_scheduler=[]',
              'default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.interval=3'],
             0, 'iter_3.pth'),
    'nonfinite': (['train_cfg.max_epochs=1', 'optim_wrapper.optimizer.lr=1e30'], 1,
                  'error: non-finite loss'),
}


def run_once(form: str, root: str, index: int, port: int) -> dict:
    """One 2-process run; what it returned, whether it ended as expected, whether it aborted."""
    options, expected_status, expected = FORMS[form]
    work_dir = osp.join(root, f'{form}-{index}')
    command = ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), CONFIG, '2', '--work-dir',
               work_dir, '--cfg-options', *TINY,
               f'train_dataloader.dataset.data_root={osp.join(root, "shapes")}', *options]
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    aborted = bool(re.search(r'terminate called|exitcode\s*:\s*-(?!15\b)\d+|Signal 6',
                             output))
    if expected.endswith('.pth'):
        as_expected = osp.isfile(osp.join(work_dir, expected))
    else:
        as_expected = expected in output
    return dict(status=result.returncode, aborted=aborted,
                as_expected=as_expected and result.returncode == expected_status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=50, help='runs of each form')
    parser.add_argument('--forms', nargs='+', choices=sorted(FORMS), default=sorted(FORMS))
    parser.add_argument('--work-dir', help='where the runs write (default: a temporary dir)')
    args = parser.parse_args()
    root = args.work_dir or tempfile.mkdtemp(prefix='repeat_dist_train_')
    port = 29700 + os.getpid() % 200
    table = []
    for form in args.forms:
        counts = dict(runs=0, as_expected=0, aborted=0)
        start = time.monotonic()
        for index in range(args.runs):
            outcome = run_once(form, root, index, port)
            counts['runs'] += 1
            counts['as_expected'] += outcome['as_expected']
            counts['aborted'] += outcome['aborted']
            print(f'{form} {index + 1}/{args.runs}: exit {outcome["status"]}'
                  f'{" ABORTED" if outcome["aborted"] else ""}'
                  f'{"" if outcome["as_expected"] else " UNEXPECTED"}', flush=True)
        table.append((form, counts, time.monotonic() - start))
    print(f'\n| form | runs | ended as expected | aborted | seconds |\n|---|---|---|---|---|')
    for form, counts, seconds in table:
        print(f'| {form} | {counts["runs"]} | {counts["as_expected"]} | {counts["aborted"]} '
              f'| {seconds:.0f} |')
    print(f'(work dirs under {root})')
    sys.exit(int(any(c['aborted'] or c['as_expected'] < c['runs'] for _, c, _ in table)))


if __name__ == '__main__':
    main()
