#!/usr/bin/env python
"""Evaluate with mmengine's Runner: ``python tools/test.py CONFIG [CHECKPOINT] [--out F]``."""
from rils_mm.tools.cli import run_cli, test_main

if __name__ == '__main__':
    run_cli(test_main, prog='tools/test.py')
