#!/usr/bin/env python
"""Train with mmengine's Runner: ``python tools/train.py CONFIG [--resume] [--cfg-options k=v]``.

Works for rils_mm's pretraining configs and for any mmpretrain, mmdet or mmseg config.
"""
import sys

from _early import check_early

if __name__ == '__main__':
    # The command line and the config's syntax first, before torch loads (seconds).
    check_early('tools/train.py', 'train', sys.argv[1:])
    from rils_mm.tools.cli import run_cli, train_main
    run_cli(train_main, prog='tools/train.py',
            rerun_hint='free space (or fix the cause) and continue the run with --resume')
