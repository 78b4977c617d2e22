#!/usr/bin/env python
"""Evaluate with mmengine's Runner: ``python tools/test.py CONFIG [CHECKPOINT] [--out F]``."""
import sys

from _early import check_early

if __name__ == '__main__':
    # The command line and the config's syntax first, before torch loads (seconds).
    check_early('tools/test.py', 'test', sys.argv[1:])
    from rils_mm.tools.cli import run_cli, test_main
    run_cli(test_main, prog='tools/test.py')
