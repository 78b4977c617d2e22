#!/usr/bin/env python
"""Train with mmengine's Runner: ``python tools/train.py CONFIG [--resume] [--cfg-options k=v]``.

Works for rils_mm's pretraining configs and for any mmpretrain, mmdet or mmseg config.
"""
from rils_mm.tools.cli import run_cli, train_main

if __name__ == '__main__':
    run_cli(train_main, prog='tools/train.py',
            rerun_hint='free space (or fix the cause) and continue the run with --resume')
